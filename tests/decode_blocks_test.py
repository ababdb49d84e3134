"""The gathered payloads are decoded in blocks: every block size gives the same mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import biased_compression as bc
from biased_compression.collectives import _collectives

N, D = 8, 24


def _mean(compressor, x, mask=None, probability=None):
  def f(v, m, p):
    return bc.compressed_mean(
      v, compressor, "w", key=jax.random.key(1), method="all_gather", mask=m, probability=p
    ).mean

  axes = (0, None if mask is None else 0, None if probability is None else 0)
  return np.asarray(jax.jit(jax.vmap(f, in_axes=axes, axis_name="w"))(x, mask, probability)[0])


@pytest.mark.parametrize(
  "compressor",
  [bc.top_k(k=3), bc.sign(), pytest.param(bc.natural_dithering(3), marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_every_block_size_gives_the_same_mean(compressor, weighted, monkeypatch):
  x = jax.random.normal(jax.random.key(0), (N, D))
  mask = probability = None
  if weighted:
    mask = jnp.arange(N) % 3 != 0
    probability = jnp.linspace(0.3, 0.9, N)
  means = {}
  # one payload at a time (the scan), blocks of 3 (the last padded), 5, and all 8 at once
  for block in (1, 3, 5, N):
    monkeypatch.setattr(_collectives, "_DECODE_BLOCK", block * D)
    means[block] = _mean(compressor, x, mask, probability)
  for block in (3, 5, N):
    np.testing.assert_allclose(means[block], means[1], rtol=1e-6, atol=1e-6)
  # and the mean is the right one: the float64 mean of the decoded messages
  keys = [bc.worker_key(jax.random.key(1), i) for i in range(N)]
  decoded = np.stack(
    [np.asarray(compressor.compress(x[i], key=keys[i]), np.float64) for i in range(N)]
  )
  if weighted:
    w = np.where(np.asarray(mask), 1.0 / (N * np.asarray(probability)), 0.0)
    expected = (w[:, None] * decoded).sum(0)
  else:
    expected = decoded.mean(0)
  np.testing.assert_allclose(means[3], expected, rtol=1e-5, atol=1e-6)
