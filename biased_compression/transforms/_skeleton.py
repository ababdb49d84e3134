"""Machinery shared by the Optax transformations: the compression plan, keys, bit accounting.

Every transformation of the library (`compress`, `error_feedback`, `ef21`, ...) does the same
three things each step, and this module does them once:

1. **Plan** which leaves are compressed and how (static, from the shapes at trace time):
   ``scope="leaf"`` compresses each leaf on its own, ``scope="global"`` concatenates every
   compressed leaf into one vector (global Top-k); leaves with fewer than ``min_size``
   elements are sent dense.
2. **Compress** the per-worker messages: C applied group by group, or, before ``start_step``,
   the dense message in the leaf dtype. The branch is chosen inside jit from the step count.
3. **Aggregate** over ``axis_name`` (the mean of the decoded messages, in float32) and count
   the bits sent.

Randomness: the state holds a raw PRNG key that is split every step. With an axis name each
worker folds its axis index into the step key; compressors with shared randomness (rand-k with
``shared_indices=True``) use the step key unfolded, so every worker draws the same indices.

Bits: each worker's state has a `BitCount` with the bits of the last step and the running
total, stored exactly as two int32 words (high, low) in base 2^30 so that totals up to 2^61
bits neither overflow int32 nor lose precision in float32. `bits_sent` reads them on the host.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from biased_compression.collectives import _collectives
from biased_compression.compressors import _base
from biased_compression.compressors import _quantization
from biased_compression.transforms import _bits
from biased_compression.transforms import _options

_AXES_IN_USE: contextvars.ContextVar[list | None] = contextvars.ContextVar("axes", default=None)


@contextlib.contextmanager
def recording_axes():
  """Collects the ``axis_name`` of every transformation of the library traced in the block."""
  seen: list = []
  token = _AXES_IN_USE.set(seen)
  try:
    yield seen
  finally:
    _AXES_IN_USE.reset(token)


def _record_axis(axis_name) -> None:
  seen = _AXES_IN_USE.get()
  if seen is not None:
    seen.append(axis_name)


def _at_least_one(start_step):
  if _options.is_concrete(start_step):
    return max(int(np.asarray(start_step)), 1)
  return jnp.maximum(start_step, 1)


# -- the plan ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which leaves are compressed together, and the bits a step sends (static).

  Attributes:
    groups: tuples of leaf indices, each compressed as one vector.
    dense: indices of the leaves sent uncompressed (smaller than ``min_size``).
    sizes, shapes, dtypes: per leaf.
    bits_compressed: bits per worker of a compressed step (its uplink, see `bits_sent`).
    bits_dense: bits per worker of a dense (warm-up) step.
    bits_server: bits each worker sends as the server of its chunk in a compressed step
      (two_stage, majority_vote), or None for the methods without a server.
    bits_plain: bits per worker of the participants' plain mean besides the weighted one
      in a compressed step (``Step.exchange(..., plain=True)`` with probability or
      weights): the dense leaves' all-reduce and the psum groups' payloads once more (the
      all_gather groups' plain mean reuses their gathered payloads); a dense step's plain
      mean sends ``bits_dense`` once more.
  """

  groups: tuple[tuple[int, ...], ...]
  dense: tuple[int, ...]
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]
  bits_compressed: int
  bits_dense: int
  bits_server: int | None = None
  bits_plain: int = 0

  def group_dtype(self, group: Sequence[int]):
    return jnp.result_type(*[self.dtypes[i] for i in group])

  def group_size(self, group: Sequence[int]) -> int:
    return sum(math.prod(self.shapes[i]) for i in group)


def _dense_bits(shape, dtype, workers) -> int:
  # Distributed dense leaves are averaged by one float32 all-reduce (see Step._dense_mean).
  itemsize = 4 if workers is not None else jnp.dtype(dtype).itemsize
  return 8 * itemsize * math.prod(shape)


@functools.lru_cache(maxsize=256)
def _make_plan(compressor, scope, min_size, shapes, dtypes, method, workers) -> Plan:
  sizes = [math.prod(s) for s in shapes]
  compressed = [i for i, n in enumerate(sizes) if n >= max(min_size, 1)]
  dense = tuple(i for i in range(len(sizes)) if i not in compressed)
  if scope == "leaf":
    groups = tuple((i,) for i in compressed)
  else:
    groups = (tuple(compressed),) if compressed else ()
  plan = Plan(groups, dense, shapes, dtypes, 0, 0)
  uplink = downlink = plain = 0
  for g in groups:
    size, dtype = plan.group_size(g), plan.group_dtype(g)
    if workers is None:
      up, down = compressor.payload_bits(size, dtype), 0
    else:
      up, down = _collectives.traffic_bits(compressor, method, size, workers, dtype)
      if method not in _SERVER_METHODS:
        plain += _collectives.plain_traffic_bits(compressor, method, size, workers, dtype)
    uplink, downlink = uplink + up, downlink + down
  dense_bits = sum(_dense_bits(shapes[i], dtypes[i], workers) for i in dense)
  bits_d = sum(_dense_bits(s, t, workers) for s, t in zip(shapes, dtypes, strict=True))
  server = workers is not None and method in _SERVER_METHODS
  return dataclasses.replace(
    plan,
    bits_compressed=uplink + dense_bits,
    bits_dense=bits_d,
    bits_server=downlink if server else None,
    bits_plain=plain + dense_bits,
  )


_SERVER_METHODS = ("two_stage", "majority_vote")


def make_plan(
  compressor, scope: str, min_size: int, leaves: Sequence[jax.Array], method="auto", workers=None
) -> Plan:
  """The plan for these update leaves; ``workers``: the axis size n, None on one worker."""
  shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
  dtypes = tuple(jnp.dtype(jnp.result_type(x)) for x in leaves)
  return _make_plan(compressor, scope, int(min_size), shapes, dtypes, method, workers)


# -- one step of communication ---------------------------------------------------------------


class Step:
  """The communication of one step: compression (or dense warm-up), aggregation, bits.

  Messages and results are lists of float32 arrays, one per leaf of the updates. With an
  axis name the aggregation goes through the collectives' ``exchange``, which sends the
  encoded payloads; without one the "mean" is this worker's own message.
  """

  def __init__(
    self,
    compressor: _base.Compressor,
    plan: Plan,
    key: jax.Array,
    count: jax.Array,
    start_step,
    axis_name,
    *,
    method: str = "auto",
    participating=None,
    probability=None,
    weights=None,
    server_error: list[jax.Array] | None = None,
    fn: str = "transformation",
    reweighted: bool = False,
  ):
    self.fn = fn
    self.weights = weights
    self.exchanges = 0  # how many times this step exchanged: each one sends the plan's bits
    # Whether the aggregate's weights differ from the participants' plain 1/n (static: from
    # which arguments update was given), and how many plain means were sent besides.
    self.reweighted = reweighted
    self.plain_exchanges = 0
    self.compressor = compressor
    self.plan = plan
    self.count = count
    self.axis_name = axis_name
    self.method = method
    self.compressing = jnp.asarray(count >= start_step) if _may_warm_up(start_step) else None
    self.key = key if compressor.needs_key else None
    self.participating = participating
    self.probability = probability
    self.server_error = server_error  # per leaf (float32), or None

  # -- groups of leaves <-> vectors ---------------------------------------------------------

  def _vectors(self, leaves, groups):
    out = []
    for group in groups:
      if len(group) == 1:
        out.append(leaves[group[0]].reshape(-1))
      else:
        out.append(jnp.concatenate([leaves[i].reshape(-1) for i in group]))
    return out

  def _scatter(self, out, groups, vectors):
    for group, vec in zip(groups, vectors, strict=True):
      offset = 0
      for i in group:
        n = math.prod(self.plan.shapes[i])
        out[i] = vec[offset : offset + n].reshape(self.plan.shapes[i])
        offset += n
    return out

  # -- the two branches -----------------------------------------------------------------------

  def _dense(self, messages, server_error, plain=False):
    dtypes = self.plan.dtypes
    local = [m.astype(t).astype(jnp.float32) for m, t in zip(messages, dtypes, strict=True)]
    if self.axis_name is None:
      return local, local, None, server_error
    mean, plain_mean = self._dense_mean(local, range(len(local)), plain)
    return local, mean, plain_mean, server_error

  def _dense_mean(self, values, indices, plain=False):
    """(the participation-weighted float32 mean of dense leaves (one all-reduce), and with
    ``plain`` the participants' plain mean (a second all-reduce), else None)."""
    indices = tuple(indices)
    if not indices:
      return list(values), (list(values) if plain else None)
    vecs = [values[i].reshape(-1) for i in indices]
    result = _collectives.exchange(
      [jnp.concatenate(vecs)],
      [jnp.float32],
      _quantization.identity(),
      self.axis_name,
      method="psum",
      key=None,
      mask=self.participating,
      probability=self.probability,
      weights=self.weights,
      plain=plain,
    )
    mean = self._scatter(list(values), (indices,), result[0])
    return mean, (self._scatter(list(values), (indices,), result[3]) if plain else None)

  def _compressed(self, messages, server_error, plain=False):
    plan = self.plan
    dtypes = [plan.group_dtype(g) for g in plan.groups]
    vectors = self._vectors(messages, plan.groups)
    local, _, _, _ = self._dense(messages, None)  # dense leaves; compressed ones overwritten
    if self.axis_name is None:
      locals_ = []
      for g, (v, t) in enumerate(zip(vectors, dtypes, strict=True)):
        key = None if self.key is None else jax.random.fold_in(self.key, g)
        locals_.append(self.compressor.compress(v.astype(t), key=key).astype(jnp.float32))
      local = self._scatter(local, plan.groups, locals_)
      return local, local, None, server_error
    errors = None if server_error is None else self._vectors(server_error, plan.groups)
    result = _collectives.exchange(
      vectors,
      dtypes,
      self.compressor,
      self.axis_name,
      method=self.method,
      key=self.key,
      mask=self.participating,
      probability=self.probability,
      weights=self.weights,
      server_errors=errors,
      fn=self.fn,
      plain=plain,
    )
    means, locals_, errors = result[:3]
    mean, plain_mean = self._dense_mean(local, plan.dense, plain)
    mean = self._scatter(mean, plan.groups, means)
    if plain:
      plain_mean = self._scatter(plain_mean, plan.groups, result[3])
    local = self._scatter(local, plan.groups, locals_)
    if server_error is not None:
      server_error = self._scatter(list(server_error), plan.groups, errors)
    return local, mean, plain_mean, server_error

  def exchange(self, messages: list[jax.Array], *, plain: bool = False):
    """(this worker's decoded message C(m), the aggregate over workers), float32 lists.

    During warm-up both are the dense message. The server error (two_stage) is updated in
    ``self.server_error``. An algorithm may exchange several times per step (each exchange
    counts its bits); two_stage's one server error allows a single exchange.

    With ``plain=True`` it returns (C(m), aggregate, plain mean) with the plain mean the
    participants' unweighted (1/n) sum_{i in S} C(m_i) of the same messages: what moves a
    server estimate that must stay the mean of the workers' estimates when the aggregate is
    importance-weighted (``probability``). Otherwise (no weights, or explicit ``weights``,
    whose expectation only the caller knows) the aggregate is returned twice, at no cost. With
    importance weights the plain mean comes from the
    same exchange: free under all_gather (a second weighted sum of the gathered payloads),
    a second all-reduce under psum and for the dense leaves (counted in the bits, see
    `Plan.bits_plain`); two_stage and majority_vote refuse it with a ValueError.
    """
    if self.exchanges and self.server_error is not None:
      raise ValueError(
        f"{self.fn}: method='two_stage' keeps one server error per step, so an algorithm that "
        "exchanges more than once per step cannot use it; use method='all_gather'"
      )
    separate = plain and self.reweighted and self.axis_name is not None
    if separate:
      _collectives.check_plain(self.fn, self.method)
      self.plain_exchanges += 1
    self.exchanges += 1
    err = self.server_error
    if self.compressing is None:
      local, mean, plain_mean, err = self._compressed(messages, err, separate)
    else:
      local, mean, plain_mean, err = jax.lax.cond(
        self.compressing,
        functools.partial(self._compressed, plain=separate),
        functools.partial(self._dense, plain=separate),
        messages,
        err,
      )
    self.server_error = err
    if not plain:
      return local, mean
    return local, mean, (plain_mean if separate else mean)

  def bits(self, bits: _bits.BitCount) -> _bits.BitCount:
    def count(compressed: int, dense: int):
      step = jnp.asarray(_bits._words(compressed))
      if self.compressing is not None:
        step = jnp.where(self.compressing, step, jnp.asarray(_bits._words(dense)))
      if self.participating is not None:
        step = jnp.where(self.participating, step, jnp.zeros_like(step))
      return step

    k, p = self.exchanges, self.plain_exchanges
    server = None
    if self.plan.bits_server is not None:
      # a dense warm-up step is one all-reduce: no server sends anything
      server = count(k * self.plan.bits_server, 0)
    compressed = k * self.plan.bits_compressed + p * self.plan.bits_plain
    return _bits.bits_add(bits, count(compressed, (k + p) * self.plan.bits_dense), server)

  def where_compressing(self, compressed, dense):
    """Selects a value by the step's branch (``compressed`` when there is no warm-up)."""
    if self.compressing is None:
      return compressed
    return jnp.where(self.compressing, compressed, dense)


def _may_warm_up(start_step) -> bool:
  return not (_options.is_concrete(start_step) and int(np.asarray(start_step)) == 0)


def new_key(seed) -> jax.Array:
  """A raw uint32 PRNG key: plain integers, so Orbax and inject_hyperparams handle it."""
  return jax.random.PRNGKey(seed)


def split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  next_key, step_key = jax.random.split(key)
  return next_key, step_key


def flatten(tree):
  leaves, treedef = jax.tree.flatten(tree)
  return [jnp.asarray(x) for x in leaves], treedef


# -- the skeleton every transformation shares --------------------------------------------------

# An algorithm's step: (step, updates as float32 leaves, state fields as dicts of leaf lists)
# -> (float32 output leaves, new state fields).
Algorithm = Any


PARTICIPATION = ("mean", "sum_over_n")


def transformation(
  fn: str,
  state_cls: type,
  algorithm: Algorithm,
  compressor: _base.Compressor,
  options: _options.Options,
  *,
  worker_fields: Sequence[str] = (),
  server_fields: Sequence[str] = (),
  contractive: bool,
  participation: str,
  dense_first_step: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Builds a transformation whose state is ``state_cls(count, rng_key, <worker fields>,
  <server fields>, server_error, bits)`` (the field order is the state class's).

  Every field is a float32 pytree shaped like the updates, zero at initialisation. Worker
  fields (errors, estimates, shifts of worker i) are kept unchanged when the worker does not
  participate; server fields (the server's mean estimate, identical on every worker) are
  updated by everyone. ``algorithm(step, u, fields) -> (out, new fields)`` receives the
  updates as float32 leaves and the fields as ``{name: leaves}``, and calls
  ``step.exchange(messages)`` once or more (each exchange sends and counts its bits).

  The aggregate of an exchange is sum_i w_i C_i with per-worker weights: explicit ones given
  to ``update(..., weights=w_i)`` (e.g. a gradient code's decoding coefficients), else
  derived from ``participating`` / ``probability`` by ``participation``: ``"mean"`` gives
  the mean over the participants S (or the unbiased (1/n) sum_S C_i / p_i with
  probabilities); ``"sum_over_n"`` gives (1/n) sum_S c_i (or (1/n) sum_S c_i / p_i), so a
  server estimate moved by it stays the mean of the workers' estimates. The options are
  checked here, when the factory runs; ``dense_first_step`` makes the first step dense
  whatever ``start_step`` is.
  """
  options.check(fn, compressor)
  if participation not in PARTICIPATION:
    raise ValueError(f"{fn}: participation must be one of {PARTICIPATION}, got {participation!r}")
  fields = tuple(worker_fields) + tuple(server_fields)
  seed, axis_name, scope = options.seed, options.axis_name, options.scope
  start_step, min_size, method = options.start_step, options.min_size, options.method
  dense_axis_name = options.dense_axis_name
  if dense_first_step:
    start_step = _at_least_one(start_step)
  needs_server_error = axis_name is not None and method == "two_stage"
  has_server = axis_name is not None and method in _SERVER_METHODS

  def init_fn(params):
    zeros = optax.tree.zeros_like(params, dtype=jnp.float32)
    return state_cls(
      count=jnp.zeros([], jnp.int32),
      rng_key=new_key(seed),
      **{name: zeros for name in fields},
      server_error=zeros if needs_server_error else (),
      bits=_bits.bits_init(server=has_server),
    )

  def update_fn(
    updates, state, params=None, *, participating=None, probability=None, weights=None, **extra
  ):
    del params, extra
    _record_axis(axis_name)
    _options.check_worker_state(fn, state, axis_name)
    for name in (axis_name, dense_axis_name):
      if name is not None:
        _options.check_bound(fn, name)
    weighted = participating is not None or probability is not None or weights is not None
    if axis_name is None and weighted:
      raise ValueError(
        f"{fn}: participating / probability / weights need an axis_name (the workers)"
      )
    if weights is not None and probability is not None:
      raise ValueError(f"{fn}: give weights or probability, not both")
    leaves, treedef = flatten(updates)
    _options.check_dtypes(fn, updates, leaves)
    if dense_axis_name is not None:
      # hierarchical: the fast axis is reduced first, uncompressed, in float32
      means = jax.lax.pmean(optax.tree.cast(leaves, jnp.float32), dense_axis_name)
      leaves = [m.astype(x.dtype) for m, x in zip(means, leaves, strict=True)]
    workers = None if axis_name is None else int(jax.lax.axis_size(axis_name))
    plan = make_plan(compressor, scope, min_size, leaves, method, workers)
    if contractive:
      for group in plan.groups:
        _options.check_contractive(fn, compressor, plan.group_size(group))
    # Static (which arguments were given): whether the aggregate's weights differ from the
    # participants' plain 1/n, so that an algorithm asking for the plain mean gets it apart.
    # Explicit weights (a gradient code's decoding vector) are not: their expectation, which
    # a server estimate would need, is the caller's (see `diana`).
    reweighted = probability is not None or (participating is not None and participation == "mean")
    if participating is not None:
      participating = jnp.asarray(participating, jnp.bool_)
      if participation == "sum_over_n" and probability is None and weights is None:
        probability = 1.0
    next_key, step_key = split_key(state.rng_key)
    step = Step(
      compressor,
      plan,
      step_key,
      state.count,
      start_step,
      axis_name,
      method=method,
      participating=participating,
      probability=probability,
      weights=weights,
      server_error=flatten(state.server_error)[0] if needs_server_error else None,
      fn=fn,
      reweighted=reweighted,
    )
    old = {name: flatten(getattr(state, name))[0] for name in fields}
    out, new = algorithm(step, optax.tree.cast(leaves, jnp.float32), old)
    if participating is not None:
      for name in worker_fields:
        new[name] = optax.tree.where(participating, new[name], old[name])
    new_state = state_cls(
      count=optax.safe_increment(state.count),
      rng_key=next_key,
      **{name: treedef.unflatten(new[name]) for name in fields},
      server_error=treedef.unflatten(step.server_error) if needs_server_error else (),
      bits=step.bits(state.bits),
    )
    return optax.tree.cast_like(treedef.unflatten(out), treedef.unflatten(leaves)), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
