"""The Flax NNX model tasks of the experiments layer: an MLP and a small CNN (tiny sizes)."""

import gzip
import math
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import biased_compression as bc
from biased_compression import experiments as ex
from biased_compression.experiments import _data

nnx = pytest.importorskip("flax.nnx")

# tiny models: (task name, options); digits has 1797 samples, 1438 for training
MODELS = [("mlp", {"hidden": (16,)}), ("cnn", {"channels": (4, 8)})]


@pytest.fixture(scope="module")
def tasks():
  return {name: ex.make_task(name, 4, **options) for name, options in MODELS}


def _plain_tree(tree) -> bool:
  """Only dicts and float32 arrays: no NNX State or Variable nodes."""
  if isinstance(tree, dict):
    return all(_plain_tree(v) for v in tree.values())
  return isinstance(tree, jax.Array) and tree.dtype == jnp.float32


def _topk_bits(params, ratio: float) -> int:
  """bits_sent of one worker's step of per-leaf top_k(ratio), from the wire format alone.

  Per leaf of d values: k = max(1, round(ratio * d)) float32 values and, when k < d, k
  indices in the narrowest unsigned type holding d - 1 (uint8 up to 256 values, ...).
  """
  total = 0
  for leaf in jax.tree.leaves(params):
    d = leaf.size
    k = min(d, max(1, round(ratio * d)))
    index = 8 if d <= 2**8 else 16 if d <= 2**16 else 32
    total += 32 * k + (index * k if k < d else 0)
  return total


# -- the tasks --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_params_are_plain_float32_and_the_loss_starts_near_log_k(name, tasks):
  task = tasks[name]
  assert _plain_tree(task.params), jax.tree.map(lambda x: type(x).__name__, task.params)
  assert task.num_params == task.info["d"]
  assert task.f_star is None and task.batchable and task.num_workers == 4
  x, y = task.train
  assert x.dtype == jnp.float32 and y.dtype == jnp.int32
  assert x.shape[:2] == y.shape and x.shape[2:] == task.info["input_shape"]
  assert x.shape[2:] == ((64,) if name == "mlp" else (8, 8, 1))

  # jit + vmap + grad as the runner uses them; the graph definition rebuilds the module
  @jax.jit
  def check(params):
    grads = jax.vmap(jax.grad(task.loss), in_axes=(None, 0))(params, task.train)
    logits = nnx.merge(task.info["graphdef"], params)(task.test[0][:3])
    return task.global_loss(params), grads, logits

  loss, grads, logits = check(task.params)
  assert math.isfinite(float(loss)) and abs(float(loss) - math.log(10)) < 0.5
  for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(task.params), strict=True):
    assert g.shape == (4, *p.shape) and bool(jnp.all(jnp.isfinite(g)))
  assert logits.shape == (3, 10)


def test_mlp_layers_and_the_heterogeneous_split():
  task = ex.mlp_classification("iris", 3, hidden=(5, 6), test_fraction=0.2)
  shapes = [p.shape for p in jax.tree.leaves(task.params)]
  assert sorted(shapes) == sorted([(5,), (4, 5), (6,), (5, 6), (3,), (6, 3)])
  assert np.array_equal(np.asarray(task.train[1]), [[0] * 40, [1] * 40, [2] * 40])
  iid = ex.mlp_classification("iris", 3, hidden=(), heterogeneous=False)
  assert iid.num_params == 4 * 3 + 3  # hidden=(): softmax regression
  assert all(len(set(row.tolist())) == 3 for row in np.asarray(iid.train[1]))


def test_mnist1d_is_flat_features(monkeypatch):
  rng = np.random.default_rng(0)
  fake = _data.Dataset(
    rng.normal(size=(100, 40)).astype(np.float32), np.arange(100, dtype=np.int32) % 10, 10, "m1d"
  )
  monkeypatch.setattr(_data, "mnist1d", lambda: fake)
  task = ex.make_task("mlp", 4, dataset="mnist1d", hidden=(8,))
  assert task.train[0].shape == (4, 20, 40) and task.test[0].shape == (20, 40)
  monkeypatch.undo()
  monkeypatch.setitem(sys.modules, "mnist1d", None)  # as if not installed
  with pytest.raises(ImportError, match="pip install mnist1d"):
    ex.mlp_classification("mnist1d", 4)


@pytest.mark.slow
def test_mnist1d_generated():
  task = ex.mlp_classification("mnist1d", 4, hidden=(8,))
  assert task.train[0].shape == (4, 800, 40) and task.info["num_classes"] == 10


def test_without_flax_the_error_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "flax", None)
  with pytest.raises(ImportError, match="cnn_classification: .*pip install flax"):
    ex.cnn_classification("digits", 4)


# -- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name",
  ["mlp", pytest.param("cnn", marks=pytest.mark.slow)],  # the fast CNN run: IDX below
)
def test_gd_decreases_the_loss_and_raises_the_accuracy(name):
  options = dict(MODELS)[name]
  config = ex.RunConfig(task=name, task_options=options, num_workers=4, steps=12, lr=1.0)
  (result,) = ex.run(config, show_progress=False)  # the task from TASKS
  c = result.curves
  assert np.all(np.isfinite(c["loss"]))
  assert c["loss"][-1] < 0.8 * c["loss"][0]
  assert c["accuracy"][-1] > c["accuracy"][0] + 0.2
  assert c["test_accuracy"][-1] > c["test_accuracy"][0] + 0.2
  # GD sends every value as float32
  d = ex.make_task(name, 4, **options).num_params
  np.testing.assert_array_equal(c["bits"], 32 * d * 4 * np.arange(13))


@pytest.mark.parametrize("name", ["mlp", pytest.param("cnn", marks=pytest.mark.slow)])
def test_error_feedback_trains_and_counts_top_k_bits_per_leaf(name, tasks):
  task = tasks[name]
  config = ex.RunConfig(
    task=name, num_workers=4, algorithm="ef", compressor="top_k:0.1", steps=12, lr=0.5
  )
  (result,) = ex.run(config, task=task, show_progress=False)
  c = result.curves
  assert np.all(np.isfinite(c["loss"])) and c["loss"][-1] < 0.95 * c["loss"][0]
  assert c["accuracy"][-1] > c["accuracy"][0] + 0.1
  per_step = 4 * _topk_bits(task.params, 0.1)
  assert per_step < 32 * task.num_params * 4 / 5  # far fewer than GD
  np.testing.assert_array_equal(c["bits"], per_step * np.arange(13))
  assert per_step == 4 * sum(bc.top_k(0.1).bits(p.size) for p in jax.tree.leaves(task.params))


def _idx(array: np.ndarray) -> bytes:
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
    f">{array.ndim}I", *array.shape
  )
  return header + array.astype(">u1").tobytes()


def test_cnn_trains_on_idx_images(tmp_path):
  """12 x 12 MNIST-like images (a bright 4 x 4 square at a place given by the label)."""
  rng = np.random.default_rng(0)
  labels = np.arange(240) % 4
  images = rng.integers(0, 60, size=(240, 12, 12))
  for i, label in enumerate(labels):
    r, c = divmod(int(label), 2)
    images[i, 6 * r + 1 : 6 * r + 5, 6 * c + 1 : 6 * c + 5] = 255
  (tmp_path / "images.gz").write_bytes(gzip.compress(_idx(images)))
  (tmp_path / "labels").write_bytes(_idx(labels))
  ds = ex.load_idx(tmp_path / "images.gz", tmp_path / "labels")
  options = {"dataset": ds, "channels": (4,), "heterogeneous": False}
  task = ex.make_task("cnn", 4, **options)
  assert task.train[0].shape == (4, 48, 12, 12, 1) and task.info["num_classes"] == 4
  assert task.num_params == 3 * 3 * 4 + 4 + 6 * 6 * 4 * 4 + 4
  config = ex.RunConfig(task="cnn", task_options=options, num_workers=4, steps=15, lr=1.0)
  (result,) = ex.run(config, show_progress=False)
  c = result.curves
  assert np.all(np.isfinite(c["loss"])) and c["loss"][-1] < 0.7 * c["loss"][0]
  assert c["accuracy"][0] < 0.5 and c["accuracy"][-1] > 0.9 and c["test_accuracy"][-1] > 0.9
  np.testing.assert_array_equal(c["bits"], 32 * task.num_params * 4 * np.arange(16))


# -- errors -------------------------------------------------------------------------------------


def _tiny(x_shape, num_classes=2):
  m = x_shape[0]
  return _data.Dataset(
    np.zeros(x_shape, np.float32), np.arange(m, dtype=np.int32) % num_classes, num_classes, "tiny"
  )


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: ex.mlp_classification(num_workers=0), "num_workers must be an int >= 1"),
    (lambda: ex.mlp_classification(hidden=(0,)), "hidden must be a tuple of ints >= 1"),
    (lambda: ex.mlp_classification(hidden="64"), "hidden must be a tuple of ints >= 1"),
    (lambda: ex.cnn_classification(channels=()), "channels must be a tuple .*at least one"),
    (lambda: ex.mlp_classification(heterogeneous="yes"), "heterogeneous must be a bool"),
    (lambda: ex.mlp_classification(test_fraction=1.0), "test_fraction must be in \\[0, 1\\)"),
    (lambda: ex.cnn_classification(test_fraction=-0.1), "test_fraction must be a finite"),
    (lambda: ex.mlp_classification(seed=-1), "seed must be an int >= 0"),
    (lambda: ex.mlp_classification("nope"), "unknown dataset 'nope'; choose from"),
    (lambda: ex.mlp_classification((np.zeros((4, 2)), np.zeros(4))), "dataset must be a name"),
    (lambda: ex.cnn_classification("iris"), "dataset 'iris' is not a bundled image set"),
    (lambda: ex.cnn_classification(_tiny((8, 5))), "must hold images, x of shape"),
    (
      lambda: ex.cnn_classification(_tiny((8, 6, 6)), 2, channels=(2, 2, 2)),
      "images need at least 8 x 8 pixels; dataset 'tiny' has 6 x 6",
    ),
    (lambda: ex.mlp_classification(_tiny((8, 3), 1)), "num_classes >= 2"),
    (lambda: ex.mlp_classification(_tiny((10, 3)), 9), "num_workers=9 but the training part"),
    (lambda: ex.make_task("mlp", 4, hiden=(8,)), "make_task: task 'mlp': .*'hiden'"),
  ],
)
def test_bad_arguments_name_themselves(make, message):
  with pytest.raises(ValueError, match=message):
    make()
