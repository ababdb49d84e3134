"""Monte-Carlo tests of the constants: unbiasedness, the variance bound omega, the B3 bound
delta and the B2 constants, on ordinary and adversarial inputs, for every operator.

Tolerances come from the draws themselves (no per-coordinate z-scores): the squared error of
the mean is compared with the total sample variance divided by the number of draws, and
bounds get a margin of a few standard errors of the per-draw quantity. A deliberately broken
operator fails the same checks (see the end of the file). Set BC_TEST_SEED to try other seeds.
"""

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CORE
from conftest import registry_params

import biased_compression as bc
from biased_compression.compressors import _quantization
from biased_compression.compressors import _sparsification

REGISTRY = bc.standard_compressors()
NAMES = sorted(REGISTRY)
SEED = int(os.environ.get("BC_TEST_SEED", "0"))
D = 200  # not a multiple of 8: packing pads
DRAWS = 20_000


def _vectors(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  signs = rng.choice([-1.0, 1.0], size=D)
  j = rng.integers(-6, 6, size=D)
  mid = np.concatenate([[1.0], (rng.integers(0, 8, size=D - 1) + 0.5) / 8])
  return {
    "gaussian": rng.standard_normal(D),
    "equal_magnitudes": signs * 0.7,
    # C_nat's worst case: variance exactly 1/8 of the energy.
    "cnat_worst": signs * (4.0 / 3.0) * 2.0**j,
    # Nearest power-of-two rounding's worst case (relative error 1/3).
    "power_midpoints": signs * 1.5 * 2.0**j,
    # Midpoints between the levels of 8-level dithering in the max-norm.
    "level_midpoints": signs * mid,
    "one_hot": np.eye(D)[rng.integers(D)] * 3.0,
  }


VECTORS = _vectors(SEED)


@functools.cache
def _sampler(c):
  def draws(x, key):
    keys = jax.random.split(key, DRAWS)
    return jax.vmap(lambda k: c.compress(x, key=k))(keys)

  return jax.jit(draws)


@functools.cache
def _deterministic(c):
  return jax.jit(c.compress)


def sample(c: bc.Compressor, x: np.ndarray, seed: int = SEED) -> np.ndarray:
  """DRAWS independent compressions of x (one for a deterministic operator), float64."""
  xj = jnp.asarray(x, jnp.float32)
  if not c.needs_key:
    return np.asarray(_deterministic(c)(xj), np.float64)[None]
  return np.asarray(_sampler(c)(xj, jax.random.key(seed)), np.float64)


def _x(x):
  return np.asarray(np.float32(x), np.float64)  # what the operator actually sees


def check_unbiased(c, x, ys=None):
  x = _x(x)
  ys = sample(c, x) if ys is None else ys
  n = ys.shape[0]
  mean = ys.mean(0)
  var = ((ys - mean) ** 2).mean(0) * n / max(n - 1, 1)  # per coordinate
  err = ((mean - x) ** 2).sum()
  # Under E C(x) = x, n ||mean - x||^2 is about a chi-square with `dof` effective degrees of
  # freedom scaled to mean sum(var); the factor covers its 1 - 1e-6 quantile from dof = 1 up.
  dof = var.sum() ** 2 / (var**2).sum() if var.sum() > 0 else 1.0
  factor = 1.0 + 7.0 * math.sqrt(2.0 / dof) + 20.0 / dof
  bound = factor * var.sum() / n + 1e-10 * (x**2).sum()
  assert err <= bound, f"{c!r} looks biased: ||mean - x||^2 = {err:.3g} > {bound:.3g}"


def check_second_moment(c, x, bound, ys=None):
  """E||C(x) - x||^2 <= bound ||x||^2, up to sampling error."""
  x = _x(x)
  ys = sample(c, x) if ys is None else ys
  e = ((ys - x) ** 2).sum(1)
  sem = e.std() / math.sqrt(len(e)) if len(e) > 1 else 0.0
  energy = (x**2).sum()
  limit = bound * energy * (1 + 1e-5) + 4.0 * sem + 1e-9 * energy
  assert e.mean() <= limit, (
    f"{c!r}: E||C(x)-x||^2 / ||x||^2 = {e.mean() / energy:.5g} exceeds {bound:.5g}"
  )
  return e.mean() / energy


def check_b2(c, x, gamma, beta, ys=None):
  """max(gamma ||x||^2, E||C||^2 / beta) <= <E C(x), x>, up to sampling error."""
  x = _x(x)
  ys = sample(c, x) if ys is None else ys
  inner = ys @ x
  sq = (ys**2).sum(1)
  n = len(inner)
  tol_inner = 4.0 * inner.std() / math.sqrt(n) if n > 1 else 0.0
  tol_sq = 4.0 * sq.std() / math.sqrt(n) / beta if n > 1 else 0.0
  energy = (x**2).sum()
  slack = 1e-5 * energy
  assert gamma * energy <= inner.mean() + tol_inner + slack, f"{c!r}: gamma={gamma} too large"
  assert sq.mean() / beta <= inner.mean() + tol_inner + tol_sq + slack, f"{c!r}: beta too small"


CASES = [(n, v) for n in NAMES for v in VECTORS]


@pytest.mark.parametrize("name,vector", registry_params(CASES, key=lambda case: case[0], fast=CORE))
def test_constants_hold(name, vector):
  c = REGISTRY[name]
  x = VECTORS[vector]
  ys = sample(c, x)
  if c.unbiased:
    check_unbiased(c, x, ys)
    check_second_moment(c, x, c.omega(D), ys)
  delta = c.delta(D)
  if math.isfinite(delta):
    check_second_moment(c, x, 1.0 - 1.0 / delta, ys)
  b2 = bc.b2_constants(c, D)
  if b2 is not None:
    check_b2(c, x, *b2, ys)


# -- the bounds are attained where the theory says ---------------------------------------------


def _ratio(c, x):
  x = _x(x)
  ys = sample(c, x)
  return ((ys - x) ** 2).sum(1).mean() / (x**2).sum()


def test_top_k_is_tight_on_equal_magnitudes():
  c = bc.top_k(0.1)
  assert _ratio(c, VECTORS["equal_magnitudes"]) == pytest.approx(1 - 1 / c.delta(D), rel=1e-6)


def test_sparsifiers_tight_cases():
  x = VECTORS["equal_magnitudes"]
  c = bc.rand_k(0.1)
  assert _ratio(c, x) == pytest.approx(c.omega(D), rel=1e-5)
  c = bc.adaptive_random_sparsification()
  assert _ratio(c, x) == pytest.approx(1 - 1 / c.delta(D), rel=1e-5)
  c = bc.scaled_sign()
  assert _ratio(c, VECTORS["one_hot"]) == pytest.approx(1 - 1 / c.delta(D), rel=1e-5)


@pytest.mark.parametrize("d", [2, 10, 37])
def test_adaptive_sparsification_draws_in_proportion_to_magnitude(d):
  # P(i) = |x_i| / ||x||_1, checked entry by entry (no entry has zero variance but x_0 = 0,
  # which must never be drawn); d = 10 and 37 exercise the padding of the two-stage draw.
  c = bc.adaptive_random_sparsification()
  x = np.arange(d, dtype=np.float64) * np.where(np.arange(d) % 3 == 1, -1.0, 1.0)
  ys = sample(c, x)
  counts = (ys != 0).sum(axis=0)
  assert (ys != 0).sum(axis=1).max() == 1 and counts[0] == 0
  p = np.abs(x) / np.abs(x).sum()
  sd = np.sqrt(DRAWS * p * (1 - p))
  assert np.all(np.abs(counts - DRAWS * p) <= 5 * sd + 1), (counts, DRAWS * p)


def test_natural_compression_attains_one_eighth():
  c = bc.natural_compression()
  assert _ratio(c, VECTORS["cnat_worst"]) == pytest.approx(1 / 8, rel=0.02)


def test_exponential_rounding_worst_cases():
  rng = np.random.default_rng(SEED)
  j = rng.integers(-4, 4, size=D)
  c = bc.exponential_rounding(4.0)
  x = (8.0 / 5.0) * 4.0**j  # variance (b-1)^2 / (4b) = omega, attained at 2b / (b + 1)
  assert _ratio(c, x) == pytest.approx(c.omega(D), rel=0.02)
  c = bc.exponential_rounding(2.0, unbiased=False)
  assert _ratio(c, VECTORS["power_midpoints"]) == pytest.approx(1 - 1 / c.delta(D), rel=1e-5)
  c = bc.exponential_rounding(3.0, unbiased=False)
  assert _ratio(c, 2.0 * 3.0**j) == pytest.approx(1 - 1 / c.delta(D), rel=1e-5)


def test_dithering_levels_are_unbiased_at_midpoints():
  # Per-level check on the max-norm grid: every coordinate lands on its two neighbours
  # with probability 1/2 each.
  c = bc.standard_dithering(8, norm=math.inf)
  x = VECTORS["level_midpoints"]
  ys = sample(c, x)
  lo = np.floor(np.abs(x) * 8) / 8
  hi = lo + 1 / 8
  a = np.abs(ys)
  assert np.all(np.isclose(a, lo) | np.isclose(a, hi))
  frac_up = np.isclose(a[:, 1:], hi[1:]).mean()
  assert frac_up == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(DRAWS * (D - 1)))


# -- a wrong operator fails these checks --------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class _UnscaledRandK(_sparsification.RandK):
  """rand-k that forgets its d/k scaling but still claims to be unbiased."""

  def __repr__(self):
    return "broken_rand_k()"

  def value_scale(self, d):
    return 1.0


@dataclasses.dataclass(frozen=True, repr=False)
class _HalfRoundingCnat(_quantization.ExponentialRounding):
  """C_nat that rounds up with probability 1/2 instead of |x|/2^e - 1."""

  def _exponent_code_base2(self, xf, key, dtype):
    u = jax.lax.bitcast_convert_type(xf, jnp.uint32)
    e = (u >> 23) & jnp.uint32(0xFF)
    up = jax.random.bernoulli(key, 0.5, xf.shape)
    return jnp.where(e == 0, e, e + up.astype(jnp.uint32))


@dataclasses.dataclass(frozen=True, repr=False)
class _OptimisticRandK(_sparsification.RandK):
  """Correct rand-k that claims half its variance."""

  def omega(self, d):
    return super().omega(d) / 2


@pytest.mark.slow  # checks the checks (four 20000-draw samplers), not the library
def test_broken_operators_fail_the_checks():
  x = VECTORS["gaussian"]
  with pytest.raises(AssertionError, match="biased"):
    check_unbiased(_UnscaledRandK(ratio=0.1), x)
  with pytest.raises(AssertionError, match="biased"):
    check_unbiased(_HalfRoundingCnat(2.0, True), VECTORS["cnat_worst"])
  with pytest.raises(AssertionError, match="exceeds"):
    c = _OptimisticRandK(ratio=0.1)
    check_second_moment(c, x, c.omega(D))
  with pytest.raises(AssertionError, match="beta too small"):
    check_b2(bc.rand_k(0.1), x, 1.0, 5.0)  # the true beta is d/k = 10
