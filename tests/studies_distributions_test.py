"""Claim 4 (gradient distributions): the Monte-Carlo errors against their closed forms, the
vectors, the MLP gradients, the verdict rule and a tiny run of the study."""

import inspect
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import biased_compression as bc
from biased_compression.studies import _distributions as dist


def _signs(d, seed):
  return np.where(np.random.default_rng(seed).random(d) < 0.5, -1.0, 1.0).astype(np.float32)


# -- closed forms ---------------------------------------------------------------------------


@pytest.mark.parametrize("d,k", [(10, 1), (257, 64), (1000, 999)])
def test_top_k_on_equal_magnitudes_is_exactly_one_minus_k_over_d(d, k):
  x = 3.7 * _signs(d, d)
  assert dist.top_k_equal_magnitudes(d, k) == pytest.approx(1 - k / d, abs=0)
  got = dist.relative_error(bc.top_k(k=k), x)
  assert got == pytest.approx(1 - k / d, abs=1e-6)
  m = dist.error_moments(bc.top_k(k=k), x, scale=0.5)
  assert m["err"] == pytest.approx([1 - k / d], abs=1e-6)  # one draw: deterministic
  assert m["sq"] == pytest.approx([k / d], abs=1e-6)
  # ||C/2 - x||^2 = (1/4)k/d - k/d + 1 and <C/2 - x, C> = -(1/2)k/d
  assert m["err_scaled"] == pytest.approx([1 - 0.75 * k / d], abs=1e-6)
  assert m["cross"] == pytest.approx([-0.5 * k / d], abs=1e-6)
  # the optimal scaling cannot improve Top-k: C(x) is orthogonal to C(x) - x
  assert dist.relative_error(bc.top_k(k=k), x, scale="optimal") == pytest.approx(got, abs=1e-6)


def _rand_k_draws(seed, d=200, k=20, draws=4000):
  x = np.asarray(jax.random.normal(jax.random.key(100 + seed), (d,)))
  m = dist.error_moments(bc.rand_k(k=k), x, draws=draws, key=jax.random.key(seed))
  return m["err"]


def test_rand_k_unscaled_matches_d_over_k_minus_one_and_a_wrong_formula_fails():
  d, k = 200, 20
  assert dist.rand_k_unscaled(d, k) == 9.0
  for seed in range(4):
    errs = _rand_k_draws(seed, d, k)
    se = errs.std(ddof=1) / math.sqrt(errs.size)
    assert 0 < se < 0.1
    assert abs(errs.mean() - dist.rand_k_unscaled(d, k)) < 4 * se, seed
    # 5% off (or the biased rand-k's 1 - k/d) is far outside the tolerance
    assert abs(errs.mean() - 1.05 * dist.rand_k_unscaled(d, k)) > 4 * se, seed
    assert abs(errs.mean() - (1 - k / d)) > 4 * se, seed


def test_contractive_and_optimal_rand_k_give_one_minus_k_over_d():
  # (k/d) rand-k is x on a random k-subset (error 1 - f, E f = k/d), and the optimally
  # scaled error of any U(w) operator is w_x / (1 + w_x) = 1 - k/d for rand-k
  d, k = 200, 20
  x = jax.random.normal(jax.random.key(7), (d,))
  c = bc.rand_k(k=k)
  key = jax.random.key(3)
  # the draws (and the compiled function) of the test above; the factor of bc.contractive
  assert bc.contractive(c).factor(d) == pytest.approx(k / d)
  contractive = dist.relative_error(c, x, draws=4000, key=key, scale="contractive")
  assert contractive == pytest.approx(1 - k / d, abs=0.006)
  assert dist.relative_error(c, x, draws=4000, key=key, scale="optimal") == pytest.approx(
    1 - k / d, abs=0.01
  )
  assert dist.relative_error(c, x, draws=4000, key=key, scale=k / d) == pytest.approx(
    contractive, rel=1e-5
  )


_NUMPY_LAWS = {
  "gaussian": lambda rng: rng.standard_normal(777),
  "cauchy": lambda rng: rng.standard_t(1.0, 777),
  "sparse": lambda rng: rng.standard_normal(777) * (rng.random(777) < 0.1),
}


@pytest.mark.parametrize("name", sorted(_NUMPY_LAWS))
def test_scaled_sign_error_is_deterministic_and_matches_the_closed_form(name):
  x = _NUMPY_LAWS[name](np.random.default_rng(5)).astype(np.float32)
  want = dist.scaled_sign_error(x)
  assert dist.relative_error(bc.scaled_sign(), x) == pytest.approx(want, rel=1e-5, abs=1e-7)
  # the same for any key: nothing random
  assert dist.relative_error(bc.scaled_sign(), x, key=jax.random.key(9)) == pytest.approx(
    want, rel=1e-5, abs=1e-7
  )


def test_scaled_sign_error_extremes_and_huge_inputs():
  assert dist.scaled_sign_error(_signs(64, 1)) == pytest.approx(0.0, abs=1e-12)
  assert dist.scaled_sign_error(np.eye(50)[3]) == pytest.approx(1 - 1 / 50)
  big = np.array([3e38, -1e38, 2e30], np.float32)  # ||x||^2 overflows float32
  assert math.isfinite(dist.scaled_sign_error(big))
  got = dist.relative_error(bc.scaled_sign(), big)
  assert math.isfinite(got) and got == pytest.approx(dist.scaled_sign_error(big), rel=1e-5)


@pytest.mark.slow
def test_exponential_rounding_error_is_scale_free_and_below_its_class_bound():
  # nearest rounding: E||C(x) - x||^2 <= (1 - 1/delta)||x||^2 with delta = 9/8
  x = jax.random.t(jax.random.key(2), 3.0, (500,))
  c = bc.exponential_rounding(unbiased=False)
  e = dist.relative_error(c, x)
  assert 0 < e <= 1 - 8 / 9
  assert dist.relative_error(c, 2.0**40 * x) == pytest.approx(e, rel=1e-6)


# -- vectors and gradients ------------------------------------------------------------------


@pytest.mark.slow
def test_sample_vectors_shapes_tails_and_no_zero_rows():
  key = jax.random.key(0)
  dens = {}
  for name in ["uniform", "gaussian", "laplace", "student_t:1", "student_t:10", "sparse:0.01"]:
    xs = np.asarray(dist.sample_vectors(name, 3000, 3, key))
    assert xs.shape == (3, 3000) and xs.dtype == np.float32
    assert np.all(np.isfinite(xs)) and np.all(np.any(xs != 0, axis=1))
    dens[name] = np.mean([1 - dist.scaled_sign_error(v) for v in xs])
  # the densities of the laws: 3/4 uniform, 2/pi Gaussian, 1/2 Laplace
  assert dens["uniform"] == pytest.approx(0.75, abs=0.02)
  assert dens["gaussian"] == pytest.approx(2 / np.pi, abs=0.02)
  assert dens["laplace"] == pytest.approx(0.5, abs=0.03)
  assert dens["student_t:1"] < 0.1 < dens["student_t:10"]
  assert dens["sparse:0.01"] < 0.02
  # a tiny sparse vector that would be all zero keeps one coordinate
  tiny = np.asarray(dist.sample_vectors("sparse:0.001", 3, 50, key))
  assert np.all(np.count_nonzero(tiny, axis=1) >= 1)


@pytest.mark.slow
def test_mlp_gradients_are_finite_non_zero_and_gd_descends():
  grads, losses = dist.mlp_gradients((0, 5, 20), lr=0.3)
  assert grads.shape == (3, 4810) and grads.dtype == np.float32
  assert np.all(np.isfinite(grads))
  assert np.all(np.linalg.norm(grads, axis=1) > 0)
  assert losses[0] > losses[1] > losses[2]
  assert not np.allclose(grads[0], grads[2])


def test_top_k_at_the_same_bits_fits_the_budget():
  tnd = bc.top_k_natural_dithering(0.1)
  make = dist._top_k_same_bits(tnd)
  for d in (100, 1000, 4810, 70000):
    c = make(d)
    assert c.bits(d) <= tnd.bits(d) < bc.top_k(k=c.k + 1).bits(d)


def test_the_pairs_are_biased_against_unbiased_at_no_fewer_bits():
  for pair in dist.pairs(0.01, 0.1):
    for d in (2000, 4810):
      b, u = pair.build(d)
      assert not b.unbiased and math.isfinite(b.delta(d))  # contractive as it is
      assert u.unbiased == pair.counted
      assert u.bits(d) >= 0.99 * b.bits(d) or not pair.counted
  # tnd_ratio 0.1 gives natural dithering's (s = 1) bits exactly at these sizes
  b, u = dist.pairs(0.01, 0.1)[4].build(4000)
  assert b.bits(4000) == u.bits(4000)


# -- the verdict rule -----------------------------------------------------------------------


def _fake_rows(ratio_of, mlp=True):
  """Rows for every (distribution, pair) with ratio ratio_of(distribution, pair)."""
  names = dist._distribution_names((1.0, 10.0), 0.1) + (["mlp:0"] if mlp else [])
  rows = []
  for p in dist.pairs(0.01, 0.1):
    for n in names:
      lab = dist._label(n)
      r = ratio_of(lab, p.name)
      rows.append(
        {
          "distribution": lab,
          "pair": p.name,
          "density": 0.5,
          "err_b": 0.1,
          "err_u": 0.1 * r,
          "ratio": r,
          "opt_b": 0.1,
          "opt_u": 0.1 * r,
          "counted": "yes" if p.counted else "no (both biased)",
        }
      )
  return names, rows


def _judge(ratio_of, mlp=True):
  _, rows = _fake_rows(ratio_of, mlp)
  return dist._judge(rows, dist.pairs(0.01, 0.1), (1.0, 10.0), (0,) if mlp else (), 0.01)


def test_verdict_rule():
  heavy = dist._label("student_t:1")
  grows = lambda lab, pair: 3.0 if lab == heavy else 2.0
  verdict, measured = _judge(grows)
  assert verdict == "reproduced" and "all 35" in measured  # 5 pairs x 7 inputs
  # every pair wins but Top-k's advantage does not grow with the tail
  assert _judge(lambda lab, pair: 2.0)[0] == "partly"
  assert _judge(lambda lab, pair: 1.5 if lab == heavy else 2.0)[0] == "partly"
  # a biased-vs-biased row that loses does not count
  both = lambda lab, pair: 0.1 if "same bits" in pair else grows(lab, pair)
  assert _judge(both)[0] == "reproduced"
  # one loser: partly, and the loser is named
  one = lambda lab, pair: 0.5 if lab == "MLP grad (step 0)" and "sign" in pair else grows(lab, pair)
  verdict, measured = _judge(one)
  assert verdict == "partly" and "scaled sign vs dithering(s=1) on MLP grad (step 0)" in measured
  # most lose
  assert _judge(lambda lab, pair: 0.5)[0] == "not reproduced"
  assert "no MLP" in _judge(grows, mlp=False)[1]


# -- the study ------------------------------------------------------------------------------


def test_claim_defaults_equal_the_function_defaults():
  sig = inspect.signature(dist.gradient_distributions)
  defaults = {k: p.default for k, p in sig.parameters.items() if k != "show_progress"}
  assert dist.CLAIM.defaults() == defaults
  assert set(dist.CLAIM.options) == set(defaults)
  assert dist.CLAIM.name == "gradient_distributions" and dist.CLAIM.number == 4
  for opt in dist.CLAIM.options.values():
    assert opt.full is None or type(opt.full) is type(opt.default)


@pytest.mark.parametrize(
  "kwargs,name",
  [
    ({"dim": 1}, "dim"),
    ({"dim": 2.5}, "dim"),
    ({"vectors": 0}, "vectors"),
    ({"draws": True}, "draws"),
    ({"dofs": (0.0, 1.0)}, "dofs"),
    ({"dofs": (1.0, 1.0)}, "dofs"),
    ({"dofs": "1,2"}, "dofs"),
    ({"sparsity": 0.0}, "sparsity"),
    ({"ratio": 1.5}, "ratio"),
    ({"tnd_ratio": -0.1}, "tnd_ratio"),
    ({"mlp_steps": (-1,)}, "mlp_steps"),
    ({"mlp_lr": 0.0}, "mlp_lr"),
    ({"seed": 1.0}, "seed"),
  ],
)
def test_bad_study_arguments_raise_naming_them(kwargs, name):
  with pytest.raises(ValueError, match=name):
    dist.gradient_distributions(show_progress=False, **kwargs)


def test_bad_helper_arguments_raise_naming_them():
  x = jnp.ones(10)
  with pytest.raises(ValueError, match="scale"):
    dist.relative_error(bc.top_k(k=1), x, scale="best")
  with pytest.raises(ValueError, match="scale"):
    dist.relative_error(bc.top_k(k=1), x, scale=-1.0)
  with pytest.raises(ValueError, match="draws"):
    dist.relative_error(bc.rand_k(k=1), x, draws=0)
  with pytest.raises(ValueError, match="non-zero"):
    dist.relative_error(bc.top_k(k=1), jnp.zeros(10))
  with pytest.raises(ValueError, match="finite"):
    dist.relative_error(bc.top_k(k=1), x.at[0].set(jnp.nan))
  with pytest.raises(ValueError, match="compressor"):
    dist.error_moments("top_k", x)
  with pytest.raises(ValueError, match="contractive"):
    dist.relative_error(bc.sign(), x, scale="contractive")
  with pytest.raises(ValueError, match="distribution"):
    dist.sample_vectors("cauchy", 10, 1, jax.random.key(0))
  with pytest.raises(ValueError, match="distribution"):
    dist.sample_vectors("student_t:0", 10, 1, jax.random.key(0))
  with pytest.raises(ValueError, match="k"):
    dist.top_k_equal_magnitudes(10, 11)
  with pytest.raises(ValueError, match="d"):
    dist.rand_k_unscaled(0, 1)
  with pytest.raises(ValueError, match="x"):
    dist.scaled_sign_error(np.zeros(3))
  with pytest.raises(ValueError, match="steps"):
    dist.mlp_gradients(())
  with pytest.raises(ValueError, match="lr"):
    dist.mlp_gradients((1,), lr=-1.0)


@pytest.mark.slow
def test_tiny_study_rows_agree_with_the_verdict_and_files_are_written(tmp_path):
  # dim = the MLP's size: every compressor compiles once
  f = dist.CLAIM.run(
    dim=4810, vectors=1, draws=4, dofs=(1.0, 10.0), mlp_steps=(0, 3), show_progress=False
  )
  assert f.verdict in ("reproduced", "partly", "not reproduced")
  assert f.claim == "gradient_distributions" and f.seconds > 0
  pairs = dist.pairs(0.01, 0.1)
  labels = [dist._label(n) for n in dist._distribution_names((1.0, 10.0), 0.1)]
  labels += ["MLP grad (step 0)", "MLP grad (step 3)"]
  assert len(f.rows) == len(pairs) * len(labels)
  assert {(r["distribution"], r["pair"]) for r in f.rows} == {
    (lab, p.name) for lab in labels for p in pairs
  }
  for r in f.rows:
    assert all(math.isfinite(r[k]) and r[k] >= 0 for k in ("err_b", "err_u", "opt_b", "opt_u"))
    assert r["ratio"] == pytest.approx(r["err_u"] / r["err_b"])
    # the optimal scaling is never worse than the one used
    assert r["opt_b"] <= r["err_b"] + 1e-6 and r["opt_u"] <= r["err_u"] + 1e-6
    # (k/d) rand-k: 1 - k/d in expectation (few draws: only where no entry dominates)
    if r["pair"] == "Top-k vs rand-k" and r["distribution"] in ("uniform", "gaussian"):
      assert r["err_u"] == pytest.approx(1 - 48 / 4810, abs=0.03)
      assert r["err_u_unscaled"] == pytest.approx(4810 / 48 - 1, rel=0.3)
  counted = [r for r in f.rows if r["counted"] == "yes"]
  lost = [r for r in counted if r["err_b"] >= r["err_u"]]
  if not lost:
    assert f.verdict in ("reproduced", "partly")
  else:
    assert f.verdict != "reproduced"
    assert all(f"{r['pair']} on {r['distribution']}" in f.measured for r in lost)
  assert str(len(counted)) in f.measured
  assert set(f.figures) == {"ratio", "errors"}
  out = f.write(tmp_path)
  for name in ("result.json", "table.md", "ratio.png", "errors.png"):
    assert (tmp_path / name).stat().st_size > 0
  data = json.loads(out["json"].read_text())
  assert data["verdict"] == f.verdict and data["options"]["dim"] == 4810
  assert len(data["record"]["pairs"]["Top-k vs rand-k"]["err_b"]) == len(labels)
  assert "| t(ν=1) |" in (tmp_path / "table.md").read_text()
