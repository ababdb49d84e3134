"""The Optax transformations, their shared options, the bit accounting and the skeleton.

* Algorithms: `compress` and `diana` (compressed gradients, and with learned shifts);
  `error_feedback`, `ef21`, `ef21_sgdm`, `econtrol` (the error-feedback family).
* Bits: `BitCount` in every state, `bits_sent` on the host, `bit_words` / `words_to_bits`
  inside ``jit`` and ``scan``.
* Extending: `transformation` builds a transformation from an algorithm's step and the
  fields it keeps (per worker, or of the server), with the shared `Options`; the algorithm
  calls `Step.exchange` once or more per step. The six algorithms above are built this way.
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
from biased_compression.transforms._scaling import dcsgd_noise_scale
from biased_compression.transforms._scaling import dcsgd_scaled_lr
from biased_compression.transforms._scaling import sign_noise_scale
from biased_compression.transforms._scaling import sign_scaled_lr
from biased_compression.transforms._skeleton import Step
from biased_compression.transforms._skeleton import transformation

__all__ = [
  "BitCount",
  "CompressState",
  "DianaState",
  "EControlState",
  "EF21SGDMState",
  "EF21State",
  "ErrorFeedbackState",
  "Options",
  "Step",
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
  "sign_noise_scale",
  "sign_scaled_lr",
  "transformation",
  "words_to_bits",
]
