"""Gradient codes: exact decoding with stragglers, and stochastic gradient coding.

* `GradientCode`: n workers, m parts of the data, and the n x m encoding matrix ``B``; worker
  i sends ``sum_j B[i, j] g_j`` of the gradients of the parts it holds.
* Constructors: `fractional_repetition` and `cyclic_repetition` (Tandon et al., 2017: any
  n - s workers decode the exact sum), and `sgc_cyclic` (the balanced allocation of stochastic
  gradient coding, Bitar, Wootters and El Rouayheb, 2020).
* Encoding (jit and vmap safe): `encode` (one worker, possibly a traced index) and
  `encode_all` (all workers, a leading worker axis); `combine` weights the messages.
* Decoding on the host: `decoding_weights` (exact, or None) and `residual`; `sgc_weights` (the
  unbiased SGC weights) and, inside jit with a traced mask, `masked_sgc_weights`.
* Straggler models drawn inside jit from a key shared by the workers: `iid` (probability p,
  or p_i per worker), `fixed` (a set), `adversarial` (the s stragglers worst for a decoding).
* Training with stragglers: `coded` (any communicating transformation of the library, with
  the straggler draw and the decoding weights; `Decoder`, `alive_workers`) and `coco_ef`
  (biased compression with error feedback in gradient coding, Li, Xiao, Skoglund, 2026).
"""

from biased_compression.coding._coco_ef import DECODINGS
from biased_compression.coding._coco_ef import Decoder
from biased_compression.coding._coco_ef import alive_workers
from biased_compression.coding._coco_ef import coco_ef
from biased_compression.coding._coco_ef import coded
from biased_compression.coding._codes import GradientCode
from biased_compression.coding._codes import combine
from biased_compression.coding._codes import cyclic_repetition
from biased_compression.coding._codes import decoding_weights
from biased_compression.coding._codes import encode
from biased_compression.coding._codes import encode_all
from biased_compression.coding._codes import fractional_repetition
from biased_compression.coding._codes import masked_sgc_weights
from biased_compression.coding._codes import residual
from biased_compression.coding._codes import sgc_cyclic
from biased_compression.coding._codes import sgc_weights
from biased_compression.coding._stragglers import Stragglers
from biased_compression.coding._stragglers import adversarial
from biased_compression.coding._stragglers import fixed
from biased_compression.coding._stragglers import iid

__all__ = [
  "DECODINGS",
  "Decoder",
  "GradientCode",
  "alive_workers",
  "coco_ef",
  "coded",
  "Stragglers",
  "adversarial",
  "fixed",
  "iid",
  "combine",
  "cyclic_repetition",
  "decoding_weights",
  "encode",
  "encode_all",
  "fractional_repetition",
  "masked_sgc_weights",
  "residual",
  "sgc_cyclic",
  "sgc_weights",
]
