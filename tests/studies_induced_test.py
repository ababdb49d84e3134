"""Claim 5 (the induced compressor against error feedback): the study and its pieces."""

import inspect
import json
import math

import numpy as np
import pytest

import biased_compression as bc
from biased_compression import experiments as ex
from biased_compression.studies import _claims
from biased_compression.studies import _induced

TINY = dict(
  steps=40, lrs=(1.0, 3.0), pp_steps=60, pp_lrs=(0.3, 1.0), pp_seeds=2, show_progress=False
)


def test_option_defaults_equal_the_function_defaults():
  params = inspect.signature(_induced.induced_vs_ef).parameters
  defaults = {k: p.default for k, p in params.items() if k != "show_progress"}
  assert _induced.CLAIM.defaults() == defaults
  assert set(_induced.CLAIM.options) == set(defaults)
  assert _induced.CLAIM.name == "induced_vs_ef" and _induced.CLAIM.number == 5
  for name, option in _induced.CLAIM.options.items():
    if option.full is not None:
      assert type(option.full) is type(option.default), name


@pytest.mark.parametrize(
  "name, value",
  [
    ("datasets", "breast_cancer"),
    ("datasets", ()),
    ("datasets", (3,)),
    ("num_workers", 1),
    ("num_workers", 8.0),
    ("ratio", 0.0),
    ("ratio", 0.6),
    ("ratio", math.nan),
    ("steps", 0),
    ("lrs", ()),
    ("lrs", (0.1, -1.0)),
    ("pp_steps", True),
    ("pp_lrs", (math.inf,)),
    ("pp_seeds", 0),
    ("p_low", 0.0),
    ("p_high", 1.5),
    ("tolerance", -0.1),
  ],
)
def test_bad_arguments_name_themselves(name, value):
  with pytest.raises(ValueError, match=name):
    _induced.induced_vs_ef(**{**TINY, name: value})


def test_p_high_below_p_low_is_refused():
  with pytest.raises(ValueError, match="p_high"):
    _induced.induced_vs_ef(**{**TINY, "p_low": 0.5, "p_high": 0.4})


def test_verdict_rule():
  assert _induced.verdict_rule(True, True) == "reproduced"
  assert _induced.verdict_rule(True, False) == "partly"
  assert _induced.verdict_rule(False, True) == "partly"
  assert _induced.verdict_rule(False, False) == "not reproduced"


def test_matched_compressors_send_the_same_bits():
  # induced(Top-k, Rand-k) and Top-2k: 2k values and 2k indices, for the data sets' sizes
  for d in (13, 30, 64):
    k = max(1, round(0.1 * d))
    a, b = _induced._induced(k).bits(d), bc.top_k(k=2 * k).bits(d)
    assert abs(a - b) <= _induced.BITS_TOLERANCE * b


def test_uniform_weights():
  p = np.array([0.2, 0.4, 0.7, 0.95])
  w = _induced.uniform_weights(p)
  # they sum to P(S nonempty) and favour the frequent workers
  np.testing.assert_allclose(w.sum(), 1 - np.prod(1 - p), rtol=1e-12)
  assert np.all(np.diff(w) > 0)
  same = _induced.uniform_weights(np.full(5, 0.3))
  np.testing.assert_allclose(same, np.full(5, (1 - 0.7**5) / 5), rtol=1e-12)
  # the Monte Carlo branch (n > 16) agrees with the exact one's formula for constant p
  big = _induced.uniform_weights(np.full(17, 0.5), draws=1 << 15)
  np.testing.assert_allclose(big, (1 - 0.5**17) / 17, rtol=0.05)


# a constructed case: heterogeneous gradients, very unequal p_i
GRADS = np.array(
  [[3.0, -1.0, 0.5, 0.0], [-2.0, 2.0, 0.0, 1.0], [1.0, 0.5, -1.5, 2.0], [-1.0, -2.0, 1.0, 0.5]],
  np.float32,
)
P = np.array([0.2, 0.4, 0.7, 0.95], np.float32)
DRAWS = 40_000


def _mean_and_se(draws):
  draws = np.asarray(draws, np.float64)
  return draws.mean(axis=0), draws.std(axis=0, ddof=1) / math.sqrt(len(draws))


@pytest.mark.parametrize(
  "compressor", [None, pytest.param("induced(top_k(k=1), rand_k(k=1))", marks=pytest.mark.slow)]
)
def test_importance_weighted_aggregate_is_unbiased_and_the_mean_over_s_is_not(compressor):
  c = None if compressor is None else bc.parse_compressor(compressor)
  target = GRADS.mean(axis=0)
  imp = _induced.participation_aggregates(
    GRADS, P, weighting="importance", compressor=c, draws=DRAWS
  )
  mean, se = _mean_and_se(imp)
  assert np.all(np.abs(mean - target) <= 4.5 * se + 1e-6), (mean, target, se)
  uni = _induced.participation_aggregates(GRADS, P, weighting="uniform", compressor=c, draws=DRAWS)
  mean_u, se_u = _mean_and_se(uni)
  # the mean over S has expectation sum_i w_i g_i, far from the mean gradient
  expected = _induced.uniform_weights(P) @ GRADS.astype(np.float64)
  assert np.all(np.abs(mean_u - expected) <= 4.5 * se_u + 1e-6), (mean_u, expected, se_u)
  assert np.linalg.norm(mean_u - target) > 20 * np.linalg.norm(se_u)


def test_stall_point_of_equal_weights_is_the_optimum():
  task = ex.make_task("logistic", 8, dataset="breast_cancer", heterogeneous=True)
  assert abs(_induced.stall_point_gap(task, np.full(8, 1 / 8))) < 1e-9
  # weights toward the frequent workers move the stationary point away from x*
  w = _induced.uniform_weights(_induced.probabilities(8, 0.2, 0.9))
  assert _induced.stall_point_gap(task, w) > 1e-4


@pytest.fixture(scope="module")
def tiny():
  return _induced.CLAIM.run(**TINY)


@pytest.mark.slow
def test_tiny_run_is_consistent(tiny, tmp_path):
  f = tiny
  assert f.verdict in _claims.VERDICTS and f.claim == "induced_vs_ef"
  eq = [r for r in f.rows if r["part"] == "equal bits"]
  pp = [r for r in f.rows if r["part"] == "participation"]
  assert len(eq) == 6 and len(pp) == 5
  by = {r["method"]: r for r in eq}
  diana, ef = by["DIANA induced(Top-3, Rand-3)"], by["EF Top-6"]
  # the matched methods' bits per step, as measured from the runs' counters
  assert abs(diana["bits_per_step"] - ef["bits_per_step"]) <= (
    _induced.BITS_TOLERANCE * ef["bits_per_step"]
  )
  assert by["DCGD induced(Top-3, Rand-3)"]["bits_per_step"] == diana["bits_per_step"]
  assert by["EF Top-3"]["bits_per_step"] * 2 == ef["bits_per_step"]
  floor = f.record["checks"][0]["resolution"]
  # every method spent (at most) the same budget
  budget = diana["bits_per_step"] * TINY["steps"]
  for r in eq:
    assert r["steps_at_budget"] * r["bits_per_step"] <= budget
    assert (r["steps_at_budget"] + 1) * r["bits_per_step"] > budget
    assert math.isfinite(r["gap_at_budget"]) and r["gap_at_budget"] > 0
    ratio = max(r["gap_at_budget"], floor) / max(ef["gap_at_budget"], floor)
    assert r["vs_ef"] == pytest.approx(ratio)
    assert r["lr"] in TINY["lrs"]
  # the verdict follows the rule from the measured numbers
  floor = f.record["checks"][0]["resolution"]
  assert 0 < floor < 1e-7
  equal_ok = max(diana["gap_at_budget"], floor) <= (1 + 0.1) * max(ef["gap_at_budget"], floor)
  pby = {(r["method"]): r for r in pp}
  imp = pby["DCGD induced, importance weights 1/(n p_i)"]
  uni = pby["DCGD induced, mean over participants"]
  pp_ok = imp["tail_gap"] < uni["tail_gap"]
  assert f.verdict == _induced.verdict_rule(equal_ok, pp_ok)
  assert f.record["equal_bits_holds"] == equal_ok and f.record["participation_holds"] == pp_ok
  assert uni["one_step_bias"] > imp["one_step_bias"]
  assert imp["one_step_bias"] < 4 * imp["one_step_noise"]
  assert set(f.figures) == {"equal_bits", "participation"}
  paths = f.write(tmp_path)
  for name in ("json", "table", "equal_bits", "participation"):
    assert paths[name].exists() and paths[name].stat().st_size > 0
  data = json.loads((tmp_path / "result.json").read_text())
  assert data["verdict"] == f.verdict and data["options"]["steps"] == TINY["steps"]
  assert "EF Top-6" in (tmp_path / "table.md").read_text()
  assert f"{diana['gap_at_budget']:.3g}" in f.table()
