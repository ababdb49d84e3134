"""Compression operators C: R^d -> R^d with a real wire format, their constants and classes.

* The interface: `Compressor` (``compress``, ``encode`` / ``decode``, ``bits``, ``omega`` /
  ``delta`` and the capability flags ``unbiased``, ``needs_key``, ``linear``,
  ``shared_randomness``), the classes B1, B2, B3 and U(omega) (`class_constants`, ...).
* The operator families: quantisers (`sign`, `scaled_sign`, `grouped_sign`,
  `natural_compression`, `exponential_rounding`, `standard_dithering`, `natural_dithering`,
  `identity`, `cast`) and sparsifiers (`top_k`, `rand_k`, `adaptive_random_sparsification`).
* Combinators: `compose`, `induced`, `scaled`, `contractive`, `top_k_natural_dithering`.
* The registry of example operators, `standard_compressors`, and `parse_compressor` for
  short specs such as ``"top_k:0.01"``.
"""

from biased_compression.compressors._base import ClassConstants
from biased_compression.compressors._base import Compressor
from biased_compression.compressors._base import b1_constants
from biased_compression.compressors._base import b2_constants
from biased_compression.compressors._base import b3_constants
from biased_compression.compressors._base import class_constants
from biased_compression.compressors._combinators import compose
from biased_compression.compressors._combinators import contractive
from biased_compression.compressors._combinators import induced
from biased_compression.compressors._combinators import scaled
from biased_compression.compressors._combinators import top_k_natural_dithering
from biased_compression.compressors._quantization import cast
from biased_compression.compressors._quantization import exponential_rounding
from biased_compression.compressors._quantization import grouped_sign
from biased_compression.compressors._quantization import identity
from biased_compression.compressors._quantization import natural_compression
from biased_compression.compressors._quantization import natural_dithering
from biased_compression.compressors._quantization import scaled_sign
from biased_compression.compressors._quantization import sign
from biased_compression.compressors._quantization import standard_dithering
from biased_compression.compressors._registry import parse_compressor
from biased_compression.compressors._registry import standard_compressors
from biased_compression.compressors._sparsification import Sparsifier
from biased_compression.compressors._sparsification import adaptive_random_sparsification
from biased_compression.compressors._sparsification import rand_k
from biased_compression.compressors._sparsification import top_k

__all__ = [
  "ClassConstants",
  "Compressor",
  "Sparsifier",
  "adaptive_random_sparsification",
  "b1_constants",
  "b2_constants",
  "b3_constants",
  "cast",
  "class_constants",
  "compose",
  "contractive",
  "exponential_rounding",
  "grouped_sign",
  "identity",
  "induced",
  "natural_compression",
  "natural_dithering",
  "parse_compressor",
  "rand_k",
  "scaled",
  "scaled_sign",
  "sign",
  "standard_compressors",
  "standard_dithering",
  "top_k",
  "top_k_natural_dithering",
]
