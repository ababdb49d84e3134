"""One step of communication: `Step.mean`, the exchange every algorithm calls, and its plan.

`Step` is what an algorithm's ``step`` receives (see `biased_compression.transforms._skeleton`
for the protocol and the builder): ``step.mean(tree, compressor=C | None, weights=...)`` is one
exchange of any pytree over the workers, with its bits counted exactly; `Plan` says which
leaves of an exchange are compressed together and what it sends.

Randomness: the step key is the same on every worker; the collectives fold in the axis index
for per-worker draws (not for shared randomness), and the i-th exchange of a step (i >= 1)
folds in i. Bits: counted statically per exchange (as if compressing, as if in warm-up, and per
branch of `Step.cond`) and selected inside jit by the step's branch and participation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from biased_compression.collectives import _collectives
from biased_compression.compressors import _base
from biased_compression.compressors import _quantization
from biased_compression.transforms import _bits
from biased_compression.transforms import _options

# -- the plan ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which leaves of one exchange are compressed together, and the bits it sends (static).

  Attributes:
    groups: tuples of leaf indices, each compressed as one vector.
    dense: indices of the leaves sent uncompressed (smaller than ``min_size``; every leaf
      of a dense exchange).
    shapes, dtypes: per leaf.
    bits_compressed: bits per worker of the exchange compressed (its uplink, see
      `bits_sent`), for one weighting.
    bits_dense: bits per worker of the exchange sent dense (warm-up), for one weighting.
    bits_server: bits each worker sends as the server of its chunk (two_stage,
      majority_vote), or None for the methods without a server.
    bits_plain: bits per worker of each further weighting of the same compressed exchange
      (`Step.mean` with several weights): the dense leaves' all-reduce and the psum groups'
      payloads once more (the all_gather groups reuse their gathered payloads); a dense
      exchange sends ``bits_dense`` once more per weighting.
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
  # Distributed dense leaves are averaged by one float32 all-reduce (see Step._dense).
  itemsize = 4 if workers is not None else jnp.dtype(dtype).itemsize
  return 8 * itemsize * math.prod(shape)


@functools.lru_cache(maxsize=256)
def _make_plan(compressor, scope, min_size, shapes, dtypes, method, workers) -> Plan:
  sizes = [math.prod(s) for s in shapes]
  if compressor is None:
    compressed = []
  else:
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
  server = workers is not None and method in _SERVER_METHODS and bool(groups)
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
  """The plan for these leaves (``compressor=None``: all dense); ``workers``: the axis size
  n, None on one worker."""
  shapes = tuple(tuple(jnp.shape(x)) for x in leaves)
  dtypes = tuple(jnp.dtype(jnp.result_type(x)) for x in leaves)
  return _make_plan(compressor, scope, int(min_size), shapes, dtypes, method, workers)


# -- one step of communication ---------------------------------------------------------------


class Mean(NamedTuple):
  """What `Step.mean` returns.

  Attributes:
    local: this worker's own decoded message C(x_i) (float32 pytree like the input), for
      error feedback; the message itself for a dense exchange.
    mean: the aggregate over the workers (float32, identical on every worker); a tuple of
      aggregates when several weightings were asked for.
  """

  local: Any
  mean: Any


_DEFAULT = object()  # "the transformation's compressor"


@dataclasses.dataclass(frozen=True, eq=False)
class Weighting:
  """One aggregation rule of a step (see `Step.weights`, `Step.state_weights`): this worker's
  weight w_i (traced, or None for 1) and the normaliser (None, a float, or traced |S|)."""

  weight: Any
  total: Any

  @property
  def spec(self):
    return (self.weight, self.total)


class Step:
  """The communication of one step of one worker, handed to the algorithm.

  Its one verb is `mean`: an exchange of any pytree over the workers, dense or compressed,
  with its bits counted. Around it: the step's ``count``, the shared ``key``, whether this
  step compresses (``start_step``), the weightings of participation, `branch` and
  `where_compressing` for algorithms whose warm-up differs from "send the message dense".

  Attributes:
    count: the step count (traced int32).
    key: the step's PRNG key, the same on every worker (fold in the axis index for
      per-worker randomness).
    axis_name: the worker axis, or None on one worker.
    num_workers: n, or None on one worker.
    compressor: the transformation's compressor (``compressor=`` of `mean` by default).
    compressing: whether compressed exchanges compress this step (traced bool), or None
      when there is no warm-up (always).
    weights: the default `Weighting` of the aggregates (participation and ``weights=``).
    state_weights: the `Weighting` that keeps a server estimate equal to the workers' own
      estimates weighted by their expected weights (the participants' plain (1/n) sum under
      importance weights; ``expected_weights`` from `biased_compression.coding.coded`); the
      same object as ``weights`` when the two coincide, so asking for both costs nothing.
  """

  def __init__(
    self,
    compressor: _base.Compressor | None,
    options: _options.Options,
    key: jax.Array,
    count: jax.Array,
    start_step,
    axis_name,
    updates: Sequence[jax.Array],
    *,
    participating=None,
    weights: Weighting | None = None,
    state_weights: Weighting | Callable[[], Weighting] | None = None,
    server_error: list[jax.Array] | None = None,
    has_server: bool = False,
    fn: str = "transformation",
  ):
    self.fn = fn
    self.compressor = compressor
    self.options = options
    self.method = options.method
    self.count = count
    self.key = key
    self.axis_name = axis_name
    self.num_workers = None if axis_name is None else int(jax.lax.axis_size(axis_name))
    self.compressing = jnp.asarray(count >= start_step) if _may_warm_up(start_step) else None
    self.participating = participating
    if weights is None and axis_name is not None:
      weights = Weighting(*_collectives.weight_spec(axis_name))
    self.weights = weights
    # a Weighting, or a function giving one (built on first use: coded's expected weights)
    self._state_weights = weights if state_weights is None else state_weights
    self.exchanges = 0  # how many times this step exchanged
    self.server_error = server_error  # per update leaf (float32), two_stage only
    self._server_used = False
    self._has_server = has_server
    self._updates = list(updates)  # the updates' leaves: their shapes and wire dtypes
    self.start_step = start_step
    self._mode = "auto"  # "compressed" / "dense" inside `branch`
    # static bit counts of this step: if it compresses, if it is a warm-up step
    self._bits = {"compressed": 0, "dense": 0, "server": 0}
    self._cond_bits = []  # (kind, predicate, bits if true, bits if false) of `cond`

  # -- what the algorithms read -------------------------------------------------------------

  @property
  def state_weights(self) -> Weighting | None:
    if callable(self._state_weights):
      self._state_weights = self._state_weights()
    return self._state_weights

  @functools.cached_property
  def plan(self) -> Plan:
    """The plan of the updates under the transformation's compressor (which leaves are
    compressed together; e.g. `biased_compression.diana` sets its step per group)."""
    return make_plan(
      self.compressor,
      self.options.scope,
      self.options.min_size,
      self._updates,
      self.method,
      self.num_workers,
    )

  def like_updates(self, tree):
    """``tree`` (leaves aligned with the updates) cast to the updates' dtypes: the wire dtypes
    the library's algorithms send in (bfloat16 gradients travel as bfloat16)."""
    leaves, treedef = jax.tree.flatten(tree)
    cast = [x.astype(u.dtype) for x, u in zip(leaves, self._updates, strict=True)]
    return treedef.unflatten(cast)

  def where_compressing(self, compressed, dense):
    """Selects a value by the step's branch (``compressed`` when there is no warm-up)."""
    if self._mode != "auto":
      return compressed if self._mode == "compressed" else dense
    if self.compressing is None:
      return compressed
    return jnp.where(self.compressing, compressed, dense)

  def branch(self, compressed: Callable, dense: Callable, *operands):
    """``compressed(*operands)`` on compressing steps, ``dense(*operands)`` during warm-up.

    For algorithms whose warm-up is not "every exchange sent dense" (PowerSGD sends the
    update itself, not its factors). Inside each function `mean` compresses or not without
    a branch of its own, and the bits of each function count on the steps it runs.
    """
    if self._mode != "auto":
      raise ValueError(f"{self.fn}: step.branch cannot be nested")
    if self.compressing is None:
      return self._in_mode("compressed", compressed)(*operands)
    return jax.lax.cond(
      self.compressing,
      self._in_mode("compressed", compressed),
      self._in_mode("dense", dense),
      *operands,
    )

  def cond(self, pred, true_fn: Callable, false_fn: Callable, *operands):
    """``jax.lax.cond`` whose branches may exchange: the bits of each branch count on the
    steps it runs (e.g. PowerSGD's alternating variant: one factor one step, the other the
    next). ``pred`` is read again when the step's bits are counted, after the algorithm
    returns: compute it outside `branch` (from ``step.count``, say), not inside a branch."""
    saved, counts = self._bits, {}

    def run(fn, tag):
      def inner(*args):
        self._bits = dict.fromkeys(saved, 0)
        try:
          return fn(*args)
        finally:
          counts[tag] = self._bits

      return inner

    try:
      out = jax.lax.cond(pred, run(true_fn, True), run(false_fn, False), *operands)
    finally:
      self._bits = saved
    for kind in saved:
      self._cond_bits.append((kind, pred, counts[True][kind], counts[False][kind]))
    return out

  def _in_mode(self, mode, fn):
    def run(*args):
      self._mode = mode
      try:
        return fn(*args)
      finally:
        self._mode = "auto"

    return run

  # -- the exchange ---------------------------------------------------------------------------

  def mean(
    self,
    tree: Any,
    *,
    compressor: Any = _DEFAULT,
    weights: Any = None,
    method: str | None = None,
  ) -> Mean:
    """One exchange of ``tree`` (any pytree of float arrays, any shapes) over the workers.

    Each leaf travels in its own dtype (`like_updates` casts messages to the updates'
    dtypes); decoding and averaging are in float32.

    Args:
      tree: this worker's message.
      compressor: a `biased_compression.Compressor`, the transformation's by default, or
        ``None`` for the dense mean (one float32 all-reduce of every leaf). A compressed
        exchange follows the options: leaves under ``min_size`` dense, ``scope``, and dense
        during warm-up (``start_step``).
      weights: the aggregation rule: None (``step.weights``, participation as given to
        ``update``), a `Weighting` (``step.weights``, ``step.state_weights``), this
        worker's weight w_i as an array (the aggregate sum_{i in S} w_i C_i), or a tuple
        of these for several aggregates of the same messages (one gather under all_gather;
        one more all-reduce each under psum and for dense leaves, counted).
      method: how this exchange travels (default: the transformation's ``method``).

    Returns:
      A `Mean` (this worker's decoded message, the aggregate or the tuple of aggregates).
      On one worker (no axis name) both are this worker's decoded message.
    """
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [jnp.asarray(x) for x in leaves]
    for x in leaves:
      if jnp.dtype(x.dtype) not in _base.SUPPORTED_DTYPES:
        raise TypeError(
          f"{self.fn}: step.mean sends float32, bfloat16 or float16 leaves, got {x.dtype} "
          f"with shape {tuple(x.shape)}"
        )
    several = isinstance(weights, tuple)
    rules = weights if several else (weights,)
    if not rules:
      raise ValueError(f"{self.fn}: step.mean got weights=() (give at least one weighting)")
    specs, index = self._specs(rules)
    compressor = self.compressor if compressor is _DEFAULT else compressor
    if compressor is not None and not isinstance(compressor, _base.Compressor):
      raise TypeError(
        f"{self.fn}: step.mean's compressor must be a Compressor or None, got {compressor!r}"
      )
    method = self.method if method is None else method
    if compressor is not None:
      _collectives.check_method(self.fn, method, compressor)
    server_error = self._take_server_error(compressor, method, leaves)
    # the i-th exchange of a step (i >= 1) draws independently of the earlier ones
    key = jax.random.fold_in(self.key, self.exchanges) if self.exchanges else self.key
    if compressor is None or not compressor.needs_key:
      key = None
    self.exchanges += 1
    plan = make_plan(
      compressor, self.options.scope, self.options.min_size, leaves, method, self.num_workers
    )
    k = len(specs)
    if compressor is None:
      local, means, _ = self._dense(leaves, plan=plan, specs=specs)
      self._add_bits(k * plan.bits_dense, k * plan.bits_dense, None)
    else:
      compressed_bits = plan.bits_compressed + (k - 1) * plan.bits_plain
      run_c = functools.partial(self._compressed, compressor, plan, specs, key, method)
      run_d = functools.partial(self._dense, plan=plan, specs=specs)
      if self._mode == "dense":
        local, means, server_error = run_d(leaves, server_error)
      elif self._mode == "compressed" or self.compressing is None:
        local, means, server_error = run_c(leaves, server_error)
      else:
        local, means, server_error = jax.lax.cond(
          self.compressing, run_c, run_d, leaves, server_error
        )
      self._add_bits(compressed_bits, k * plan.bits_dense, plan.bits_server)
    if server_error is not None:
      self.server_error = server_error
    local_tree = treedef.unflatten(local)
    trees = [treedef.unflatten(m) for m in means]
    if several:
      return Mean(local_tree, tuple(trees[i] for i in index))
    return Mean(local_tree, trees[0])

  def exchange(self, messages: list[jax.Array], *, plain: bool = False):
    """`mean` of the update-shaped ``messages`` (float32 leaves aligned with the updates)
    with the transformation's compressor, in the updates' dtypes: (this worker's C(m), the
    aggregate) as leaf lists; with ``plain=True`` also the aggregate under
    ``state_weights`` (which replaced it: ``step.mean(m, weights=(step.weights,
    step.state_weights))``)."""
    rules = (self.weights, self.state_weights) if plain else None
    local, mean = self.mean(self.like_updates(list(messages)), weights=rules)
    if not plain:
      return local, mean
    return local, mean[0], mean[1]

  def _specs(self, rules):
    """The distinct weight specs of ``rules`` (by identity) and each rule's index."""
    if self.axis_name is None:
      return [None], [0] * len(rules)
    specs, seen, index = [], {}, []
    for rule in rules:
      if rule is None:
        rule = self.weights
      if isinstance(rule, Weighting):
        ident = id(rule)
        if ident not in seen:
          seen[ident] = len(specs)
          specs.append(rule.spec)
        index.append(seen[ident])
        continue
      w = jnp.asarray(rule, jnp.float32)
      if w.ndim != 0:
        raise ValueError(
          f"{self.fn}: a weight of step.mean is this worker's scalar w_i, got shape {w.shape}"
        )
      if self.participating is not None:
        w = jnp.where(self.participating, w, 0.0)
      index.append(len(specs))
      specs.append((w, None))
    return specs, index

  def _take_server_error(self, compressor, method, leaves):
    """two_stage's server error for this exchange (None for the other methods)."""
    if self.axis_name is None or compressor is None or method != "two_stage":
      return None
    if compressor is not self.compressor or self.server_error is None:
      raise ValueError(
        f"{self.fn}: method={method!r} keeps one server error, for the transformation's "
        "compressor and messages shaped like the updates; exchange other trees with "
        "method='all_gather' or compressor=None"
      )
    if self._server_used:
      raise ValueError(
        f"{self.fn}: method='two_stage' keeps one server error per step, so an algorithm that "
        "exchanges more than once per step cannot use it; use method='all_gather'"
      )
    shapes = [tuple(x.shape) for x in leaves]
    if shapes != [tuple(u.shape) for u in self._updates]:
      raise ValueError(
        f"{self.fn}: method={method!r} keeps its server error shaped like the updates, but "
        f"this exchange sends shapes {shapes}"
      )
    if self._mode != "auto":
      raise ValueError(f"{self.fn}: method={method!r} cannot exchange inside step.branch")
    self._server_used = True
    return self.server_error

  def _add_bits(self, compressed: int, dense: int, server: int | None):
    if self._mode != "dense":
      self._bits["compressed"] += compressed
      if server is not None:
        self._bits["server"] += server
    if self._mode != "compressed":
      self._bits["dense"] += dense

  # -- groups of leaves <-> vectors ---------------------------------------------------------

  @staticmethod
  def _vectors(leaves, groups):
    out = []
    for group in groups:
      if len(group) == 1:
        out.append(leaves[group[0]].reshape(-1))
      else:
        out.append(jnp.concatenate([leaves[i].reshape(-1) for i in group]))
    return out

  @staticmethod
  def _scatter(out, plan, groups, vectors):
    out = list(out)
    for group, vec in zip(groups, vectors, strict=True):
      offset = 0
      for i in group:
        n = math.prod(plan.shapes[i])
        out[i] = vec[offset : offset + n].reshape(plan.shapes[i])
        offset += n
    return out

  # -- the two branches -----------------------------------------------------------------------

  def _dense(self, leaves, server_error=None, *, plan, specs):
    """(local, [aggregate per spec], server error): the float32 mean of the leaves, sent in
    their dtype and averaged by one float32 all-reduce per spec."""
    local = [x.astype(t).astype(jnp.float32) for x, t in zip(leaves, plan.dtypes, strict=True)]
    if self.axis_name is None:
      return local, [local for _ in specs], server_error
    return local, self._dense_means(local, plan, range(len(local)), specs), server_error

  def _dense_means(self, values, plan, indices, specs):
    indices = tuple(indices)
    if not indices:
      return [list(values) for _ in specs]
    vec = jnp.concatenate([values[i].reshape(-1) for i in indices])
    means, _, _ = _collectives.exchange_specs(
      [vec],
      [jnp.float32],
      _quantization.identity(),
      self.axis_name,
      method="psum",
      key=None,
      specs=specs,
      fn=self.fn,
    )
    return [self._scatter(values, plan, (indices,), m) for m in means]

  def _compressed(self, compressor, plan, specs, key, method, leaves, server_error):
    dtypes = [plan.group_dtype(g) for g in plan.groups]
    vectors = [v.astype(jnp.float32) for v in self._vectors(leaves, plan.groups)]
    local = [x.astype(t).astype(jnp.float32) for x, t in zip(leaves, plan.dtypes, strict=True)]
    if self.axis_name is None:
      locals_ = []
      for g, (v, t) in enumerate(zip(vectors, dtypes, strict=True)):
        gkey = None if key is None else jax.random.fold_in(key, g)
        locals_.append(compressor.compress(v.astype(t), key=gkey).astype(jnp.float32))
      local = self._scatter(local, plan, plan.groups, locals_)
      return local, [local for _ in specs], server_error
    errors = None if server_error is None else self._vectors(server_error, plan.groups)
    means, locals_, errors = _collectives.exchange_specs(
      vectors,
      dtypes,
      compressor,
      self.axis_name,
      method=method,
      key=key,
      specs=specs,
      server_errors=errors,
      fn=self.fn,
    )
    dense = self._dense_means(local, plan, plan.dense, specs)
    out = [self._scatter(d, plan, plan.groups, m) for d, m in zip(dense, means, strict=True)]
    local = self._scatter(local, plan, plan.groups, locals_)
    if server_error is not None:
      server_error = self._scatter(server_error, plan, plan.groups, errors)
    return local, out, server_error

  # -- bits -------------------------------------------------------------------------------------

  def bits(self, bits: _bits.BitCount, sent=None) -> _bits.BitCount:
    """The state's `BitCount` plus this step's bits (zero where ``sent`` is False)."""

    def words(kind):
      total = jnp.asarray(_bits._words(self._bits[kind]))
      for k, pred, if_true, if_false in self._cond_bits:
        if k == kind:
          chosen = jnp.where(pred, _bits._words(if_true), _bits._words(if_false))
          total = _bits._words_add(total, chosen)
      return total

    def count(compressed, dense):
      step = compressed
      if self.compressing is not None:
        step = jnp.where(self.compressing, step, dense)
      if sent is not None:
        step = jnp.where(sent, step, jnp.zeros_like(step))
      return step

    zero = jnp.zeros((2,), jnp.int32)
    server = count(words("server"), zero) if self._has_server else None
    return _bits.bits_add(bits, count(words("compressed"), words("dense")), server)


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
