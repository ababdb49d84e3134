"""The `Compressor` interface, the compressor classes B1, B2, B3 and U, and shared helpers.

Classes (Beznosikov, Horvath, Richtarik, Safaryan, 2023), for a random map C on R^d with
expectations over its own randomness:

* U(omega): E C(x) = x and E||C(x) - x||^2 <= omega ||x||^2.
* B1(alpha, beta): alpha ||x||^2 <= E||C(x)||^2 <= beta <E C(x), x>.
* B2(gamma, beta): max(gamma ||x||^2, E||C(x)||^2 / beta) <= <E C(x), x>.
* B3(delta), delta >= 1: E||C(x) - x||^2 <= (1 - 1/delta) ||x||^2.

The B1 and B2 forms are those of Beznosikov et al. (2023, arXiv:2002.12410, Definitions 1
to 3) as recalled, not checked against the paper's printed text (only its abstract was
available); every conversion below is proved from these forms, and the Monte-Carlo tests
(tests/statistics_test.py) check each operator's B2 constants as stated here.

Every compressor states its constants natively in B2 (and U when unbiased). The others follow
from one-line conversions, each proved from the definitions:

* U(omega) is in B2(1, 1 + omega) and B1(1, 1 + omega) (E||C||^2 >= ||E C||^2 = ||x||^2).
* B1(alpha, beta) is in B2(alpha / beta, beta); B2(gamma, beta) is in B1(gamma^2, beta).
* B3(delta) is in B2(1 / (2 delta), 2).
* B2(gamma, beta) with beta < 2 is in B3(1 / ((2 - beta) gamma)), because
  E||C - x||^2 = E||C||^2 - 2<E C, x> + ||x||^2 <= ||x||^2 - (2 - beta) <E C, x>.
* lambda C is in B2(lambda gamma, lambda beta); with lambda = 1 / beta this gives the
  paper's C / beta in B3(beta / gamma), and for unbiased C, C / (1 + omega) in B3(1 + omega).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "Compressor",
  "ClassConstants",
  "class_constants",
  "b1_constants",
  "b2_constants",
  "b3_constants",
]

Payload = Any  # a pytree of arrays whose shapes depend only on the input size

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class Compressor(abc.ABC):
  """A compression operator C: R^d -> R^d with a wire format and known constants.

  Compressors are immutable and hashable (frozen dataclasses), so they can be closed over in
  jitted functions and used as static arguments. They act on one array (a pytree leaf) of any
  shape, seen as a vector of ``d = x.size`` coordinates; the result has the input's shape and
  dtype. All methods work under ``jax.jit``, ``jax.vmap`` and inside ``jax.shard_map``.

  Writing a compressor: a subclass (a frozen dataclass) implements the wire format,
  ``_encode(x, key) -> payload`` and ``_decode(payload, d, dtype, key) -> x`` on 1-D arrays
  (`encode`, `decode` and `compress` check the arguments and call them), ``bits(d)``, and
  its constants: ``omega`` for an unbiased operator, else ``delta`` or the native classes
  ``native_b2`` / ``native_b1``. The constants are read with `b1`, `b2`, `b3` (or
  `class_constants`), which convert between the classes where the native ones are missing.
  A sparsifier derives from `biased_compression.Sparsifier` instead.

  Attributes:
    unbiased: whether E C(x) = x for every x.
    needs_key: whether the operator is random (``compress`` and ``encode`` then require a key).
    linear: whether decoding the element-wise sum of payloads gives the sum of the decoded
      messages (so an all-reduce can sum payloads: ``method="psum"``).
    shared_randomness: whether the receiver regenerates the randomness from the key instead
      of receiving it (so every worker must use the same key, and decoding needs it).
    sign_valued: whether C(x) = sign(x) (values in {-1, +1}, no scale), so that C of the
      workers' mean is their majority vote (``method="majority_vote"``).

  The collectives read these flags, never the class: a new operator (or a wrapper, which
  forwards them) gets the methods its flags allow.
  """

  unbiased: bool = False
  needs_key: bool = False
  linear: bool = False
  shared_randomness: bool = False
  sign_valued: bool = False

  # -- the wire format -------------------------------------------------------------------

  @abc.abstractmethod
  def _encode(self, x: jax.Array, key: jax.Array | None) -> Payload:
    """Encodes a 1-D array in one of the supported dtypes."""

  @abc.abstractmethod
  def _decode(self, payload: Payload, d: int, dtype: jnp.dtype, key: jax.Array | None):
    """Decodes to a 1-D array of ``d`` elements of ``dtype``."""

  @abc.abstractmethod
  def bits(self, d: int) -> int:
    """Bits on the wire for a float32 leaf of ``d`` elements (payload padding included)."""

  def encode(self, x: jax.Array, *, key: jax.Array | None = None) -> Payload:
    """Encodes ``x`` into a payload: a pytree of arrays whose shapes depend only on x.size.

    Args:
      x: a float32, bfloat16 or float16 array of any shape.
      key: a JAX PRNG key; required by random operators, ignored by deterministic ones.

    Returns:
      The payload; ``decode(payload, x.shape, x.dtype)`` equals ``compress(x)``.
    """
    x = _as_array(x)
    traced = _traced(x, key)
    x = check_input(x, self)
    key = self._check_key(key)
    if not traced and (fns := _eager_fns(self)) is not None:
      return fns.encode(x, key)
    return self._encode(x.reshape(-1), key)

  def decode(
    self,
    payload: Payload,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    key: jax.Array | None = None,
  ) -> jax.Array:
    """Decodes a payload made by `encode` back into an array of ``shape`` and ``dtype``.

    ``key`` is needed only by operators whose receiver regenerates randomness instead of
    receiving it (rand-k with shared indices); it must be the key given to `encode`.
    """
    shape = tuple(shape)
    dtype = jnp.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
      raise TypeError(f"{self.name}.decode: dtype must be one of {_dtype_names()}, got {dtype}")
    d = math.prod(shape)
    _check_payload(self, payload, d, dtype)
    # A key that is not one is left to the implementation, which ignores it or fails as before.
    if (key is None or _is_key(key)) and not _traced(payload, key):
      if (fns := _eager_fns(self)) is not None:
        return fns.decode(payload, key, shape, dtype)
    return self._decode(payload, d, dtype, key).reshape(shape)

  def compress(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    """Returns C(x), with the shape and dtype of ``x``; equals ``decode(encode(x))``.

    Called outside a trace (no argument is a tracer), `compress`, `encode` and `decode` check
    their arguments and then run a jitted copy of themselves, cached per compressor and
    compiled once per shape and dtype, so that eager calls cost what jitted ones do and give
    the same bits. Inside ``jax.jit``, ``vmap``, ``grad`` or ``shard_map`` they are traced
    into the caller's program.
    """
    x = _as_array(x)
    if not _traced(x, key):
      x = check_input(x, self)
      self._check_key(key)
      if (fns := _eager_fns(self)) is not None:
        return fns.compress(x, key)
    payload = self.encode(x, key=key)
    return self.decode(payload, jnp.shape(x), jnp.result_type(x), key=key)

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
    return self.compress(x, key=key)

  def payload_bits(self, d: int, dtype: Any = jnp.float32) -> int:
    """Bits of the payload actually produced for a ``d``-element leaf of ``dtype``.

    Read from the payload's shapes (``jax.eval_shape``, nothing is computed). For float32
    it equals ``bits(d)``; for bfloat16 and float16 it is smaller where values travel in the
    input dtype.
    """
    _, arrays = payload_arrays(self, d, jnp.dtype(dtype))
    return sum(8 * math.prod(shape) * t.itemsize for shape, t in arrays)

  def for_chunks(self, d: int, n: int) -> Compressor:
    """The compressor applied to each of the n chunks of a d-element message (two_stage).

    ``method="two_stage"`` splits a worker's message into n equal chunks and compresses each
    one on its own. This returns the operator each chunk gets, chosen so that the worker's
    whole message keeps the meaning of the compressor's parameters: a sparsifier keeps
    k(d) values in total (k(d) / n per chunk), so k(d) must be a multiple of n. Operators
    that act coordinate by coordinate are unchanged; norm-based ones (scaled sign,
    dithering) take one norm per chunk, which their payload carries.

    Raises:
      ValueError: if no per-chunk operator keeps that meaning (e.g. k(d) not a multiple of
        n); the message says what to use instead.
    """
    del d, n
    return self

  # -- constants -------------------------------------------------------------------------

  def omega(self, d: int) -> float:
    """Variance parameter: E||C(x) - x||^2 <= omega ||x||^2; ``inf`` if not unbiased."""
    del d
    return math.inf

  def native_b2(self, d: int) -> tuple[float, float] | None:
    """The operator's own B2(gamma, beta) constants at ``d``, or None (a subclass hook).

    Read the constants with `b2` (or `class_constants`), which also converts from B3.
    """
    if self.unbiased:
      return (1.0, 1.0 + self.omega(d))
    return None

  def native_b1(self, d: int) -> tuple[float, float] | None:
    """The operator's own B1(alpha, beta) constants, or None (a subclass hook; see `b1`)."""
    if self.unbiased:
      return (1.0, 1.0 + self.omega(d))
    return None

  def b1(self, d: int) -> tuple[float, float] | None:
    """(alpha, beta) with C in B1(alpha, beta) at ``d``: native, else converted from B2."""
    return b1_constants(self, d)

  def b2(self, d: int) -> tuple[float, float] | None:
    """(gamma, beta) with C in B2(gamma, beta) at ``d``: native, else from B3; or None."""
    return b2_constants(self, d)

  def b3(self, d: int) -> float:
    """delta with C in B3(delta) at ``d`` (the same as `delta`; ``inf`` if in no B3)."""
    return self.delta(d)

  def delta(self, d: int) -> float:
    """B3 constant: E||C(x) - x||^2 <= (1 - 1/delta) ||x||^2; ``inf`` if not contractive."""
    b2 = self.native_b2(d)
    if b2 is None:
      return math.inf
    gamma, beta = b2
    if beta >= 2.0 or gamma <= 0.0:
      return math.inf
    return 1.0 / ((2.0 - beta) * gamma)

  # -- helpers ---------------------------------------------------------------------------

  @property
  def name(self) -> str:
    """The factory call that builds this operator, e.g. ``top_k(ratio=0.01)``."""
    return repr(self)

  def _check_key(self, key):
    if self.needs_key and key is None:
      raise ValueError(
        f"{self.name} is a random operator and needs a key, e.g. key=jax.random.key(0)"
      )
    if key is not None and not _is_key(key):
      raise TypeError(
        f"{self.name}: key must be a JAX PRNG key such as jax.random.key(0) (or the uint32 "
        f"array of jax.random.PRNGKey(0)), got {key!r}; an int seed is not a key"
      )
    return key if self.needs_key else None


def _as_array(x):
  """Python lists and tuples as arrays: `check_input` reads the dtype, which they lack."""
  return jnp.asarray(x) if isinstance(x, (list, tuple)) else x


def _traced(*trees) -> bool:
  """Whether any leaf is a tracer, i.e. the call is being traced by jit, vmap, grad, scan..."""
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


class _EagerFns(NamedTuple):
  compress: Callable[..., jax.Array]
  encode: Callable[..., Payload]
  decode: Callable[..., jax.Array]


def _eager_fns(compressor: Compressor) -> _EagerFns | None:
  """The jitted methods that eager calls dispatch to, or None for an unhashable compressor.

  Run op by op, an operator dispatches dozens of small XLA computations per call (tenths of a
  second, seconds on the first call); jitted, it compiles once per input shape and dtype
  (jit's own cache) and then runs in microseconds. The methods run inside the jit on tracers,
  so they take the traced path and give the results of a user's own ``jax.jit``.
  """
  try:
    return _jit_methods(compressor)
  except TypeError:  # unhashable, e.g. a user's compressor that is not a frozen dataclass
    return None


@functools.lru_cache(maxsize=256)
def _jit_methods(compressor: Compressor) -> _EagerFns:
  def eager_compress(x, key):
    return compressor.compress(x, key=key)

  def eager_encode(x, key):
    return compressor.encode(x, key=key)

  def eager_decode(payload, key, shape, dtype):
    return compressor.decode(payload, shape, dtype, key=key)

  return _EagerFns(
    compress=jax.jit(eager_compress),
    encode=jax.jit(eager_encode),
    decode=jax.jit(eager_decode, static_argnums=(2, 3)),
  )


def _is_key(key) -> bool:
  """A typed PRNG key, or a raw uint32 key array (shape (..., 2) for threefry)."""
  dtype = getattr(key, "dtype", None)
  if dtype is None:
    return False
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return True
  return jnp.dtype(dtype) == jnp.uint32 and jnp.ndim(key) >= 1


@functools.lru_cache(maxsize=1024)
def payload_arrays(compressor: Compressor, d: int, dtype) -> tuple:
  """(treedef, ((shape, dtype), ...)) of the payload of a d-element input (cached)."""
  spec = jax.ShapeDtypeStruct((d,), dtype)
  key = jax.random.key(0) if compressor.needs_key else None
  out = jax.eval_shape(lambda x: compressor.encode(x, key=key), spec)
  leaves, treedef = jax.tree.flatten(out)
  return treedef, tuple((leaf.shape, jnp.dtype(leaf.dtype)) for leaf in leaves)


def _check_payload(compressor: Compressor, payload, d: int, dtype) -> None:
  """decode(payload, shape) must get the payload of a d-element input: else a clear error.

  The wire format does not carry d, so a payload whose arrays are the same for two sizes (a
  fixed k with indices of the same width, or bit planes of the same byte count) cannot be
  told apart; every other mismatch is caught here, at trace time.
  """
  treedef, shapes = payload_arrays(compressor, d, dtype)
  leaves, got_def = jax.tree.flatten(payload)
  got = tuple((jnp.shape(leaf), jnp.dtype(jnp.result_type(leaf))) for leaf in leaves)
  if got_def != treedef or got != shapes:

    def show(specs):
      return ", ".join(f"{t.name}{list(s)}" for s, t in specs)

    raise ValueError(
      f"{compressor.name}.decode: the payload does not come from a {d}-element {dtype} input "
      f"(the shape and dtype given to decode): expected payload arrays {show(shapes)}, got "
      f"{show(got)}; pass the shape and dtype of the array that was encoded"
    )


@dataclasses.dataclass(frozen=True)
class ClassConstants:
  """The constants of one compressor at one dimension ``d`` in every class.

  Attributes:
    omega: U(omega) variance parameter (``inf`` when biased).
    b1: (alpha, beta) of B1, or None.
    b2: (gamma, beta) of B2, or None.
    b3: delta of B3 (``inf`` when not contractive).
  """

  omega: float
  b1: tuple[float, float] | None
  b2: tuple[float, float] | None
  b3: float


def class_constants(compressor: Compressor, d: int) -> ClassConstants:
  """Constants of ``compressor`` at dimension ``d`` in U, B1, B2 and B3.

  Example:
    >>> import biased_compression as bc
    >>> bc.class_constants(bc.top_k(k=10), 1000).b3
    100.0
  """
  return ClassConstants(
    omega=compressor.omega(d),
    b1=b1_constants(compressor, d),
    b2=b2_constants(compressor, d),
    b3=b3_constants(compressor, d),
  )


def b1_constants(compressor: Compressor, d: int) -> tuple[float, float] | None:
  """(alpha, beta) with C in B1(alpha, beta) at dimension d, or None."""
  b1 = compressor.native_b1(d)
  if b1 is None:
    b2 = b2_constants(compressor, d)
    b1 = None if b2 is None else (b2[0] ** 2, b2[1])
  return b1


def b2_constants(compressor: Compressor, d: int) -> tuple[float, float] | None:
  """(gamma, beta) with C in B2(gamma, beta) at dimension d, or None.

  Uses the operator's native constants, else B3(delta) in B2(1 / (2 delta), 2).
  """
  b2 = compressor.native_b2(d)
  if b2 is None:
    delta = compressor.delta(d)
    if math.isfinite(delta):
      b2 = (1.0 / (2.0 * delta), 2.0)
  return b2


def b3_constants(compressor: Compressor, d: int) -> float:
  """delta with C in B3(delta) at dimension d (``inf`` when C is not contractive)."""
  return compressor.delta(d)


# -- shared helpers for the operator modules ---------------------------------------------


def _dtype_names() -> str:
  return ", ".join(str(t) for t in SUPPORTED_DTYPES)


def check_input(x: Any, compressor: Compressor) -> jax.Array:
  """Checks that x is an array of a supported floating dtype."""
  dtype = jnp.result_type(x)
  if dtype not in SUPPORTED_DTYPES:
    hint = ""
    if dtype == jnp.float64:
      hint = " (jax_enable_x64 is on: cast x to float32 first)"
    raise TypeError(f"{compressor.name}: x must have dtype {_dtype_names()}, got {dtype}{hint}")
  return jnp.asarray(x)


def index_dtype(d: int) -> jnp.dtype:
  """Narrowest unsigned integer dtype that holds the indices 0 .. d - 1."""
  if d <= 1 << 8:
    return jnp.dtype(jnp.uint8)
  if d <= 1 << 16:
    return jnp.dtype(jnp.uint16)
  return jnp.dtype(jnp.uint32)


def index_bits(d: int) -> int:
  return 8 * index_dtype(d).itemsize


def check_ratio_k(fn: str, ratio: float | None, k: int | None) -> None:
  """Validates the exclusive ``ratio`` / ``k`` arguments of the sparsifiers."""
  if (ratio is None) == (k is None):
    raise ValueError(f"{fn}: give exactly one of ratio and k, got ratio={ratio!r}, k={k!r}")
  if ratio is not None:
    if isinstance(ratio, (int, np.integer)) and not isinstance(ratio, bool):
      raise TypeError(
        f"{fn}: ratio must be a float in (0, 1], got the int {ratio!r}: for the {ratio} "
        f"largest entries pass k={ratio}, to keep everything pass ratio=1.0"
      )
    if isinstance(ratio, bool) or not isinstance(ratio, (float, np.floating)):
      raise TypeError(f"{fn}: ratio must be a float in (0, 1], got {ratio!r}")
    if not 0.0 < ratio <= 1.0:
      raise ValueError(f"{fn}: ratio must be in (0, 1], got {ratio!r}")
  if k is not None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
      raise TypeError(f"{fn}: k must be a positive int, got {k!r}")
    if k < 1:
      raise ValueError(f"{fn}: k must be >= 1, got {k!r}")


def resolve_k(ratio: float | None, k: int | None, d: int) -> int:
  """k for a leaf of d elements: ``max(1, round(ratio * d))`` or ``k``, capped at d."""
  kk = max(1, round(ratio * d)) if ratio is not None else int(k)
  return min(kk, d)


def check_levels(fn: str, levels: Any, max_levels: int) -> None:
  if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
    raise TypeError(f"{fn}: levels must be an int, got {levels!r}")
  if not 1 <= levels <= max_levels:
    raise ValueError(f"{fn}: levels must be in [1, {max_levels}], got {levels!r}")


def check_norm(fn: str, norm: Any) -> float:
  if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm >= 1:
    raise ValueError(f"{fn}: norm must be a number >= 1 or math.inf, got {norm!r}")
  return float(norm)
