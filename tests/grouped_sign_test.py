"""`grouped_sign`: against a NumPy reference, its wire size, its constants (the contraction
bound and where it is tight), edge inputs, argument checks, parsing, jit, vmap and error
feedback. Every operator call is jitted."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import biased_compression as bc

F32_MAX = float(np.finfo(np.float32).max)


@functools.cache
def _jitted(c):
  compress = jax.jit(c.compress)
  encode = jax.jit(c.encode)
  decode = jax.jit(lambda p, shape, dtype: c.decode(p, shape, dtype), static_argnums=(1, 2))
  return compress, encode, decode


def _compress(c, x):
  return _jitted(c)[0](jnp.asarray(x))


def reference(x: np.ndarray, g: int) -> np.ndarray:
  """C(x) in float64 from the definition, group by group (a loop, independent of the code):
  mean|x_G| sign(x_G) with sign(0) = +1; a group with an inf or NaN is all NaN."""
  x = np.asarray(x, np.float64).reshape(-1)
  out = np.empty_like(x)
  for start in range(0, x.size, g):
    group = x[start : start + g]
    if not np.isfinite(group).all():
      out[start : start + g] = np.nan
      continue
    scale = np.abs(group).sum() / group.size
    out[start : start + g] = np.where(group < 0, -scale, scale)
  return out


def _f32(x):
  return np.asarray(np.asarray(x, np.float32), np.float64)  # what the operator sees


CASES = [
  (1, 1),
  (5, 1),
  (7, 3),
  (8, 8),
  (9, 8),
  (37, 4),
  (100, 7),
  (256, 64),
  (1000, 64),
  (1000, 999),
  (1000, 1000),
  (1000, 5000),
]


@pytest.mark.parametrize("d,g", CASES, ids=lambda v: str(v))
def test_equals_the_numpy_reference(d, g):
  rng = np.random.default_rng(d * 7919 + g)
  x = (rng.standard_normal(d) * np.exp(rng.uniform(-3, 3, d))).astype(np.float32)
  x[rng.integers(d)] = 0.0  # sign(0) is +1 within a non-zero group
  y = np.asarray(_compress(bc.grouped_sign(g), x), np.float64)
  np.testing.assert_allclose(y, reference(x, g), rtol=1e-6, atol=0)


def test_groups_run_over_the_flattened_leaf():
  x = np.asarray(jax.random.normal(jax.random.key(0), (3, 37)), np.float32)
  y = _compress(bc.grouped_sign(16), x)
  assert y.shape == (3, 37) and y.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y).reshape(-1), reference(x, 16), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=lambda t: jnp.dtype(t).name)
def test_half_precision_inputs(dtype):
  x = (jax.random.normal(jax.random.key(1), (50,)) * 3).astype(dtype)
  y = _compress(bc.grouped_sign(8), x)
  assert y.dtype == dtype
  np_dtype, rtol = {
    jnp.bfloat16: (ml_dtypes.bfloat16, 2.0**-8),
    jnp.float16: (np.float16, 2.0**-11),
  }[dtype]
  expected = reference(np.asarray(x, np.float64), 8).astype(np_dtype).astype(np.float64)
  np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("d", [1, 7, 63, 64, 65, 1000, 4099])
def test_a_group_of_at_least_d_is_scaled_sign_bit_for_bit(d):
  x = jax.random.normal(jax.random.key(d), (d,)) * 1e3
  expected = np.asarray(_compress(bc.scaled_sign(), x))
  for g in (d, 1 << 30):
    c = bc.grouped_sign(g)
    y = np.asarray(_compress(c, x))
    np.testing.assert_array_equal(y.view(np.uint32), expected.view(np.uint32))
    assert c.bits(d) == bc.scaled_sign().bits(d)
    assert c.delta(d) == bc.scaled_sign().delta(d) == d


def test_a_group_of_one_is_the_identity():
  rng = np.random.default_rng(3)
  x = (rng.standard_normal(300) * np.exp(rng.uniform(-60, 60, 300))).astype(np.float32)
  x[:3] = [0.0, F32_MAX, -F32_MAX]
  y = np.asarray(_compress(bc.grouped_sign(1), x))
  np.testing.assert_array_equal(y, x)
  assert bc.grouped_sign(1).bits(8) == 8 * 33 and bc.grouped_sign(1).delta(300) == 1.0


# -- the wire -----------------------------------------------------------------------------


def _payload_bits(payload) -> int:
  return sum(8 * leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(payload))


@pytest.mark.parametrize("d", [0, 1, 15, 17, 64, 257])
@pytest.mark.parametrize("g", [1, 8, 64, 10_000])
def test_bits_equal_the_payload(d, g):
  c = bc.grouped_sign(g)
  payload = _jitted(c)[1](jnp.ones((d,)))
  assert _payload_bits(payload) == c.bits(d) == c.payload_bits(d)
  assert payload["scales"].shape == (math.ceil(d / g),) and payload["scales"].dtype == jnp.float32
  # bfloat16 and float16 inputs send the same float32 scales
  assert c.payload_bits(d, jnp.bfloat16) == c.payload_bits(d, jnp.float16) == c.bits(d)


def test_bits_formula():
  """32 ceil(d / g) + d for d a multiple of 8; the sign bits are padded to whole bytes."""
  for g in [1, 2, 3, 7, 8, 16, 63, 64, 10_000]:
    c = bc.grouped_sign(g)
    for d in [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 257, 1000]:
      assert c.bits(d) == 32 * math.ceil(d / g) + 8 * math.ceil(d / 8) == c.payload_bits(d)
      if d % 8 == 0:
        assert c.bits(d) == d + 32 * math.ceil(d / g)


def test_round_trip_through_the_payload():
  c = bc.grouped_sign(5)
  x = jax.random.normal(jax.random.key(4), (4, 9))
  _, encode, decode = _jitted(c)
  payload = encode(x)
  np.testing.assert_array_equal(decode(payload, (4, 9), jnp.float32), _compress(c, x))
  np.testing.assert_allclose(
    np.asarray(payload["scales"]),
    [np.abs(_f32(x).reshape(-1)[i : i + 5]).mean() for i in range(0, 36, 5)],
    rtol=1e-6,
  )
  with pytest.raises(ValueError, match="does not come from a 50-element float32 input"):
    c.decode(payload, (50,), jnp.float32)  # 10 groups, not 8


# -- constants ----------------------------------------------------------------------------


def test_constants_and_flags():
  c = bc.grouped_sign(16)
  for d, m in [(1, 1), (10, 10), (16, 16), (17, 16), (1000, 16)]:
    assert c.delta(d) == c.b3(d) == m
    assert c.b2(d) == (1 / m, 1.0) and c.b1(d) == (1 / m, 1.0)
    assert bc.class_constants(c, d).omega == math.inf
  assert not (c.unbiased or c.needs_key or c.linear or c.shared_randomness or c.sign_valued)
  assert c == bc.grouped_sign(16) and hash(c) == hash(bc.grouped_sign(16))
  assert c != bc.grouped_sign(8)


def _error_ratio(c, x):
  """||C(x) - x||^2 / ||x||^2 in float64, and ||C(x)||^2 and <C(x), x> over ||x||^2."""
  x = _f32(x)
  y = np.asarray(_compress(c, x.astype(np.float32)), np.float64)
  energy = (x**2).sum()
  return ((y - x) ** 2).sum() / energy, (y**2).sum() / energy, (y @ x) / energy


def _random_inputs(d):
  rng = np.random.default_rng(d)
  return {
    "gaussian": rng.standard_normal(d),
    "heavy_tailed": rng.standard_cauchy(d),
    "scales": rng.standard_normal(d) * np.exp(rng.uniform(-20, 20, d)),
    "sparse": rng.standard_normal(d) * (rng.uniform(size=d) < 0.05),
  }


@pytest.mark.parametrize("d,g", [(200, 1), (200, 7), (200, 16), (200, 64), (200, 200), (37, 64)])
def test_contraction_bound_on_random_inputs(d, g):
  c = bc.grouped_sign(g)
  bound = 1 - 1 / min(g, d)
  for name, x in _random_inputs(d).items():
    if not x.any():
      continue
    ratio, sq, inner = _error_ratio(c, x)
    assert ratio <= bound * (1 + 1e-6) + 1e-12, (name, ratio, bound)
    # B2(1 / min(g, d), 1): <C(x), x> = ||C(x)||^2 >= ||x||^2 / min(g, d)
    assert sq == pytest.approx(inner, rel=1e-5), name
    assert inner >= (1 / min(g, d)) * (1 - 1e-6), name


@pytest.mark.parametrize("d,g", [(64, 8), (200, 8), (60, 7), (10, 64)])
def test_equal_magnitudes_are_sent_exactly(d, g):
  """Equality in ||x_G||_1 <= sqrt(|G|) ||x_G||_2: equal magnitudes in a group give C(x)_G =
  x_G, the least error (the bound's other end)."""
  rng = np.random.default_rng(d)
  x = rng.choice([-1.0, 1.0], d) * np.repeat(rng.uniform(0.5, 2.0, -(-d // g)), g)[:d]
  x = x.astype(np.float32)
  np.testing.assert_allclose(np.asarray(_compress(bc.grouped_sign(g), x)), x, rtol=1e-6)
  x = (0.7 * rng.choice([-1.0, 1.0], d)).astype(np.float32)  # equal across the whole vector
  np.testing.assert_allclose(np.asarray(_compress(bc.grouped_sign(g), x)), x, rtol=1e-6)


@pytest.mark.parametrize("d,g", [(64, 8), (200, 8), (63, 7), (10, 10), (10, 64)])
def test_one_coordinate_per_group_attains_the_bound(d, g):
  """One non-zero coordinate in every group of min(g, d) elements: ||C(x) - x||^2 equals
  (1 - 1/min(g, d)) ||x||^2, so delta = min(g, d) cannot be lowered."""
  assert d % min(g, d) == 0
  m = min(g, d)
  rng = np.random.default_rng(g)
  x = np.zeros(d)
  x[np.arange(0, d, m) + rng.integers(0, m, d // m)] = rng.standard_normal(d // m) * 5
  ratio, _, _ = _error_ratio(bc.grouped_sign(g), x)
  assert ratio == pytest.approx(1 - 1 / m, rel=1e-6)


def test_one_big_coordinate():
  d, g = 100, 16
  x = np.full(d, 1e-3)
  x[37] = -1e4
  c = bc.grouped_sign(g)
  ratio, _, _ = _error_ratio(c, x)
  assert ratio <= 1 - 1 / g
  assert ratio == pytest.approx(1 - 1 / g, rel=1e-6)  # all but 1/16 of the big one is lost
  y = np.asarray(_compress(c, x.astype(np.float32)))
  # only the big coordinate's group is touched by it
  np.testing.assert_allclose(np.delete(y, np.arange(32, 48)), 1e-3, rtol=1e-6)


# -- edge inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("g", [1, 4, 64])
def test_zeros_give_zeros(g):
  for d in (1, 10, 64, 100):
    y = np.asarray(_compress(bc.grouped_sign(g), np.zeros(d, np.float32)))
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(y, np.zeros(d))
  x = np.concatenate([np.zeros(8), np.arange(1.0, 9.0)]).astype(np.float32)
  y = np.asarray(_compress(bc.grouped_sign(8), x))
  np.testing.assert_array_equal(y[:8], 0.0)  # an all-zero group is 0 next to non-zero ones
  np.testing.assert_allclose(y[8:], 4.5)


def test_empty_input():
  c = bc.grouped_sign(4)
  for shape in [(0,), (3, 0)]:
    y = _compress(c, jnp.zeros(shape))
    assert y.shape == shape and y.dtype == jnp.float32
  assert c.bits(0) == c.payload_bits(0) == 0


@pytest.mark.parametrize("g", [1, 3, 8, 48])
def test_near_the_float32_maximum_stays_finite(g):
  # Each group's sum |x_G| overflows float32; its mean does not.
  x = np.array([0.99, -0.9, 0.75, 0.6, -0.51, 0.5] * 8 + [1.0, -1.0]) * F32_MAX
  x = x.astype(np.float32)
  y = np.asarray(_compress(bc.grouped_sign(g), x))
  assert np.isfinite(y).all()
  np.testing.assert_allclose(y, reference(x, g), rtol=1e-6)
  at_max = np.full(20, F32_MAX, np.float32) * np.where(np.arange(20) % 3, 1, -1)
  y = np.asarray(_compress(bc.grouped_sign(g), at_max.astype(np.float32)))
  np.testing.assert_allclose(y, at_max, rtol=2.0**-23, atol=0)  # the mean, rounded


def test_large_but_not_overflowing_sums():
  x = np.linspace(-1e36, 1e36, 100, dtype=np.float32)
  y = np.asarray(_compress(bc.grouped_sign(16), x))
  assert np.isfinite(y).all()
  np.testing.assert_allclose(y, reference(x, 16), rtol=1e-6)


def test_subnormal_inputs_stay_finite():
  tiny = np.finfo(np.float32).smallest_subnormal
  x = np.array([tiny, -3 * tiny, 1e-40, 0.0, -1e-39] * 4, np.float32)
  y = np.asarray(_compress(bc.grouped_sign(4), x))
  assert np.isfinite(y).all() and np.abs(y).max() <= 2.0**-120
  x = np.array([2.0**-120, 3 * 2.0**-126, -(2.0**-125)] * 3, np.float32)  # smallest normals
  y = np.asarray(_compress(bc.grouped_sign(3), x))
  np.testing.assert_allclose(y, reference(x, 3), rtol=1e-6)


def test_a_non_finite_value_makes_its_group_nan():
  x = np.arange(1.0, 41.0, dtype=np.float32)
  x[3], x[17] = np.nan, -np.inf
  y = np.asarray(_compress(bc.grouped_sign(8), x))
  nan_groups = np.zeros(40, bool)
  nan_groups[0:8] = nan_groups[16:24] = True
  assert np.isnan(y[nan_groups]).all()
  np.testing.assert_allclose(y[~nan_groups], reference(x, 8)[~nan_groups], rtol=1e-6)


# -- arguments and parsing ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, False, "4", None, 4.0])
def test_bad_group_size(bad):
  message = f"grouped_sign: group_size must be an int >= 1, got {re.escape(repr(bad))}$"
  with pytest.raises(ValueError, match=message):
    bc.grouped_sign(bad)
  with pytest.raises(ValueError, match=message):
    bc.grouped_sign(group_size=bad)


def test_numpy_ints_are_ints():
  c = bc.grouped_sign(np.int64(8))
  assert c == bc.grouped_sign(8) and type(c.group_size) is int


@pytest.mark.parametrize("g", [1, 3, 64, 1 << 20])
def test_parse_round_trip(g):
  c = bc.grouped_sign(g)
  assert repr(c) == c.name == f"grouped_sign(group_size={g})"
  assert bc.parse_compressor(repr(c)) == c
  assert bc.parse_compressor(f"grouped_sign:{g}") == c
  assert bc.parse_compressor(f"grouped_sign:group_size={g}") == c
  assert eval(repr(c), vars(bc)) == c


def test_registry_entry():
  c = bc.standard_compressors()["grouped_sign"]
  assert c == bc.grouped_sign(64) == bc.parse_compressor("grouped_sign")
  with pytest.raises(ValueError, match="grouped_sign: group_size must be an int >= 1, got 0"):
    bc.parse_compressor("grouped_sign:0")
  with pytest.raises(ValueError, match="group_size"):
    bc.parse_compressor("grouped_sign()")  # group_size has no default


# -- transformations ----------------------------------------------------------------------


def test_vmap_equals_loop():
  c = bc.grouped_sign(6)
  xs = jax.random.normal(jax.random.key(3), (4, 40))
  batched = jax.jit(jax.vmap(c.compress))(xs)
  for i in range(4):
    np.testing.assert_array_equal(batched[i], _compress(c, xs[i]))


def test_error_feedback_update():
  c = bc.grouped_sign(4)
  tx = bc.error_feedback(c)
  params = {"w": jnp.zeros((3, 5)), "b": jnp.zeros((7,))}
  grads = {
    "w": jax.random.normal(jax.random.key(0), (3, 5)),
    "b": jax.random.normal(jax.random.key(1), (7,)),
  }
  state = tx.init(params)
  out, state = jax.jit(tx.update)(grads, state, params)
  for leaf in grads:
    np.testing.assert_array_equal(out[leaf], _compress(c, grads[leaf]))
    np.testing.assert_allclose(state.error[leaf], grads[leaf] - out[leaf], rtol=1e-6)
  out2, state2 = jax.jit(tx.update)(grads, state, params)  # the error is fed back
  for leaf in grads:
    p = grads[leaf] + state.error[leaf]
    np.testing.assert_allclose(out2[leaf], _compress(c, p), rtol=1e-6)


@pytest.mark.parametrize("method", ["all_gather", "two_stage"])
def test_error_feedback_over_simulated_workers(method):
  c = bc.grouped_sign(4)
  n = 4
  tx = optax.chain(optax.sgd(0.1), bc.error_feedback(c, axis_name="workers", method=method))
  workers = bc.simulate(tx, n)
  params = jnp.zeros((50,))
  state = workers.init(params)
  grads = jax.random.normal(jax.random.key(2), (n, 50))
  updates, state = jax.jit(workers.update)(grads, state, params)
  assert updates.shape == (50,) and bool(jnp.all(jnp.isfinite(updates)))
  if method == "all_gather":  # the mean of the workers' messages
    msgs = jnp.stack([_compress(c, -0.1 * grads[i]) for i in range(n)])
    np.testing.assert_allclose(updates, msgs.mean(0), rtol=1e-6, atol=1e-7)
