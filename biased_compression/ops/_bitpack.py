"""Packing of b-bit integer codes into bytes: the one place where bits meet the wire.

Every compressor whose wire format has sub-byte fields (signs, dithering levels, exponents)
packs them here. A ``bits``-wide code is split into "planes" of widths 8, 4, 2 and 1 (for
example 9 = 8 + 1, 3 = 2 + 1); a plane of width ``w`` stores ``8 // w`` codes per byte,
little-endian inside the byte (code ``j`` of a byte sits at bit ``w * j``). Each plane is
one elementwise shift-and-or over the codes, which XLA fuses into a single pass, so packing
costs about as much as reading the codes once. ``jnp.packbits`` / ``jnp.unpackbits`` do the
same for one-bit planes only; this module serves every width with one code path, written in
their style (broadcast shifts in uint8). Measured for one-bit planes on the 2-core CPU:
packing 1.8 ms vs 2.3 ms for ``jnp.packbits`` at d = 2^24 (0.45 vs 0.32 ms at 2^22); a sign
decode 20.0 ms vs 20.7 ms with ``jnp.unpackbits`` at 2^24 (0.77 vs 0.57 ms at 2^22).

The packed size of ``n`` codes of width ``bits`` is ``sum(ceil(n * w / 8))`` over the planes,
which is ``ceil(n * bits / 8)`` whenever ``n`` is a multiple of 8.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["pack", "unpack", "packed_size", "planes"]

MAX_BITS = 32


def planes(bits: int) -> tuple[tuple[int, int], ...]:
  """Splits a code width into ``(shift, width)`` planes of widths 8, 4, 2, 1."""
  if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
    raise ValueError(f"bits must be an int in [1, {MAX_BITS}], got {bits!r}")
  out = []
  shift = 0
  for width in (8, 4, 2, 1):
    while bits - shift >= width:
      out.append((shift, width))
      shift += width
  return tuple(out)


def packed_size(n: int, bits: int) -> int:
  """Number of bytes that ``pack`` produces for ``n`` codes of width ``bits``."""
  return sum(math.ceil(n * w / 8) for _, w in planes(bits))


def pack(codes: jax.Array, bits: int) -> jax.Array:
  """Packs a 1-D array of unsigned codes, each ``< 2**bits``, into a uint8 array.

  Args:
    codes: 1-D unsigned integer array; bits above ``bits`` are ignored.
    bits: code width, 1 to 32.

  Returns:
    A uint8 array of ``packed_size(codes.size, bits)`` bytes.
  """
  codes = codes.astype(jnp.uint32)
  n = codes.shape[0]
  parts = []
  for shift, width in planes(bits):
    sub = (codes >> shift) & jnp.uint32((1 << width) - 1)
    per = 8 // width
    if per == 1:
      parts.append(sub.astype(jnp.uint8))
      continue
    m = math.ceil(n / per)
    sub = jnp.pad(sub, (0, m * per - n)).reshape(m, per)
    byte = sub[:, 0]
    for j in range(1, per):
      byte = byte | (sub[:, j] << (width * j))
    parts.append(byte.astype(jnp.uint8))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def unpack(packed: jax.Array, bits: int, n: int) -> jax.Array:
  """Inverse of `pack`: returns the ``n`` codes as a uint32 array."""
  expected = packed_size(n, bits)
  if packed.shape != (expected,):
    raise ValueError(
      f"packed must have shape ({expected},) for n={n}, bits={bits}, got {packed.shape}"
    )
  codes = None
  offset = 0
  for shift, width in planes(bits):
    per = 8 // width
    m = math.ceil(n / per)
    chunk = packed[offset : offset + m]
    offset += m
    if per > 1:
      # One broadcast shift in uint8, as jnp.unpackbits does: 4.6x faster than shifting
      # slices in uint32 and stacking them (sign decode at d = 2^22).
      shifts = jnp.arange(0, 8, width, dtype=jnp.uint8)
      chunk = ((chunk[:, None] >> shifts) & jnp.uint8((1 << width) - 1)).reshape(-1)[:n]
    sub = chunk.astype(jnp.uint32)
    sub = sub << shift if shift else sub
    codes = sub if codes is None else codes | sub
  return codes
