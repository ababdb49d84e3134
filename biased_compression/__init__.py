"""biased_compression: biased gradient compression and error feedback for JAX and Optax.

The compressor core: every operator is an immutable `Compressor` with ``compress``,
``encode`` / ``decode`` (a real bit-packed wire format), ``bits``, and its constants
(``omega``, ``delta`` and the classes B1, B2, B3 of Beznosikov et al., 2023).

The transformations: `compress`, `error_feedback`, `ef21`, `ef21_sgdm`, `econtrol` and
`diana` are Optax transformations with explicit state, on one worker or, given an
``axis_name``, on n workers (simulated under ``jax.vmap``; see `init_workers`). `bits_sent`
reads the exact number of bits they sent from any optimizer state.
"""

from biased_compression._base import ClassConstants
from biased_compression._base import Compressor
from biased_compression._base import b1_constants
from biased_compression._base import b2_constants
from biased_compression._base import b3_constants
from biased_compression._base import class_constants
from biased_compression._collectives import MeanResult
from biased_compression._collectives import choose_method
from biased_compression._collectives import compressed_mean
from biased_compression._collectives import traffic_bits
from biased_compression._collectives import wire_bytes
from biased_compression._combinators import compose
from biased_compression._combinators import contractive
from biased_compression._combinators import induced
from biased_compression._combinators import scaled
from biased_compression._combinators import top_k_natural_dithering
from biased_compression._compression import CompressState
from biased_compression._compression import DianaState
from biased_compression._compression import compress
from biased_compression._compression import diana
from biased_compression._distributed import Workers
from biased_compression._distributed import shard
from biased_compression._distributed import simulate
from biased_compression._distributed import worker_key
from biased_compression._error_feedback import EControlState
from biased_compression._error_feedback import EF21SGDMState
from biased_compression._error_feedback import EF21State
from biased_compression._error_feedback import ErrorFeedbackState
from biased_compression._error_feedback import econtrol
from biased_compression._error_feedback import ef21
from biased_compression._error_feedback import ef21_sgdm
from biased_compression._error_feedback import error_feedback
from biased_compression._quantization import cast
from biased_compression._quantization import exponential_rounding
from biased_compression._quantization import identity
from biased_compression._quantization import natural_compression
from biased_compression._quantization import natural_dithering
from biased_compression._quantization import scaled_sign
from biased_compression._quantization import sign
from biased_compression._quantization import standard_dithering
from biased_compression._registry import standard_compressors
from biased_compression._sparsification import adaptive_random_sparsification
from biased_compression._sparsification import rand_k
from biased_compression._sparsification import top_k
from biased_compression._topk import abs_top_k
from biased_compression._transforms import BitCount
from biased_compression._transforms import bit_words
from biased_compression._transforms import bits_sent
from biased_compression._transforms import device_update
from biased_compression._transforms import init_workers
from biased_compression._transforms import simulated_update
from biased_compression._transforms import words_to_bits

__version__ = "0.1.0"

__all__ = (
  "BitCount",
  "ClassConstants",
  "CompressState",
  "Compressor",
  "DianaState",
  "EControlState",
  "EF21SGDMState",
  "EF21State",
  "ErrorFeedbackState",
  "MeanResult",
  "Workers",
  "adaptive_random_sparsification",
  "abs_top_k",
  "b1_constants",
  "b2_constants",
  "b3_constants",
  "bit_words",
  "bits_sent",
  "cast",
  "choose_method",
  "class_constants",
  "compose",
  "compress",
  "compressed_mean",
  "contractive",
  "device_update",
  "diana",
  "econtrol",
  "ef21",
  "ef21_sgdm",
  "error_feedback",
  "exponential_rounding",
  "identity",
  "induced",
  "init_workers",
  "natural_compression",
  "natural_dithering",
  "rand_k",
  "scaled",
  "scaled_sign",
  "shard",
  "sign",
  "simulate",
  "simulated_update",
  "standard_compressors",
  "standard_dithering",
  "top_k",
  "top_k_natural_dithering",
  "traffic_bits",
  "wire_bytes",
  "words_to_bits",
  "worker_key",
)
