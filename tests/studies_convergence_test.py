"""Claims 1 and 2: the linear rate of compressed GD, and Top-k's divergence without EF.

Each study runs at a tiny size; the checks are on cases whose answer is known exactly: biased
rand-k on A = I attains the B3 bound, Top-k with k = d is gradient descent, whose gap
contracts by (1 - mu/L)^2 asymptotically, and the 3-worker example grows by 1 + 5 lr.
"""

import inspect
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import biased_compression as bc
from biased_compression.studies import _contraction
from biased_compression.studies import _divergence


@pytest.mark.parametrize("claim", [_contraction.CLAIM, _divergence.CLAIM], ids=lambda c: c.name)
def test_option_defaults_are_the_study_defaults(claim):
  params = inspect.signature(claim.study).parameters
  assert claim.defaults() == {k: params[k].default for k in claim.options}
  assert set(params) == set(claim.options) | {"show_progress"}
  assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())


# -- claim 1: linear convergence -----------------------------------------------------------


def _gaps(spec, a, steps, draws, eta, seed=0):
  d = a.shape[0]
  e0 = jnp.asarray(np.random.default_rng(seed).standard_normal(d), jnp.float32)
  keys = jax.random.split(jax.random.key(seed), draws)
  c = bc.parse_compressor(spec)
  return np.asarray(
    _contraction._gaps(c, jnp.asarray(a, jnp.float32), e0, keys, jnp.float32(eta), steps=steps)
  )


@pytest.mark.slow
def test_tiny_linear_convergence_run_is_consistent_and_writes(tmp_path):
  specs = ("top_k(0.25)", "rand_k(0.25)", "scaled_sign", "natural_compression")
  f = _contraction.CLAIM.run(
    dim=16, condition=4.0, steps=60, draws=8, compressors=specs, show_progress=False
  )
  assert [r["compressor"] for r in f.rows] == list(specs)
  assert f.verdict == _contraction.verdict([r["within"] for r in f.rows]) == "reproduced"
  for r in f.rows:
    assert r["within"] == (r["rate"] <= r["rate_tolerance"] * (1 + 1e-12))
    assert r["rate"] <= r["bound"] + 1e-6  # the bound is never exceeded here
    assert r["slack"] == pytest.approx((1 - r["rate"]) / (1 - r["bound"]))
  top, rand, sign, nat = f.rows
  assert (top["class"], top["eta"], top["bound"]) == ("B3(4)", 1.0, pytest.approx(1 - 0.25 / 4))
  assert rand["class"] == "U(3)" and rand["eta"] == pytest.approx(0.25)
  assert sign["bound"] == pytest.approx(1 - 0.25 / 16)
  assert nat["eta"] == pytest.approx(1 / 1.125)
  assert str(sum(r["within"] for r in f.rows)) in f.measured
  out = f.write(tmp_path)
  assert {p.name for p in out.values()} == {"result.json", "table.md", "rates.png", "gaps.png"}
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["claim"] == "linear_convergence" and saved["options"]["dim"] == 16
  assert len(saved["record"]["curves"]["top_k(0.25)"]) == top["steps_used"] + 1


# few steps, many draws: each coordinate survives 8 steps with probability 0.75^8 = 0.1, so
# ~1600 of 16 x 1024 survive and the mean gap's relative error is a few percent (the rate's
# ~0.3%); one shape for both tests so the jitted run compiles once
_IDENTITY_RUN = (16, 8, 1024)


@pytest.mark.slow
def test_rand_k_on_the_identity_attains_the_bound_exactly():
  # A = I: e <- (I - P) e with P a uniform k-subset, so E f+ = (1 - k/d) f = bound * f
  d, steps, draws = _IDENTITY_RUN
  a = np.eye(d)
  for spec, eta in (("rand_k(0.25, unbiased=False)", 1.0), ("rand_k(0.25)", 0.25)):
    c = bc.parse_compressor(spec)
    k = _contraction.constants(c, d, 1.0, 1.0)
    assert k["bound"] == pytest.approx(0.75) and k["eta"] == pytest.approx(eta)
    got = _contraction.measure(_gaps(spec, a, steps, draws, eta), k["bound"])
    assert got["within"]
    assert got["rate"] == pytest.approx(0.75, abs=0.005)


def test_top_k_with_k_equal_d_is_gradient_descent_at_its_known_rate():
  d, steps = 8, 80
  a, mu, lip = _contraction.quadratic(d, 4.0, seed=3)
  assert np.linalg.eigvalsh(a) == pytest.approx(np.linspace(0.25, 1.0, d))
  gd = _gaps("identity", a, steps, 1, 1.0)[0]
  np.testing.assert_array_equal(_gaps(f"top_k(k={d})", a, steps, 1, 1.0)[0], gd)
  # float64 reference: e_t = (I - A)^t e_0
  e = np.random.default_rng(0).standard_normal(d)
  ref = []
  for _ in range(steps + 1):
    ref.append(0.5 * e @ a @ e)
    e = e - a @ e
  np.testing.assert_allclose(gd, ref, rtol=1e-4)
  # the slowest eigendirection dominates: f contracts by (1 - mu/L)^2 < the bound 1 - mu/L
  assert gd[-1] / gd[-2] == pytest.approx((1 - mu / lip) ** 2, rel=1e-3)
  got = _contraction.measure(gd[None], 1 - mu / lip)
  assert got["within"] and got["worst_step"] <= 1 - mu / lip


def test_a_step_beyond_the_theorem_fails_the_check():
  # A = I, biased rand-k at eta = 1.5 / L: the kept coordinates go to -0.5 e_j, so
  # E f+ = (1 - (k/d)(1 - 0.25)) f = 0.8125 f > the bound 0.75 f; at 2 / L, f never moves
  d, steps, draws = _IDENTITY_RUN
  spec = "rand_k(0.25, unbiased=False)"
  for eta, rate in ((1.5, 0.8125), (2.0, 1.0)):
    got = _contraction.measure(_gaps(spec, np.eye(d), steps, draws, eta), 0.75)
    assert not got["within"]
    assert got["rate"] == pytest.approx(rate, abs=0.01)
    assert _contraction.verdict([True, got["within"]]) == "not reproduced"
  assert _contraction.verdict([True, True, False]) == "partly"
  assert _contraction.verdict([True, True]) == "reproduced"
  assert _contraction.verdict([]) == "not reproduced"


@pytest.mark.parametrize(
  "options, name",
  [
    ({"dim": 0}, "dim"),
    ({"steps": 2.0}, "steps"),
    ({"draws": True}, "draws"),
    ({"condition": 0.5}, "condition"),
    ({"condition": math.inf}, "condition"),
    ({"compressors": "top_k"}, "compressors"),
    ({"compressors": ()}, "compressors"),
    ({"compressors": ("sign",)}, "compressors"),
    ({"seed": 1.5}, "seed"),
  ],
)
def test_linear_convergence_rejects_bad_options(options, name):
  with pytest.raises(ValueError, match=f"linear_convergence: {name}|compressors must"):
    _contraction.linear_convergence(**options, show_progress=False)


# -- claim 2: divergence without error feedback ---------------------------------------------


@pytest.mark.slow
def test_tiny_divergence_run_matches_the_predictions_and_writes(tmp_path):
  f = _divergence.CLAIM.run(
    step_sizes=(0.2, 0.4), steps=1500, instances=6, noise=0.5, show_progress=False
  )
  example, families = f.rows[:2], f.rows[2:]
  lip = f.record["L"]
  for s, r in zip((0.2, 0.4), example, strict=True):
    assert r["predicted"] == pytest.approx(1 + 5 * s / lip)
    assert r["measured"] == pytest.approx(1 + 5 * s / lip, rel=1e-4)
    assert r["ef_final"] < 1e-3 and r["ef21_final"] < 1e-3
    assert r["as_claimed"]
  for r, kind in zip(families, _divergence.FAMILIES, strict=True):
    assert r["setting"].startswith(kind)
    fam = f.record["families"][kind]
    measured = np.array(fam["measured"], float)
    predicted = np.array(fam["predicted"], float)
    periodic = np.array([p is not None for p in fam["period"]])
    assert np.isnan(predicted[~periodic]).all()
    # wherever the supports repeat, the linear prediction is the measured rate
    np.testing.assert_allclose(measured[periodic], predicted[periodic], rtol=1e-3)
    assert r["diverging"] == pytest.approx(np.mean(measured > 1 + 1e-5))
    assert r["ef_converged"] == 1.0 == (np.array(fam["ef_final"]) < 1e-3).mean()
  assert f.verdict == "reproduced" and all(r["as_claimed"] for r in f.rows)
  assert families[0]["diverging"] > 0  # the perturbed example still diverges
  out = f.write(tmp_path)
  assert {p.name for p in out.values()} == {"result.json", "table.md", "norms.png", "rates.png"}
  assert "example, lr = 0.2/L" in (tmp_path / "table.md").read_text()


def test_the_example_grows_by_one_plus_five_lr_and_its_prediction_agrees():
  h = _divergence.example_hessians()
  lip = float(np.linalg.eigvalsh(h.mean(0)).max())
  lr, steps = 0.3 / lip, 200
  log_norms, supports = _divergence._batch(h[None], [lr], np.ones((1, 3)), "dcgd", 1, steps)
  growth = np.exp(np.diff(log_norms[0]))
  np.testing.assert_allclose(growth, 1 + 5 * lr, rtol=1e-5)
  np.testing.assert_array_equal(supports[0, :, :, 0], np.tile([0, 1, 2], (steps, 1)))
  got = _divergence.predicted_rate(h, lr, supports[0], log_norms[0], 50)
  assert got["period"] == 1
  assert got["predicted"] == pytest.approx(1 + 5 * lr, rel=1e-12)
  assert got["measured"] == pytest.approx(1 + 5 * lr, rel=1e-5)
  # wrong supports (everyone keeps coordinate 0) give another prediction
  wrong = _divergence.predicted_rate(h, lr, np.zeros_like(supports[0]), log_norms[0], 50)
  assert abs(wrong["predicted"] - got["predicted"]) > 1e-3


def test_error_feedback_converges_on_the_example():
  h = _divergence.example_hessians()
  lr = 0.2 / float(np.linalg.eigvalsh(h.mean(0)).max())
  for method in ("ef", "ef21"):
    log_norms, _ = _divergence._batch(h[None], [lr], np.ones((1, 3)), method, 1, 800)
    assert math.exp(log_norms[0, -1]) < 1e-3 * math.sqrt(3), method


def test_predicted_rate_finds_a_period_and_multiplies_over_it():
  rng = np.random.default_rng(0)
  h = _divergence.family("gaussian", 1, 2, 4, seed=1)[0]
  a = np.array([[[0], [1]], [[2], [3]]])  # supports of 2 workers, alternating
  supports = np.tile(a, (20, 1, 1))
  lr = 0.05
  maps = []
  for s in a:
    mask = np.zeros((2, 4))
    np.put_along_axis(mask, s, 1.0, axis=1)
    maps.append(np.eye(4) - lr * (mask[:, :, None] * h).mean(0))
  rho = np.abs(np.linalg.eigvals(maps[1] @ maps[0])).max()
  got = _divergence.predicted_rate(h, lr, supports, np.cumsum(rng.random(40)), 10)
  assert got["period"] == 2 and got["predicted"] == pytest.approx(rho**0.5)
  supports[-3, 0, 0] = 3  # breaks every period up to the window
  assert _divergence.predicted_rate(h, lr, supports, np.zeros(40), 10)["period"] is None


@pytest.mark.parametrize(
  "options, name",
  [
    ({"steps": 4}, "steps"),
    ({"instances": 0}, "instances"),
    ({"dim": 2.0}, "dim"),
    ({"workers": -1}, "workers"),
    ({"k": 3}, "k"),
    ({"noise": -1.0}, "noise"),
    ({"step_sizes": ()}, "step_sizes"),
    ({"step_sizes": (0.1, -0.2)}, "step_sizes"),
    ({"step_sizes": "0.1"}, "step_sizes"),
    ({"seed": None}, "seed"),
  ],
)
def test_divergence_rejects_bad_options(options, name):
  with pytest.raises(ValueError, match=f"divergence_without_ef: {name}"):
    _divergence.divergence_without_ef(**options, show_progress=False)
  with pytest.raises(ValueError, match="family: kind"):
    _divergence.family("uniform", 1, 2, 2)
