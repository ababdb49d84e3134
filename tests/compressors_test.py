"""Interface tests parametrised over every operator: round trips, wire sizes, dtypes, edge
inputs, invalid arguments, and jit / vmap / shard_map."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CORE
from conftest import REPRESENTATIVES
from conftest import registry_params
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P

import biased_compression as bc

REGISTRY = bc.standard_compressors()
NAMES = sorted(REGISTRY)
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
# The registry's dtype sweeps: float32 by default, half precision in the full run (the
# quantisers' half-precision paths run by default in edge_values_test).
SWEPT_DTYPES = [DTYPES[0], *(pytest.param(t, marks=pytest.mark.slow) for t in DTYPES[1:])]
KEY = jax.random.key(42)
# The sweeps over the registry run every entry in the full run; by default one entry per family
# for the round trips and the key checks, the CORE five for the other sweeps (conftest.py).
SWEEP = registry_params(NAMES)
CORE_SWEEP = registry_params(NAMES, fast=CORE)

# Operators whose output can exceed max|x| (unbiased rescaling by d/k, a norm as the level
# scale): for them, inputs near the float maximum have no representable C(x).
AMPLIFYING = {
  "rand_k",
  "rand_k_shared",
  "induced",
  "compose_unbiased",
  "compose_dense",
  "standard_dithering",
  "standard_dithering_inf",
  "natural_dithering",
  "natural_dithering_l1",
  "top_k_natural_dithering",
  "contractive_top_k_nd",
}


@functools.cache
def _jitted(c):
  """One jitted compress / encode / decode per compressor, so shapes reuse compilations."""
  compress = jax.jit(lambda x, key: c.compress(x, key=key))
  encode = jax.jit(lambda x, key: c.encode(x, key=key))
  decode = jax.jit(
    lambda p, key, shape, dtype: c.decode(p, shape, dtype, key=key), static_argnums=(2, 3)
  )
  return compress, encode, decode


def _compress(c, x, key=KEY):
  return _jitted(c)[0](x, key)


def _round_trip(c, x, key=KEY):
  _, encode, decode = _jitted(c)
  payload = encode(x, key)
  return payload, decode(payload, key, x.shape, jnp.dtype(x.dtype))


def test_representatives_are_registry_entries():
  assert set(CORE) <= set(REPRESENTATIVES) <= set(NAMES)


@pytest.mark.parametrize("name", SWEEP)
@pytest.mark.parametrize("dtype", SWEPT_DTYPES, ids=lambda t: jnp.dtype(t).name)
def test_round_trip_bits_and_dtype(name, dtype):
  c = REGISTRY[name]
  x = (jax.random.normal(jax.random.key(1), (3, 37)) * 3).astype(dtype)
  y = _compress(c, x)
  payload, y2 = _round_trip(c, x)
  assert y.shape == x.shape and y.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y2, np.float32))
  leaves = jax.tree_util.tree_leaves(payload)
  nbits = sum(8 * leaf.size * leaf.dtype.itemsize for leaf in leaves)
  assert nbits == c.payload_bits(x.size, dtype)
  if dtype == jnp.float32:
    assert nbits == c.bits(x.size)
  assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))


@pytest.mark.parametrize("name", CORE_SWEEP)
def test_payload_shapes_depend_only_on_size(name):
  c = REGISTRY[name]
  shapes = []
  for seed in range(3):
    x = jax.random.normal(jax.random.key(seed), (50,)) * (seed + 1) ** 3
    payload = _jitted(c)[1](x, jax.random.key(seed))
    shapes.append(jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), payload))
  assert shapes[0] == shapes[1] == shapes[2]


@pytest.mark.parametrize("name", CORE_SWEEP)
def test_zeros_give_zeros(name):
  c = REGISTRY[name]
  y = _compress(c, jnp.zeros((64,)))
  if name == "sign":
    # One bit per coordinate cannot say 0: sign(0) is +1 (documented).
    np.testing.assert_array_equal(np.asarray(y), np.ones(64))
  else:
    np.testing.assert_array_equal(np.asarray(y), np.zeros(64))


@pytest.mark.parametrize("name", CORE_SWEEP)
@pytest.mark.parametrize("shape", [(1,), (), (1, 1)])
def test_single_element(name, shape):
  c = REGISTRY[name]
  x = jnp.full(shape, -2.5)
  y = _compress(c, x)
  assert y.shape == shape
  assert bool(jnp.all(jnp.isfinite(y)))
  assert c.bits(1) == c.payload_bits(1)


@pytest.mark.parametrize("name", CORE_SWEEP)
def test_subnormal_inputs_stay_finite(name):
  c = REGISTRY[name]
  tiny = np.finfo(np.float32).smallest_subnormal
  x = jnp.asarray(np.array([tiny, -3 * tiny, 1e-40, 0.0, -1e-39] * 4, np.float32))
  y = _compress(c, x)
  assert bool(jnp.all(jnp.isfinite(y)))
  assert float(jnp.max(jnp.abs(y))) <= 2.0**-120 or name == "sign"


@pytest.mark.parametrize("name", CORE_SWEEP)
def test_large_inputs_do_not_overflow_norms(name):
  # ||x||_2 is representable but the sum of squares (1e72) is not.
  c = REGISTRY[name]
  x = jnp.asarray(np.linspace(-1e36, 1e36, 64, dtype=np.float32))
  y = _compress(c, x)
  assert bool(jnp.all(jnp.isfinite(y))), y


@pytest.mark.parametrize("name", registry_params(sorted(set(NAMES) - AMPLIFYING), fast=CORE))
@pytest.mark.parametrize("dtype", SWEPT_DTYPES, ids=lambda t: jnp.dtype(t).name)
def test_near_max_inputs_stay_finite(name, dtype):
  c = REGISTRY[name]
  big = float(jnp.finfo(dtype).max)
  x = jnp.asarray(np.array([0.99, -0.9, 0.75, 0.6, -0.51, 0.5] * 8) * big).astype(dtype)
  y = _compress(c, x)
  assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32)))), (y, x)


def test_cast_saturates():
  y = bc.cast(jnp.float16).compress(jnp.array([1e5, -1e6, 3.0]))
  np.testing.assert_array_equal(np.asarray(y), [65504.0, -65504.0, 3.0])


@pytest.mark.parametrize(
  "name,expect",
  [
    ("top_k", "nan_kept"),
    ("natural_compression", "nan_kept"),
    ("exponential_rounding_b4", "nan_kept"),
    ("standard_dithering", "all_nan"),
    ("natural_dithering", "all_nan"),
    ("scaled_sign", "all_nan"),
    ("identity", "nan_kept"),
    ("sign", "finite"),
  ],
)
def test_non_finite_inputs(name, expect):
  c = REGISTRY[name]
  x = jnp.arange(1.0, 41.0).at[3].set(jnp.nan).at[7].set(jnp.inf)
  y = np.asarray(_compress(c, x))
  if expect == "nan_kept":
    assert np.isnan(y[3]) and not np.isfinite(y[7])
    assert np.isfinite(np.delete(y, [3, 7])).all()
  elif expect == "all_nan":
    assert np.isnan(y).all()
  else:
    assert np.isfinite(y).all()


@pytest.mark.parametrize("name", SWEEP)
def test_random_operators_need_a_key(name):
  c = REGISTRY[name]
  x = jnp.linspace(-1.0, 1.0, 16)
  if c.needs_key:
    with pytest.raises(ValueError, match="key"):
      c.compress(x)
  else:
    np.testing.assert_array_equal(c.compress(x), c.compress(x, key=jax.random.key(7)))


@pytest.mark.parametrize(
  "name", registry_params([n for n in NAMES if REGISTRY[n].needs_key], fast=CORE)
)
def test_keys_change_the_draw_and_fix_it(name):
  c = REGISTRY[name]
  x = jax.random.normal(jax.random.key(0), (256,))
  a = _compress(c, x, jax.random.key(1))
  b = _compress(c, x, jax.random.key(1))
  z = _compress(c, x, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, z)


def test_shared_indices_decode_needs_the_key():
  c = bc.rand_k(0.25, shared_indices=True)
  x = jnp.arange(16.0)
  payload = c.encode(x, key=KEY)
  with pytest.raises(ValueError, match="key"):
    c.decode(payload, x.shape, x.dtype)
  # Values only on the wire; linear in x for one shared key.
  assert set(payload) == {"values"}
  y1, y2 = c.compress(x, key=KEY), c.compress(2 * x + 1, key=KEY)
  np.testing.assert_allclose(c.compress(3 * x + 1, key=KEY), y1 + y2, rtol=1e-6)


@pytest.mark.parametrize("k", [4, 5, 100])
def test_k_at_least_d_is_identity_for_top_k(k):
  x = jnp.array([1.0, -2.0, 3.0, 0.5])
  c = bc.top_k(k=k)
  np.testing.assert_array_equal(c.compress(x), x)
  assert c.bits(4) == 4 * 32  # values only, no indices


def test_top_k_values_and_ties():
  x = jnp.array([0.5, -3.0, 2.0, -2.0, 2.0, 0.0])
  np.testing.assert_array_equal(bc.top_k(k=2).compress(x), [0, -3, 2, 0, 0, 0])
  assert bc.top_k(0.5).bits(6) == 3 * (32 + 8)
  # Index dtypes: narrowest unsigned type holding d - 1.
  assert bc.top_k(k=1).encode(jnp.ones(256))["indices"].dtype == jnp.uint8
  assert bc.top_k(k=1).encode(jnp.ones(257))["indices"].dtype == jnp.uint16
  assert bc.top_k(k=1).encode(jnp.ones(65537))["indices"].dtype == jnp.uint32


def test_ratio_rounding_per_leaf():
  c = bc.top_k(0.1)
  assert c.encode(jnp.ones(3))["values"].shape == (1,)  # max(1, round(0.3))
  assert c.encode(jnp.ones(25))["values"].shape == (2,)  # round(2.5) = 2
  assert c.encode(jnp.ones(35))["values"].shape == (4,)


@pytest.mark.parametrize(
  "d,k",
  [
    (10, 3),
    pytest.param(1000, 10, marks=pytest.mark.slow),
    (1000, 240),
    pytest.param(1000, 600, marks=pytest.mark.slow),
    (64, 63),
  ],
)  # by default a small, a large and an almost-full k
def test_rand_k_indices_are_distinct(d, k):
  c = bc.rand_k(k=k, unbiased=False)
  for seed in range(5):
    payload = _jitted(c)[1](jnp.ones(d), jax.random.key(seed))
    idx = np.asarray(payload["indices"])
    assert len(np.unique(idx)) == k and idx.max() < d


def test_wire_widths():
  d = 1000
  assert bc.sign().bits(d) == d
  assert bc.scaled_sign().bits(d) == 32 + d
  assert bc.natural_compression().bits(d) == 9 * d
  assert bc.standard_dithering(7).bits(d) == 32 + 4 * d  # sign + 3 level bits
  assert bc.natural_dithering(8).bits(d) == 32 + 5 * d  # sign + 4 level bits
  assert bc.natural_dithering(1).bits(d) == 32 + 2 * d
  assert bc.rand_k(k=10, shared_indices=True).bits(d) == 320
  assert bc.rand_k(k=10).bits(d) == 10 * (32 + 16)
  assert bc.cast(jnp.bfloat16).bits(d) == 16 * d
  assert bc.top_k_natural_dithering(k=16, levels=7).bits(d) == 16 * 16 + 32 + 16 * 4
  assert bc.induced(bc.top_k(k=10), bc.rand_k(k=5)).bits(d) == 10 * 48 + 5 * 48


# -- invalid arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
  "make,match",
  [
    (lambda: bc.top_k(0.0), "ratio"),
    (lambda: bc.top_k(1.5), "ratio"),
    (lambda: bc.top_k(-0.1), "ratio"),
    (lambda: bc.top_k(k=0), "k"),
    (lambda: bc.top_k(k=-3), "k"),
    (lambda: bc.top_k(0.1, k=3), "exactly one"),
    (lambda: bc.top_k(), "exactly one"),
    (lambda: bc.rand_k(2.0), "ratio"),
    (lambda: bc.rand_k(k=0), "k"),
    (lambda: bc.top_k_natural_dithering(0.0), "ratio"),
    (lambda: bc.top_k_natural_dithering(0.1, levels=0), "levels"),
    (lambda: bc.standard_dithering(0), "levels"),
    (lambda: bc.natural_dithering(0), "levels"),
    (lambda: bc.natural_dithering(65), "levels"),
    (lambda: bc.standard_dithering(4, norm=0.5), "norm"),
    (lambda: bc.exponential_rounding(1.0), "base"),
    (lambda: bc.exponential_rounding(0.5), "base"),
    (lambda: bc.exponential_rounding(math.inf), "base"),
    (lambda: bc.cast(jnp.int32), "dtype"),
    (lambda: bc.induced(bc.sign(), bc.rand_k(0.1)), "contractive"),
    (lambda: bc.induced(bc.top_k(0.1), bc.top_k(0.1)), "unbiased"),
    (lambda: bc.contractive(bc.sign()), "compressor"),
    (lambda: bc.scaled(bc.top_k(0.1), 0.0), "factor"),
    (lambda: bc.scaled(bc.top_k(0.1), -1.0), "factor"),
  ],
)
def test_invalid_arguments_raise_value_error(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize(
  "make,match",
  [
    (lambda: bc.top_k("0.1"), "ratio"),
    (lambda: bc.top_k(k=2.5), "k"),
    (lambda: bc.standard_dithering(2.5), "levels"),
    (lambda: bc.compose(bc.sign(), "top_k"), "inner"),
  ],
)
def test_wrong_types_raise_type_error(make, match):
  with pytest.raises(TypeError, match=match):
    make()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
def test_non_float_input_raises(name, dtype):
  with pytest.raises(TypeError, match="x must have dtype float32, bfloat16, float16, got"):
    REGISTRY[name].compress(jnp.ones(8, dtype), key=KEY)


def test_float64_under_x64_names_the_dtype():
  with jax.enable_x64(True):
    with pytest.raises(TypeError, match="got float64 .jax_enable_x64 is on: cast x to float32"):
      bc.top_k(k=1).compress(jnp.ones(8, jnp.float64))


def test_an_int_ratio_is_refused_with_advice():
  """top_k(1) meant Top-1 but would keep everything (ratio 1): refuse it, suggest k=1."""
  for make in (bc.top_k, bc.rand_k):
    with pytest.raises(TypeError, match="got the int 1: .* pass k=1, .* pass ratio=1.0"):
      make(1)
  assert bc.top_k(1.0).num_values(10) == 10 and bc.top_k(k=1).num_values(10) == 1


@pytest.mark.parametrize("key", [0, 3.0, "key", jnp.zeros((), jnp.int32)], ids=str)
def test_a_seed_is_not_a_key(key):
  with pytest.raises(TypeError, match="key must be a JAX PRNG key .* got"):
    bc.rand_k(k=1).compress(jnp.ones(4), key=key)


def test_raw_and_typed_keys_agree():
  x = jnp.arange(1.0, 9.0)
  raw = bc.rand_k(k=2).compress(x, key=jax.random.PRNGKey(3))
  typed = bc.rand_k(k=2).compress(x, key=jax.random.wrap_key_data(jax.random.PRNGKey(3)))
  np.testing.assert_array_equal(raw, typed)


@pytest.mark.parametrize(
  "name",
  [
    "top_k",
    "induced",  # by default a sparse and a composite payload, the three others in the full run
    pytest.param("scaled_sign", marks=pytest.mark.slow),
    pytest.param("natural_dithering", marks=pytest.mark.slow),
    pytest.param("top_k_natural_dithering", marks=pytest.mark.slow),
  ],
)
def test_decode_refuses_a_payload_of_another_size(name):
  c = REGISTRY[name]
  payload = jax.jit(lambda x: c.encode(x, key=KEY))(jnp.ones(100))
  with pytest.raises(ValueError, match="does not come from a 200-element float32 input"):
    c.decode(payload, (200,), jnp.float32, key=KEY)
  # any shape of the same size is fine
  assert c.decode(payload, (10, 10), jnp.float32, key=KEY).shape == (10, 10)


# -- transformations ------------------------------------------------------------------------


@pytest.mark.parametrize("name", CORE_SWEEP)
def test_vmap_equals_loop(name):
  c = REGISTRY[name]
  xs = jax.random.normal(jax.random.key(3), (4, 40))
  keys = jax.random.split(jax.random.key(4), 4)
  batched = jax.jit(jax.vmap(lambda x, k: c.compress(x, key=k)))(xs, keys)
  for i in range(4):
    np.testing.assert_allclose(batched[i], _compress(c, xs[i], keys[i]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  "name",
  [
    "top_k",
    "rand_k",
    "natural_dithering",
    # the other three in the full run (collectives_test runs shard_map by default too)
    pytest.param("scaled_sign", marks=pytest.mark.slow),
    pytest.param("top_k_natural_dithering", marks=pytest.mark.slow),
    pytest.param("induced", marks=pytest.mark.slow),
  ],
)
def test_shard_map_equals_per_device(name):
  c = REGISTRY[name]
  n = jax.device_count()
  assert n == 8, "tests/conftest.py should give 8 CPU devices"
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = jax.sharding.NamedSharding(mesh, P("data"))
  xs_host = jax.random.normal(jax.random.key(5), (n, 64))
  keys_host = jax.random.split(jax.random.key(6), n)
  xs, keys = jax.device_put((xs_host, keys_host), sharding)

  def per_device(x, key):
    payload = c.encode(x[0], key=key[0])
    y = c.decode(payload, x.shape[1:], x.dtype, key=key[0])
    return y[None]

  f = jax.jit(
    jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data"))
  )
  out = np.asarray(f(xs, keys))
  for i in range(n):
    expected = _compress(c, xs_host[i], keys_host[i])
    np.testing.assert_allclose(out[i], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_name_rebuilds_the_operator(name):
  c = REGISTRY[name]
  assert eval(c.name, {"bc": bc, "jnp": jnp, "math": math, **vars(bc)}) == c


def test_compressors_are_hashable_and_static():
  c1, c2 = bc.top_k(0.1), bc.top_k(0.1)
  assert c1 == c2 and hash(c1) == hash(c2)
  assert len({bc.natural_dithering(3), bc.natural_dithering(3), bc.natural_dithering(4)}) == 2
  f = jax.jit(lambda x, c: c.compress(x), static_argnums=1)
  np.testing.assert_array_equal(f(jnp.arange(10.0), c1), c2.compress(jnp.arange(10.0)))


# -- properties -----------------------------------------------------------------------------

_BOUND = float(np.float32(1e30))
_finite32 = st.floats(-_BOUND, _BOUND, allow_nan=False, allow_infinity=False, width=32)


# The two property tests draw from the whole registry, a compilation per drawn shape: a
# full-run sweep (the fixed-input tests above check the representatives by default).
@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(
  name=st.sampled_from(NAMES),
  values=st.lists(_finite32, min_size=1, max_size=48),
  seed=st.integers(0, 2**31 - 1),
)
def test_finite_inputs_give_finite_outputs_and_round_trip(name, values, seed):
  c = REGISTRY[name]
  x = jnp.asarray(np.asarray(values, np.float32))
  key = jax.random.key(seed)
  y = _compress(c, x, key)
  payload, y2 = _round_trip(c, x, key)
  assert bool(jnp.all(jnp.isfinite(y)))
  np.testing.assert_array_equal(y, y2)
  assert c.bits(x.size) == c.payload_bits(x.size)


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(
  shape=st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple),
  name=st.sampled_from(NAMES),
)
def test_any_shape(name, shape):
  c = REGISTRY[name]
  x = jax.random.normal(jax.random.key(len(shape)), shape)
  y = _compress(c, x)
  assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("name", CORE_SWEEP)
def test_empty_input_gives_an_empty_output(name):
  c = REGISTRY[name]
  for shape in [(0,), (3, 0)]:
    y = jax.jit(lambda x: c.compress(x, key=KEY))(jnp.zeros(shape))
    assert y.shape == shape and y.dtype == jnp.float32
  assert c.payload_bits(0) == c.bits(0)
