"""COCO-EF (biased compression with error feedback in gradient coding) and coded training.

`coded` turns any communicating transformation of the library into one worker of a
gradient-coded method: each step it draws the straggler set from the straggler model (with a
key derived from the state's ``rng_key``, identical on every worker), and calls the wrapped
``update`` with ``participating`` (this worker arrived) and ``weights`` (its decoding weight
for the arrivals, divided by the number of parts m). `coco_ef` is `coded` around error
feedback; the baselines of the method are `coded` around `biased_compression.compress`,
`biased_compression.diana` or uncoded `biased_compression.error_feedback`.

Each worker's update must be its coded gradient ``(B g)_i = sum_j B[i, j] g_j`` where g_j is
the gradient of part j's (mean) loss, i.e. the gradient of its coded local loss
``sum_j B[i, j] f_j`` (`biased_compression.coding.encode` / `encode_all` from part
gradients). The aggregate is then an estimate of ``(1/m) sum_j g_j``, the gradient of the
mean loss over the parts.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from biased_compression.coding import _codes
from biased_compression.coding import _stragglers
from biased_compression.compressors import _base
from biased_compression.transforms import _dcgd
from biased_compression.transforms import _error_feedback
from biased_compression.transforms import _options
from biased_compression.transforms import _skeleton

__all__ = ["DECODINGS", "Decoder", "alive_workers", "coco_ef", "coded"]

DECODINGS = ("sgc", "exact", "mean")

# Folded into the state's rng_key for the straggler draw: the compressors' step key is
# split from the same key, so the two draws are independent.
_STRAGGLER_TAG = 0x5717A


@dataclasses.dataclass(frozen=True, eq=False)
class Decoder:
  """How the server weighs the messages of the workers that arrived (host-side constants).

  ``weights(alive)`` gives, for a bool mask of the n workers (traced or not), the float32
  vector w with ``sum_i w_i (B g)_i`` the server's estimate of ``(1/m) sum_j g_j``; w is zero
  at the stragglers. Build it with `Decoder.make`.

  Attributes:
    code: the gradient code.
    decoding: ``"sgc"``, ``"exact"`` or ``"mean"`` (see `coded`).
    p: the straggling probabilities the ``"sgc"`` weights assume, shape (n,).
  """

  code: _codes.GradientCode
  decoding: str
  p: np.ndarray

  @classmethod
  def make(cls, code, decoding: str, p, fn: str = "coded") -> Decoder:
    if not isinstance(code, _codes.GradientCode):
      raise TypeError(f"{fn}: code must be a coding.GradientCode, got {code!r}")
    if decoding not in DECODINGS:
      raise ValueError(f"{fn}: decoding must be one of {DECODINGS}, got {decoding!r}")
    n = code.num_workers
    p_arr = np.asarray(p, np.float64)
    if p_arr.ndim == 0:
      p_arr = np.full(n, float(p_arr))
    if p_arr.shape != (n,):
      raise ValueError(f"{fn}: p must be a scalar or of shape ({n},), got shape {p_arr.shape}")
    if not np.all((p_arr >= 0) & (p_arr < 1)):
      raise ValueError(
        f"{fn}: p (the straggling probabilities assumed) must lie in [0, 1), got {p!r}"
      )
    if decoding in ("sgc", "mean"):
      _codes.sgc_weights(code, p_arr)  # refuses codes that are not 0/1 and balanced
    return cls(code, decoding, p_arr)

  def sgc(self) -> jax.Array:
    """The SGC weights 1 / (m d (1 - p_i)) of every worker, float32 (no mask)."""
    return jnp.asarray(_codes.sgc_weights(self.code, self.p) / self.code.num_parts, jnp.float32)

  def expected(self, stragglers: _stragglers.Stragglers | None) -> np.ndarray | None:
    """c_i = E[w_i 1{i in S}] under the straggler model (float64, shape (n,)), or None when
    there is no model (the mask comes from ``participating``).

    A server estimate h = sum_i c_i h_i moved by sum_{i in S} c_i m_i keeps the output
    h + sum_{i in S} w_i m_i unbiased for sum_i c_i u_i (`biased_compression.diana`). SGC:
    c_i = (1 - q_i) / (m d (1 - p_i)) with q_i the model's straggling probabilities (1 / (m d)
    when the weights assume the model's); a fixed straggler set: the weights themselves;
    ``"exact"`` and ``"mean"`` under iid stragglers: the mean of the weights over every
    straggler set weighted by its probability when n <= `EXACT_MAX_N`, else over
    `EXPECTATION_DRAWS` sets drawn with a fixed key.
    """
    if stragglers is None:
      return None
    n = self.code.num_workers
    q = stragglers.straggling_probabilities(n)
    if self.decoding == "sgc":
      return (1.0 - q) * _codes.sgc_weights(self.code, self.p) / self.code.num_parts
    # concrete even when `coded` is built inside a trace (the runner builds it under jit);
    # one compiled vmap over the straggler sets, not op-by-op
    with jax.ensure_compile_time_eval():
      if stragglers.kind != "iid":
        return np.asarray(self.weights(jnp.asarray(q == 0.0)), np.float64)
      many = jax.jit(jax.vmap(self.weights))
      if n <= EXACT_MAX_N:
        sets = (np.arange(1 << n)[:, None] >> np.arange(n)) & 1
        prob = np.prod(np.where(sets == 1, 1.0 - q, q), axis=1)
        return prob @ np.asarray(many(jnp.asarray(sets, jnp.bool_)), np.float64)
      keys = jax.random.split(jax.random.PRNGKey(_STRAGGLER_TAG), EXPECTATION_DRAWS)
      alive = jax.jit(jax.vmap(lambda k: stragglers.alive(k, n)))(keys)
      return np.asarray(many(alive), np.float64).mean(axis=0)

  def weights(self, alive: jax.Array) -> jax.Array:
    code = self.code
    alive = jnp.asarray(alive, jnp.bool_)
    m, d = code.num_parts, code.replication
    if self.decoding == "sgc":
      return jnp.where(alive, self.sgc(), 0.0)
    if self.decoding == "mean":
      count = jnp.sum(alive.astype(jnp.float32))
      return jnp.where(alive, 1.0 / (m / code.num_workers * d * jnp.maximum(count, 1.0)), 0.0)
    groups = _repetition_groups(code)
    if groups is not None:
      # fractional repetition: each alive worker of a group gets 1 / (alive in its group),
      # the minimum-norm solution of a^T B_S = 1^T (zero for a group that is all lost)
      ids, num = groups
      per_group = jax.ops.segment_sum(alive.astype(jnp.float32), jnp.asarray(ids), num)
      w = 1.0 / jnp.maximum(per_group[jnp.asarray(ids)], 1.0)
      return jnp.where(alive, w, 0.0) / m
    return jnp.where(alive, _min_norm_decoding(code, alive), 0.0) / m


_REFINEMENTS = 6
EXPECTATION_DRAWS = 1024
EXACT_MAX_N = 10  # up to 2^10 straggler sets are enumerated exactly


def _min_norm_decoding(code: _codes.GradientCode, alive: jax.Array) -> jax.Array:
  """The minimum-norm least-squares a of a^T B_S = 1^T, zero off S, in float32.

  With G = diag(alive) B, a = (G G^T)^+ G 1. G G^T is singular whenever the rows of B_S are
  dependent (more arrivals than a decoding needs), so it is solved as the ridge system
  (G G^T + eps I) a = G 1 by Cholesky, then refined: each refinement a += (G G^T +
  eps I)^{-1} (G 1 - G G^T a) shrinks the ridge's error on an eigenvalue lambda by
  eps / (lambda + eps), and none appears off range(G G^T) since G 1 lies in it. One n x n
  factorisation per step: far cheaper than an SVD (under ``vmap`` every simulated worker
  computes it).
  """
  g = jnp.asarray(code.B, jnp.float32) * alive[:, None].astype(jnp.float32)
  k = g @ g.T
  rhs = g.sum(axis=1)
  eps = 1e-5 * jnp.maximum(jnp.trace(k) / code.num_workers, 1e-30)
  chol = jnp.linalg.cholesky(k + eps * jnp.eye(code.num_workers, dtype=jnp.float32))

  def solve(b):
    return jax.scipy.linalg.cho_solve((chol, True), b)

  a = solve(rhs)
  for _ in range(_REFINEMENTS):
    a = a + solve(rhs - k @ a)
  return a


def _repetition_groups(code: _codes.GradientCode):
  """(group id per worker, number of groups) when B is a 0/1 fractional repetition code
  (workers in groups with identical rows, groups holding disjoint parts covering all)."""
  b = code.B
  if not np.all((b == 0) | (b == 1)) or not np.all(b.any(axis=1)):
    return None
  rows, ids = np.unique(b, axis=0, return_inverse=True)
  if not np.array_equal(rows.sum(axis=0), np.ones(code.num_parts)):
    return None
  return np.asarray(ids).reshape(-1).astype(np.int32), int(rows.shape[0])


def _default_p(stragglers: _stragglers.Stragglers | None, n: int) -> np.ndarray:
  if stragglers is not None and stragglers.kind == "iid":
    return stragglers.straggling_probabilities(n)
  return np.zeros(n)


def _check_stragglers(fn: str, stragglers, n: int) -> None:
  if stragglers is None:
    return
  if not isinstance(stragglers, _stragglers.Stragglers):
    raise TypeError(
      f"{fn}: stragglers must be a coding straggler model (coding.iid(p), coding.fixed(...), "
      f"coding.adversarial(...)) or None, got {stragglers!r}"
    )
  if stragglers.num_workers is not None and stragglers.num_workers != n:
    raise ValueError(
      f"{fn}: stragglers is a model for {stragglers.num_workers} workers but the code has n = {n}"
    )


def _coded_state(state: Any) -> Any:
  """The first state with an ``rng_key`` in ``state`` (itself, or inside a chain's tuple)."""
  if hasattr(state, "rng_key"):
    return state
  if isinstance(state, (tuple, list)):
    for part in state:
      found = _coded_state(part)
      if found is not None:
        return found
  return None


def alive_workers(stragglers: _stragglers.Stragglers, state: Any, num_workers: int) -> jax.Array:
  """The non-stragglers that `coded` / `coco_ef` draw at the step of ``state``.

  ``state`` is the state before the step: the wrapped transformation's, or a chain's that
  contains it (the first state with an ``rng_key`` is used), of one worker or of all (with a
  leading worker axis; every worker holds the same key). Use it to log the straggler sets of
  a run, or to check a step by hand.

  Returns:
    A bool array of shape (num_workers,), True for the workers that arrive.

  Raises:
    TypeError: no state with an ``rng_key`` in ``state``.

  Example:
    >>> import jax.numpy as jnp, optax, biased_compression as bc
    >>> from biased_compression import coding
    >>> model = coding.fixed([1], 3)
    >>> tx = optax.chain(optax.sgd(0.1), bc.coco_ef(bc.top_k(k=1), coding.sgc_cyclic(3, 1),
    ...                                            model, axis_name="w"))
    >>> state = bc.simulate(tx, 3, axis_name="w").init(jnp.zeros(2))
    >>> coding.alive_workers(model, state, 3)
    Array([ True, False,  True], dtype=bool)
  """
  found = _coded_state(state)
  if found is None:
    raise TypeError(
      "alive_workers: state holds no state with an rng_key (give the state of coded / "
      f"coco_ef, or of a chain that contains it), got {type(state).__name__}"
    )
  return stragglers.alive(_straggler_key(found), num_workers)


def _straggler_key(state: Any) -> jax.Array:
  key = jnp.asarray(state.rng_key)
  if key.ndim > 1:
    key = key[0]
  return jax.random.fold_in(key, _STRAGGLER_TAG)


def coded(
  tx: optax.GradientTransformation,
  code: _codes.GradientCode,
  stragglers: _stragglers.Stragglers | None,
  *,
  axis_name: Any,
  decoding: str = "sgc",
  p: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""One worker of a gradient-coded method: ``tx`` with stragglers and decoding weights.

  Each step, with n the size of ``axis_name`` (which must equal ``code.num_workers``):

  1. the set S of workers that arrive is drawn from ``stragglers`` with a key folded from
     the state's ``rng_key`` (the same on every worker, so all agree; reproducible from the
     seed), or given as ``update(..., participating=b_i)`` per worker (as a real system
     would learn it from timing; the mask is then all-gathered, n bools, not counted in the
     bits);
  2. the server's weight w_i of each arrival is computed by ``decoding``;
  3. ``tx.update(u_i, state, participating=(i in S), weights=w_i, expected_weights=c_i)``
     runs: a straggler sends nothing (no bits) and keeps its state; the aggregate is
     ``sum_{i in S} w_i C_i``. c_i = E[w_i 1{i in S}] under the straggler model
     (`Decoder.expected`): a server estimate (DIANA's shift, EF21's g) moves by
     ``sum_{i in S} c_i C_i`` and so stays sum_i c_i h_i, which keeps the output unbiased
     (without a model, c_i = w_i: the estimate moves by the aggregate itself).

  Decodings (m parts, replication d, the workers' updates the coded gradients (B g)_i):

  * ``"sgc"`` (stochastic gradient coding, the default): w_i = 1 / (m d (1 - p_i)); for a
    0/1 code with every part on d workers and independent stragglers with probabilities
    p_i, the estimate is unbiased for (1/m) sum_j g_j (the full gradient) when C is the
    identity (Bitar, Wootters, El Rouayheb, 2020).
  * ``"exact"``: w = a / m with a the minimum-norm least-squares solution of
    a^T B_S = 1^T: the exact full gradient whenever S can decode it (any n - s arrivals of
    `fractional_repetition` / `cyclic_repetition`; Tandon et al., 2017), its least-squares
    approximation otherwise. Closed form for fractional repetition (1 / the arrivals of each
    group); for other codes one n x n Cholesky factorisation per worker and step, in
    float32 (a refined ridge solution, see `Decoder`), about 1e-5 relative.
  * ``"mean"``: w_i = n / (m d |S|): the mean over the arrivals, ignoring who straggled
    (with d = 1 and `sgc_cyclic(n, 1)`, uncoded training that drops the stragglers).

  Every decoding gives zero weights when every worker straggles: the update is zero and the
  wrapped state (errors, shifts) is kept.

  Args:
    tx: a transformation of the library with ``axis_name`` (e.g. ``bc.compress(C,
      axis_name=...)``, ``bc.diana``, ``bc.error_feedback``); it must accept
      ``participating`` and ``weights`` and its state must have an ``rng_key``.
    code: the gradient code (`sgc_cyclic`, `fractional_repetition`, `cyclic_repetition`).
    stragglers: the straggler model (`iid`, `fixed`, `adversarial`), or None to take the
      mask from ``participating`` at every update.
    axis_name: the worker axis (the same as ``tx``'s).
    decoding: ``"sgc"``, ``"exact"`` or ``"mean"`` (above).
    p: the straggling probabilities the ``"sgc"`` weights assume (a scalar or one per
      worker, in [0, 1)); by default the model's for `iid`, else 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``tx``'s state.

  Raises:
    ValueError: an unknown decoding, p outside [0, 1), a straggler model for another n, a
      code that is not 0/1 and balanced with ``"sgc"`` or ``"mean"``, or (at the update) an
      axis size other than ``code.num_workers``, or no straggler model and no
      ``participating``.

  Example:
    >>> import jax, jax.numpy as jnp, biased_compression as bc
    >>> from biased_compression import coding
    >>> code = coding.fractional_repetition(4, 1)  # any 3 of the 4 workers decode
    >>> tx = coding.coded(bc.compress(bc.identity(), axis_name="w"), code,
    ...                   coding.fixed([2], 4), axis_name="w", decoding="exact")
    >>> parts = jnp.array([[1.0], [2.0], [3.0], [6.0]])  # the gradients of the 4 parts
    >>> workers = bc.simulate(tx, 4, axis_name="w")
    >>> out, _ = jax.jit(workers.update)(coding.encode_all(code, parts),
    ...                                  workers.init(jnp.zeros(1)))
    >>> out  # the mean of the part gradients, although worker 2 straggled
    Array([3.], dtype=float32)
  """
  fn = "coded"
  if axis_name is None:
    raise ValueError(f"{fn}: axis_name must name the worker axis, got None")
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(f"{fn}: tx must be an optax GradientTransformation, got {tx!r}")
  if not isinstance(code, _codes.GradientCode):
    raise TypeError(f"{fn}: code must be a coding.GradientCode, got {code!r}")
  n = code.num_workers
  _check_stragglers(fn, stragglers, n)
  decoder = Decoder.make(code, decoding, _default_p(stragglers, n) if p is None else p, fn)
  # computed once, and only if the wrapped algorithm keeps a server estimate (it asks for
  # step.state_weights): a Monte-Carlo average for "exact" decoding is seconds of work
  expected = functools.cache(lambda: jnp.asarray(decoder.expected(stragglers), jnp.float32))

  def _expect(index):
    if stragglers is None:
      return {}
    return {"expected_weights": lambda: expected()[index]}

  def update_fn(updates, state, params=None, *, participating=None, **extra):
    for name in ("weights", "probability", "expected_weights"):
      if name in extra:
        raise ValueError(f"{fn}: the decoding sets the weights; do not pass {name}=")
    _options.check_bound(fn, axis_name)
    size = int(jax.lax.axis_size(axis_name))
    if size != n:
      raise ValueError(f"{fn}: the axis {axis_name!r} has {size} workers but the code has n = {n}")
    if not hasattr(state, "rng_key"):
      raise TypeError(
        f"{fn}: tx's state has no rng_key; wrap a transformation of the library (bc.compress, "
        f"bc.error_feedback, bc.diana, ...), not a chain"
      )
    index = jax.lax.axis_index(axis_name)
    if participating is None and stragglers is None:
      raise ValueError(
        f"{fn}: no straggler model: pass participating= (this worker arrived) to update, or"
        " build it with stragglers=coding.iid(p) / coding.fixed(...)"
      )
    if decoder.decoding == "sgc":
      # the weight depends on this worker alone: no need for the others' draws
      if participating is None:
        mine = stragglers.alive_one(_straggler_key(state), index, n)
      else:
        mine = jnp.asarray(participating, jnp.bool_)
      w = decoder.sgc()[index]
      return tx.update(
        updates, state, params, participating=mine, weights=w, **_expect(index), **extra
      )
    if participating is None:
      alive = stragglers.alive(_straggler_key(state), n)
    else:
      alive = jax.lax.all_gather(jnp.asarray(participating, jnp.bool_), axis_name)
    w = decoder.weights(alive)
    return tx.update(
      updates,
      state,
      params,
      participating=alive[index],
      weights=w[index],
      **_expect(index),
      **extra,
    )

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


@_options.factory("C(p_i)", "mean")
def coco_ef(
  compressor: _base.Compressor,
  code: _codes.GradientCode,
  stragglers: _stragglers.Stragglers | None,
  *,
  decoding: str = "sgc",
  p: Any = None,
  error_feedback: bool = True,
  options: _options.Options,
) -> optax.GradientTransformationExtraArgs:
  r"""COCO-EF: biased compression with error feedback in gradient coding.

  The data are split into m parts, part j held by the workers with ``code.B[i, j] != 0``.
  At each step the non-stragglers S (drawn from ``stragglers``, see `coded`) each form their
  coded gradient plus their compression error, compress it and send it; the server combines
  the messages with the decoding weights w_i:

  .. math::
    p_i = (B g)_i + e_i, \qquad \Delta_i = C(p_i), \qquad e_i \leftarrow p_i - \Delta_i
    \quad (i \in S), \qquad \text{out} = \textstyle\sum_{i \in S} w_i \Delta_i,

  with w_i = 1 / (m d (1 - p_i)) by default (the SGC weights). A straggler computes and sends
  nothing and keeps its error e_i for the next step it completes (the choice made here: the
  abstract says only that non-stragglers "incorporate prior compression errors"). Each
  worker's update must be its coded gradient (B g)_i (see the module); chain the learning
  rate first, ``optax.chain(optax.sgd(lr), coco_ef(...))``, as for `error_feedback`.

  With p = 0, d = 1 (``sgc_cyclic(n, 1)``) and the identity compressor it is distributed
  gradient descent. ``error_feedback=False`` gives the ablation "COCO-EF without error
  feedback" (out = sum_S w_i C((B g)_i), state `CompressState`).

  This is a reconstruction: only the abstract of Li, Xiao and Skoglund (2026) was available,
  and no code. The coded gradients, the SGC weights and the balanced cyclic allocation are
  those of stochastic gradient coding (Bitar, Wootters, El Rouayheb, 2020), on which the same
  authors' earlier work (1-bit GC-DL, arXiv:2403.14716; GOCO, arXiv:2402.04193) builds; the
  error feedback is classic EF (Seide et al., 2014; Stich et al., 2018). The baselines of the
  paper are configurations of `coded`:

  * unbiased compression without error: ``coded(bc.compress(bc.rand_k(k), axis_name=a), ...)``;
  * compressed differences: ``coded(bc.diana(bc.rand_k(k), axis_name=a), ...)``;
  * COCO-EF without error feedback: ``coco_ef(C, ..., error_feedback=False)``;
  * uncoded error feedback dropping the stragglers: ``coco_ef(C, sgc_cyclic(n, 1), ...,
    decoding="mean")``;
  * exact uncompressed gradient coding: ``coded(bc.compress(bc.identity(), axis_name=a),
    fractional_repetition(n, s), ..., decoding="exact")``.

  DISTRIBUTED_METHODS

  Args:
    compressor: the compressor C, contractive (in B3) with error feedback, e.g.
      ``bc.top_k(0.01)`` or ``bc.grouped_sign(64)``.
    code: the gradient code, with ``code.num_workers`` equal to the size of ``axis_name``.
    stragglers: the straggler model, or None to pass ``participating`` at every update.
    decoding: ``"sgc"``, ``"exact"`` or ``"mean"`` (see `coded`).
    p: the straggling probabilities the SGC weights assume; by default the model's.
    error_feedback: False for the ablation without the error e_i.
    OPTIONS

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an
    `biased_compression.ErrorFeedbackState` (or a `biased_compression.CompressState`
    without error feedback). `biased_compression.bits_sent` counts what the worker sent on
    the steps it arrived.

  Raises:
    ValueError: no ``axis_name``, and the errors of `coded`; at the first update, a
      compressor that is not contractive (with error feedback).

  Example:
    >>> import jax, jax.numpy as jnp, optax, biased_compression as bc
    >>> from biased_compression import coding
    >>> code = coding.sgc_cyclic(4, 2)
    >>> tx = optax.chain(optax.sgd(0.1), bc.coco_ef(bc.top_k(k=1), code, coding.iid(0.25),
    ...                                            axis_name="w"))
    >>> workers = bc.simulate(tx, 4, axis_name="w")
    >>> grads = coding.encode_all(code, jnp.ones((4, 3)))  # each worker's coded gradient
    >>> updates, state = jax.jit(workers.update)(grads, workers.init(jnp.zeros(3)))
    >>> updates.shape
    (3,)

  References:
    C. Li, M. Xiao, M. Skoglund, Biased compression in gradient coding for distributed
    learning, 2026, arXiv:2603.16353 (abstract only).
    R. Bitar, M. Wootters, S. El Rouayheb, Stochastic gradient coding for straggler
    mitigation in distributed learning, IEEE JSAIT, 2020.
    R. Tandon, Q. Lei, A. G. Dimakis, N. Karampatziakis, Gradient coding, ICML 2017,
    arXiv:1612.03301.
  """
  fn = "coco_ef"
  if options.axis_name is None:
    raise ValueError(
      f"{fn}: axis_name must name the worker axis (gradient coding is distributed), got None"
    )
  if not isinstance(error_feedback, bool):
    raise ValueError(f"{fn}: error_feedback must be True or False, got {error_feedback!r}")

  if error_feedback:
    state_cls, algorithm = _error_feedback.ErrorFeedbackState, _error_feedback.EF
  else:
    state_cls, algorithm = _dcgd.CompressState, _dcgd.COMPRESS
  inner = _skeleton.from_algorithm(
    fn,
    state_cls,
    algorithm,
    compressor,
    options,
    contractive=error_feedback,
    participation="mean",
  )
  return coded(inner, code, stragglers, axis_name=options.axis_name, decoding=decoding, p=p)
