"""The experiments layer: tasks, configs, the runner and `compare` (tiny sizes, few steps)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType

import biased_compression as bc
from biased_compression import cli
from biased_compression import experiments as ex

EF_TOPK = ex.RunConfig(algorithm="ef", compressor="top_k:0.1", steps=12, num_workers=4)


@pytest.fixture(scope="module")
def logistic4():
  return ex.logistic_regression("breast_cancer", 4)


# -- tasks --------------------------------------------------------------------------------------


def test_quadratic_and_linear_regression_know_their_optimum():
  for task in (
    ex.quadratic(4, 6, heterogeneity=2.0),
    ex.linear_regression(4, 6, heterogeneity=1.0),
  ):
    x_star = jnp.asarray(task.info["x_star"], jnp.float32)
    assert float(task.global_loss(x_star)) == pytest.approx(task.f_star, rel=1e-4, abs=1e-6)
    g = jax.grad(task.global_loss)(x_star)
    assert float(jnp.linalg.norm(g)) < 1e-3
    # the optimum is a minimum: any step away increases f
    assert float(task.global_loss(x_star + 0.01)) > task.f_star


def test_logistic_optimum_is_stationary(logistic4):
  task = logistic4
  # gradient descent from far below cannot beat Newton's f*
  x = task.params
  step = jax.jit(lambda x: x - 0.5 * jax.grad(task.global_loss)(x))
  for _ in range(2000):
    x = step(x)
  assert float(task.global_loss(x)) >= task.f_star - 1e-5
  assert float(task.global_loss(x)) == pytest.approx(task.f_star, abs=1e-3)


def test_heterogeneous_split_gives_workers_mostly_one_class(logistic4):
  y = np.asarray(logistic4.train[1])
  purity = sorted(max(row.mean(), 1 - row.mean()) for row in y)
  assert purity[1] == 1.0  # sorted labels: at most one worker (at the boundary) sees both
  iid = ex.logistic_regression("breast_cancer", 4, heterogeneous=False)
  assert max(max(r.mean(), 1 - r.mean()) for r in np.asarray(iid.train[1])) < 0.8


@pytest.mark.parametrize(
  "name, options",
  [
    ("quadratic", {"dim": 5}),
    ("linear_regression", {"dim": 5}),
    ("logistic", {"dataset": "breast_cancer"}),
    ("logistic", {"dataset": "digits_binary", "nonconvex": 0.1, "l2": 0.0}),
  ],
)
def test_every_task_decreases_under_gd(name, options):
  config = ex.RunConfig(task=name, task_options=options, num_workers=4, steps=30, lr=0.1)
  (result,) = ex.run(config, show_progress=False)
  loss = result.curves["loss"]
  assert np.all(np.isfinite(loss))
  assert loss[-1] < 0.9 * loss[0]
  assert np.all(np.diff(loss) <= 1e-6)  # GD with a small step: monotone


def test_task_errors():
  with pytest.raises(ValueError, match="mu must be a finite number > 0"):
    ex.quadratic(mu=0.0)
  with pytest.raises(ValueError, match="num_workers must be an int >= 1"):
    ex.linear_regression(0)
  with pytest.raises(ValueError, match="has 10 classes; logistic regression needs two"):
    ex.logistic_regression("digits")
  with pytest.raises(ValueError, match="unknown task 'mnist'"):
    ex.make_task("mnist", 4)


# -- configs --------------------------------------------------------------------------------------


def test_config_round_trips_through_json():
  config = ex.RunConfig(
    task="logistic",
    task_options={"dataset": "breast_cancer", "heterogeneous": False},
    algorithm="econtrol",
    compressor="top_k:0.1",
    algorithm_options={"eta": 0.2},
    lr=0.3,
    steps=7,
    batch_size=5,
  )
  again = ex.RunConfig.from_json(config.to_json())
  assert again == config
  assert again.compressor == "top_k(ratio=0.1)"  # the spec as the operator prints itself
  assert bc.parse_compressor(again.compressor) == bc.top_k(0.1)


def test_config_errors():
  with pytest.raises(ValueError, match="algorithm must be one of"):
    ex.RunConfig(algorithm="adam")
  with pytest.raises(ValueError, match="'ef' needs a compressor spec"):
    ex.RunConfig(algorithm="ef")
  with pytest.raises(ValueError, match="unknown compressor 'top_q'"):
    ex.RunConfig(algorithm="ef", compressor="top_q:0.1")
  with pytest.raises(ValueError, match="lr must be a finite number > 0"):
    ex.RunConfig(lr=-1.0)
  with pytest.raises(ValueError, match="unknown fields \\['learning_rate'\\]"):
    ex.RunConfig.from_dict({"learning_rate": 0.1})


# -- the runner -----------------------------------------------------------------------------------


def test_runner_is_deterministic(logistic4):
  config = EF_TOPK.replace(compressor="rand_k:0.2", algorithm="dcgd", batch_size=8)
  a = ex.run(config, task=logistic4, lrs=[0.1, 0.3], show_progress=False)
  b = ex.run(config, task=logistic4, lrs=[0.1, 0.3], show_progress=False)
  for ra, rb in zip(a, b, strict=True):
    for k in ra.curves:
      if k != "time":
        np.testing.assert_array_equal(ra.curves[k], rb.curves[k])
  assert not np.array_equal(a[0].curves["loss"], a[1].curves["loss"])  # the grid differs


@pytest.mark.parametrize(
  "config",
  [
    EF_TOPK,
    pytest.param(
      EF_TOPK.replace(algorithm="ef21", compressor="natural_dithering:4"), marks=pytest.mark.slow
    ),
    pytest.param(
      EF_TOPK.replace(algorithm="diana", compressor="rand_k:0.2", batch_size=6),
      marks=pytest.mark.slow,
    ),
    EF_TOPK.replace(algorithm="gd"),
  ],
  ids=["ef", "ef21", "diana", "gd"],
)
def test_runner_equals_a_hand_written_loop_and_counts_bits_sent(config, logistic4):
  """Loss curve and bits equal an independent loop over bc.simulate with bits_sent."""
  task = logistic4
  (result,) = ex.run(config, task=task, lrs=[0.2], chunk=5, show_progress=False)
  workers = bc.simulate(ex.make_transformation(config, 0.2), 4, axis_name="workers")
  params, state, key = task.params, workers.init(task.params), jax.random.key(config.seed)

  @jax.jit
  def step(params, state, key):
    key, sub = jax.random.split(key)
    data = task.train
    if config.batch_size is not None:
      idx = jax.random.randint(sub, (4, config.batch_size), 0, task.train[0].shape[1])
      data = jax.tree.map(lambda x: jax.vmap(lambda xi, ii: xi[ii])(x, idx), task.train)
    grads = jax.vmap(jax.grad(task.loss), in_axes=(None, 0))(params, data)
    updates, state = workers.update(grads, state, params)
    return optax.apply_updates(params, updates), state, key

  loss = jax.jit(task.global_loss)
  losses, bits = [], [0]
  for _ in range(config.steps):
    losses.append(float(loss(params)))
    params, state, key = step(params, state, key)
    bits.append(int(np.sum(bc.bits_sent(state))))
  losses.append(float(loss(params)))
  np.testing.assert_allclose(result.curves["loss"], losses, rtol=2e-5, atol=1e-6)
  np.testing.assert_array_equal(result.curves["bits"], bits)
  assert result.curves["bits"][-1] == int(np.sum(bc.bits_sent(state)))
  np.testing.assert_allclose(result.curves["gap"], result.curves["loss"] - task.f_star)
  assert np.all(np.diff(result.curves["time"]) >= 0)


def test_vmap_and_shard_runners_agree():
  mesh = jax.make_mesh((8,), ("workers",), axis_types=(AxisType.Explicit,))
  config = EF_TOPK.replace(num_workers=8, steps=6)
  task = ex.logistic_regression("breast_cancer", 8)
  (v,) = ex.run(config, task=task, chunk=3, show_progress=False)
  (s,) = ex.run(config, task=task, chunk=3, backend="shard", mesh=mesh, show_progress=False)
  np.testing.assert_allclose(v.curves["loss"], s.curves["loss"], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(v.curves["bits"], s.curves["bits"])


def test_runner_errors(logistic4):
  with pytest.raises(ValueError, match="backend must be one of"):
    ex.run(EF_TOPK, task=logistic4, backend="pmap")
  with pytest.raises(ValueError, match="needs a mesh with an axis 'workers'"):
    ex.run(EF_TOPK, task=logistic4, backend="shard")
  with pytest.raises(ValueError, match="the task has 4 workers, the config 8"):
    ex.run(EF_TOPK.replace(num_workers=8), task=logistic4)
  with pytest.raises(ValueError, match="has no sample axis"):
    ex.run(EF_TOPK.replace(task="quadratic", batch_size=2))
  with pytest.raises(ValueError, match="lrs must be finite step sizes > 0"):
    ex.run(EF_TOPK, task=logistic4, lrs=[0.1, math.nan])


# -- compare ------------------------------------------------------------------------------------


def test_compare_picks_the_best_step_size_and_writes_its_files(tmp_path, logistic4):
  methods = [EF_TOPK.replace(algorithm="gd"), EF_TOPK, EF_TOPK.replace(algorithm="dcgd")]
  result = ex.compare(methods, task=logistic4, lrs=(0.03, 0.3), show_progress=False)
  for runs, best in zip(result.grid, result.best, strict=True):
    assert best.final_loss == min(r.final_loss for r in runs)
  rows = result.rows()
  gd = rows[0]
  assert gd["saving_vs_gd"] == pytest.approx(1.0)
  d = logistic4.num_params
  assert gd["bits_per_step"] == 32 * d  # dense float32 values
  k = 3  # top_k(0.1) of 30
  assert rows[1]["bits_per_step"] == k * (32 + 8)  # values and uint8 indices
  paths = result.write(tmp_path)
  record = json.loads(paths["json"].read_text())
  assert [r["config"]["algorithm"] for r in record["best"]] == ["gd", "ef", "dcgd"]
  assert ex.RunConfig.from_dict(record["best"][1]["config"]) == result.best[1].config
  assert paths["png"].stat().st_size > 1000 and paths["pdf"].stat().st_size > 1000
  assert paths["csv"].read_text().count("\n") == 3 * (EF_TOPK.steps + 1) + 1
  assert "x fewer than GD" in paths["table"].read_text()


def test_compare_refuses_methods_of_different_runs(logistic4):
  with pytest.raises(ValueError, match="every method must share steps"):
    ex.compare([EF_TOPK, EF_TOPK.replace(steps=3)], task=logistic4)


def test_cli_compare_reads_a_libsvm_file_and_records_it(tmp_path, capsys):
  from sklearn.datasets import dump_svmlight_file

  data = ex.bundled("breast_cancer")
  path = tmp_path / "bc.txt"
  dump_svmlight_file(data.x, 2 * data.y - 1, str(path))
  argv = ["compare", "--libsvm", str(path), "--workers", "4", "--steps", "3", "--lrs", "0.1"]
  assert cli.main([*argv, "--methods", "gd", "--no-plot", "--out", str(tmp_path / "o")]) == 0
  record = json.loads((tmp_path / "o" / "results.json").read_text())
  config = ex.RunConfig.from_dict(record["best"][0]["config"])
  assert config.task_options["dataset"] == f"libsvm:{path}"
  # the record reproduces the run
  (again,) = ex.run(config, show_progress=False)
  np.testing.assert_allclose(again.curves["loss"], record["best"][0]["curves"]["loss"], rtol=1e-6)
  assert not (tmp_path / "o" / "loss.png").exists()


@pytest.mark.slow  # the MLP's own tests run by default
def test_cli_compare_trains_the_mlp(tmp_path, capsys):
  argv = ["compare", "--task", "mlp", "--workers", "4", "--steps", "3", "--lrs", "0.5"]
  argv += ["--methods", "gd;ef:top_k(0.1)", "--no-plot", "--out", str(tmp_path)]
  assert cli.main(argv) == 0
  record = json.loads((tmp_path / "results.json").read_text())
  assert record["best"][0]["config"]["task_options"] == {"heterogeneous": True, "dataset": "digits"}
  loss = record["best"][0]["curves"]["loss"]
  assert loss[-1] < loss[0]


def test_cli_compare_runs_small(tmp_path, capsys):
  argv = ["compare", "--workers", "4", "--steps", "5", "--lrs", "0.1,1"]
  argv += ["--methods", "gd;ef:top_k(0.1);dcgd:sign()", "--out", str(tmp_path / "out")]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "DCGD sign()" in out and "EF top_k(ratio=0.1)" in out
  for name in ("results.json", "curves.csv", "table.txt", "loss.png", "loss.pdf"):
    assert (tmp_path / "out" / name).exists()
  assert str(tmp_path / "out" / "results.json") in out


@pytest.mark.parametrize(
  "argv, message",
  [
    (["compare", "--methods", "adam:top_k(0.1)"], "unknown algorithm 'adam'"),
    (["compare", "--methods", "ef"], "ef needs ':COMPRESSOR'"),
    (["compare", "--methods", "ef:top_q(0.1)"], "unknown compressor 'top_q'"),
    (["compare", "--lrs", "0.1,-1"], "step sizes must be finite and > 0"),
    (["compare", "--workers", "0"], "positive integer"),
    (["compare", "--dataset", "digits"], "has 10 classes"),
    (["compare", "--libsvm", "/no/such/file.txt"], "/no/such/file.txt"),
    (["compare", "--task", "quadratic", "--dataset", "digits"], "apply to --task logistic"),
    (["compare", "--dataset", "digits", "--libsvm", "a.txt"], "not dataset and libsvm"),
    (["compare", "--task", "quadratic", "--batch-size", "2"], "has no samples to draw"),
    (["compare", "--ratio", "2"], "ratios must be in (0, 1]"),
  ],
)
def test_cli_compare_bad_options_exit_2(argv, message, capsys):
  with pytest.raises(SystemExit) as excinfo:
    cli.main(argv)
  assert excinfo.value.code == 2
  assert message in capsys.readouterr().err
