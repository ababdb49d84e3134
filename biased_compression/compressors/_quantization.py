"""Quantisers: sign, scaled sign, grouped sign, natural compression and exponential rounding,
standard and natural dithering, identity and casts.

All arithmetic runs in float32 whatever the input dtype; the decoded result is cast back.
Random rounding draws its bits from `_random` (a counter hash seeded by the key). Wire
formats pack sub-byte codes with `_bitpack`:

* sign: 1 bit per coordinate (sign(0) is +1).
* grouped sign: 1 bit per coordinate and a float32 scale per group of g coordinates.
* natural compression / exponential rounding: sign bit + exponent code (9 bits for base 2).
* dithering: a float32 norm + per coordinate a sign bit and ceil(log2(levels + 1)) level bits.
  A norm above the float32 range (an l1 or l2 norm of entries near the maximum) travels as
  -||x|| 2^-64, so that the outputs ||x|| * level that are representable stay exact.

Signs always travel as their own 1-bit plane, separate from the magnitude codes: packed
together (``code << 1 | sign``), every plane of the combined code re-reads the random
rounding, and encoding costs about 7x more at d = 2^24 (measured: 2.1x against 0.31x a
float32 multiply for natural compression's packing).

On XLA's CPU backend arithmetic flushes subnormal floats to zero, so subnormal inputs
behave as zeros in norms and scales; the exponent-based operators read the bits directly
and round subnormals without bias to 0 or the smallest normal power. The same flushing
decides how scales are applied: XLA rewrites x / n as x * (1 / n), and folds a constant
into a scalar factor (norm * (level / s) becomes level * (norm / s)), so a reciprocal of a
norm >= 2^126, or a small norm over s, would be zero. Norms are therefore handled as a
mantissa and a power of two, applied as separate runtime factors (see `_norm_parts` and
`_unwire_norm`); outputs are the exact operator's to float32 rounding across the whole
normal range, and inf only where that exact value exceeds the output dtype's range.

Zero-size inputs give zero-size payload arrays (a norm or scale of 0) and decode to an empty
array.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from biased_compression.compressors import _base
from biased_compression.ops import _bitpack
from biased_compression.ops import _random

__all__ = [
  "Sign",
  "ScaledSign",
  "GroupedSign",
  "ExponentialRounding",
  "StandardDithering",
  "NaturalDithering",
  "Identity",
  "Cast",
  "sign",
  "scaled_sign",
  "grouped_sign",
  "natural_compression",
  "exponential_rounding",
  "standard_dithering",
  "natural_dithering",
  "identity",
  "cast",
]

_F32_NAN_BITS = 0x7FC00000
_MANTISSA = 0x7FFFFF


def _as_bits(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)


def _from_bits(u: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(u.astype(jnp.uint32), jnp.float32)


def _negative(x: jax.Array) -> jax.Array:
  """1 where x < 0 else 0 (NaN and -0 count as positive), as uint32."""
  return (x < 0).astype(jnp.uint32)


def _signed(value: jax.Array, negative: jax.Array) -> jax.Array:
  return jnp.where(negative == 1, -value, value)


def _unit_uniform(bits: jax.Array) -> jax.Array:
  """Uniform on {0, 2^-24, ..., 1 - 2^-24} from 32 random bits."""
  return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def _exponent(v: jax.Array) -> jax.Array:
  """The biased exponent field of a float32 minus 127: e with 2^e <= |v| < 2^(e + 1) for a
  normal v, -127 for zero and subnormals, 128 for inf and NaN (int32)."""
  return ((_as_bits(v) >> 23) & jnp.uint32(0xFF)).astype(jnp.int32) - 127


def _pow2(e: jax.Array) -> jax.Array:
  """2^e for an int32 e, clipped to the normal range [-126, 127].

  Built from its bits, so it is a runtime value: XLA folds products of power-of-two
  constants into one factor (2^-64 * 2^-64 becomes 2^-128, flushed to zero) but leaves
  products with runtime scalars as written.
  """
  return _from_bits((jnp.clip(e, -126, 127) + 127).astype(jnp.uint32) << 23)


def _split(v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mantissa, e) with v = mantissa * 2^e and mantissa in [1, 2), for a normal v >= 0.

  Read from the bits: v * 2^-e would need the subnormal 2^-127 for v >= 2^127. Zero,
  subnormals, inf and NaN come back as (v, 0).
  """
  f = _exponent(v)
  normal = (f > -127) & (f < 128)
  mantissa = _from_bits((_as_bits(v) & jnp.uint32(_MANTISSA)) | jnp.uint32(127 << 23))
  return jnp.where(normal, mantissa, v), jnp.where(normal, f, 0)


def _direct_threshold(d: int, p: float) -> float:
  """Smallest max|x| for which the direct sum of |x_i|^p loses nothing to flushing.

  XLA:CPU flushes a term |x_i|^p < 2^-126 to zero; d such terms change a sum of at least
  max|x|^p by under 2^-24 of it when max|x|^p >= d 2^-102. (A fixed 1e-18 lost up to all
  of the norm for large d: 10^6 entries of 3e-20 next to one of 1e-18.)
  """
  if p == 1.0:
    return 0.0
  return float((d * 2.0**-102) ** (1.0 / p))


def _norm_parts(xf: jax.Array, p: float) -> tuple[jax.Array, jax.Array]:
  """||x||_p as ``(mantissa, e)`` with ||x||_p = mantissa * 2^e, without overflow.

  The mantissa is in [1, 2), or 0 for a zero (or all-subnormal) vector, and non-finite when
  x holds inf or NaN; e is an int32 that may exceed 127 when the norm itself is above the
  float32 maximum (an l1 or l2 norm of entries near it). The callers scale by powers of two
  built from e, never by 1/||x||: that reciprocal is subnormal, and so zero on XLA:CPU, once
  ||x|| >= 2^126, and XLA turns x / ||x|| into x * (1 / ||x||).

  The reductions read x itself, never a materialised |x| (a two-pass norm reads |x| in two
  reductions and in the branch of a cond, so XLA:CPU writes the whole of |x| to memory, 64 MB
  at d = 2^24, more than the rest of an encoder costs): max|x| is max(max x, -min x), and
  x * x and max(x, -x), equal to |x| * |x| and |x| for finite x, sit inside the reduction
  that needs them, which XLA:CPU fuses into its reduction kernel (abs it does not fuse). Only
  when the direct sum overflows, or its terms may flush to zero, is the sum recomputed over
  x * 2^-k with 2^k <= max|x| < 2^(k + 1) (exact scaling); the rest is scalar work.
  The tests compare it with a two-pass reference (``tests/oracles.py``) bit for bit.
  """
  d = xf.shape[0]
  if d == 0:  # max over no elements has no identity; the norm of an empty vector is 0
    return jnp.float32(0.0), jnp.int32(0)
  m = jnp.abs(jnp.maximum(jnp.max(xf), -jnp.min(xf)))
  if p == math.inf:
    total, e = m, jnp.int32(0)
  else:

    def power_sum(a):  # of non-negative values
      if p == 1.0:
        return jnp.sum(a)
      if p == 2.0:
        return jnp.sqrt(jnp.sum(a * a))
      return jnp.sum(a**p) ** (1.0 / p)

    if p == 2.0:
      direct = jnp.sqrt(jnp.sum(xf * xf))
    elif p == 1.0:
      direct = jnp.sum(jnp.maximum(xf, -xf))
    else:
      direct = power_sum(jnp.abs(xf))

    # |x| * 2^-k is in [0, 4) with max|x| * 2^-k >= 1: the sum neither overflows nor loses
    # its large terms, and 2^-k is normal (k is clipped to [-126, 126]).
    k = jnp.clip(_exponent(m), -126, 126)
    fast = jnp.isfinite(direct) & (m >= _direct_threshold(d, p))
    rescaled = lambda xf: power_sum(jnp.abs(xf) * _pow2(-k))
    total = jax.lax.cond(fast, lambda xf: direct, rescaled, xf)
    e = jnp.where(fast, 0, k)
  mantissa, f = _split(total)
  return mantissa, e + f


def _norm(xf: jax.Array, p: float) -> jax.Array:
  """||x||_p as a float32: inf when it exceeds the float32 range (tests: tests/oracles.py)."""
  mantissa, e = _norm_parts(xf, p)
  return jnp.where(e > 127, jnp.float32(jnp.inf), mantissa * _pow2(e))


# -- sign and scaled sign -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class Sign(_base.Compressor):
  """sign(x), one bit per coordinate. See `sign`."""

  sign_valued = True

  def __repr__(self):
    return "sign()"

  def _encode(self, x, key):
    return {"signs": _bitpack.pack(_negative(x), 1)}

  def _decode(self, payload, d, dtype, key):
    neg = _bitpack.unpack(payload["signs"], 1, d)
    return (1.0 - 2.0 * neg.astype(jnp.float32)).astype(dtype)

  def bits(self, d):
    return 8 * _bitpack.packed_size(d, 1)


@dataclasses.dataclass(frozen=True, repr=False)
class ScaledSign(_base.Compressor):
  """(||x||_1 / d) sign(x). See `scaled_sign`."""

  def __repr__(self):
    return "scaled_sign()"

  def _encode(self, x, key):
    xf = x.astype(jnp.float32)
    d = x.shape[0]
    mantissa, e = _norm_parts(xf, 1.0)
    # mean|x| = (mantissa 2^(e - e1) / d) 2^e1 with both powers normal: ||x||_1 itself may
    # exceed the float32 range (entries near its maximum), the mean never does.
    e1 = jnp.clip(e, -126, 126)
    scale = (mantissa * _pow2(e - e1)) / max(d, 1) * _pow2(e1)  # an empty x has scale 0
    # The rounded mean of entries at the float32 maximum can land just past it.
    scale = jnp.minimum(scale, jnp.finfo(jnp.float32).max)
    # An inf in x makes the whole leaf NaN, as a NaN does (the wire cannot say which).
    scale = jnp.where(jnp.isfinite(mantissa), scale, jnp.float32(jnp.nan))
    return {"scale": scale, "signs": _bitpack.pack(_negative(xf), 1)}

  def _decode(self, payload, d, dtype, key):
    neg = _bitpack.unpack(payload["signs"], 1, d)
    return _signed(jnp.broadcast_to(payload["scale"], (d,)), neg).astype(dtype)

  def bits(self, d):
    return 32 + 8 * _bitpack.packed_size(d, 1)

  def native_b2(self, d):
    # <C(x), x> = ||C(x)||^2 = ||x||_1^2 / d >= ||x||^2 / d.
    return (1.0 / d, 1.0)

  def native_b1(self, d):
    return (1.0 / d, 1.0)


def _num_groups(d: int, g: int) -> int:
  """ceil(d / g): the groups of `GroupedSign` (0 for an empty leaf)."""
  return -(-d // g)


@dataclasses.dataclass(frozen=True, repr=False)
class GroupedSign(_base.Compressor):
  """(||x_G||_1 / |G|) sign(x_G) on groups G of ``group_size`` coordinates. See `grouped_sign`."""

  group_size: int

  def __repr__(self):
    return f"grouped_sign(group_size={self.group_size})"

  def _encode(self, x, key):
    xf = x.astype(jnp.float32)
    d, g = x.shape[0], self.group_size
    n = _num_groups(d, g)
    if n <= 1:
      # One group (or none): scaled_sign's computation, op for op, so g >= d is scaled_sign.
      mantissa, e = _norm_parts(xf, 1.0)
      mantissa, e = mantissa[None][:n], e[None][:n]
      count = max(d, 1)
    else:
      # (n, g) rows, the last one padded with zeros: they change neither ||x_G||_1 nor
      # max|x_G|, and the counts divide by the group's real size |G| (the padding's mask).
      rows = jnp.pad(xf, (0, n * g - d)).reshape(n, g)
      mantissa, e = jax.vmap(lambda row: _norm_parts(row, 1.0))(rows)
      count = np.full(n, g, np.float32)
      count[-1] = d - (n - 1) * g
    # mean|x_G| = (mantissa 2^(e - e1) / |G|) 2^e1 with both powers normal, as in scaled_sign:
    # ||x_G||_1 may exceed the float32 range (entries near its maximum), the mean never does.
    e1 = jnp.clip(e, -126, 126)
    scale = (mantissa * _pow2(e - e1)) / count * _pow2(e1)
    # The rounded mean of entries at the float32 maximum can land just past it.
    scale = jnp.minimum(scale, jnp.finfo(jnp.float32).max)
    # An inf in a group makes the whole group NaN, as a NaN does (the wire cannot say which).
    scale = jnp.where(jnp.isfinite(mantissa), scale, jnp.float32(jnp.nan))
    return {"scales": scale, "signs": _bitpack.pack(_negative(xf), 1)}

  def _decode(self, payload, d, dtype, key):
    neg = _bitpack.unpack(payload["signs"], 1, d)
    scales = payload["scales"]
    n = scales.shape[0]
    if n <= 1:
      values = jnp.broadcast_to(scales, (d,))
    else:
      g = self.group_size
      values = jnp.broadcast_to(scales[:, None], (n, g)).reshape(-1)[:d]
    return _signed(values, neg).astype(dtype)

  def bits(self, d):
    return 32 * _num_groups(d, self.group_size) + 8 * _bitpack.packed_size(d, 1)

  def _largest_group(self, d: int) -> int:
    return min(self.group_size, max(d, 1))  # a group of d = 0 is vacuous: any constant holds

  def native_b2(self, d):
    # <C(x), x> = ||C(x)||^2 = sum_G ||x_G||_1^2 / |G| >= ||x||^2 / min(g, d).
    return (1.0 / self._largest_group(d), 1.0)

  def native_b1(self, d):
    return (1.0 / self._largest_group(d), 1.0)

  def delta(self, d):
    # From B2(1 / m, 1): 1 / ((2 - 1) / m) = m, stated exactly.
    return float(self._largest_group(d))


# -- exponential rounding and natural compression -------------------------------------------


def _round_up_allowed(hi: jax.Array, dtype) -> jax.Array:
  """Rounding up to ``hi`` is allowed only if hi is finite in the output dtype."""
  return hi <= jnp.float32(jnp.finfo(dtype).max)


@dataclasses.dataclass(frozen=True, repr=False)
class ExponentialRounding(_base.Compressor):
  """Rounds |x_i| to a power of ``base``, keeping the sign. See `exponential_rounding`."""

  base: float = 2.0
  unbiased: bool = True
  natural: bool = False  # only changes the name: natural_compression()

  def __repr__(self):
    if self.natural:
      return "natural_compression()"
    kw = "" if self.unbiased else ", unbiased=False"
    return f"exponential_rounding(base={self.base!r}{kw})"

  @property
  def needs_key(self):
    return self.unbiased

  # Exponent codes: 0 is zero, c in 1 .. n is base ** (k_lo + c - 1), n + 1 is NaN.
  def _exponent_range(self) -> tuple[int, int]:
    b = self.base
    if b == 2.0:
      return -126, 127
    k_lo = math.ceil(math.log(np.finfo(np.float32).tiny) / math.log(b))
    k_hi = math.floor(math.log(np.finfo(np.float32).max) / math.log(b))
    # Guard against rounding in the logarithms: every table entry must be a finite normal.
    while float(np.float32(b**k_lo)) < np.finfo(np.float32).tiny:
      k_lo += 1
    while not np.isfinite(np.float32(np.float64(b) ** k_hi)):
      k_hi -= 1
    return k_lo, k_hi

  def _num_codes(self) -> int:
    k_lo, k_hi = self._exponent_range()
    return k_hi - k_lo + 3

  def _exponent_bits(self) -> int:
    """Bits of an exponent code (the sign travels in its own plane)."""
    return max(1, math.ceil(math.log2(self._num_codes())))

  def _table(self) -> np.ndarray:
    """Decoded magnitude of every code (0, powers, NaN, and one +inf sentinel)."""
    k_lo, k_hi = self._exponent_range()
    powers = np.float64(self.base) ** np.arange(k_lo, k_hi + 1, dtype=np.float64)
    return np.concatenate([[0.0], powers, [np.nan, np.inf]]).astype(np.float32)

  def bits(self, d):
    return 8 * (_bitpack.packed_size(d, 1) + _bitpack.packed_size(d, self._exponent_bits()))

  def _encode(self, x, key):
    xf = x.astype(jnp.float32)
    if self.base == 2.0:
      code = self._exponent_code_base2(xf, key, x.dtype)
    else:
      code = self._exponent_code(xf, key, x.dtype)
    return {
      "signs": _bitpack.pack(_negative(xf), 1),
      "exponents": _bitpack.pack(code, self._exponent_bits()),
    }

  def _exponent_code_base2(self, xf, key, dtype):
    # Read exponent e and mantissa m of |x| = 2^(e - 127) (1 + m / 2^23); round up to
    # 2^(e - 126) with probability m / 2^23 (exact), or at the midpoint when deterministic.
    # Subnormals (e = 0) round the same way between 0 and 2^-126.
    u = _as_bits(xf)
    e = (u >> 23) & jnp.uint32(0xFF)
    m = u & jnp.uint32(_MANTISSA)
    if self.unbiased:
      up = (_random.uniform_bits(key, xf.shape[0]) >> 9) < m
    else:
      up = m >= jnp.uint32(1 << 22)
    e_max = 127 + jnp.finfo(dtype).maxexp - 1  # top binade of the output dtype
    up = up & (e < jnp.uint32(e_max))
    return jnp.where(e == 0xFF, jnp.uint32(0xFF), e + up.astype(jnp.uint32))

  def _exponent_code(self, xf, key, dtype):
    k_lo, k_hi = self._exponent_range()
    n = k_hi - k_lo + 1
    table = jnp.asarray(self._table())
    a = jnp.abs(xf)
    # Candidate code c with table[c] <= a < table[c + 1], corrected after the logarithm.
    safe_a = jnp.where(a > 0, a, 1.0)
    c = jnp.floor(jnp.log2(safe_a) / math.log2(self.base)).astype(jnp.int32) - k_lo + 1
    c = jnp.where(a > 0, jnp.clip(c, 0, n), 0)
    c = jnp.where(a < table[c], c - 1, c)
    c = jnp.clip(c, 0, n)
    c = jnp.where((a >= table[jnp.minimum(c + 1, n)]) & (c < n), c + 1, c)
    lo = table[c]
    hi = jnp.where(c < n, table[jnp.minimum(c + 1, n)], jnp.inf)
    if self.unbiased:
      p = (a - lo) / (hi - lo)
      up = _unit_uniform(_random.uniform_bits(key, xf.shape[0])) < p
    else:
      up = (a - lo) >= (hi - a)
    up = up & _round_up_allowed(hi, dtype) & (c < n)
    code = (c + up.astype(jnp.int32)).astype(jnp.uint32)
    return jnp.where(jnp.isfinite(xf), code, jnp.uint32(n + 1))

  def _decode(self, payload, d, dtype, key):
    neg = _bitpack.unpack(payload["signs"], 1, d)
    e = _bitpack.unpack(payload["exponents"], self._exponent_bits(), d)
    if self.base == 2.0:
      value = jnp.where(e == 0xFF, _from_bits(jnp.uint32(_F32_NAN_BITS)), _from_bits(e << 23))
    else:
      value = jnp.asarray(self._table())[e]
    return _signed(value, neg).astype(dtype)

  def omega(self, d):
    b = self.base
    return (b + 1) ** 2 / (4 * b) - 1 if self.unbiased else math.inf

  def native_b2(self, d):
    if self.unbiased:
      return super().native_b2(d)
    # Nearest rounding multiplies x_i by r_i in [2 / (b + 1), 2b / (b + 1)].
    b = self.base
    return (2 / (b + 1), 2 * b / (b + 1))

  def delta(self, d):
    if self.unbiased:
      return super().delta(d)
    b = self.base
    return (b + 1) ** 2 / (4 * b)


# -- dithering ------------------------------------------------------------------------------


def _level_bits(levels: int) -> int:
  """Bits of a level code in 0 .. levels (the sign travels in its own plane)."""
  return math.ceil(math.log2(levels + 1))


_WIRE_SHIFT = 64  # an l1 or l2 norm of d < 2^64 finite float32 values is below 2^(128 + 64)


def _wire_norm(mantissa: jax.Array, e: jax.Array) -> jax.Array:
  """The norm field of the dithering wire: a float32 that says mantissa * 2^e.

  The norm itself when it is a finite float32; above the float32 maximum (possible for the
  l1 and l2 norms) its negation times 2^-64: outputs norm * level can still be finite there,
  and a norm is never negative. NaN when x holds inf or NaN, so the leaf decodes to NaN.
  """
  big = -(mantissa * _pow2(e - _WIRE_SHIFT))
  norm = jnp.where(e > 127, big, mantissa * _pow2(e))
  return jnp.where(jnp.isfinite(mantissa), norm, jnp.float32(jnp.nan))


def _unwire_norm(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(a, b) with ||x|| = a * b, a in [1, 2^35) and b a normal power of two: `_wire_norm`'s
  inverse, in the two factors that decoding multiplies each level by, in turn.

  One factor would not do: XLA folds the product of a scalar and a constant (1/s, a level
  spacing) into one scalar, so level * (norm / s) underflows for norms near 2^-126; nor
  would the norm itself, which may exceed the float32 range. (a, b) are runtime values, and
  XLA keeps (level * a) * b as written. 0 and NaN come back as (w, 1).
  """
  mantissa, f = _split(jnp.abs(w))
  e = f + jnp.where(w < 0, _WIRE_SHIFT, 0)
  b = jnp.clip(e, -126, 127)
  return mantissa * _pow2(e - b), _pow2(b)


@dataclasses.dataclass(frozen=True, repr=False)
class _Dithering(_base.Compressor):
  levels: int = 1
  norm: float = 2.0
  unbiased = True
  needs_key = True

  def __repr__(self):
    norm = "math.inf" if self.norm == math.inf else repr(self.norm)
    kw = "" if self.norm == 2.0 else f", norm={norm}"
    return f"{self._fn}({self.levels}{kw})"

  def bits(self, d):
    level_bits = _level_bits(self.levels)
    return 32 + 8 * (_bitpack.packed_size(d, 1) + _bitpack.packed_size(d, level_bits))

  def _encode(self, x, key):
    xf = x.astype(jnp.float32)
    mantissa, e = _norm_parts(xf, self.norm)
    # u = |x| / ||x|| as (|x| 2^-e1) (2^(e1 - e) / mantissa): 1/||x|| is subnormal (zero on
    # XLA:CPU) from ||x|| >= 2^126, these two factors are normal. The levels read
    # t = u * top (top = s or 2^(s - 1)), folded into the second factor. Both factors are
    # divisions, which XLA computes once outside the pass over x (_pow2's bit arithmetic
    # alone is fused into the pass and rerun per element: 15% slower at d = 2^22). A zero
    # norm (zero or flushed subnormal inputs) gives |x| 2^-e1 = 0: all-zero levels.
    e1 = jnp.clip(e, -126, 126)
    scale = 1.0 / _pow2(e1)
    ratio = (_pow2(e1 - e) * self._top) / jnp.where(mantissa > 0, mantissa, 1.0)
    t = jnp.clip((jnp.abs(xf) * scale) * ratio, 0.0, self._top)
    level = self._levels_of(t, _random.uniform_bits(key, xf.shape[0]))
    return {
      "norm": _wire_norm(mantissa, e),
      "signs": _bitpack.pack(_negative(xf), 1),
      "levels": _bitpack.pack(level, _level_bits(self.levels)),
    }

  def _decode(self, payload, d, dtype, key):
    level = _bitpack.unpack(payload["levels"], _level_bits(self.levels), d)
    neg = _bitpack.unpack(payload["signs"], 1, d)
    a, b = _unwire_norm(payload["norm"])
    # (level * a) * b, in this order: the product overflows only where the exact
    # ||x|| * level does, underflows only where it is subnormal, and level 0 gives 0.
    return _signed(self._times_level(a, level) * b, neg).astype(dtype)

  def _r(self) -> float:
    return min(self.norm, 2.0)


class StandardDithering(_Dithering):
  """QSGD-style dithering onto {0, 1/s, ..., 1}. See `standard_dithering`."""

  _fn = "standard_dithering"

  @property
  def _top(self) -> float:
    return float(self.levels)

  def _levels_of(self, t, bits):
    """Levels from t = s |x_i| / ||x|| in [0, s]."""
    s = self.levels
    lower = jnp.floor(t)
    up = _unit_uniform(bits) < (t - lower)
    return jnp.minimum(lower + up, s).astype(jnp.uint32)

  def _times_level(self, a, level):
    """a * level / s, with the scalar a / s as the one factor."""
    return level.astype(jnp.float32) * (a / self.levels)

  def omega(self, d):
    r, s = self._r(), self.levels
    return min(d ** (2 / r) / s**2, d ** (1 / r) / s)


class NaturalDithering(_Dithering):
  """Dithering onto {0, 2^(1-s), ..., 1/2, 1}. See `natural_dithering`."""

  _fn = "natural_dithering"

  @property
  def _top(self) -> float:
    return 2.0 ** (self.levels - 1)

  def _levels_of(self, t, bits):
    """Levels from t = 2^(s - 1) |x_i| / ||x|| in [0, 2^(s - 1)]."""
    s = self.levels
    tb = _as_bits(t)
    e = (tb >> 23).astype(jnp.int32)  # t = 2^(e - 127) (1 + m / 2^23)
    m = tb & jnp.uint32(_MANTISSA)
    # Level j stands for u = 2^(j - s), t = 2^(j - 1). In a binade [2^(j - 1), 2^j) round up
    # with probability m / 2^23 (exact); below t = 1 round between 0 and level 1.
    binade = e - 126 + ((bits >> 9) < m).astype(jnp.int32)
    small = (_unit_uniform(bits) < t).astype(jnp.int32)
    level = jnp.where(e >= 127, binade, small)
    return jnp.clip(level, 0, s).astype(jnp.uint32)

  def _times_level(self, a, level):
    """a * 2^(level - s), and 0 for level 0."""
    exponent = (level.astype(jnp.int32) + 127 - self.levels).astype(jnp.uint32) << 23
    return jnp.where(level > 0, _from_bits(exponent), 0.0) * a

  def omega(self, d):
    r = self._r()
    t = d ** (1 / r) * 2.0 ** (1 - self.levels)
    return 1 / 8 + t * min(1.0, t)


# -- identity and casts ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class Identity(_base.Compressor):
  """No compression. See `identity`."""

  unbiased = True
  linear = True

  def __repr__(self):
    return "identity()"

  def _encode(self, x, key):
    return {"values": x}

  def _decode(self, payload, d, dtype, key):
    return payload["values"].astype(dtype)

  def bits(self, d):
    return 32 * d

  def omega(self, d):
    return 0.0


_CAST_DTYPES = {jnp.dtype(jnp.bfloat16): 8, jnp.dtype(jnp.float16): 11, jnp.dtype(jnp.float32): 24}


@dataclasses.dataclass(frozen=True, repr=False)
class Cast(_base.Compressor):
  """Round-to-nearest cast to a narrower float, saturating at its largest value."""

  dtype: jnp.dtype = jnp.dtype(jnp.bfloat16)
  linear = True

  def __repr__(self):
    return f"cast(jnp.{jnp.dtype(self.dtype).name})"

  def _unit_roundoff(self) -> float:
    return 2.0 ** -_CAST_DTYPES[jnp.dtype(self.dtype)]

  def _encode(self, x, key):
    fmax = jnp.finfo(self.dtype).max
    xf = x.astype(jnp.float32)
    return {"values": jnp.clip(xf, -fmax, fmax).astype(self.dtype)}

  def _decode(self, payload, d, dtype, key):
    values = payload["values"]
    fmax = jnp.finfo(dtype).max
    if jnp.finfo(self.dtype).max > fmax:
      # Saturate here too: float16's 65504 rounds to 65536 in bfloat16, past float16's range.
      values = jnp.clip(values.astype(jnp.float32), -fmax, fmax)
    return values.astype(dtype)

  def bits(self, d):
    return 8 * jnp.dtype(self.dtype).itemsize * d

  def native_b2(self, d):
    u = self._unit_roundoff()
    return (1.0 - u, 1.0 + u)

  def delta(self, d):
    # |fl(x_i) - x_i| <= u |x_i| in the target's normal range.
    return 1.0 / (1.0 - self._unit_roundoff() ** 2)


# -- factories ------------------------------------------------------------------------------


def sign() -> Sign:
  r"""Sign compression: C(x) = sign(x), one bit per coordinate.

  sign(0) is +1 (one bit cannot say 0), and NaN maps to +1: a 1-bit wire cannot signal a
  non-finite input, so check gradients first (e.g. ``optax.apply_if_finite``). The operator
  is in none of the classes (its norm does not scale with x), so ``delta`` is ``inf``; use
  `scaled_sign` or majority vote for a contractive variant.

  References:
    Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, 2018,
    https://arxiv.org/abs/1802.04434
  """
  return Sign()


def scaled_sign() -> ScaledSign:
  r"""Scaled sign: C(x) = (||x||_1 / d) sign(x), in B3(d), B2(1/d, 1).

  Proof: ||C(x) - x||^2 = ||x||^2 - ||x||_1^2 / d <= (1 - 1/d) ||x||^2. The scale is mean|x|
  as a float32, finite for every finite x: when sum|x| overflows it is recomputed over x
  scaled by a power of two. An all-zero input gives 0; an inf or NaN gives an all-NaN leaf.
  Wire: 32 + d bits.

  References:
    Karimireddy et al., Error Feedback Fixes SignSGD and other Gradient Compression Schemes,
    2019, https://arxiv.org/abs/1901.09847
  """
  return ScaledSign()


def grouped_sign(group_size: int) -> GroupedSign:
  r"""Grouped sign: C(x)_G = (||x_G||_1 / |G|) sign(x_G) on groups of g coordinates.

  The leaf's d coordinates (flattened) are cut into ceil(d / g) consecutive groups G of
  g = ``group_size`` coordinates, the last one shorter when g does not divide d; each group
  travels as its signs and one float32 scale, mean|x_G|. C is in B3(min(g, d)),
  B2(1 / min(g, d), 1) and B1(1 / min(g, d), 1).

  Proof: the groups are disjoint and |G| <= min(g, d), so
  ||C(x) - x||^2 = sum_G (||x_G||^2 - ||x_G||_1^2 / |G|) <= (1 - 1 / min(g, d)) ||x||^2, as
  ||x_G||_1 >= ||x_G||_2; likewise <C(x), x> = ||C(x)||^2 = sum_G ||x_G||_1^2 / |G|
  >= ||x||^2 / min(g, d). The bound is attained by one non-zero coordinate in each group of
  min(g, d) coordinates (e.g. a one-hot x when g >= d), and C(x) = x when the magnitudes are
  equal within each group.

  g >= d gives `scaled_sign` (bit for bit); g = 1 gives C(x) = x (sign(x_i) |x_i|, exact for
  normal floats) at 33 bits per coordinate. Each scale is computed as scaled_sign's: finite
  for every finite group, also when ||x_G||_1 overflows (recomputed over x_G scaled by a
  power of two); an all-zero group gives 0, and an inf or NaN makes its whole group NaN
  (the other groups are unaffected). sign(0) is +1.

  Wire: the ceil(d / g) float32 scales, then the d sign bits packed into bytes:
  32 ceil(d / g) + d bits (d rounded up to a multiple of 8).

  Args:
    group_size: g >= 1, an int.

  Example:
    >>> import jax.numpy as jnp, biased_compression as bc
    >>> c = bc.grouped_sign(2)  # groups (1, -3), (0.5, 0.5), (4)
    >>> c.compress(jnp.array([1.0, -3.0, 0.5, 0.5, 4.0]))
    Array([ 2. , -2. ,  0.5,  0.5,  4. ], dtype=float32)
    >>> c.bits(5), c.delta(5)  # 3 scales and one byte of signs; B3(min(g, d))
    (104, 2.0)

  References:
    Li, Xiao, Skoglund, Biased Compression in Gradient Coding for Distributed Learning, 2026.
  """
  if (
    isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1
  ):
    raise ValueError(f"grouped_sign: group_size must be an int >= 1, got {group_size!r}")
  return GroupedSign(int(group_size))


def natural_compression() -> ExponentialRounding:
  r"""Natural compression C_nat: unbiased random rounding of |x_i| to a power of two.

  For 2^e <= |x_i| < 2^(e+1), C(x)_i = sign(x_i) 2^(e+1) with probability |x_i| / 2^e - 1 and
  sign(x_i) 2^e otherwise; C(0) = 0. C_nat is in U(1/8); the bound is attained at
  |x_i| = (4/3) 2^e. Wire: 9 bits per coordinate (sign + the float32 exponent byte).

  The probability is exact: the round-up test compares 23 random bits with the mantissa.
  Subnormal inputs round without bias to 0 or 2^-126. Values in the top binade of the
  input dtype (|x| >= 2^127 for float32 and bfloat16, >= 2^15 for float16) round down,
  since the next power is not representable: the only place where C_nat is biased.
  NaN and inf decode to NaN.

  References:
    Horvath et al., Natural Compression for Distributed Deep Learning, 2019,
    https://arxiv.org/abs/1905.10988
  """
  return ExponentialRounding(2.0, True, natural=True)


def exponential_rounding(base: float = 2.0, *, unbiased: bool = True) -> ExponentialRounding:
  r"""Rounds |x_i| to a power of ``base``, keeping the sign.

  Unbiased (random) rounding between neighbouring powers b^k <= |x_i| < b^(k+1) is in
  U((b + 1)^2 / (4b) - 1). Deterministic rounding to the nearest power (linear distance,
  ties up) is in B3((b + 1)^2 / (4b)) (9/8 for b = 2) and B2(2/(b+1), 2b/(b+1)).
  Wire: a sign bit and an exponent code over the powers of b in the float32 normal range,
  9 bits for b = 2. Below the smallest such power, |x_i| rounds between 0 and that power.

  Args:
    base: b > 1.
    unbiased: random rounding (needs a key) or deterministic nearest rounding.

  References:
    Beznosikov et al., On Biased Compression for Distributed Learning, 2023,
    https://arxiv.org/abs/2002.12410
  """
  if isinstance(base, bool) or not isinstance(base, (int, float)) or not 1.0 < base < math.inf:
    raise ValueError(f"exponential_rounding: base must be a finite number > 1, got {base!r}")
  if float(base) < 1.001:
    raise ValueError(f"exponential_rounding: base must be >= 1.001 (code table), got {base!r}")
  return ExponentialRounding(float(base), bool(unbiased))


def standard_dithering(levels: int, *, norm: float = 2) -> StandardDithering:
  r"""Standard (QSGD) dithering with s levels in the p-norm.

  .. math::
    C(x)_i = \|x\|_p \, \mathrm{sign}(x_i) \, \xi_s(|x_i| / \|x\|_p),

  where xi_s rounds u in [0, 1] without bias to one of its neighbours in {0, 1/s, ..., 1}.
  C is in U(omega) with omega = min(d^(2/r) / s^2, d^(1/r) / s), r = min(p, 2); for p = 2 this
  is QSGD's min(d/s^2, sqrt(d)/s). Derivation: a coordinate's variance is at most
  ||x||_p^2 min(1/(4 s^2), u_i / s), and ||x||_p <= d^(1/r - 1/2) ||x||_2.

  Wire: a float32 norm, then per coordinate a sign bit and ceil(log2(s + 1)) level bits.
  The norm is computed without overflow (over x scaled by a power of two when the direct
  sum overflows); a norm above the float32 range (p = 1 or 2, entries near the maximum)
  travels as -||x|| 2^-64, so every output ||x|| * level that is a finite float32 decodes
  exactly, and only the others give +-inf. Rounding probabilities are resolved to 2^-24.
  A non-finite input makes the norm, and so every output, NaN.

  Args:
    levels: s >= 1.
    norm: p >= 1, or ``math.inf``.

  References:
    Alistarh et al., QSGD: Communication-Efficient SGD via Gradient Quantization and
    Encoding, 2017, https://arxiv.org/abs/1610.02132
  """
  _base.check_levels("standard_dithering", levels, 1 << 20)
  return StandardDithering(int(levels), _base.check_norm("standard_dithering", norm))


def natural_dithering(levels: int, *, norm: float = 2) -> NaturalDithering:
  r"""Natural dithering with s levels in the p-norm: levels {0, 2^(1-s), ..., 1/2, 1}.

  As `standard_dithering` with geometric levels; in U(omega) with
  omega = 1/8 + d^(1/r) 2^(1-s) min(1, d^(1/r) 2^(1-s)), r = min(p, 2).
  This is the single-stage definition of the paper. (The authors' public PyTorch code
  implements a two-stage variant: standard dithering with 2^(s-1) levels followed by C_nat
  of the levels.) Rounding inside a binade uses the exact mantissa test of C_nat.

  Wire: a float32 norm, then per coordinate a sign bit and ceil(log2(s + 1)) level bits;
  norms above the float32 range travel as in `standard_dithering`.

  Args:
    levels: s, 1 <= s <= 64.
    norm: p >= 1, or ``math.inf``.

  References:
    Horvath et al., Natural Compression for Distributed Deep Learning, 2019,
    https://arxiv.org/abs/1905.10988
  """
  _base.check_levels("natural_dithering", levels, 64)
  return NaturalDithering(int(levels), _base.check_norm("natural_dithering", norm))


def identity() -> Identity:
  """No compression: C(x) = x, 32 bits per float32 coordinate. U(0), B3(1)."""
  return Identity()


def cast(dtype) -> Cast:
  r"""Cast to a narrower float (bfloat16 or float16): the usual half-precision baseline.

  Rounds to nearest and saturates at the target's largest finite value (so a finite input
  stays finite), and again at the output dtype's when decoding (a float16 input near 65504
  rounds to 65536 in bfloat16). With unit roundoff u (2^-8 for bfloat16, 2^-11 for float16),
  |C(x)_i - x_i| <= u |x_i| for inputs in the target's normal range, giving
  B3(1 / (1 - u^2)) and B2(1 - u, 1 + u). Outside that range (underflow to zero or
  saturation) the relative error can be larger: the constants hold for normal-range inputs.
  """
  dt = jnp.dtype(dtype)
  if dt not in _CAST_DTYPES:
    raise ValueError(f"cast: dtype must be bfloat16, float16 or float32, got {dtype!r}")
  return Cast(dt)
