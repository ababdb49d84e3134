"""Kernels with no notion of a compressor: bit packing, counter-based random bits, top-k.

The lowest layer: nothing here imports the rest of the library.

* `abs_top_k`: the indices of the k largest magnitudes (exact sort, ``lax.top_k``, or the
  approximate two-pass selection), used by `biased_compression.top_k`.
* `pack` / `unpack` / `packed_size`: b-bit codes packed into uint8 (the wire formats).
"""

from biased_compression.ops._bitpack import pack
from biased_compression.ops._bitpack import packed_size
from biased_compression.ops._bitpack import unpack
from biased_compression.ops._topk import abs_top_k

__all__ = ["abs_top_k", "pack", "packed_size", "unpack"]
