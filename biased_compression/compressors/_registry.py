"""One registry of example compressors: every operator and combinator, with typical
parameters. The tests are parametrised over it and the CLI tabulates it."""

from __future__ import annotations

import jax.numpy as jnp

from biased_compression.compressors import _base
from biased_compression.compressors import _combinators as comb
from biased_compression.compressors import _quantization as quant
from biased_compression.compressors import _sparsification as sparse

__all__ = ["standard_compressors"]


def standard_compressors() -> dict[str, _base.Compressor]:
  """Every operator of the library with typical parameters, keyed by a short name.

  Example:
    >>> import biased_compression as bc
    >>> sorted(bc.standard_compressors())[:3]
    ['adaptive_random_sparsification', 'cast_bf16', 'cast_fp16']
  """
  return {
    "identity": quant.identity(),
    "cast_bf16": quant.cast(jnp.bfloat16),
    "cast_fp16": quant.cast(jnp.float16),
    "top_k": sparse.top_k(0.1),
    "rand_k": sparse.rand_k(0.1),
    "rand_k_biased": sparse.rand_k(0.1, unbiased=False),
    "rand_k_shared": sparse.rand_k(0.1, shared_indices=True),
    "adaptive_random_sparsification": sparse.adaptive_random_sparsification(),
    "natural_compression": quant.natural_compression(),
    "exponential_rounding_b4": quant.exponential_rounding(4.0),
    "exponential_rounding_nearest": quant.exponential_rounding(2.0, unbiased=False),
    "exponential_rounding_nearest_b3": quant.exponential_rounding(3.0, unbiased=False),
    "standard_dithering": quant.standard_dithering(4),
    "standard_dithering_inf": quant.standard_dithering(8, norm=float("inf")),
    "natural_dithering": quant.natural_dithering(4),
    "natural_dithering_l1": quant.natural_dithering(6, norm=1),
    "sign": quant.sign(),
    "scaled_sign": quant.scaled_sign(),
    "top_k_natural_dithering": comb.top_k_natural_dithering(0.1, levels=7),
    "induced": comb.induced(sparse.top_k(0.1), sparse.rand_k(0.1)),
    "compose_unbiased": comb.compose(quant.natural_compression(), sparse.rand_k(0.25)),
    "compose_dense": comb.compose(quant.natural_compression(), quant.standard_dithering(16)),
    "scaled": comb.scaled(sparse.top_k(0.25), 0.5),
    "contractive_rand_k": comb.contractive(sparse.rand_k(0.1)),
    "contractive_top_k_nd": comb.contractive(comb.top_k_natural_dithering(0.1, levels=3)),
  }
