"""The Optax transformations, their shared options, the bit accounting and the skeleton.

* Algorithms: `compress` and `diana` (compressed gradients, and with learned shifts);
  `error_feedback`, `ef21`, `ef21_sgdm`, `econtrol` (the error-feedback family).
* Bits: `BitCount` in every state, `bits_sent` on the host, `bit_words` / `words_to_bits`
  inside ``jit`` and ``scan``.
* `powersgd`: rank-r compression by power iteration (two all-reduces of factors a step).
* Extending, the open step: an `Algorithm` (``init(params, key)`` for its own state fields,
  any shapes; ``step(step, updates, fields)``) becomes a transformation with
  `from_algorithm`; each ``step.mean(tree, compressor=C | None, weights=...)`` (`Step`) is
  one exchange, its bits counted. Every algorithm above is built this way;
  `transformation` keeps the first skeleton's form (leaf lists, update-shaped fields).
* Scaling rules (from the SDEs of DCSGD and DSignSGD): `dcsgd_scaled_lr` (keeps
  eta (1 + omega) / (B N)), `sign_scaled_lr` (keeps eta / (N sqrt(B))) and the invariants
  `dcsgd_noise_scale`, `sign_noise_scale`.
"""

from biased_compression.transforms._bits import BitCount
from biased_compression.transforms._bits import bit_words
from biased_compression.transforms._bits import bits_sent
from biased_compression.transforms._bits import words_to_bits
from biased_compression.transforms._dcgd import CompressState
from biased_compression.transforms._dcgd import DianaState
from biased_compression.transforms._dcgd import compress
from biased_compression.transforms._dcgd import diana
from biased_compression.transforms._error_feedback import EControlState
from biased_compression.transforms._error_feedback import EF21SGDMState
from biased_compression.transforms._error_feedback import EF21State
from biased_compression.transforms._error_feedback import ErrorFeedbackState
from biased_compression.transforms._error_feedback import econtrol
from biased_compression.transforms._error_feedback import ef21
from biased_compression.transforms._error_feedback import ef21_sgdm
from biased_compression.transforms._error_feedback import error_feedback
from biased_compression.transforms._options import Options
from biased_compression.transforms._powersgd import PowerSGDState
from biased_compression.transforms._powersgd import matrix_view
from biased_compression.transforms._powersgd import orthogonalize
from biased_compression.transforms._powersgd import powersgd
from biased_compression.transforms._scaling import dcsgd_noise_scale
from biased_compression.transforms._scaling import dcsgd_scaled_lr
from biased_compression.transforms._scaling import sign_noise_scale
from biased_compression.transforms._scaling import sign_scaled_lr
from biased_compression.transforms._skeleton import Algorithm
from biased_compression.transforms._skeleton import from_algorithm
from biased_compression.transforms._skeleton import transformation
from biased_compression.transforms._step import Mean
from biased_compression.transforms._step import Step
from biased_compression.transforms._step import Weighting

__all__ = [
  "Algorithm",
  "BitCount",
  "CompressState",
  "DianaState",
  "EControlState",
  "EF21SGDMState",
  "EF21State",
  "ErrorFeedbackState",
  "Mean",
  "Options",
  "PowerSGDState",
  "Step",
  "Weighting",
  "bit_words",
  "bits_sent",
  "compress",
  "dcsgd_noise_scale",
  "dcsgd_scaled_lr",
  "diana",
  "econtrol",
  "ef21",
  "ef21_sgdm",
  "error_feedback",
  "from_algorithm",
  "matrix_view",
  "orthogonalize",
  "powersgd",
  "sign_noise_scale",
  "sign_scaled_lr",
  "transformation",
  "words_to_bits",
]
