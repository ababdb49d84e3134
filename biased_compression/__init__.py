"""biased_compression: biased gradient compression and error feedback for JAX and Optax.

The compressor core: every operator is an immutable `Compressor` with ``compress``,
``encode`` / ``decode`` (a real bit-packed wire format), ``bits``, and its constants
(``omega``, ``delta`` and the classes B1, B2, B3 of Beznosikov et al., 2023).

The transformations: `compress`, `error_feedback`, `ef21`, `ef21_sgdm`, `econtrol`, `diana`
and `powersgd` are Optax transformations with explicit state, on one worker or, given an
``axis_name``, on n workers: `simulate` (under ``jax.vmap``) and `shard` (one per device,
under ``jax.shard_map``) run them. `bits_sent` reads the exact number of bits they sent from
any optimizer state. `dcsgd_scaled_lr` and `sign_scaled_lr` are the learning-rate scaling
rules of DCSGD and DSignSGD (derived from their SDEs).

Gradient coding with stragglers: `coco_ef` (biased compression with error feedback in
gradient coding) and, in `coding`, the codes, the straggler models and `coding.coded`, which
gives any of the transformations above a straggler draw and decoding weights.
"""

from biased_compression import coding
from biased_compression.coding import coco_ef
from biased_compression.collectives import MeanResult
from biased_compression.collectives import choose_method
from biased_compression.collectives import compressed_mean
from biased_compression.collectives import traffic_bits
from biased_compression.compressors import ClassConstants
from biased_compression.compressors import Compressor
from biased_compression.compressors import Sparsifier
from biased_compression.compressors import adaptive_random_sparsification
from biased_compression.compressors import b1_constants
from biased_compression.compressors import b2_constants
from biased_compression.compressors import b3_constants
from biased_compression.compressors import cast
from biased_compression.compressors import class_constants
from biased_compression.compressors import compose
from biased_compression.compressors import contractive
from biased_compression.compressors import exponential_rounding
from biased_compression.compressors import grouped_sign
from biased_compression.compressors import identity
from biased_compression.compressors import induced
from biased_compression.compressors import natural_compression
from biased_compression.compressors import natural_dithering
from biased_compression.compressors import parse_compressor
from biased_compression.compressors import rand_k
from biased_compression.compressors import scaled
from biased_compression.compressors import scaled_sign
from biased_compression.compressors import sign
from biased_compression.compressors import standard_compressors
from biased_compression.compressors import standard_dithering
from biased_compression.compressors import top_k
from biased_compression.compressors import top_k_natural_dithering
from biased_compression.distributed import Workers
from biased_compression.distributed import device_update
from biased_compression.distributed import init_workers
from biased_compression.distributed import shard
from biased_compression.distributed import simulate
from biased_compression.distributed import simulated_update
from biased_compression.distributed import worker_key
from biased_compression.metrics import wire_bytes
from biased_compression.ops import abs_top_k
from biased_compression.transforms import BitCount
from biased_compression.transforms import CompressState
from biased_compression.transforms import DianaState
from biased_compression.transforms import EControlState
from biased_compression.transforms import EF21SGDMState
from biased_compression.transforms import EF21State
from biased_compression.transforms import ErrorFeedbackState
from biased_compression.transforms import PowerSGDState
from biased_compression.transforms import bit_words
from biased_compression.transforms import bits_sent
from biased_compression.transforms import compress
from biased_compression.transforms import dcsgd_noise_scale
from biased_compression.transforms import dcsgd_scaled_lr
from biased_compression.transforms import diana
from biased_compression.transforms import econtrol
from biased_compression.transforms import ef21
from biased_compression.transforms import ef21_sgdm
from biased_compression.transforms import error_feedback
from biased_compression.transforms import powersgd
from biased_compression.transforms import sign_noise_scale
from biased_compression.transforms import sign_scaled_lr
from biased_compression.transforms import words_to_bits

__version__ = "0.1.0"

__all__ = (
  "BitCount",
  "ClassConstants",
  "CompressState",
  "Compressor",
  "Sparsifier",
  "DianaState",
  "EControlState",
  "EF21SGDMState",
  "EF21State",
  "ErrorFeedbackState",
  "MeanResult",
  "PowerSGDState",
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
  "coco_ef",
  "coding",
  "class_constants",
  "compose",
  "compress",
  "compressed_mean",
  "contractive",
  "dcsgd_noise_scale",
  "dcsgd_scaled_lr",
  "device_update",
  "diana",
  "econtrol",
  "ef21",
  "ef21_sgdm",
  "error_feedback",
  "exponential_rounding",
  "grouped_sign",
  "identity",
  "induced",
  "init_workers",
  "natural_compression",
  "natural_dithering",
  "parse_compressor",
  "powersgd",
  "rand_k",
  "scaled",
  "scaled_sign",
  "shard",
  "sign",
  "sign_noise_scale",
  "sign_scaled_lr",
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
