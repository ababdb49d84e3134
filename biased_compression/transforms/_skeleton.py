"""The open step every transformation is built on: exchanges, state, keys, bit accounting.

An **algorithm** (the protocol `Algorithm`) owns its state and its arithmetic; the skeleton
owns everything the algorithms share:

1. **State.** The state is one ``NamedTuple`` whose fields are the skeleton's (``count``,
   ``rng_key``, ``bits``, and where present ``server_error``, ``nonfinite``, ``signature``)
   and the algorithm's (any pytrees, any shapes, returned by ``algorithm.init(params, key)``
   with a key that is the same on every worker). The class is the only list of names.
   Fields named in ``shared`` are identical on every worker (a server's estimate, PowerSGD's
   Q) and are updated by every worker; the others are per worker and kept unchanged by a
   worker that does not take part in a step.
2. **Exchanges.** ``algorithm.step(step, updates, fields)`` calls `Step.mean` once or more:
   ``step.mean(tree, compressor=C | None, weights=...)`` is one exchange of any pytree over
   the workers, dense (``None``: a float32 all-reduce) or with a compressor (its payload), its
   bits added exactly. Several weightings give several aggregates from the same exchange.
3. **Options** (`biased_compression.transforms.Options`): warm-up (``start_step``: every
   compressed exchange before it is sent dense), ``min_size``, ``scope``, ``method``,
   participation (``participating`` / ``probability`` / ``weights`` given to ``update``), and
   ``nonfinite="skip"`` (a worker whose update is not finite sits the step out), for every
   algorithm alike.

Randomness: the state holds a raw PRNG key that is split every step. With an axis name each
worker folds its axis index into the step key; compressors with shared randomness (rand-k with
``shared_indices=True``) use the step key unfolded, so every worker draws the same indices.
The i-th exchange of a step (i >= 1) folds i into the key, so exchanges draw independently.

Bits: each worker's state has a `BitCount` with the bits of the last step and the running
total, stored exactly as two int32 words (high, low) in base 2^30 so that totals up to 2^61
bits neither overflow int32 nor lose precision in float32. `bits_sent` reads them on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Protocol
from typing import runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from biased_compression.collectives import _collectives
from biased_compression.compressors import _base
from biased_compression.compressors import _quantization
from biased_compression.transforms import _bits
from biased_compression.transforms import _options
from biased_compression.transforms import _step

# The collectives record the axis of every exchange; kept here under the old names.
recording_axes = _collectives.recording_axes
_record_axis = _collectives.record_axis
_SERVER_METHODS = ("two_stage", "majority_vote")


def _at_least_one(start_step):
  if _options.is_concrete(start_step):
    return max(int(np.asarray(start_step)), 1)
  return jnp.maximum(start_step, 1)


# -- the state's bookkeeping ------------------------------------------------------------------


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Signature:
  """The per-worker shapes and dtypes of the updates a state was initialised for (static: a
  pytree node without leaves, so it costs nothing in a checkpoint or under jit)."""

  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[str, ...]


def signature_of(tree) -> Signature:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return Signature(
    tuple(jax.tree_util.keystr(p) or "the root" for p, _ in flat),
    tuple(tuple(jnp.shape(x)) for _, x in flat),
    tuple(str(jnp.dtype(jnp.result_type(x))) for _, x in flat),
  )


def check_signature(fn: str, expected: Signature, updates, axis_name) -> None:
  """The updates' per-worker shapes equal those the state was initialised with; the error
  names the leaf, the shape expected and the shape given."""
  given = signature_of(updates)
  where = "" if axis_name is None else f" (per worker, over the axis {axis_name!r})"
  if len(given.shapes) != len(expected.shapes):
    raise ValueError(
      f"{fn}: the updates have {len(given.shapes)} leaves but the state was initialised for "
      f"{len(expected.shapes)} (leaves {list(expected.paths)}); give updates shaped like the "
      "parameters given to init"
    )
  for path, want, got in zip(expected.paths, expected.shapes, given.shapes, strict=True):
    if want != got:
      hint = ""
      if axis_name is not None and got == want[1:]:
        hint = (
          "; the leading axis looks taken as the worker axis: give one gradient per worker "
          "(a leading axis of n on every leaf)"
        )
      raise ValueError(
        f"{fn}: the update at {path} has shape {got}{where}, but the state was initialised "
        f"for shape {want}{hint}"
      )


# -- the protocol of an algorithm ------------------------------------------------------------

# The skeleton's fields of a state class: required, and optional (used where present).
REQUIRED_FIELDS = ("count", "rng_key", "bits")
OPTIONAL_FIELDS = ("server_error", "nonfinite", "signature")
_INIT_TAG = 0x1A17  # folded into the seed's key for init: independent of the step keys


@runtime_checkable
class Algorithm(Protocol):
  """What an algorithm of the open step provides (`from_algorithm` builds the transformation).

  ``init(params, key)`` returns the initial value of each of the algorithm's state fields
  (every field of the state class that is not the skeleton's), any pytrees of any shapes;
  ``key`` is the same on every worker, so random starts are shared (PowerSGD's Q).

  ``step(step, updates, fields)`` gets the `Step`, this worker's updates (a float32 pytree)
  and its fields (a dict of the stored pytrees); it calls ``step.mean`` once or more and
  returns (the output pytree, shaped like the updates, and the dict of new fields).
  """

  def init(self, params: optax.Params, key: jax.Array) -> Mapping[str, Any]: ...

  def step(
    self, step: _step.Step, updates: Any, fields: Mapping[str, Any]
  ) -> tuple[Any, Mapping[str, Any]]: ...


@dataclasses.dataclass(frozen=True)
class FunctionAlgorithm:
  """An `Algorithm` from two functions (``init`` defaults to float32 zeros like the params
  for every field)."""

  step_fn: Callable
  init_fn: Callable | None = None
  fields: tuple[str, ...] = ()

  def init(self, params, key):
    if self.init_fn is not None:
      return self.init_fn(params, key)
    zeros = optax.tree.zeros_like(params, dtype=jnp.float32)
    return {name: zeros for name in self.fields}

  def step(self, step, updates, fields):
    return self.step_fn(step, updates, fields)


def algorithm_fields(fn: str, state_cls: type) -> tuple[str, ...]:
  """The algorithm's field names of ``state_cls`` (its fields less the skeleton's)."""
  names = getattr(state_cls, "_fields", None)
  if names is None:
    raise TypeError(f"{fn}: the state class must be a NamedTuple, got {state_cls!r}")
  missing = [f for f in REQUIRED_FIELDS if f not in names]
  if missing:
    raise TypeError(
      f"{fn}: the state class {state_cls.__name__} lacks the skeleton's fields {missing} "
      f"(it needs {list(REQUIRED_FIELDS)}, and optionally {list(OPTIONAL_FIELDS)})"
    )
  return tuple(f for f in names if f not in REQUIRED_FIELDS + OPTIONAL_FIELDS)


PARTICIPATION = ("mean", "sum_over_n")
NONFINITE = _options.NONFINITE


def from_algorithm(
  fn: str,
  state_cls: type,
  algorithm: Algorithm,
  compressor: _base.Compressor | None,
  options: _options.Options,
  *,
  shared: Sequence[str] = (),
  contractive: bool = False,
  participation: str = "mean",
  dense_first_step: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Builds the transformation of ``algorithm`` on the open step.

  The state is ``state_cls(count, rng_key, <the algorithm's fields>, [server_error], bits,
  [nonfinite], [signature])`` in the class's field order: the skeleton's fields (``count``,
  ``rng_key``, ``bits`` required; ``server_error`` for ``method="two_stage"``,
  ``nonfinite`` for ``nonfinite="skip"``, ``signature`` for the shape checks, where the
  class has them) and every other field the algorithm's, initialised by
  ``algorithm.init(params, key)``. Fields in ``shared`` are the same on every worker and
  updated by all; the others are kept by a worker that does not take part in the step.

  Each step gives ``algorithm.step`` a `Step` and the float32 updates; each ``step.mean`` is
  one exchange. The aggregate's default weights (``step.weights``) are explicit ones given
  to ``update(..., weights=w_i)`` (a gradient code's decoding coefficients), else derived
  from ``participating`` / ``probability`` by ``participation``: ``"mean"`` gives the mean
  over the participants S (or the unbiased (1/n) sum_S C_i / p_i with probabilities);
  ``"sum_over_n"`` gives (1/n) sum_S c_i (or (1/n) sum_S c_i / p_i), so a server estimate
  moved by it stays the mean of the workers' estimates. ``step.state_weights`` is the
  weighting that keeps a server estimate unbiased: the plain (1/n) sum_S under importance
  weights, ``expected_weights`` c_i 1{i in S} when ``update`` is given them with explicit
  weights (`biased_compression.coding.coded` does; a scalar, or a function returning it,
  called only if the algorithm asks for ``step.state_weights``), else ``step.weights``.

  ``contractive`` refuses, at the first update, a compressor outside B3 (error feedback);
  ``dense_first_step`` makes the first step dense whatever ``start_step`` is. The options
  are checked here, when the factory runs.
  """
  if compressor is not None:
    options.check(fn, compressor)
  else:
    options.check(fn, _quantization.identity())
  if participation not in PARTICIPATION:
    raise ValueError(f"{fn}: participation must be one of {PARTICIPATION}, got {participation!r}")
  if not isinstance(algorithm, Algorithm):
    raise TypeError(f"{fn}: algorithm must have init(params, key) and step(...), got {algorithm!r}")
  fields = algorithm_fields(fn, state_cls)
  unknown = [f for f in shared if f not in fields]
  if unknown:
    raise ValueError(f"{fn}: shared fields {unknown} are not fields of {state_cls.__name__}")
  names = state_cls._fields
  seed, axis_name = options.seed, options.axis_name
  start_step, nonfinite = options.start_step, options.nonfinite
  dense_axis_name = options.dense_axis_name
  if dense_first_step:
    start_step = _at_least_one(start_step)
  needs_server_error = axis_name is not None and options.method == "two_stage"
  has_server = axis_name is not None and options.method in _SERVER_METHODS
  for needed, why in (
    ("server_error", needs_server_error and "method='two_stage'"),
    ("nonfinite", nonfinite == "skip" and "nonfinite='skip'"),
  ):
    if why and needed not in names:
      raise ValueError(f"{fn}: {why} needs a field {needed!r} in {state_cls.__name__}")
  worker_fields = tuple(f for f in fields if f not in shared)

  def init_fn(params):
    init_key = jax.random.fold_in(_step.new_key(seed), _INIT_TAG)
    values = dict(algorithm.init(params, init_key))
    if sorted(values) != sorted(fields):
      raise ValueError(
        f"{fn}: algorithm.init returned fields {sorted(values)}, but {state_cls.__name__} "
        f"has {sorted(fields)}"
      )
    extra = {}
    if "server_error" in names:
      extra["server_error"] = (
        optax.tree.zeros_like(params, dtype=jnp.float32) if needs_server_error else ()
      )
    if "nonfinite" in names:
      extra["nonfinite"] = jnp.zeros([], jnp.int32) if nonfinite == "skip" else ()
    if "signature" in names:
      extra["signature"] = signature_of(params)
    return state_cls(
      count=jnp.zeros([], jnp.int32),
      rng_key=_step.new_key(seed),
      **values,
      **extra,
      bits=_bits.bits_init(server=has_server),
    )

  def update_fn(
    updates,
    state,
    params=None,
    *,
    participating=None,
    probability=None,
    weights=None,
    expected_weights=None,
    **extra,
  ):
    del params, extra
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
    if expected_weights is not None and weights is None:
      raise ValueError(f"{fn}: expected_weights (E[w_i 1{{i in S}}]) go with weights=")
    leaves, treedef = _step.flatten(updates)
    _options.check_dtypes(fn, updates, leaves)
    signature = getattr(state, "signature", ())
    if isinstance(signature, Signature):
      check_signature(fn, signature, updates, axis_name)
    if dense_axis_name is not None:
      # hierarchical: the fast axis is reduced first, uncompressed, in float32
      means = jax.lax.pmean(optax.tree.cast(leaves, jnp.float32), dense_axis_name)
      leaves = [m.astype(x.dtype) for m, x in zip(means, leaves, strict=True)]
    finite = None
    if nonfinite == "skip":
      finite = jnp.asarray(True)
      for x in leaves:
        finite = finite & jnp.all(jnp.isfinite(x))
      leaves = [jnp.where(finite, x, jnp.zeros_like(x)) for x in leaves]
      if axis_name is not None:
        participating = finite if participating is None else participating & finite
    workers = None if axis_name is None else int(jax.lax.axis_size(axis_name))
    if contractive and compressor is not None:
      plan = _step.make_plan(
        compressor, options.scope, options.min_size, leaves, options.method, workers
      )
      for group in plan.groups:
        _options.check_contractive(fn, compressor, plan.group_size(group))
    # Static (which arguments were given): whether the aggregate's weights differ from the
    # ones that keep a server estimate the (expected-weight) mean of the workers' estimates.
    reweighted = probability is not None or (participating is not None and participation == "mean")
    if participating is not None:
      participating = jnp.asarray(participating, jnp.bool_)
      if participation == "sum_over_n" and probability is None and weights is None:
        probability = 1.0
    weighting = state_weighting = None
    if axis_name is not None:
      weighting = _step.Weighting(
        *_collectives.weight_spec(axis_name, participating, probability, weights)
      )
      state_weighting = weighting
      if expected_weights is not None:

        def state_weighting(c=expected_weights, mask=participating):
          # built when an algorithm first asks for step.state_weights
          c = jnp.asarray(c() if callable(c) else c, jnp.float32)
          return _step.Weighting(c if mask is None else jnp.where(mask, c, 0.0), None)

      elif reweighted:
        state_weighting = _step.Weighting(*_collectives.plain_spec(axis_name, participating))
    next_key, step_key = _step.split_key(state.rng_key)
    step = _step.Step(
      compressor,
      options,
      step_key,
      state.count,
      start_step,
      axis_name,
      leaves,
      participating=participating,
      weights=weighting,
      state_weights=state_weighting,
      server_error=_step.flatten(state.server_error)[0] if needs_server_error else None,
      has_server=has_server,
      fn=fn,
    )
    old = {name: getattr(state, name) for name in fields}
    u = treedef.unflatten(optax.tree.cast(leaves, jnp.float32))
    out, new = algorithm.step(step, u, dict(old))
    new = dict(new)
    if sorted(new) != sorted(fields):
      raise ValueError(
        f"{fn}: algorithm.step returned fields {sorted(new)}, but {state_cls.__name__} has "
        f"{sorted(fields)}"
      )
    # a worker that does not take part keeps its own fields (on one worker: a skipped step)
    keep = participating if axis_name is not None else finite
    if keep is not None:
      for name in worker_fields if axis_name is not None else fields:
        new[name] = optax.tree.where(keep, new[name], old[name])
    if axis_name is None and finite is not None:
      out = optax.tree.where(finite, out, optax.tree.zeros_like(out))
    extra_fields = {}
    if "server_error" in names:
      extra_fields["server_error"] = (
        treedef.unflatten(step.server_error) if needs_server_error else ()
      )
    if "nonfinite" in names:
      extra_fields["nonfinite"] = (
        state.nonfinite + (~finite).astype(jnp.int32) if finite is not None else state.nonfinite
      )
    if "signature" in names:
      extra_fields["signature"] = state.signature
    new_state = state_cls(
      count=optax.safe_increment(state.count),
      rng_key=next_key,
      **new,
      **extra_fields,
      bits=step.bits(state.bits, keep),
    )
    out_leaves = jax.tree.leaves(out)
    return (
      optax.tree.cast_like(treedef.unflatten(out_leaves), treedef.unflatten(leaves)),
      new_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def transformation(
  fn: str,
  state_cls: type,
  algorithm: Callable,
  compressor: _base.Compressor,
  options: _options.Options,
  *,
  worker_fields: Sequence[str] = (),
  server_fields: Sequence[str] = (),
  contractive: bool,
  participation: str,
  dense_first_step: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """A transformation from a step function on float32 leaf lists (the first skeleton's form).

  ``algorithm(step, u, fields) -> (out, new fields)`` receives the updates as a list of
  float32 leaves and the fields as ``{name: leaves}``, every field a float32 pytree shaped
  like the updates, zero at initialisation; it calls ``step.exchange(messages)`` once or
  more. Worker fields are per worker, server fields shared (see `from_algorithm`, the open
  form, for fields of any shape and several kinds of exchange).
  """
  names = tuple(worker_fields) + tuple(server_fields)
  fields = algorithm_fields(fn, state_cls)
  if sorted(fields) != sorted(names):
    raise ValueError(
      f"{fn}: {state_cls.__name__} has the fields {sorted(fields)}, but worker_fields + "
      f"server_fields name {sorted(names)}"
    )

  def step_fn(step, u, state):
    leaves, treedef = jax.tree.flatten(u)
    old = {name: jax.tree.leaves(state[name]) for name in names}
    out, new = algorithm(step, leaves, old)
    return treedef.unflatten(list(out)), {k: treedef.unflatten(list(v)) for k, v in new.items()}

  return from_algorithm(
    fn,
    state_cls,
    FunctionAlgorithm(step_fn, fields=names),
    compressor,
    options,
    shared=tuple(server_fields),
    contractive=contractive,
    participation=participation,
    dense_first_step=dense_first_step,
  )
