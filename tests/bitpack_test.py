"""Tests of the bit-packing module against numpy's packbits and by round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from biased_compression.ops import _bitpack

# by default the widths at and around the byte boundaries (two compilations each); all in the
# full run
FAST_WIDTHS = {1, 7, 8, 9, 16, 17, 32}


WIDTHS = [pytest.param(b, marks=() if b in FAST_WIDTHS else pytest.mark.slow) for b in range(1, 33)]


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("n", [1, 9, 1001])
def test_round_trip_every_width(bits, n):
  rng = np.random.default_rng(bits * 1000 + n)
  codes = rng.integers(0, 2**bits, size=n, dtype=np.uint64).astype(np.uint32)
  packed = jax.jit(_bitpack.pack, static_argnums=1)(jnp.asarray(codes), bits)
  assert packed.dtype == jnp.uint8
  assert packed.shape == (_bitpack.packed_size(n, bits),)
  out = jax.jit(_bitpack.unpack, static_argnums=(1, 2))(packed, bits, n)
  np.testing.assert_array_equal(np.asarray(out), codes)


@pytest.mark.parametrize("n", [1, 5, 8, 13, 4096])
def test_one_bit_matches_numpy_packbits(n):
  rng = np.random.default_rng(n)
  b = rng.integers(0, 2, size=n).astype(np.uint32)
  expected = np.packbits(b.astype(np.uint8), bitorder="little")
  np.testing.assert_array_equal(np.asarray(_bitpack.pack(jnp.asarray(b), 1)), expected)


def test_packed_size_is_tight_for_multiples_of_eight():
  for bits in range(1, 33):
    assert _bitpack.packed_size(64, bits) == 64 * bits // 8
  # 9 bits = one byte plane + one 1-bit plane.
  assert _bitpack.packed_size(10, 9) == 10 + 2


def test_high_bits_are_ignored():
  codes = jnp.array([0b1111_0101, 0b0000_1010], jnp.uint32)
  out = _bitpack.unpack(_bitpack.pack(codes, 4), 4, 2)
  np.testing.assert_array_equal(np.asarray(out), [0b0101, 0b1010])


@pytest.mark.parametrize("bits", [0, 33, 2.5])
def test_bad_width_raises(bits):
  with pytest.raises(ValueError, match="bits"):
    _bitpack.pack(jnp.zeros(4, jnp.uint32), bits)


def test_unpack_checks_the_size():
  with pytest.raises(ValueError, match="packed"):
    _bitpack.unpack(jnp.zeros(3, jnp.uint8), 4, 8)


@pytest.mark.slow  # 30 random widths and lengths, each compiled anew
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 32), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=70))
def test_round_trip_property(bits, values):
  codes = np.asarray(values, np.uint64) % (2**bits)
  codes = codes.astype(np.uint32)
  out = _bitpack.unpack(_bitpack.pack(jnp.asarray(codes), bits), bits, len(codes))
  np.testing.assert_array_equal(np.asarray(out), codes)
