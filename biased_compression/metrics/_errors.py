"""Relative errors of a compressor on given vectors, measured on the host in float64."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

__all__ = ["relative_errors"]


def relative_errors(
  compressor: Any, vectors: dict[str, jax.Array], draws: int, seed: int = 0
) -> dict[str, float]:
  """Mean relative error ``||C(x) - x||^2 / ||x||^2`` of a compressor on each vector.

  The compress call is jitted (once per vector size). Random operators average over
  ``draws`` keys folded from ``jax.random.key(seed)``; deterministic ones are evaluated
  once. The error itself is computed in float64 on the host.

  Args:
    compressor: a `Compressor`.
    vectors: name -> 1-D float32 array.
    draws: number of keys for random operators, >= 1.
    seed: seed of the keys.

  Returns:
    name -> mean relative error (``nan`` for an all-zero vector).
  """
  random = compressor.needs_key
  compress = jax.jit(lambda x, key: compressor.compress(x, key=key if random else None))
  base = jax.random.key(seed)
  keys = [jax.random.fold_in(base, i) for i in range(draws if random else 1)]
  out = {}
  for name, x in vectors.items():
    x64 = np.asarray(x, np.float64)
    norm2 = float(np.dot(x64, x64))
    errs = []
    for key in keys:
      y = np.asarray(compress(x, key), np.float64)
      errs.append(float(np.sum((y - x64) ** 2)) / norm2 if norm2 > 0 else math.nan)
    out[name] = float(np.mean(errs))
  return out
