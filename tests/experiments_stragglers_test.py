"""Gradient-coded runs in the experiments layer, and the straggler study (issue 12)."""

import json

import jax
import numpy as np
import optax
import pytest

import biased_compression as bc
from biased_compression import coding
from biased_compression import experiments as ex
from biased_compression.experiments import _stragglers


def _config(**kw):
  base = dict(
    task="linear_regression",
    task_options={"dim": 6, "samples_per_worker": 5},
    num_workers=6,
    algorithm="ef",
    compressor="top_k:0.5",
    lr=0.1,
    steps=7,
    code="sgc_cyclic:2",
    stragglers=0.4,
  )
  base.update(kw)
  return ex.RunConfig(**base)


def test_coded_config_round_trips_and_names_itself():
  config = _config(decoding="mean")
  assert ex.RunConfig.from_json(config.to_json()) == config
  assert config.name.startswith("COCO-EF top_k(ratio=0.5) [sgc_cyclic:2, p=0.4]")
  assert ex.make_code("fractional_repetition:1", 4).B.shape == (4, 4)


@pytest.mark.parametrize(
  "changes, message",
  [
    ({"code": "mds:2"}, "code must be one of"),
    ({"code": "sgc_cyclic:x"}, "code must be one of"),
    ({"code": "sgc_cyclic:7"}, "d \\(the replication\\) must be <= n = 6"),
    ({"stragglers": 1.0}, "stragglers must be a probability"),
    ({"code": None}, "needs a code"),
    ({"decoding": "vote"}, "decoding must be one of"),
  ],
)
def test_coded_config_errors(changes, message):
  with pytest.raises(ValueError, match=message):
    _config(**changes)


def test_coded_runner_equals_a_hand_written_coco_ef_loop():
  config = _config()
  task = ex.make_task(config.task, config.num_workers, **config.task_options)
  result = ex.run(config, task=task, show_progress=False)[0]
  code = coding.sgc_cyclic(6, 2)
  model = coding.iid(0.4)
  tx = optax.chain(optax.sgd(0.1), bc.coco_ef(bc.top_k(0.5), code, model, axis_name="workers"))
  workers = bc.simulate(tx, 6, axis_name="workers")
  x = task.params
  state = workers.init(x)

  @jax.jit
  def step(x, state):
    _, part_grads = jax.vmap(jax.value_and_grad(task.loss), in_axes=(None, 0))(x, task.train)
    updates, state = workers.update(coding.encode_all(code, part_grads), state, x)
    return optax.apply_updates(x, updates), state

  losses, alive = [float(task.global_loss(x))], [np.nan]
  for _ in range(config.steps):
    alive.append(float(np.sum(coding.alive_workers(model, state[1], 6))))
    x, state = step(x, state)
    losses.append(float(task.global_loss(x)))
  np.testing.assert_allclose(result.curves["loss"], losses, rtol=1e-5)
  np.testing.assert_array_equal(result.curves["alive"], alive)
  assert result.curves["bits"][-1] == int(np.asarray(bc.bits_sent(state[1])).sum())
  # only the arrivals sent: (arrivals) x (payload of top-3 of 6 values)
  assert result.curves["bits"][-1] == np.nansum(alive) * bc.top_k(0.5).payload_bits(6)


def test_unbiased_counterpart_has_at_most_the_bits():
  for c, size in [(bc.top_k(0.05), 100), (bc.grouped_sign(32), 100), (bc.scaled_sign(), 1000)]:
    r = ex.unbiased_counterpart(c, size)
    assert r.unbiased
    k = r.num_values(size)
    assert r.payload_bits(size) <= c.payload_bits(size)
    assert bc.rand_k(k=k + 1).payload_bits(size) > c.payload_bits(size)
  assert ex.unbiased_counterpart(bc.top_k(0.05), 100) == bc.rand_k(0.05)


def test_study_argument_errors():
  with pytest.raises(ValueError, match="methods must be"):
    ex.straggler_study(methods=("coco",))
  with pytest.raises(ValueError, match="every p must lie in"):
    ex.straggler_study(ps=(1.2,))
  with pytest.raises(ValueError, match="every d must be"):
    ex.straggler_study(num_workers=4, ds=(5,))


@pytest.mark.slow  # eleven small runs, each compiled
def test_straggler_study_tiny_writes_the_equal_bits_table(tmp_path):
  study = ex.straggler_study(
    num_workers=4,
    task_options={"dim": 8, "samples_per_worker": 5},
    ps=(0.5,),
    ds=(1, 2),
    compressors=("top_k:0.25",),
    steps=6,
    lrs=(0.1, 0.3),
    show_progress=False,
  )
  assert [(s.p, s.d) for s in study.settings] == [(0.5, 1), (0.5, 2)]
  # the uncoded baseline does not depend on d: one run, shared
  one, two = (s.comparison.best[s.methods.index("uncoded_ef")] for s in study.settings)
  assert one is two
  for s in study.settings:
    rows = s.at_equal_bits()
    assert [r["method"] for r in rows] == list(_stragglers.METHODS)
    budget = min(float(r.curves["bits"][-1]) for r in s.comparison.best)
    for row, r in zip(rows, s.comparison.best, strict=True):
      bits = np.asarray(r.curves["bits"], np.float64)
      t = row["steps_within"]
      assert bits[t] <= budget and (t == len(bits) - 1 or bits[t + 1] > budget)
      assert row["loss"] == pytest.approx(float(r.curves["loss"][t]))
    exact = rows[s.methods.index("gc_exact")]
    assert exact["steps_within"] < rows[0]["steps_within"]  # 32-bit values: fewer steps
  paths = study.write(tmp_path)
  data = json.loads(paths["json"].read_text())
  assert len(data["table"]) == 12 and len(data["winners"]) == 2
  assert "COCO-EF" in paths["table"].read_text()
  assert sorted(p.name for p in tmp_path.glob("loss_vs_*.png")) == [
    "loss_vs_bits_top_k_ratio_0_25.png",
    "loss_vs_steps_top_k_ratio_0_25.png",
  ]
