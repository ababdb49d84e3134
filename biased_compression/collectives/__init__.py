"""The compressed mean over a worker axis: encoded payloads moved by JAX collectives.

No Optax here: `compressed_mean` works on arrays, under ``jax.vmap(..., axis_name=)`` and
``jax.shard_map`` alike; the transformations call it. `choose_method` is what
``method="auto"`` takes, and `traffic_bits` what one message sends under each method.
"""

from biased_compression.collectives._collectives import METHODS
from biased_compression.collectives._collectives import MeanResult
from biased_compression.collectives._collectives import choose_method
from biased_compression.collectives._collectives import compressed_mean
from biased_compression.collectives._collectives import traffic_bits

__all__ = ["METHODS", "MeanResult", "choose_method", "compressed_mean", "traffic_bits"]
