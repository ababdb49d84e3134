"""Realistic test vectors for compressors: Gaussian, heavy-tailed, and a real MLP gradient.

Everything is pure JAX and deterministic from a seed (no downloads), so the CLI tables and
the benchmarks can be reproduced anywhere.
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp

__all__ = ["test_vectors", "mlp_gradient", "MLP_SIZES"]

# Layer widths of the small MLP: 64 inputs -> 128 tanh units -> 10 classes.
MLP_SIZES = (64, 128, 10)
_BATCH = 256


def mlp_gradient(key: jax.Array) -> jax.Array:
  """Flattened gradient of a 2-layer MLP's cross-entropy loss at a random initialisation.

  The MLP has widths ``MLP_SIZES`` (64 -> 128 -> 10) with a tanh hidden layer, LeCun-normal
  weights and zero biases. The batch is 256 standard-normal inputs whose labels are the
  argmax of a random linear teacher, so the loss has a meaningful signal. The gradient of
  the mean cross-entropy with respect to all parameters is concatenated in the order of
  ``jax.flatten_util.ravel_pytree`` (``b1, b2, w1, w2``).

  Args:
    key: a JAX PRNG key.

  Returns:
    A float32 vector of 64 * 128 + 128 + 128 * 10 + 10 = 9610 elements.
  """
  d_in, d_hidden, d_out = MLP_SIZES
  k_w1, k_w2, k_x, k_teacher = jax.random.split(key, 4)
  params = {
    "w1": jax.random.normal(k_w1, (d_in, d_hidden), jnp.float32) / jnp.sqrt(d_in),
    "b1": jnp.zeros((d_hidden,), jnp.float32),
    "w2": jax.random.normal(k_w2, (d_hidden, d_out), jnp.float32) / jnp.sqrt(d_hidden),
    "b2": jnp.zeros((d_out,), jnp.float32),
  }
  inputs = jax.random.normal(k_x, (_BATCH, d_in), jnp.float32)
  teacher = jax.random.normal(k_teacher, (d_in, d_out), jnp.float32)
  labels = jnp.argmax(inputs @ teacher, axis=-1)

  def loss(p):
    hidden = jnp.tanh(inputs @ p["w1"] + p["b1"])
    logits = hidden @ p["w2"] + p["b2"]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

  flat, _ = jax.flatten_util.ravel_pytree(jax.grad(loss)(params))
  return flat.astype(jnp.float32)


def test_vectors(d: int | None = None, seed: int = 0) -> dict[str, jax.Array]:
  """Three float32 vectors on which to compare compressors.

  * ``"gaussian"``: i.i.d. N(0, 1), the easy case.
  * ``"heavy_tailed"``: i.i.d. Student-t with 2 degrees of freedom (infinite variance), so a
    few coordinates carry most of the energy, as in many real gradients.
  * ``"mlp_gradient"``: the gradient of a small MLP's cross-entropy loss (see
    `mlp_gradient`), 9610 elements whatever ``d``.

  Args:
    d: number of elements of the Gaussian and heavy-tailed vectors; defaults to the size of
      the MLP gradient (9610).
    seed: integer seed; the vectors are a deterministic function of ``(d, seed)``.

  Returns:
    A dict from vector name to a 1-D float32 array, in the order listed above.

  Example:
    >>> from biased_compression.metrics import _vectors
    >>> {k: v.shape for k, v in _vectors.test_vectors(1000).items()}
    {'gaussian': (1000,), 'heavy_tailed': (1000,), 'mlp_gradient': (9610,)}
  """
  if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
    raise ValueError(f"test_vectors: d must be a positive int or None, got {d!r}")
  k_gauss, k_heavy, k_mlp = jax.random.split(jax.random.key(seed), 3)
  grad = mlp_gradient(k_mlp)
  n = grad.shape[0] if d is None else d
  return {
    "gaussian": jax.random.normal(k_gauss, (n,), jnp.float32),
    "heavy_tailed": jax.random.t(k_heavy, 2.0, (n,), jnp.float32),
    "mlp_gradient": grad,
  }
