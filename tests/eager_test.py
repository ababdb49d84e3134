"""Eager calls: outside a trace, compress / encode / decode run a cached jitted copy of the
operator (one compilation per shape and dtype), give the jitted results bit for bit, and
check their arguments before anything is compiled."""

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPRESENTATIVES

import biased_compression as bc
from biased_compression.compressors import _base

REGISTRY = bc.standard_compressors()
NAMES = sorted(REGISTRY)
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
# Five shapes against three dtypes: rotating both over the registry gives every pair to at
# least one operator (every operator in every pair would cost 450 cases of 4 compilations).
SHAPES = [(37,), (3, 5, 8), (0,), (), (2, 0, 3)]
KEY = jax.random.key(42)

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def _compilations():
  """Collects the names of the XLA programs compiled inside the block.

  JAX records one backend-compile event per program it hands to XLA (an in-memory cache hit
  records none; a persistent-cache hit still records one), with the jitted function's name.
  Counting these public `jax.monitoring` events checks compilations themselves, where jit's
  private ``_cache_size`` would only count cache entries. Tests run one at a time in a
  process (xdist uses processes), so no other test's compilations land in the list.
  """
  names = []

  def listener(event, duration, **kwargs):
    del duration
    if event == _COMPILE_EVENT:
      names.append(str(kwargs.get("fun_name", "")))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def _eager_compiles(names, method):
  return sum(f"eager_{method}" in name for name in names)


def _assert_same_bits(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert (a.dtype, a.shape) == (b.dtype, b.shape)
  assert a.tobytes() == b.tobytes()


def _input(shape, dtype, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


@pytest.mark.parametrize(
  "i",
  [
    pytest.param(i, id=n, marks=() if n in REPRESENTATIVES else pytest.mark.slow)
    for i, n in enumerate(NAMES)
  ],
)
def test_eager_equals_jit_and_compiles_once(i):
  c = REGISTRY[NAMES[i]]
  shape, dtype = SHAPES[i % len(SHAPES)], jnp.dtype(DTYPES[i % len(DTYPES)])
  x = _input(shape, dtype)
  # Fresh jitted copies, so that earlier tests in this process do not hide the compilation.
  _base._jit_methods.cache_clear()
  with _compilations() as first:
    y = c.compress(x, key=KEY)
  with _compilations() as second:
    y_again = c.compress(x, key=KEY)
  assert _eager_compiles(first, "compress") == 1, first
  assert second == []
  _assert_same_bits(y_again, y)

  payload = c.encode(x, key=KEY)
  decoded = c.decode(payload, shape, dtype, key=KEY)
  reference = jax.jit(
    lambda x, p, k: (
      c.compress(x, key=k),
      c.encode(x, key=k),
      c.decode(p, shape, dtype, key=k),
    )
  )
  y_ref, payload_ref, decoded_ref = reference(x, payload, KEY)
  _assert_same_bits(y, y_ref)
  assert jax.tree.structure(payload) == jax.tree.structure(payload_ref)
  jax.tree.map(_assert_same_bits, payload, payload_ref)
  _assert_same_bits(decoded, decoded_ref)
  assert decoded.shape == shape and decoded.dtype == dtype


def test_a_new_shape_or_dtype_compiles_once_more():
  c = bc.natural_dithering(3)
  x, x_long, x_half = _input(300, jnp.float32), _input(301, jnp.float32), _input(300, jnp.float16)
  _base._jit_methods.cache_clear()
  with _compilations() as names:
    c.compress(x, key=KEY)
  assert _eager_compiles(names, "compress") == 1
  for new in (x_long, x_half):
    with _compilations() as names:
      c.compress(new, key=KEY)
    assert _eager_compiles(names, "compress") == 1
  # Back to a known shape, with an equal operator built anew: the cache is keyed on equality.
  with _compilations() as names:
    bc.natural_dithering(3).compress(x, key=KEY)
    bc.natural_dithering(3).compress(x_long, key=KEY)
  assert names == []

  payload = c.encode(x, key=KEY)
  c.decode(payload, (300,), jnp.float32, key=KEY)
  with _compilations() as names:
    c.decode(payload, (300,), jnp.float32, key=KEY)
    c.encode(x, key=KEY)
  assert names == []
  with _compilations() as names:
    c.decode(payload, (10, 30), jnp.float32, key=KEY)  # shape is static for decode
  assert _eager_compiles(names, "decode") == 1


_SHARED = bc.rand_k(0.25, shared_indices=True)
_DTYPE_ERROR = "x must have dtype float32, bfloat16, float16, got int32"
_NO_KEY = "is a random operator and needs a key"
# name: (the call, what it gets, the error, its message as the tests of compressors_test match it)
_ERRORS = {
  "compress_int": (lambda x: bc.top_k(0.1).compress(x), "int", TypeError, _DTYPE_ERROR),
  "encode_int": (
    lambda x: bc.natural_dithering(3).encode(x, key=KEY),
    "int",
    TypeError,
    _DTYPE_ERROR,
  ),
  "compress_no_key": (lambda x: bc.rand_k(k=2).compress(x), "float", ValueError, _NO_KEY),
  "encode_no_key": (lambda x: bc.natural_dithering(3).encode(x), "float", ValueError, _NO_KEY),
  "compress_int_seed": (
    lambda x: bc.rand_k(k=2).compress(x, key=0),
    "float",
    TypeError,
    "key must be a JAX PRNG key .* got 0; an int seed is not a key",
  ),
  "compress_int_seed_deterministic": (
    lambda x: bc.sign().compress(x, key=0),
    "float",
    TypeError,
    "key must be a JAX PRNG key",
  ),
  "decode_int_dtype": (
    lambda p: bc.top_k(0.1).decode(p, (16,), jnp.int32),
    "top_k_payload",
    TypeError,
    "decode: dtype must be one of float32, bfloat16, float16, got int32",
  ),
  "decode_other_size": (
    lambda p: bc.top_k(0.1).decode(p, (300,), jnp.float32),
    "top_k_payload",
    ValueError,
    "does not come from a 300-element float32 input",
  ),
  "decode_shared_no_key": (
    lambda p: _SHARED.decode(p, (16,), jnp.float32),
    "shared_payload",
    ValueError,
    "key",
  ),
}


@pytest.mark.parametrize("case", sorted(_ERRORS))
def test_errors_are_raised_eagerly_before_compiling(case):
  fn, arg, error, match = _ERRORS[case]
  x = jnp.linspace(-1.0, 1.0, 16)
  arg = {
    "float": x,
    "int": jnp.arange(16, dtype=jnp.int32),
    "top_k_payload": bc.top_k(0.1).encode(x),
    "shared_payload": _SHARED.encode(x, key=KEY),
  }[arg]
  with _compilations() as names:
    with pytest.raises(error, match=match):
      fn(arg)
  assert names == []
  # The same error and message as on the traced path, which is the code of old eager calls.
  errors = []
  for run in (fn, jax.jit(fn)):
    with pytest.raises(error) as info:
      run(arg)
    errors.append(str(info.value))
  assert errors[0] == errors[1]


def test_float64_under_x64_is_refused_eagerly():
  with jax.enable_x64(True):
    x = jnp.ones(8, jnp.float64)
    with _compilations() as names:
      with pytest.raises(TypeError, match="got float64 .jax_enable_x64 is on: cast x to float32"):
        bc.top_k(k=1).compress(x)
    assert names == []


_C3 = bc.top_k(k=3)
_TRACED = {
  "jit": (jax.jit(lambda x, k: _C3.compress(x, key=k)), (jnp.arange(8.0), KEY)),
  "vmap": (
    jax.vmap(lambda x, k: _C3.compress(x, key=k)),
    (jnp.arange(16.0).reshape(2, 8), jax.random.split(KEY, 2)),
  ),
  "grad": (jax.grad(lambda x: _C3.compress(x).sum()), (jnp.arange(8.0),)),
  # x is a constant and only the key is traced: still the direct path.
  "vmap_key": (
    jax.vmap(lambda k: _C3.compress(jnp.arange(8.0), key=k)),
    (jax.random.split(KEY, 2),),
  ),
  "encode_decode": (
    jax.jit(lambda x, k: _C3.decode(_C3.encode(x, key=k), (8,), jnp.float32, key=k)),
    (jnp.arange(8.0), KEY),
  ),
}


@pytest.mark.parametrize("case", sorted(_TRACED))
def test_traced_calls_run_the_implementation_directly(case):
  fn, args = _TRACED[case]
  assert "eager_" not in str(jax.make_jaxpr(fn)(*args))


def test_concrete_arguments_inside_a_trace_give_the_eager_result():
  """Under an outer jit, constants are not tracers: the call nests the cached jit, which is
  still correct."""
  c = bc.natural_dithering(3)
  x = _input(50, jnp.float32)
  _assert_same_bits(jax.jit(lambda: c.compress(x, key=KEY))(), c.compress(x, key=KEY))


def test_numpy_lists_and_raw_keys_work_eagerly():
  c = bc.rand_k(k=3)
  x = np.linspace(-1.0, 1.0, 10, dtype=np.float32)
  raw = jax.random.PRNGKey(3)
  typed = jax.random.wrap_key_data(raw)
  expected = jax.jit(lambda x, k: c.compress(x, key=k))(x, raw)
  for x_in in (x, list(x), jnp.asarray(x)):
    for key in (raw, typed, np.asarray(raw)):
      _assert_same_bits(c.compress(x_in, key=key), expected)
  payload = c.encode(list(x), key=raw)
  numpy_payload = jax.tree.map(np.asarray, payload)
  _assert_same_bits(c.decode(numpy_payload, [10], np.float32, key=typed), expected)
  # A deterministic operator takes key=None, or a key that it ignores.
  s = bc.scaled_sign()
  _assert_same_bits(s.compress(x), s.compress(x, key=typed))


@dataclasses.dataclass  # eq without frozen: __hash__ is None, so no cache entry is possible
class _Halve(bc.Compressor):
  scale: float = 0.5

  def _encode(self, x, key):
    del key
    return {"values": x * self.scale}

  def _decode(self, payload, d, dtype, key):
    del d, key
    return payload["values"].astype(dtype)

  def bits(self, d):
    return 32 * d


def test_an_unhashable_compressor_encodes_op_by_op():
  """Without a hash there is no cache entry: encode runs the implementation as before.

  (decode and compress need a hashable compressor anyway: the payload check caches the
  expected payload shapes per compressor.)
  """
  c = _Halve()
  x = _input((4, 3), jnp.float32)
  with pytest.raises(TypeError):
    hash(c)
  _assert_same_bits(c.encode(x)["values"], jax.jit(lambda x: c.encode(x))(x)["values"])
