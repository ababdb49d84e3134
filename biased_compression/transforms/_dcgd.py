"""Compressed gradient methods without error feedback: CGD / DCSGD / DSignSGD, and DIANA.

The options every transformation shares are `biased_compression.transforms.Options`; the
state layout is the skeleton's (`biased_compression.transforms.transformation`).
"""

from __future__ import annotations

import math
from typing import Any
from typing import NamedTuple

import jax
import optax

from biased_compression.compressors import _base
from biased_compression.transforms import _bits
from biased_compression.transforms import _options
from biased_compression.transforms import _skeleton

__all__ = ["CompressState", "DianaState", "compress", "diana"]


class CompressState(NamedTuple):
  """State of `compress`: only the step count, the key and the bits sent."""

  count: jax.Array
  rng_key: jax.Array
  server_error: Any
  bits: _bits.BitCount
  nonfinite: Any = ()
  signature: Any = ()


class DianaState(NamedTuple):
  """State of `diana`: this worker's shift h_i and the server's mean shift h = mean_i h_i
  (kept so under partial participation and importance weights too)."""

  count: jax.Array
  rng_key: jax.Array
  shift: Any
  mean_shift: Any
  server_error: Any
  bits: _bits.BitCount
  nonfinite: Any = ()
  signature: Any = ()


def compress_step(step, u, state):
  """One step of compressed gradients: out = mean_i C(u_i) (the skeleton's algorithm of
  `compress`, and of `biased_compression.coco_ef` without error feedback)."""
  del state
  return step.mean(step.like_updates(u)).mean, {}


COMPRESS = _skeleton.FunctionAlgorithm(compress_step)


@_options.factory("C(u_i)", "mean")
def compress(
  compressor: _base.Compressor,
  *,
  options: _options.Options,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces each update by its compression: out = (1/n) sum_i C(u_i).

  Chained with ``optax.sgd(lr)`` on one worker this is compressed gradient descent (CGD):
  x <- x - lr C(grad f(x)). For f L-smooth and mu-strongly convex, C in B3(delta) and
  lr = 1/L, E f(x+) - f* <= (1 - mu / (delta L)) (f(x) - f*); for unbiased C in U(omega),
  lr = 1 / ((1 + omega) L) gives 1 - mu / ((1 + omega) L). With ``axis_name`` it is DCSGD
  (distributed compressed SGD, the mean of the workers' compressed gradients), and with
  ``bc.sign()`` it is DSignSGD (the mean of the workers' signs). Without error feedback a
  biased compressor can make distributed GD diverge (see `error_feedback`).

  DISTRIBUTED_METHODS

  Args:
    compressor: the compressor C.
    OPTIONS

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `CompressState`.

  Example:
    >>> import jax.numpy as jnp, optax, biased_compression as bc
    >>> tx = optax.chain(bc.compress(bc.top_k(k=1)), optax.sgd(1.0))
    >>> state = tx.init(jnp.zeros(3))
    >>> updates, state = tx.update(jnp.array([1.0, -3.0, 2.0]), state)
    >>> updates
    Array([-0.,  3., -0.], dtype=float32)

  References:
    Beznosikov, Horvath, Richtarik, Safaryan, On biased compression for distributed
    learning, 2023, arXiv:2002.12410.
    Compagnoni, Islamov, Proske, Lucchi, Unbiased and sign compression in distributed
    learning: comparing noise resilience via SDEs, AISTATS 2025, arXiv:2502.17009.
  """

  return _skeleton.from_algorithm(
    "compress",
    CompressState,
    COMPRESS,
    compressor,
    options,
    contractive=False,
    participation="mean",
  )


@_options.factory("m_i", "sum_over_n")
def diana(
  compressor: _base.Compressor,
  *,
  alpha: float | None = None,
  options: _options.Options,
) -> optax.GradientTransformationExtraArgs:
  r"""DIANA: compress the difference between the gradient and a learned shift.

  With an unbiased C in U(omega):

  .. math::
    m_i = C(u_i - h_i), \qquad h_i \leftarrow h_i + \alpha m_i, \qquad
    \text{out} = h + \tfrac1n \textstyle\sum_i m_i, \qquad
    h \leftarrow h + \alpha \tfrac1n \textstyle\sum_i m_i.

  The output is an unbiased estimate of the mean update, and the shifts h_i learn each
  worker's gradient at the optimum, so the compression variance vanishes there: with
  heterogeneous data DIANA converges to the exact optimum where DCSGD stalls at a
  variance-dominated neighbourhood. Dense steps (``start_step``, ``min_size`` leaves) use the
  identity compressor and alpha = 1.

  The server's shift is kept equal to the mean of the workers' shifts, h = (1/n) sum_i h_i.
  With partial participation (a set S of workers sends m_i this step; the others keep h_i)
  and aggregation weights w_i (``probability`` p_i gives w_i = 1/(n p_i), ``participating``
  alone w_i = 1/n):

  .. math::
    \text{out} = h + \textstyle\sum_{i \in S} w_i m_i, \qquad
    h \leftarrow h + \alpha \tfrac1n \textstyle\sum_{i \in S} m_i.

  With w_i = 1/(n p_i) and i in S with probability p_i, E out = h + (1/n) sum_i (u_i - h_i)
  = (1/n) sum_i u_i (over C and S): the output is unbiased, while the shift moves by the
  unweighted sum of the participants' messages, as their own shifts did (moving it by the
  weighted sum would make h drift away from (1/n) sum_i h_i and DIANA stall away from the
  optimum). Under ``method="all_gather"`` (the default for non-linear codes) that plain sum
  comes from the same gathered payloads, without more traffic; under ``"psum"`` it is a
  second all-reduce, counted in `bits_sent` (as is a second all-reduce of the dense
  leaves); ``"two_stage"`` and ``"majority_vote"`` refuse ``probability``. Explicit
  ``weights`` w_i (a gradient code's decoding vector) move the shift by the same weighted
  aggregate as the output, h <- h + alpha sum_{i in S} w_i m_i: the shift that keeps the
  output unbiased is sum_i E[w_i 1{i in S}] h_i, which only the caller knows; for
  unbiased weights the drift of this rule has mean zero.

  DISTRIBUTED_METHODS

  Args:
    compressor: an unbiased compressor, e.g. ``bc.rand_k(0.1)`` or
      ``bc.induced(bc.top_k(0.01), bc.rand_k(0.01))``.
    alpha: the shift step in (0, 1]; by default 1 / (1 + omega(d)) for each compressed
      vector of d elements (the largest step the analysis allows).
    OPTIONS

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a `DianaState`. Chain it before the
    learning rate: ``optax.chain(bc.diana(C), optax.sgd(lr))``.

  References:
    Mishchenko, Gorbunov, Takac, Richtarik, Distributed learning with compressed gradient
    differences, 2019, arXiv:1901.09269.
    Horvath, Richtarik, A better alternative to error feedback for communication-efficient
    distributed learning (induced compressor), ICLR 2021, arXiv:2006.11077.
  """
  _options.check_compressor("diana", compressor)
  if not compressor.unbiased:
    raise ValueError(
      f"diana: compressor must be unbiased, got {compressor.name}, which is biased; use an "
      "unbiased one or the induced compressor, e.g. bc.induced(bc.top_k(0.01), "
      "bc.rand_k(0.01))"
    )
  if alpha is not None:
    _options.check_unit_interval("diana", "alpha", alpha, low_open=True, high_open=False)

  def leaf_alphas(plan):
    alphas = [1.0] * len(plan.shapes)
    for group in plan.groups:
      if alpha is None:
        omega = compressor.omega(plan.group_size(group))
        a = 1.0 / (1.0 + omega) if math.isfinite(omega) else 0.0
      else:
        a = alpha
      for i in group:
        alphas[i] = a
    return alphas

  def algorithm(step, u, state):
    h, mean_h = state["shift"], state["mean_shift"]
    # The output uses the (possibly importance-weighted) aggregate, unbiased for the mean of
    # the m_i; the server's shift moves by the participants' plain (1/n) sum_S m_i, so that
    # it stays (1/n) sum_i h_i (each participant moves its own h_i by alpha m_i).
    rules = (step.weights, step.state_weights)
    m, (mean_m, plain_m) = step.mean(step.like_updates(optax.tree.sub(u, h)), weights=rules)
    treedef = jax.tree.structure(u)
    alphas = [step.where_compressing(a, 1.0) for a in leaf_alphas(step.plan)]
    alphas = treedef.unflatten(alphas)
    out = optax.tree.add(mean_h, mean_m)
    return out, {
      "shift": jax.tree.map(lambda s, a, mi: s + a * mi, h, alphas, m),
      "mean_shift": jax.tree.map(lambda s, a, pm: s + a * pm, mean_h, alphas, plain_m),
    }

  return _skeleton.from_algorithm(
    "diana",
    DianaState,
    _skeleton.FunctionAlgorithm(algorithm, fields=("shift", "mean_shift")),
    compressor,
    options,
    shared=("mean_shift",),
    contractive=False,
    participation="sum_over_n",
  )
