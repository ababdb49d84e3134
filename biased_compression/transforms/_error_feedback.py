"""Error feedback: classic EF, EF21, EF21-SGDM and EControl as Optax transformations.

Each is a factory returning an ``optax.GradientTransformationExtraArgs`` whose state is a
``NamedTuple`` with a step ``count``, a raw PRNG key ``rng_key``, the method's per-worker
vectors (float32, shaped like the updates) and a `BitCount` ``bits``. With ``axis_name`` the
transformation is one worker of a distributed method and must run where that axis is bound
(`biased_compression.simulate` for simulated workers, `biased_compression.shard` on
devices, or a ``jax.vmap`` / ``jax.shard_map`` of one's own); the server's aggregate is the
float32 mean of the workers' decoded messages. Without it, it is the single-node method.

Options shared by every transformation of the library:

* ``scope``: ``"leaf"`` compresses each leaf of the update on its own (as the papers' code
  does per parameter tensor); ``"global"`` compresses all of them as one vector (global Top-k).
  The constants of a per-leaf compressor are the worst leaf's (B3(max delta_l)).
* ``start_step``: steps ``count < start_step`` send the dense message (in the leaf dtype)
  instead of C(message); the state evolves exactly as with the identity compressor. It is
  decided inside jit from the count.
* ``min_size``: leaves with fewer elements (biases, norm scales) are always sent dense. This
  is an option rather than an ``optax.masked`` recipe because masked leaves would bypass the
  aggregation across workers.
* ``seed``: the seed of the random operators (rand-k, dithering, ...).

Every ``update`` also takes, with an axis name, per-worker extra arguments:
``participating`` (this worker's bool: outside the step's set S it keeps its state and sends
nothing), ``probability`` (its p_i: the aggregate becomes the unbiased (1/n) sum_S C_i / p_i)
and ``weights`` (its w_i: the aggregate is sum_S w_i C_i as it is, e.g. a gradient code's
decoding coefficients).

Under ``optax.inject_hyperparams`` the numeric hyper-parameters (``momentum``, ``eta``,
``start_step``) can be injected; the compressor and ``min_size`` fix shapes and must be static:
``optax.inject_hyperparams(bc.ef21_sgdm, static_args=("compressor", "min_size"))``.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from biased_compression.compressors import _base
from biased_compression.transforms import _bits
from biased_compression.transforms import _options
from biased_compression.transforms import _skeleton

__all__ = [
  "ErrorFeedbackState",
  "EF21State",
  "EF21SGDMState",
  "EControlState",
  "error_feedback",
  "ef21",
  "ef21_sgdm",
  "econtrol",
]

EF21_INITS = ("zero", "compressed", "dense")


class ErrorFeedbackState(NamedTuple):
  """State of `error_feedback`: the accumulated compression error of this worker."""

  count: jax.Array
  rng_key: jax.Array
  error: Any
  server_error: Any
  bits: _bits.BitCount
  nonfinite: Any = ()
  signature: Any = ()


class EF21State(NamedTuple):
  """State of `ef21`: this worker's estimate g_i and the server's mean estimate g."""

  count: jax.Array
  rng_key: jax.Array
  estimate: Any
  mean_estimate: Any
  server_error: Any
  bits: _bits.BitCount
  nonfinite: Any = ()
  signature: Any = ()


class EF21SGDMState(NamedTuple):
  """State of `ef21_sgdm`: momentum v_i, estimate g_i, and the mean estimate g."""

  count: jax.Array
  rng_key: jax.Array
  momentum: Any
  estimate: Any
  mean_estimate: Any
  server_error: Any
  bits: _bits.BitCount
  nonfinite: Any = ()
  signature: Any = ()


class EControlState(NamedTuple):
  """State of `econtrol`: error e_i, estimate h_i, and the mean estimate h."""

  count: jax.Array
  rng_key: jax.Array
  error: Any
  estimate: Any
  mean_estimate: Any
  server_error: Any
  bits: _bits.BitCount
  nonfinite: Any = ()
  signature: Any = ()


@_options.factory("Delta_i", "mean")
def error_feedback(
  compressor: _base.Compressor,
  *,
  options: _options.Options,
) -> optax.GradientTransformationExtraArgs:
  r"""Classic error feedback (EF, "EF14"): compress the update plus the accumulated error.

  For each worker i with update u_i and error e_i (zero at the start):

  .. math::
    p_i = u_i + e_i, \qquad \Delta_i = C(p_i), \qquad e_i \leftarrow p_i - \Delta_i,
    \qquad \text{out} = \tfrac1n \textstyle\sum_i \Delta_i.

  Nothing is lost: the sum of all outputs (n = 1) plus the final error equals the sum of all
  inputs (to float32 rounding; the error is kept in float32 whatever the update dtype).

  Where to chain it. After the learning rate, ``optax.chain(optax.sgd(lr),
  error_feedback(C))`` compresses p_i = lr * g_i + e_i: this is EF-SGD exactly as analysed
  (Stich et al., 2018; Karimireddy et al., 2019; Beznosikov et al., 2023). Before it,
  ``optax.chain(error_feedback(C), optax.sgd(lr))`` compresses raw gradients and scales the
  output. With a constant learning rate the two give the same iterates (the error is simply
  scaled by lr); with a schedule they differ: chained after, an error made at step t is
  applied at the learning rate of step t; chained before, at the rate of the step that
  finally sends it. Chain it after the learning rate (and after adaptive scalings such as
  Adam) to follow the papers.

  C must be contractive (in B3): an unbiased compressor is rejected at the first update
  unless wrapped as ``bc.contractive(C)``. A NaN in an update poisons the error for good;
  wrap the chain in ``optax.apply_if_finite`` to skip such steps (the error is then kept).

  DISTRIBUTED_METHODS

  Args:
    compressor: the compressor C, e.g. ``bc.top_k(0.01)``.
    OPTIONS

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an `ErrorFeedbackState`.

  Example:
    >>> import jax.numpy as jnp, optax, biased_compression as bc
    >>> tx = optax.chain(optax.sgd(0.1), bc.error_feedback(bc.top_k(k=1)))
    >>> params = jnp.array([1.0, -2.0, 0.5])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state)  # gradient of |x|^2 / 2 is x
    >>> updates
    Array([0. , 0.2, 0. ], dtype=float32)

  References:
    Seide et al., 1-bit stochastic gradient descent..., 2014.
    Stich, Cordonnier, Jaggi, Sparsified SGD with memory, 2018, arXiv:1809.07599.
    Karimireddy et al., Error feedback fixes SignSGD..., 2019, arXiv:1901.09847.
    Beznosikov, Horvath, Richtarik, Safaryan, On biased compression for distributed
    learning, 2023, arXiv:2002.12410.
  """

  return _skeleton.from_algorithm(
    "error_feedback",
    ErrorFeedbackState,
    EF,
    compressor,
    options,
    contractive=True,
    participation="mean",
  )


def ef_step(step, u, state):
  """One step of classic error feedback: p_i = u_i + e_i; Delta_i = C(p_i); e_i = p_i - Delta_i
  (the algorithm of `error_feedback`, and of `biased_compression.coco_ef`)."""
  p = optax.tree.add(u, state["error"])
  delta, mean = step.mean(step.like_updates(p))
  return mean, {"error": optax.tree.sub(p, delta)}


EF = _skeleton.FunctionAlgorithm(ef_step, fields=("error",))


def _ef21_step(step, v, estimate, mean_estimate):
  """One EF21 step on messages v: c_i = C(v_i - g_i); g_i += c_i; g += mean(c).

  Returns (g_i, the output g + aggregate(c), the server's new g). The output uses the
  aggregate's weights, the server's g moves by ``step.state_weights`` (the participants'
  plain (1/n) sum_S c_i under importance weights), so that it stays the mean of the g_i (as
  in `diana`); one exchange gives both.
  """
  rules = (step.weights, step.state_weights)
  c, (mean_c, plain_c) = step.mean(step.like_updates(optax.tree.sub(v, estimate)), weights=rules)
  out = optax.tree.add(mean_estimate, mean_c)
  return optax.tree.add(estimate, c), out, optax.tree.add(mean_estimate, plain_c)


@_options.factory("c_i", "sum_over_n")
def ef21(
  compressor: _base.Compressor,
  *,
  init: str = "zero",
  options: _options.Options,
) -> optax.GradientTransformationExtraArgs:
  r"""EF21: each worker sends the compressed change of its gradient estimate.

  .. math::
    c_i = C(u_i - g_i), \qquad g_i \leftarrow g_i + c_i, \qquad
    g \leftarrow g + \tfrac1n \textstyle\sum_i c_i, \qquad \text{out} = g.

  The server keeps g = mean_i g_i without receiving the g_i. For a constant input u and C in
  B3(delta), E||g_i - u||^2 shrinks by (1 - 1/delta) per step, so g tracks u.

  Initial estimate (``init``):

  * ``"zero"``: g_i = 0.
  * ``"compressed"``: g_i = C(first update), as in the paper. This is the same trajectory as
    ``"zero"``: with g_i = 0 the first step sends C(u_0) and sets g_i = C(u_0). Accepted so that
    the paper's set-up can be named.
  * ``"dense"``: g_i = the first update, sent uncompressed (one dense step; the same as
    ``start_step=1``).

  DISTRIBUTED_METHODS

  Args:
    compressor: a contractive compressor C (B3).
    init: ``"zero"``, ``"compressed"`` or ``"dense"``.
    OPTIONS

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an `EF21State`. Chain it before the
    learning rate (it compresses gradients): ``optax.chain(bc.ef21(C), optax.sgd(lr))``.

  References:
    Richtarik, Sokolov, Fatkhullin, EF21: a new, simpler, theoretically better, and
    practically faster error feedback, 2021, arXiv:2106.05203.
  """
  if init not in EF21_INITS:
    raise ValueError(f"ef21: init must be one of {EF21_INITS}, got {init!r}")

  def algorithm(step, u, state):
    est, out, mean_est = _ef21_step(step, u, state["estimate"], state["mean_estimate"])
    return out, {"estimate": est, "mean_estimate": mean_est}

  return _skeleton.from_algorithm(
    "ef21",
    EF21State,
    _skeleton.FunctionAlgorithm(algorithm, fields=("estimate", "mean_estimate")),
    compressor,
    options,
    shared=("mean_estimate",),
    contractive=True,
    participation="sum_over_n",
    dense_first_step=init == "dense",
  )


@_options.factory("c_i", "sum_over_n")
def ef21_sgdm(
  compressor: _base.Compressor,
  momentum: float = 0.9,
  *,
  options: _options.Options,
) -> optax.GradientTransformationExtraArgs:
  r"""EF21-SGDM: EF21 applied to each worker's Polyak momentum of its stochastic gradients.

  With momentum beta (the paper's eta = 1 - beta):

  .. math::
    v_i \leftarrow \beta v_i + (1 - \beta) u_i, \qquad c_i = C(v_i - g_i), \qquad
    g_i \leftarrow g_i + c_i, \qquad g \leftarrow g + \tfrac1n \textstyle\sum_i c_i,
    \qquad \text{out} = g.

  v_i starts at the first update (our choice: it avoids damping the first steps by
  1 - beta; the paper's analysis allows any initial estimate). ``momentum=0`` is `ef21`.

  DISTRIBUTED_METHODS

  Args:
    compressor: a contractive compressor C (B3).
    momentum: beta in [0, 1).
    OPTIONS

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an `EF21SGDMState`.

  References:
    Fatkhullin, Tyurin, Richtarik, Momentum provably improves error feedback!, NeurIPS 2023,
    arXiv:2305.15155.
  """
  _options.check_unit_interval("ef21_sgdm", "momentum", momentum, low_open=False, high_open=True)

  def algorithm(step, u, state):
    first = step.count == 0
    # float32 arithmetic whether momentum is a Python float or an injected hyper-parameter
    beta = jnp.asarray(momentum, jnp.float32)
    v = jax.tree.map(
      lambda x, m: jnp.where(first, x, beta * m + (1.0 - beta) * x), u, state["momentum"]
    )
    est, out, mean_est = _ef21_step(step, v, state["estimate"], state["mean_estimate"])
    return out, {"momentum": v, "estimate": est, "mean_estimate": mean_est}

  return _skeleton.from_algorithm(
    "ef21_sgdm",
    EF21SGDMState,
    _skeleton.FunctionAlgorithm(algorithm, fields=("momentum", "estimate", "mean_estimate")),
    compressor,
    options,
    shared=("mean_estimate",),
    contractive=True,
    participation="sum_over_n",
  )


@_options.factory("Delta_i", "sum_over_n")
def econtrol(
  compressor: _base.Compressor,
  eta: float,
  *,
  options: _options.Options,
) -> optax.GradientTransformationExtraArgs:
  r"""EControl: error feedback whose strength is controlled by eta.

  .. math::
    \Delta_i = C(\eta e_i + u_i - h_i), \qquad e_i \leftarrow e_i + u_i - h_i - \Delta_i,
    \qquad h_i \leftarrow h_i + \Delta_i, \qquad
    \text{out} = h + \tfrac1n \textstyle\sum_i \Delta_i \; (\text{the new } h).

  One compressed message Delta_i both corrects the estimate h_i and feeds the error back.

  DISTRIBUTED_METHODS

  Args:
    compressor: a contractive compressor C (B3).
    eta: the feedback strength in (0, 1] (the paper tunes it; small eta is more stable:
      measured with Top-k at delta = 32 on 8 workers and a constant gradient, eta = 0.5
      diverges and eta <= 0.05 stays bounded; eta of order 1 / delta is a safe start).
    OPTIONS

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an `EControlState`. Chain it before the
    learning rate: ``optax.chain(bc.econtrol(C, eta), optax.sgd(lr))``.

  References:
    Gao, Islamov, Stich, EControl: fast distributed optimization with compression and error
    control, ICLR 2024, arXiv:2311.05645.
  """
  _options.check_unit_interval("econtrol", "eta", eta, low_open=True, high_open=False)

  def algorithm(step, u, state):
    e, h = state["error"], state["estimate"]
    target = optax.tree.sub(u, h)
    eta32 = jnp.asarray(eta, jnp.float32)
    messages = jax.tree.map(lambda ei, t: eta32 * ei + t, e, target)
    rules = (step.weights, step.state_weights)
    delta, (mean_delta, plain_delta) = step.mean(step.like_updates(messages), weights=rules)
    # with importance weights the server's h moves by the plain mean (it stays mean_i h_i)
    out = optax.tree.add(state["mean_estimate"], mean_delta)
    mean_est = optax.tree.add(state["mean_estimate"], plain_delta)
    return out, {
      "error": optax.tree.sub(optax.tree.add(e, target), delta),
      "estimate": optax.tree.add(h, delta),
      "mean_estimate": mean_est,
    }

  return _skeleton.from_algorithm(
    "econtrol",
    EControlState,
    _skeleton.FunctionAlgorithm(algorithm, fields=("error", "estimate", "mean_estimate")),
    compressor,
    options,
    shared=("mean_estimate",),
    contractive=True,
    participation="sum_over_n",
  )
