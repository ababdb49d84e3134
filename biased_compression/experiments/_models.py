"""Neural-network tasks: a Flax NNX MLP and a small CNN, split over n workers.

`mlp_classification` trains a multi-layer perceptron on flat features (a bundled set,
MNIST-1D, or any `Dataset`, flattened), `cnn_classification` a small convolutional network
on images (the 8 x 8 digits, or MNIST-like IDX images from `load_idx`), both with the mean
softmax cross-entropy. They are non-convex: ``f_star`` is None.

The model is built with Flax NNX and split once, ``nnx.split(model, nnx.Param)``, into its
static graph definition and its parameters; the task's ``params`` is that state as a plain
nested dict of float32 arrays (``nnx.to_pure_dict``), so the library's transformations see an
ordinary pytree, one leaf per kernel and bias (compressed one by one with ``scope="leaf"``).
``loss(params, data)`` rebuilds the module functionally, ``nnx.merge(graphdef, params)``,
so it is a pure function of its arguments that works under ``jax.jit``, ``jax.grad`` and
``jax.vmap`` over the workers. ``info["graphdef"]`` holds the graph definition:
``nnx.merge(task.info["graphdef"], params)`` is the trained module.

Flax is an optional dependency (``pip install flax``): it is imported when a task is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from biased_compression.experiments import _data

if TYPE_CHECKING:  # _tasks imports this module (to register the tasks): no import cycle here
  from biased_compression.experiments._tasks import Task

__all__ = ["mlp_classification", "cnn_classification"]

# bundled sets that are images: name -> (rows, cols)
_IMAGE_SETS = {"digits": (8, 8), "digits_binary": (8, 8)}


def _nnx(fn: str):
  """``flax.nnx``, or an ImportError saying how to install it."""
  try:
    from flax import nnx
  except ImportError as e:
    raise ImportError(f"{fn}: the model tasks need Flax (NNX): pip install flax ({e})") from e
  return nnx


def _check_sizes(fn: str, name: str, value: Any, *, allow_empty: bool) -> tuple[int, ...]:
  ok = isinstance(value, Sequence) and not isinstance(value, str)
  ok = ok and all(
    isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value
  )
  if not ok or (not allow_empty and len(value) == 0):
    what = "a tuple of ints >= 1" + ("" if allow_empty else " (at least one)")
    raise ValueError(f"{fn}: {name} must be {what}, got {value!r}")
  return tuple(int(v) for v in value)


def _check_common(fn: str, num_workers, heterogeneous, test_fraction, seed) -> tuple[int, float]:
  from biased_compression.experiments import _tasks

  n = _tasks._check_int(fn, "num_workers", num_workers, 1)
  _tasks._check_int(fn, "seed", seed, 0)
  if not isinstance(heterogeneous, (bool, np.bool_)):
    raise ValueError(f"{fn}: heterogeneous must be a bool, got {heterogeneous!r}")
  return n, _tasks.check_test_fraction(fn, test_fraction)


def _check_dataset(fn: str, data: Any) -> _data.Dataset:
  if not isinstance(data, _data.Dataset):
    raise ValueError(
      f"{fn}: dataset must be a name or a Dataset (e.g. from load_idx), got {type(data).__name__}"
    )
  x, y = np.asarray(data.x), np.asarray(data.y)
  if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
    raise ValueError(
      f"{fn}: dataset {data.name!r} must have x of shape (m, ...) and y of shape (m,) with "
      f"m >= 1, got {x.shape} and {y.shape}"
    )
  if data.num_classes < 2 or y.min() < 0 or y.max() >= data.num_classes:
    raise ValueError(
      f"{fn}: dataset {data.name!r} must have num_classes >= 2 and labels in "
      f"0 .. num_classes - 1, got num_classes={data.num_classes} and labels in "
      f"{int(y.min())} .. {int(y.max())}"
    )
  return _data.Dataset(x.astype(np.float32), y.astype(np.int32), int(data.num_classes), data.name)


def _flatten(x: jax.Array) -> jax.Array:
  """(m, ...) -> (m, features)."""
  return x.reshape(x.shape[0], -1)


def _patch_conv(lhs, rhs, window_strides, padding, **kwargs) -> jax.Array:
  """``lax.conv_general_dilated`` for the CNN's convolutions, as one matmul over patches.

  NHWC images, an HWIO kernel, stride 1, explicit padding, no dilation, one feature group.
  The runner maps the step-size grid with ``jax.vmap``, which batches the kernel: XLA:CPU
  lowers a convolution with a batched kernel to a grouped convolution, several times slower
  than this (a batched matmul under vmap): ten times on 28 x 28 images at n = 8.
  """
  assert tuple(window_strides) == (1, 1) and kwargs.get("feature_group_count", 1) == 1
  kh, kw, c_in, c_out = rhs.shape
  x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  patches = [x[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(patches, axis=-1)  # (m, h, w, kh * kw * c_in), (i, j, c) order
  out = jnp.einsum("mhwk,ko->mhwo", patches, rhs.reshape(kh * kw * c_in, c_out))
  return out.astype(jnp.result_type(lhs, rhs))


def _pool(x: jax.Array) -> jax.Array:
  """2 x 2 average pooling of (m, h, w, c), stride 2 (an odd last row or column is dropped)."""
  m, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  return x[:, : 2 * h2, : 2 * w2].reshape(m, h2, 2, w2, 2, c).mean(axis=(2, 4))


def _lecun_normal(rng: np.random.Generator):
  """NNX's default kernel initialiser, LeCun normal, drawn by NumPy from ``rng``.

  A normal truncated to two standard deviations, scaled to variance 1 / fan_in (fan_in: the
  product of all but the last dimension), as ``jax.nn.initializers.lecun_normal``. Drawn by
  NumPy because JAX's truncated normal compiles a program per kernel shape, seconds on a CPU
  for a few layers; the NNX key it is given is not used.
  """

  def init(key, shape, dtype=jnp.float32):
    del key
    x = rng.standard_normal(shape)
    out = np.abs(x) > 2.0
    while out.any():
      x[out] = rng.standard_normal(int(out.sum()))
      out = np.abs(x) > 2.0
    fan_in = int(np.prod(shape[:-1]))
    # .8796...: the standard deviation of a standard normal truncated to [-2, 2]
    return jnp.asarray(x * (np.sqrt(1.0 / fan_in) / 0.87962566103423978), dtype)

  return init


def _linear(nnx, a: int, b: int, rng: np.random.Generator, rngs):
  return nnx.Linear(a, b, kernel_init=_lecun_normal(rng), rngs=rngs)


def _conv(nnx, c_in: int, c_out: int, rng: np.random.Generator, rngs):
  """A 3 x 3 ``nnx.Conv`` with same padding, computed by `_patch_conv`."""
  return nnx.Conv(
    c_in,
    c_out,
    (3, 3),
    padding=((1, 1), (1, 1)),
    conv_general_dilated=_patch_conv,
    kernel_init=_lecun_normal(rng),
    rngs=rngs,
  )


def _build(
  fn: str,
  make,
  nnx,
  data: _data.Dataset,
  n: int,
  heterogeneous: bool,
  test_fraction: float,
  seed: int,
  name: str,
) -> Task:
  """The Task of the NNX model ``make()`` on ``data`` (x already shaped as the model reads it)."""
  from biased_compression.experiments import _tasks

  x_w, y_w, test = _tasks.shards(
    fn, data, n, heterogeneous=heterogeneous, test_fraction=test_fraction, seed=seed
  )
  graphdef, state = nnx.split(make(), nnx.Param)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), nnx.to_pure_dict(state))

  def logits(params, x):
    return nnx.merge(graphdef, params)(x)

  def loss(params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()

  def accuracy(params, batch):
    x, y = batch
    return jnp.mean(jnp.argmax(logits(params, x), axis=-1) == y)

  split = "sorted-label" if heterogeneous else "iid"
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return _tasks.Task(
    name=f"{name}({data.name}, n={n}, {split})",
    params=params,
    loss=loss,
    train=(jnp.asarray(x_w, jnp.float32), jnp.asarray(y_w, jnp.int32)),
    test=None if test is None else (jnp.asarray(test.x), jnp.asarray(test.y)),
    accuracy=accuracy,
    f_star=None,
    info={
      "d": num_params,
      "num_classes": data.num_classes,
      "input_shape": tuple(int(s) for s in x_w.shape[2:]),
      "graphdef": graphdef,
    },
  )


def mlp_classification(
  dataset: Any = "digits",
  num_workers: int = 8,
  *,
  hidden: Sequence[int] = (64,),
  heterogeneous: bool = True,
  test_fraction: float = 0.2,
  seed: int = 0,
) -> Task:
  """An MLP (Flax NNX) with the softmax cross-entropy, on flat features split over n workers.

  ``Linear -> relu`` for each width of ``hidden``, then a ``Linear`` to the k classes' logits
  (``hidden=()`` is multinomial logistic regression); NNX's default initialisation (LeCun
  normal kernels, drawn by NumPy from ``seed``, and zero biases), so the loss starts near
  log k. The data are
  split into a stratified test part and n equal training shards (`worker_split`):
  ``heterogeneous=True`` sorts the samples by label (each worker sees one or a few classes),
  False splits i.i.d. ``accuracy`` is the top-1 accuracy; ``f_star`` is None.

  Args:
    dataset: a bundled set's name (``"digits"``: 64 features and 10 classes, ``"iris"``,
      ``"wine"``, ``"breast_cancer"``, ...; see `biased_compression.experiments.bundled`),
      ``"mnist1d"`` (4000 samples of 40 features from the optional ``mnist1d`` package, see
      `mnist1d`), or a ``Dataset`` (e.g. from `load_idx` or `load_libsvm`; images are
      flattened).
    num_workers: n >= 1.
    hidden: the widths of the hidden layers, ints >= 1 (may be empty).
    heterogeneous: the split by sorted labels (True) or i.i.d. (False).
    test_fraction: the held-out part, in [0, 1).
    seed: the split and the initialisation.

  Returns:
    The `Task`: ``params`` a nested dict of float32 kernels and biases, ``train`` the pair
    (x of shape (n, m, features), y int32 of shape (n, m)), ``info`` with ``d`` (the
    number of parameters), ``num_classes``, ``input_shape`` and ``graphdef``.

  Raises:
    ValueError: for a bad argument (the message names it), an unknown data set or too few
      samples for n workers.
    ImportError: without Flax, or for ``"mnist1d"`` without the ``mnist1d`` package.

  Example:
    >>> task = mlp_classification("iris", 4, hidden=(16,))
    >>> task.num_params, task.train[0].shape, task.info["num_classes"]
    (131, (4, 30, 4), 3)
  """
  fn = "mlp_classification"
  n, test_fraction = _check_common(fn, num_workers, heterogeneous, test_fraction, seed)
  hidden = _check_sizes(fn, "hidden", hidden, allow_empty=True)
  nnx = _nnx(fn)
  known = dataset in _data.BUNDLED or dataset == "mnist1d"
  if isinstance(dataset, str) and not (known or dataset.startswith(("libsvm:", "idx:"))):
    raise ValueError(
      f"{fn}: unknown dataset {dataset!r}; choose from {', '.join(_data.BUNDLED)}, "
      "'mnist1d', 'libsvm:PATH', 'idx:IMAGES,LABELS', or pass a Dataset"
    )
  data = _data.from_spec(dataset) if isinstance(dataset, str) else dataset
  data = _check_dataset(fn, data)
  data = data._replace(x=data.x.reshape(data.x.shape[0], -1))
  sizes = (data.x.shape[1], *hidden, data.num_classes)

  def make():
    rng, rngs = np.random.default_rng(seed), nnx.Rngs(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
      layers.append(_linear(nnx, a, b, rng, rngs))
      if i < len(sizes) - 2:
        layers.append(jax.nn.relu)
    return nnx.Sequential(*layers)

  name = f"MLP{list(hidden)}"
  return _build(fn, make, nnx, data, n, bool(heterogeneous), test_fraction, int(seed), name)


def cnn_classification(
  dataset: Any = "digits",
  num_workers: int = 8,
  *,
  channels: Sequence[int] = (8, 16),
  heterogeneous: bool = True,
  test_fraction: float = 0.2,
  seed: int = 0,
) -> Task:
  """A small CNN (Flax NNX) with the softmax cross-entropy, on images split over n workers.

  For each width of ``channels`` a 3 x 3 convolution (same padding), relu and 2 x 2 average
  pooling, then a ``Linear`` from the flattened feature map to the k classes' logits. With the
  defaults on the 8 x 8 digits: 8 and 16 channels, a 2 x 2 x 16 map, 1,898 parameters; on
  28 x 28 MNIST a 7 x 7 x 16 map, 9,098 parameters. Kept tiny so that it compiles in seconds
  on a CPU. Initialisation, splits and accuracy as in `mlp_classification`; ``f_star`` is
  None.

  Args:
    dataset: ``"digits"`` or ``"digits_binary"`` (the bundled 8 x 8 digits, as images), or a
      ``Dataset`` of images, x of shape (m, rows, cols) (e.g. MNIST from `load_idx`: one
      channel) or (m, rows, cols, channels).
    num_workers: n >= 1.
    channels: the output channels of the convolutions, ints >= 1 (at least one); each halves
      the image, so the images need at least 2 ** len(channels) rows and columns.
    heterogeneous: the split by sorted labels (True) or i.i.d. (False).
    test_fraction: the held-out part, in [0, 1).
    seed: the split and the initialisation.

  Returns:
    The `Task`, as in `mlp_classification`, with x of shape (n, m, rows, cols, channels).

  Raises:
    ValueError: for a bad argument (the message names it), a data set that is not images,
      images too small for the pooling, or too few samples for n workers.
    ImportError: without Flax.

  Example:
    >>> task = cnn_classification("digits", 8)
    >>> task.num_params, task.train[0].shape
    (1898, (8, 179, 8, 8, 1))
  """
  fn = "cnn_classification"
  n, test_fraction = _check_common(fn, num_workers, heterogeneous, test_fraction, seed)
  channels = _check_sizes(fn, "channels", channels, allow_empty=False)
  nnx = _nnx(fn)
  if isinstance(dataset, str) and dataset.startswith("idx:"):
    dataset = _data.from_spec(dataset)
  if isinstance(dataset, str):
    if dataset not in _IMAGE_SETS:
      raise ValueError(
        f"{fn}: dataset {dataset!r} is not a bundled image set; choose from "
        f"{', '.join(_IMAGE_SETS)}, or pass a Dataset of images (e.g. from load_idx)"
      )
    data = _data.bundled(dataset)
    data = data._replace(x=data.x.reshape(-1, *_IMAGE_SETS[dataset], 1))
  else:
    data = _check_dataset(fn, dataset)
    if data.x.ndim == 3:
      data = data._replace(x=data.x[..., None])
    elif data.x.ndim != 4:
      raise ValueError(
        f"{fn}: dataset {data.name!r} must hold images, x of shape (m, rows, cols) or "
        f"(m, rows, cols, channels), got {data.x.shape}"
      )
  data = _check_dataset(fn, data)
  rows, cols, depth = data.x.shape[1:]
  side = 2 ** len(channels)
  if rows < side or cols < side:
    raise ValueError(
      f"{fn}: channels={channels!r} pools {len(channels)} times, so the images need at least "
      f"{side} x {side} pixels; dataset {data.name!r} has {rows} x {cols}"
    )

  def make():
    rng, rngs = np.random.default_rng(seed), nnx.Rngs(seed)
    layers, h, w = [], rows, cols
    for c_in, c_out in zip((depth, *channels[:-1]), channels, strict=True):
      layers += [_conv(nnx, c_in, c_out, rng, rngs), jax.nn.relu, _pool]
      h, w = h // 2, w // 2
    layers += [_flatten, _linear(nnx, h * w * channels[-1], data.num_classes, rng, rngs)]
    return nnx.Sequential(*layers)

  name = f"CNN{list(channels)}"
  return _build(fn, make, nnx, data, n, bool(heterogeneous), test_fraction, int(seed), name)
