"""Quantisers across the whole float range, against float64 references of the exact operators.

Every operator of `_quantization` is run (under jit) on vectors whose magnitudes span the
float range: near the smallest normal float32, 2^-120, ordinary, 1e30, 1e37 (the sum of
squares overflows), near and at the maximum (the sum of |x| overflows, and for dithering the
l1 and l2 norms themselves), plus a vector whose squares flush to zero. Deterministic
operators must equal the float64 result rounded to the output dtype; random ones must give,
coordinate by coordinate, one of the two values the exact operator can give for that
coordinate (a neighbouring level times the float64 norm, with the sign of x), for every draw.
An output may be inf only where that exact value exceeds the output dtype's range, and zero
only where it is zero or below the smallest normal float32 (XLA:CPU flushes subnormals).
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import oracles
import pytest

import biased_compression as bc

F32_TINY = float(np.finfo(np.float32).tiny)
NP_DTYPES = {
  jnp.dtype(jnp.float32): np.float32,
  jnp.dtype(jnp.bfloat16): ml_dtypes.bfloat16,
  jnp.dtype(jnp.float16): np.float16,
}
# Relative tolerance of an output against the float64 value rounded to the output dtype:
# a few float32 roundings (a norm over ~1000 terms, a product), or one ulp of the output.
RTOL = {
  jnp.dtype(jnp.float32): 1e-5,
  jnp.dtype(jnp.bfloat16): 2.0**-7,
  jnp.dtype(jnp.float16): 2.0**-10,
}
SLACK = 2e-5  # relative error of the float32 norm and level position allowed in dithering

OPERATORS = {
  "sign": bc.sign(),
  "scaled_sign": bc.scaled_sign(),
  "natural_compression": bc.natural_compression(),
  "exponential_rounding": bc.exponential_rounding(),
  "exponential_rounding_nearest": bc.exponential_rounding(unbiased=False),
  "exponential_rounding_b3_nearest": bc.exponential_rounding(3.0, unbiased=False),
  "exponential_rounding_b4": bc.exponential_rounding(4.0),
  "cast_bf16": bc.cast(jnp.bfloat16),
  "cast_fp16": bc.cast(jnp.float16),
  "identity": bc.identity(),
  "standard_dithering(3)": bc.standard_dithering(3),
  **{
    f"{kind}_dithering({s}, norm={p})": fn(s, norm=p)
    for kind, fn, s in (
      ("standard", bc.standard_dithering, 16),
      ("natural", bc.natural_dithering, 4),
    )
    for p in (1, 2, math.inf)
  },
}
# one operator per family by default (the sweeps below run every operator in the full run)
REPRESENTATIVES = {
  "sign",
  "scaled_sign",
  "natural_compression",  # (exponential rounding with base 2)
  "cast_bf16",
  "standard_dithering(16, norm=1)",
  "natural_dithering(4, norm=2)",
}
SWEEP = [
  pytest.param(name, marks=() if name in REPRESENTATIVES else pytest.mark.slow)
  for name in sorted(OPERATORS)
]


def _cases(d: int, dtype) -> dict[str, np.ndarray]:
  """Float64 vectors of d elements at magnitudes across the range of ``dtype``."""
  rng = np.random.default_rng(d)
  big = float(jnp.finfo(dtype).max)
  signs = rng.choice([-1.0, 1.0], d)
  normal = rng.standard_normal(d)
  uniform = rng.uniform(-1.0, 1.0, d)
  if jnp.dtype(dtype) == jnp.float16:
    cases = {
      "1e-3": normal * 1e-3,
      "ordinary": normal,
      "1e4": normal * 1e4,
      "near_max": uniform * big,
      "all_max": signs * big,
    }
  else:
    tail = signs * 3e-20
    tail[0] = 1e-18
    spike = normal.copy()
    spike[d // 2] = big / 2
    cases = {
      "smallest_normal": signs * F32_TINY * rng.uniform(1.0, 4.0, d),
      "2^-120": normal * 2.0**-120,
      # Squares of 3e-20 (9e-40) flush to zero: a thousand weigh as much as 1e-18 squared.
      "flushed_squares": tail,
      "ordinary": normal,
      "1e30": normal * 1e30,
      "1e37": normal * 1e37,
      "spike": spike,
      "near_max": uniform * big,
      "all_max": signs * big,
    }
  out = {}
  for name, x in cases.items():
    x = np.clip(x, -big, big).astype(NP_DTYPES[jnp.dtype(dtype)]).astype(np.float64)
    out[name] = np.where(np.abs(x) < F32_TINY, 0.0, x)  # subnormal inputs act as zeros
  return out


@functools.cache
def _batched(c):
  """Compresses a stack of vectors with one compilation per shape (lax.map keeps the cond)."""
  return jax.jit(lambda xs, keys: jax.lax.map(lambda a: c.compress(a[0], key=a[1]), (xs, keys)))


def _to(values: np.ndarray, dtype) -> np.ndarray:
  """Float64 values rounded to the output dtype (inf beyond its range), back in float64."""
  with np.errstate(over="ignore"):
    return values.astype(NP_DTYPES[jnp.dtype(dtype)]).astype(np.float64)


def _assert_one_of(out, candidates, dtype, what):
  """Every out[i] is one of candidates[:, i] rounded to dtype, or 0 where that is subnormal."""
  rounded = _to(candidates, dtype)
  close = np.isclose(out, rounded, rtol=RTOL[jnp.dtype(dtype)], atol=0.0)
  flushed = (np.abs(candidates) < F32_TINY * (1 + 1e-6)) & (out == 0)
  ok = np.any(close | flushed, axis=0)
  assert not np.isnan(out).any(), what
  bad = np.flatnonzero(~ok)
  assert bad.size == 0, (what, bad[:5], out[bad[:5]], candidates[:, bad[:5]].T)


# -- float64 references --------------------------------------------------------------------


def _sign(x):
  return np.where(x < 0, -1.0, 1.0)  # sign(0) = +1, and -0 is not negative


def _power_neighbours(a, powers):
  """(lo, hi): the neighbours of a >= 0 in {0} and the increasing finite ``powers``."""
  i = np.searchsorted(powers, a, side="right")  # powers[i - 1] <= a < powers[i]
  lo = np.where(i > 0, powers[np.maximum(i - 1, 0)], 0.0)
  hi = np.where(i < len(powers), powers[np.minimum(i, len(powers) - 1)], lo)
  return lo, hi


def _powers(base, dtype):
  """Finite normal float32 powers of base that the output dtype can hold (the code table)."""
  k = np.arange(-400, 400)
  with np.errstate(over="ignore", under="ignore"):
    p = (np.float64(base) ** k).astype(np.float32).astype(np.float64)
  p = p[(p >= F32_TINY) & np.isfinite(p)]
  return p[p <= float(jnp.finfo(dtype).max)]


def _exponential_candidates(c, x, dtype):
  a = np.abs(x)
  lo, hi = _power_neighbours(a, _powers(c.base, dtype))
  if c.unbiased:
    return _sign(x) * np.stack([lo, hi])
  # Nearest in linear distance, ties up; near-ties (float32 rounding of a - lo) allow both.
  gap = (a - lo) - (hi - a)
  near = np.where(gap >= 0, hi, lo)
  tie = np.abs(gap) <= 1e-6 * hi
  return _sign(x) * np.stack([near, np.where(tie, lo + hi - near, near)])


def _dithering_candidates(c, x):
  norm = np.linalg.norm(x, ord=c.norm)
  u = np.abs(x) / norm if norm > 0 else np.zeros_like(x)
  s = c.levels
  values = []
  for v in (u * (1 - SLACK), u, np.minimum(u * (1 + SLACK), 1.0)):
    if repr(c).startswith("standard"):
      values += [np.floor(v * s) / s, np.ceil(v * s) / s]
    else:
      lowest = 2.0 ** (1 - s)
      with np.errstate(divide="ignore"):
        lo = np.where(v >= lowest, 2.0 ** np.floor(np.log2(np.maximum(v, lowest))), 0.0)
      values += [lo, np.where(v >= lowest, np.minimum(2 * lo, 1.0), lowest)]
  levels = np.stack(values)
  with np.errstate(over="ignore", invalid="ignore"):
    return np.where(levels > 0, _sign(x) * norm * levels, 0.0)


def _check(name, c, x, out, dtype):
  what = (name, jnp.dtype(dtype).name, x.size)
  if name == "sign":
    np.testing.assert_array_equal(out, _sign(x), err_msg=str(what))
  elif name == "scaled_sign":
    _assert_one_of(out, (_sign(x) * np.mean(np.abs(x)))[None], dtype, what)
  elif name == "identity":
    np.testing.assert_array_equal(out, x, err_msg=str(what))
  elif name.startswith("cast"):
    # Round to nearest in the target, saturating there and again in the output dtype
    # (float16's 65504 rounds to 65536 in bfloat16).
    fmax = float(jnp.finfo(c.dtype).max)
    ref = np.clip(x, -fmax, fmax).astype(NP_DTYPES[c.dtype]).astype(np.float64)
    fmax = float(jnp.finfo(dtype).max)
    np.testing.assert_array_equal(out, _to(np.clip(ref, -fmax, fmax), dtype), err_msg=str(what))
  elif name.startswith(("exponential", "natural_compression")):
    # Powers of two are exact; other bases travel as float32 table entries.
    _assert_one_of(out, _exponential_candidates(c, x, dtype), dtype, what)
    if c.base == 2.0:
      assert np.all(np.any(out == _exponential_candidates(c, x, dtype), axis=0)), what
  else:
    _assert_one_of(out, _dithering_candidates(c, x), dtype, what)


@pytest.mark.parametrize("name", SWEEP)
@pytest.mark.parametrize(
  "dtype,sizes",
  [(jnp.float32, (7, 1031)), (jnp.bfloat16, (65,)), (jnp.float16, (65,))],
  ids=["float32", "bfloat16", "float16"],
)
def test_matches_float64_reference_across_the_range(name, dtype, sizes):
  c = OPERATORS[name]
  for d in sizes:
    cases = _cases(d, dtype)
    xs = np.stack(list(cases.values()))
    keys = jax.random.split(jax.random.key(d), len(cases))
    out = _batched(c)(jnp.asarray(xs, dtype), keys)
    out = np.asarray(out.astype(jnp.float32), np.float64)
    for case, x, y in zip(cases, xs, out, strict=True):
      _check(name, c, x, y, dtype)
      # Only a dithering level times a norm can exceed the range: every other output is at
      # most max|x| in magnitude.
      assert "dithering" in name or np.isfinite(y).all(), (name, case)


@pytest.mark.parametrize("p", [1, 2, 3, math.inf])
def test_safe_norm_matches_float64(p):
  # Finite to float32 accuracy, inf exactly where the norm exceeds the float32 maximum.
  norm = jax.jit(lambda xs: jax.lax.map(lambda x: oracles.safe_norm(x, p), xs))
  for d in (7, 1031):
    cases = _cases(d, jnp.float32)
    got = np.asarray(norm(jnp.asarray(np.stack(list(cases.values())), jnp.float32)), np.float64)
    for case, x, y in zip(cases, cases.values(), got, strict=True):
      expected = _to(np.array(np.linalg.norm(x, ord=p)), jnp.float32)
      assert np.isclose(y, expected, rtol=1e-5, atol=0.0), (p, d, case, y, expected)


def test_scaled_sign_at_the_float32_maximum():
  # Every |x_i| is the maximum: sum|x| overflows, the mean (the maximum itself) does not.
  big = float(np.finfo(np.float32).max)
  x = jnp.asarray([big, -big] * 50, jnp.float32)
  y = jax.jit(bc.scaled_sign().compress)(x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2.0**-23, atol=0)


def test_dithering_norm_above_the_float32_maximum():
  # ||x||_1 = 8 max overflows float32, but u_i = 1/8 is the level 2/16 (no random rounding)
  # and 8 max * 2/16 = max is representable.
  big = float(np.finfo(np.float32).max)
  c = bc.standard_dithering(16, norm=1)
  x = jnp.asarray([big, -big] * 4, jnp.float32)
  y = jax.jit(lambda v: c.compress(v, key=jax.random.key(0)))(x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


@pytest.mark.parametrize("name", SWEEP)
@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_empty_input(name, shape):
  c = OPERATORS[name]
  key = jax.random.key(0) if c.needs_key else None
  x = jnp.zeros(shape, jnp.float32)
  payload = jax.jit(lambda v: c.encode(v, key=key))(x)
  y = jax.jit(lambda p: c.decode(p, shape, jnp.float32))(payload)
  assert y.shape == shape and y.dtype == jnp.float32
  assert c.payload_bits(0) == c.bits(0)
  for leaf in jax.tree_util.tree_leaves(payload):  # scalars (a norm, a scale) are 0
    assert leaf.size == 0 or float(leaf) == 0.0
