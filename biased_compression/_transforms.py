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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from biased_compression import _base
from biased_compression import _collectives
from biased_compression import _quantization

__all__ = [
  "BitCount",
  "bit_words",
  "bits_sent",
  "device_update",
  "init_workers",
  "simulated_update",
  "words_to_bits",
]

_WORD = 30  # bits per word of the exact counters
_BASE = 1 << _WORD
SCOPES = ("leaf", "global")


class BitCount(NamedTuple):
  """Bits one worker sent: the last step and the running total.

  Each field is an int32 array of shape ``(2,)`` (``(n, 2)`` for the state of n simulated
  workers) holding (high, low) words of the exact count ``high * 2**30 + low``. ``step`` and
  ``total`` count the worker's messages (its uplink); ``server_step`` and ``server_total``,
  present only with ``method="two_stage"`` or ``"majority_vote"`` (else empty), count what
  it sent as the server of its chunk (the downlink). Use `bits_sent` to read them.
  """

  step: jax.Array
  total: jax.Array
  server_step: Any = ()
  server_total: Any = ()


def _words(n: int) -> np.ndarray:
  if not 0 <= n < 1 << (2 * _WORD + 1):
    raise ValueError(f"bit count out of range: {n}")
  return np.array([n >> _WORD, n & (_BASE - 1)], np.int32)


def bits_init(server: bool = False) -> BitCount:
  zero = jnp.zeros((2,), jnp.int32)
  if server:
    return BitCount(step=zero, total=zero, server_step=zero, server_total=zero)
  return BitCount(step=zero, total=zero)


def _words_add(total: jax.Array, step: jax.Array) -> jax.Array:
  """total + step for int32 (high, low) words with low words < 2^30."""
  low = total[..., 1] + step[..., 1]
  carry = (low >= _BASE).astype(jnp.int32)
  high = total[..., 0] + step[..., 0] + carry
  return jnp.stack([high, low - carry * _BASE], axis=-1)


def bits_add(bits: BitCount, step: jax.Array, server_step: jax.Array | None = None) -> BitCount:
  """Adds one step's counts (int32 words) to the running totals."""
  if server_step is None:
    return bits._replace(step=step, total=_words_add(bits.total, step))
  return BitCount(
    step=step,
    total=_words_add(bits.total, step),
    server_step=server_step,
    server_total=_words_add(bits.server_total, server_step),
  )


def _value(x):
  # Flax NNX wraps optimizer state leaves in variables.
  if hasattr(x, "get_value"):
    x = x.get_value()
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    # state spread over processes: every process must call bits_sent (a collective)
    from jax.experimental import multihost_utils

    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def bits_sent(state: Any, *, last_step: bool = False, server: bool = False) -> int | np.ndarray:
  """Exact number of bits sent, read from any optimizer state that holds our transformations.

  Sums every `BitCount` found in ``state`` (an ``optax.chain`` of several of our
  transformations counts each). Call it outside ``jit``. For state sharded over several
  processes it gathers the counters, so every process must call it.

  By default it counts each worker's messages (its uplink), in every step it took part in:
  for each compressed vector, the encoded payload (``method="all_gather"``, ``"psum"``) or
  its n chunk payloads (``"two_stage"``, ``"majority_vote"``); for each leaf sent dense
  (``min_size``, warm-up steps), its values as they travel: float32 in the all-reduce of
  distributed workers, the leaf dtype on one worker. These are the operand sizes of the
  collectives of the compiled program (`wire_bytes` reads them; how often a ring collective
  forwards them is the transport's cost, not counted here). ``server=True`` counts instead
  what the worker sent as the server of its chunk under two_stage and majority_vote (its
  re-compressed chunk, all_gathered to the others; zero for the other methods). Neither
  counts the uncompressed fast-axis all-reduce of ``dense_axis_name``, nor the one float32
  participation weight per worker that ``participating`` / ``probability`` add. XLA:CPU
  promotes a bfloat16 all-reduce to float32, so there ``method="psum"`` of a bfloat16 payload
  (``cast(jnp.bfloat16)``) moves 32 bits per value where this counts 16 (GPUs and TPUs reduce
  bfloat16 natively); gathered bfloat16 payloads travel as uint16, exact everywhere.

  Args:
    state: an optimizer state (any pytree containing `BitCount` nodes).
    last_step: return the bits of the last step instead of the running total.
    server: count the server's downlink instead of the worker's uplink.

  Returns:
    A Python int, or an int64 array with one entry per worker when the state has a leading
    worker axis (from `init_workers`).

  Example:
    >>> import jax.numpy as jnp, optax, biased_compression as bc
    >>> tx = bc.compress(bc.sign())
    >>> params = {"w": jnp.zeros(1000)}
    >>> state = tx.init(params)
    >>> _, state = tx.update({"w": jnp.ones(1000)}, state)
    >>> bc.bits_sent(state)
    1000
  """
  total = 0
  for field in _bit_fields("bits_sent", state, last_step, server):
    words = _value(field).astype(np.int64)
    total = total + (words[..., 0] << _WORD) + words[..., 1]
  return int(total) if np.ndim(total) == 0 else total


def _bit_fields(fn: str, state: Any, last_step: bool, server: bool) -> list:
  """The word arrays of every `BitCount` in ``state`` (uplink or server, step or total)."""
  counts = [
    node
    for node in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, BitCount))
    if isinstance(node, BitCount)
  ]
  if not counts:
    raise ValueError(f"{fn}: state holds no biased_compression transformation state")
  fields = []
  for node in counts:
    if server:
      field = node.server_step if last_step else node.server_total
    else:
      field = node.step if last_step else node.total
    if not isinstance(field, tuple):  # a tuple: no server in this transformation's method
      fields.append(field)
  return fields


def bit_words(state: Any, *, last_step: bool = False, server: bool = False) -> jax.Array:
  """`bits_sent` as exact int32 words, computable inside ``jit`` and ``lax.scan``.

  The sum of every `BitCount` of ``state`` as an int32 array of shape ``(..., 2)``: (high,
  low) words of ``high * 2**30 + low`` (one pair per worker for worker-stacked state). Log it
  from a jitted training loop and convert on the host with `words_to_bits`; the options are
  those of `bits_sent`.

  Example:
    >>> import jax, jax.numpy as jnp, biased_compression as bc
    >>> tx = bc.compress(bc.sign())
    >>> state = tx.init(jnp.zeros(1000))
    >>> step = jax.jit(lambda s: tx.update(jnp.ones(1000), s)[1])
    >>> words = jax.jit(bc.bit_words)(step(step(state)))
    >>> bc.words_to_bits(words)
    2000
  """
  fields = _bit_fields("bit_words", state, last_step, server)
  if not fields:  # server=True for methods without a server
    return jnp.zeros_like(_bit_fields("bit_words", state, last_step, False)[0])
  total = fields[0]
  for field in fields[1:]:
    total = _words_add(total, field)
  return total


def words_to_bits(words: Any) -> int | np.ndarray:
  """The exact bit count of `bit_words`'s int32 words (an int, or int64 per worker)."""
  words = np.asarray(words).astype(np.int64)
  total = (words[..., 0] << _WORD) + words[..., 1]
  return int(total) if np.ndim(total) == 0 else total


def init_workers(
  tx: optax.GradientTransformation,
  params: optax.Params,
  num_workers: int,
  *,
  sharding: jax.sharding.Sharding | None = None,
):
  """The state of ``num_workers`` simulated workers: ``tx.init(params)`` with a leading axis.

  Every worker starts from the same state (the same seed: per-worker randomness comes from
  the worker's axis index, folded into the key at each step). Use it with
  ``jax.vmap(tx.update, in_axes=(0, 0, None), axis_name=...)``.

  Args:
    tx: a transformation, e.g. an ``optax.chain`` ending in ``error_feedback(...,
      axis_name="workers")``.
    params: the model parameters (one copy, shared by the workers).
    num_workers: the number of simulated workers n >= 1.
    sharding: where to create the state, e.g. ``NamedSharding(mesh, P("data"))`` for one
      worker per device (each device, and in a multi-process job each process, then holds
      only its own workers' state).

  Returns:
    The state pytree with every leaf of shape ``(n, *leaf_shape)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, biased_compression as bc
    >>> tx = optax.chain(optax.sgd(0.1), bc.error_feedback(bc.top_k(k=1), axis_name="w"))
    >>> params = jnp.zeros(4)
    >>> state = bc.init_workers(tx, params, 3)
    >>> grads = jnp.eye(3, 4)  # one gradient per worker
    >>> step = jax.vmap(tx.update, in_axes=(0, 0, None), axis_name="w")
    >>> updates, state = step(grads, state, params)
    >>> updates.shape  # identical rows: the aggregated update, seen by each worker
    (3, 4)
  """
  if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)):
    raise TypeError(f"init_workers: num_workers must be an int, got {num_workers!r}")
  if num_workers < 1:
    raise ValueError(f"init_workers: num_workers must be >= 1, got {num_workers!r}")

  def init():
    return jax.vmap(lambda _: tx.init(params))(jnp.arange(num_workers))

  if sharding is None:
    return init()
  return jax.jit(init, out_shardings=sharding)()


def simulated_update(tx: optax.GradientTransformation, axis_name: Any):
  """``tx.update`` of n simulated workers: ``jax.vmap`` over the state of `init_workers`.

  The same as ``jax.vmap(tx.update, in_axes=(0, 0, None), axis_name=axis_name)`` (extra
  arguments such as ``participating`` are mapped too), after checking that every leaf of the
  state and of the updates has the same leading worker axis; a state from ``tx.init`` (one
  worker) gets an error that says to use `init_workers`, where plain vmap would only say that
  a scalar cannot be mapped.

  Args:
    tx: the transformation (its communicating parts use ``axis_name``).
    axis_name: the name of the simulated worker axis.

  Returns:
    ``update(updates, state, params=None, **extra_args) -> (updates, state)``, with a leading
    worker axis on the updates (every row holds the aggregate) and on the state.

  Example:
    >>> import jax.numpy as jnp, optax, biased_compression as bc
    >>> tx = bc.compress(bc.sign(), axis_name="w")
    >>> state = bc.init_workers(tx, jnp.zeros(2), 4)
    >>> update = bc.simulated_update(tx, "w")
    >>> out, state = update(jnp.array([[1.0, -1], [1, 1], [-1, 1], [1, 1]]), state)
    >>> out[0]  # the mean of the workers' signs
    Array([0.5, 0.5], dtype=float32)
  """
  step = jax.vmap(
    lambda u, s, p, extra: tx.update(u, s, p, **extra),
    in_axes=(0, 0, None, 0),
    axis_name=axis_name,
  )

  def update(updates, state, params=None, **extra_args):
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(state)}
    if None in sizes or len(sizes) > 1:
      raise ValueError(
        "simulated_update: the state has no common leading worker axis (a scalar leaf, or "
        f"leading sizes {sorted(x for x in sizes if x is not None)}): it is the state of one "
        "worker (tx.init); create the state of n workers with bc.init_workers(tx, params, n)"
      )
    (n,) = sizes
    got = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(updates)}
    if got != {n}:
      raise ValueError(
        f"simulated_update: the state holds {n} workers, so the updates need a leading axis "
        f"of {n} (one row per worker); got leading sizes {sorted(map(str, got))}"
      )
    return step(updates, state, params, extra_args)

  return update


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


def _varying_axes(x) -> frozenset | None:
  """The mesh axes along which a traced value varies (shard_map's type system), or None.

  ``jax.typeof(x).vma`` on JAX 0.6 - 0.8, ``.mat.varying`` on 0.10.
  """
  aval = jax.typeof(x)
  vma = getattr(aval, "vma", None)
  if vma is None:
    vma = getattr(getattr(aval, "mat", None), "varying", None)
  return None if vma is None else frozenset(vma)


def device_update(tx: optax.GradientTransformation, axis_name: Any):
  """``tx.update`` for use inside ``jax.shard_map``, on the state of `init_workers`.

  The state of n workers has a leading worker axis; sharded with ``PartitionSpec(axis_name)``
  over a mesh axis of n devices, each device holds a block of one worker. The returned
  function strips that block axis, runs ``tx.update`` and puts it back, and checks

  * that the mesh axis has as many devices as the state has workers;
  * that the updates differ per device. Under ``shard_map``'s default ``check_vma=True``,
    ``jax.grad`` with respect to replicated (``P()``) parameters returns the gradient already
    summed over the devices (JAX inserts the all-reduce in the backward pass): every worker
    would then compress the same n-times-larger gradient after a dense all-reduce. Compute
    the per-device gradient instead, e.g. with respect to
    ``jax.lax.pcast(params, axis_name, to="varying")`` (JAX 0.10) or with ``check_vma=False``.

  The aggregate is the same on every device, but JAX types the result of an all_gather as
  varying, so return the updates with ``out_specs=P(axis_name)`` (a block per device, as
  below) or use ``check_vma=False`` to return them with ``P()``.

  Args:
    tx: the transformation (its communicating parts use ``axis_name``).
    axis_name: the mesh axis of the workers.

  Returns:
    ``update(updates, state, params=None, **extra_args) -> (updates, state)``.

  Example (8 devices)::

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    update = bc.device_update(tx, "data")

    def step(grads, state, params):  # grads: a (1, ...) block per device
      out, state = update(jax.tree.map(lambda g: g[0], grads), state, params)
      return jax.tree.map(lambda u: u[None], out), state

    step = jax.shard_map(step, mesh=mesh, in_specs=(P("data"), P("data"), P()),
                         out_specs=(P("data"), P("data")))
  """

  def update(updates, state, params=None, **extra_args):
    n = int(jax.lax.axis_size(axis_name))
    tracking = False
    for leaf in jax.tree.leaves(state):
      if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != 1:
        block = "a scalar" if jnp.ndim(leaf) == 0 else f"{jnp.shape(leaf)[0]} workers"
        raise ValueError(
          f"device_update: each device must hold the state of exactly one worker, but a leaf "
          f"of the state has {block} per device on the {n} devices of axis {axis_name!r}: "
          "initialise it with bc.init_workers(tx, params, n) for n equal to the mesh axis "
          "size, and shard it with PartitionSpec(axis_name)"
        )
      tracking = tracking or axis_name in (_varying_axes(leaf) or ())
    if tracking and n > 1:
      for leaf in jax.tree.leaves(updates):
        varying = _varying_axes(leaf)
        if varying is not None and axis_name not in varying:
          raise ValueError(
            f"device_update: the updates are the same on every device of axis {axis_name!r} "
            "(invariant in shard_map's types): a gradient with respect to replicated "
            "parameters is already summed over the devices by jax.grad. Differentiate with "
            f"respect to jax.lax.pcast(params, {axis_name!r}, to='varying'), or use "
            "shard_map(..., check_vma=False)"
          )
    inner = jax.tree.map(lambda x: x[0], state)
    out, inner = tx.update(updates, inner, params, **extra_args)
    return out, jax.tree.map(lambda x: x[None], inner)

  return update


# -- argument checks (values may be traced when the factory runs under inject_hyperparams) --


def is_concrete(value) -> bool:
  return not isinstance(value, jax.core.Tracer)


def check_bound(fn: str, axis_name) -> None:
  try:
    jax.lax.axis_size(axis_name)
  except NameError:
    raise ValueError(
      f"{fn}: axis_name {axis_name!r} is not bound here; call update inside "
      f"jax.shard_map over a mesh with axis {axis_name!r}, or inside "
      f"jax.vmap(..., axis_name={axis_name!r}) to simulate workers (see bc.init_workers)"
    ) from None


def check_compressor(fn: str, compressor) -> None:
  if not isinstance(compressor, _base.Compressor):
    raise TypeError(
      f"{fn}: compressor must be a biased_compression Compressor (e.g. bc.top_k(0.01)), "
      f"got {compressor!r}"
    )


def check_options(fn: str, *, scope, start_step, min_size, seed, axis_name) -> None:
  if scope not in SCOPES:
    raise ValueError(f"{fn}: scope must be 'leaf' or 'global', got {scope!r}")
  if is_concrete(start_step):
    if isinstance(start_step, bool) or not float(np.asarray(start_step)).is_integer():
      raise ValueError(f"{fn}: start_step must be an int >= 0, got {start_step!r}")
    if np.asarray(start_step) < 0:
      raise ValueError(f"{fn}: start_step must be an int >= 0, got {start_step!r}")
  if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
    raise ValueError(
      f"{fn}: min_size must be an int >= 0 (a static argument under inject_hyperparams), "
      f"got {min_size!r}"
    )
  if is_concrete(seed) and (isinstance(seed, bool) or np.ndim(seed) != 0):
    raise ValueError(f"{fn}: seed must be an int, got {seed!r}")
  if axis_name is not None:
    try:
      hash(axis_name)
    except TypeError:
      raise ValueError(
        f"{fn}: axis_name must be None or a hashable name, got {axis_name!r}"
      ) from None


@dataclasses.dataclass(frozen=True)
class Options:
  """The options every transformation shares, as one value (see `error_feedback`).

  Attributes:
    seed: seed of the operator's randomness.
    axis_name: the worker axis; None for one worker.
    scope: ``"leaf"`` or ``"global"``.
    start_step: dense steps before compression starts (may be traced under
      ``inject_hyperparams``).
    min_size: leaves smaller than this are sent dense (static).
    method: how the mean over ``axis_name`` travels (`compressed_mean`).
    dense_axis_name: a fast axis averaged uncompressed first, or None.
  """

  seed: Any = 0
  axis_name: Any = None
  scope: str = "leaf"
  start_step: Any = 0
  min_size: int = 0
  method: str = "auto"
  dense_axis_name: Any = None

  def check(self, fn: str, compressor) -> None:
    """Raises a ValueError naming the option and its value (before anything is traced)."""
    check_compressor(fn, compressor)
    check_options(
      fn,
      scope=self.scope,
      start_step=self.start_step,
      min_size=self.min_size,
      seed=self.seed,
      axis_name=self.axis_name,
    )
    _collectives.check_method(fn, self.method, compressor)
    if self.dense_axis_name is not None and self.axis_name is None:
      raise ValueError(
        f"{fn}: dense_axis_name={self.dense_axis_name!r} (the fast axis, reduced uncompressed) "
        "needs axis_name (the slow axis, reduced compressed)"
      )


def check_dtypes(fn: str, updates, leaves) -> None:
  """The updates' dtypes are float32, bfloat16 or float16; the error names the leaf's path."""
  bad = [i for i, x in enumerate(leaves) if jnp.dtype(x.dtype) not in _base.SUPPORTED_DTYPES]
  if not bad:
    return
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]
  i = bad[0]
  dtype = jnp.dtype(leaves[i].dtype)
  hint = ""
  if dtype == jnp.float64:
    hint = " (jax_enable_x64 is on: cast the updates to float32 first)"
  raise TypeError(
    f"{fn}: updates must have dtypes float32, bfloat16 or float16; the leaf at "
    f"{paths[i] or 'the root'} has {dtype} with shape {tuple(leaves[i].shape)}{hint}"
  )


def check_worker_state(fn: str, state, axis_name) -> None:
  """Refuses the state of several workers (from `init_workers`) in a single worker's update."""
  key_shape = jnp.shape(state.rng_key)
  if len(key_shape) <= 1:
    return
  where = (
    "a plain tx.update"
    if axis_name is None
    else f"an update that is not vmapped over the workers of axis {axis_name!r}"
  )
  raise ValueError(
    f"{fn}: the state holds {key_shape[0]} workers (a leading worker axis, from "
    f"bc.init_workers) but was given to {where}. Simulate the workers with "
    "bc.simulated_update(tx, axis_name) (jax.vmap over the workers) or, on devices, use "
    "bc.device_update(tx, axis_name) inside jax.shard_map; on one worker use tx.init(params)"
  )


def _at_least_one(start_step):
  if is_concrete(start_step):
    return max(int(np.asarray(start_step)), 1)
  return jnp.maximum(start_step, 1)


def check_unit_interval(fn: str, name: str, value, *, low_open: bool, high_open: bool) -> None:
  """Checks low < value < high with each end open or closed; skips traced values."""
  if not is_concrete(value):
    return
  try:
    v = float(np.asarray(value))
  except (TypeError, ValueError):
    v = math.nan
  ok = (0.0 < v if low_open else 0.0 <= v) and (v < 1.0 if high_open else v <= 1.0)
  if not ok:
    interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
    raise ValueError(f"{fn}: {name} must be in {interval}, got {value!r}")


def check_contractive(fn: str, compressor: _base.Compressor, d: int) -> None:
  """Error feedback needs C in B3: an unbiased C must be scaled by 1 / (1 + omega) first."""
  if compressor.unbiased and not math.isfinite(compressor.delta(d)):
    raise ValueError(
      f"{fn}: {compressor.name} is unbiased with omega = {compressor.omega(d):.4g} at d = {d}, "
      "so it is not contractive and error feedback would amplify the error; use "
      f"bc.contractive({compressor.name}) (C / (1 + omega), in B3(1 + omega))."
    )


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
  """

  groups: tuple[tuple[int, ...], ...]
  dense: tuple[int, ...]
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[Any, ...]
  bits_compressed: int
  bits_dense: int
  bits_server: int | None = None

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
  uplink = downlink = 0
  for g in groups:
    size, dtype = plan.group_size(g), plan.group_dtype(g)
    if workers is None:
      up, down = compressor.payload_bits(size, dtype), 0
    else:
      up, down = _collectives.traffic_bits(compressor, method, size, workers, dtype)
    uplink, downlink = uplink + up, downlink + down
  dense_bits = sum(_dense_bits(shapes[i], dtypes[i], workers) for i in dense)
  bits_d = sum(_dense_bits(s, t, workers) for s, t in zip(shapes, dtypes, strict=True))
  server = workers is not None and method in _SERVER_METHODS
  return dataclasses.replace(
    plan,
    bits_compressed=uplink + dense_bits,
    bits_dense=bits_d,
    bits_server=downlink if server else None,
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
  axis name the aggregation goes through `biased_compression._collectives.exchange`, which
  sends the encoded payloads; without one the "mean" is this worker's own message.
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
  ):
    self.fn = fn
    self.weights = weights
    self.exchanges = 0  # how many times this step exchanged: each one sends the plan's bits
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

  def _dense(self, messages, server_error):
    dtypes = self.plan.dtypes
    local = [m.astype(t).astype(jnp.float32) for m, t in zip(messages, dtypes, strict=True)]
    if self.axis_name is None:
      return local, local, server_error
    return local, self._dense_mean(local, range(len(local))), server_error

  def _dense_mean(self, values, indices):
    """The participation-weighted float32 mean of dense leaves (one all-reduce)."""
    indices = tuple(indices)
    if not indices:
      return list(values)
    vecs = [values[i].reshape(-1) for i in indices]
    means, _, _ = _collectives.exchange(
      [jnp.concatenate(vecs)],
      [jnp.float32],
      _quantization.identity(),
      self.axis_name,
      method="psum",
      key=None,
      mask=self.participating,
      probability=self.probability,
      weights=self.weights,
    )
    out = list(values)
    return self._scatter(out, (indices,), means)

  def _compressed(self, messages, server_error):
    plan = self.plan
    dtypes = [plan.group_dtype(g) for g in plan.groups]
    vectors = self._vectors(messages, plan.groups)
    local, _, _ = self._dense(messages, None)  # dense leaves; compressed ones overwritten
    if self.axis_name is None:
      locals_ = []
      for g, (v, t) in enumerate(zip(vectors, dtypes, strict=True)):
        key = None if self.key is None else jax.random.fold_in(self.key, g)
        locals_.append(self.compressor.compress(v.astype(t), key=key).astype(jnp.float32))
      local = self._scatter(local, plan.groups, locals_)
      return local, local, server_error
    errors = None if server_error is None else self._vectors(server_error, plan.groups)
    means, locals_, errors = _collectives.exchange(
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
    )
    mean = self._dense_mean(local, plan.dense)
    mean = self._scatter(mean, plan.groups, means)
    local = self._scatter(local, plan.groups, locals_)
    if server_error is not None:
      server_error = self._scatter(list(server_error), plan.groups, errors)
    return local, mean, server_error

  def exchange(self, messages: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    """(this worker's decoded message C(m), the aggregate over workers), float32 lists.

    During warm-up both are the dense message. The server error (two_stage) is updated in
    ``self.server_error``. An algorithm may exchange several times per step (each exchange
    counts its bits); two_stage's one server error allows a single exchange.
    """
    if self.exchanges and self.server_error is not None:
      raise ValueError(
        f"{self.fn}: method='two_stage' keeps one server error per step, so an algorithm that "
        "exchanges more than once per step cannot use it; use method='all_gather'"
      )
    self.exchanges += 1
    err = self.server_error
    if self.compressing is None:
      local, mean, err = self._compressed(messages, err)
    else:
      local, mean, err = jax.lax.cond(
        self.compressing, self._compressed, self._dense, messages, err
      )
    self.server_error = err
    return local, mean

  def bits(self, bits: BitCount) -> BitCount:
    def count(compressed: int, dense: int):
      step = jnp.asarray(_words(compressed))
      if self.compressing is not None:
        step = jnp.where(self.compressing, step, jnp.asarray(_words(dense)))
      if self.participating is not None:
        step = jnp.where(self.participating, step, jnp.zeros_like(step))
      return step

    k = self.exchanges
    server = None
    if self.plan.bits_server is not None:
      # a dense warm-up step is one all-reduce: no server sends anything
      server = count(k * self.plan.bits_server, 0)
    return bits_add(bits, count(k * self.plan.bits_compressed, k * self.plan.bits_dense), server)

  def where_compressing(self, compressed, dense):
    """Selects a value by the step's branch (``compressed`` when there is no warm-up)."""
    if self.compressing is None:
      return compressed
    return jnp.where(self.compressing, compressed, dense)


def _may_warm_up(start_step) -> bool:
  return not (is_concrete(start_step) and int(np.asarray(start_step)) == 0)


def new_key(seed) -> jax.Array:
  """A raw uint32 PRNG key: plain integers, so Orbax and inject_hyperparams handle it."""
  return jax.random.PRNGKey(seed)


def split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  next_key, step_key = jax.random.split(key)
  return next_key, step_key


def f32_zeros(tree) -> Any:
  return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), tree)


def flatten(tree):
  leaves, treedef = jax.tree.flatten(tree)
  return [jnp.asarray(x) for x in leaves], treedef


def to_f32(leaves):
  return [x.astype(jnp.float32) for x in leaves]


def cast_like(values, like, treedef):
  """Unflattens float32 results into the updates' structure and dtypes."""
  return treedef.unflatten([v.astype(u.dtype) for v, u in zip(values, like, strict=True)])


# -- the documentation every transformation shares ----------------------------------------------

_METHODS_DOC = """\
  Distributed methods (``method=``, with ``axis_name``), where mean_i is over the workers:

  * ``"auto"`` (default) and ``"all_gather"``: mean_i {m} is the float32 mean of the workers'
    decoded messages, so the update is the algorithm above exactly. ``"auto"`` takes
    ``"psum"`` for linear codes with float32 payloads (`identity`, ``rand_k(...,
    shared_indices=True)``), the same mean summed by one all-reduce; otherwise it is
    ``"all_gather"`` ((n - 1) payloads per device).
  * ``"psum"``: linear codes only; the payloads are summed by the all-reduce in the wire
    dtype (bfloat16 for ``cast(jnp.bfloat16)``), then decoded.
  * ``"two_stage"``: a different algorithm, the compressed all-reduce of DeepSpeed 1-bit Adam
    and Bagua (about 2 (n - 1) / n payloads per device, independent of n). Each worker
    compresses {m} as n chunks with ``C.for_chunks(d, n)`` (a sparsifier keeps k(d) / n
    values per chunk, so k(d) must be a multiple of n; norm-based operators take one norm
    per chunk), and mean_i {m} is replaced by S(mean_i {m}): the server of each chunk
    re-compresses its chunk of the mean with the same chunk operator, with a server error
    fed back (the state's ``server_error``) when C is biased and contractive, without one
    when C is unbiased (so the result stays unbiased); a biased C in no class B3 (`sign`)
    is refused.
  * ``"majority_vote"``: `sign` only; mean_i {m} is replaced by the sign of the sum of the
    workers' signs (signSGD with majority vote), a 1-bit downlink.

  ``dense_axis_name`` (hierarchical meshes): the updates are first averaged over this fast
  axis uncompressed, in float32; only ``axis_name``, the slow axis, is compressed. `bits_sent`
  counts each worker's uplink (and, with ``server=True``, the two_stage server's downlink).
"""


def document_methods(message: str):
  """Fills the ``DISTRIBUTED_METHODS`` line of a factory's docstring for its message."""

  def wrap(fn):
    fn.__doc__ = fn.__doc__.replace("  DISTRIBUTED_METHODS\n", _METHODS_DOC.format(m=message))
    return fn

  return wrap


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
  options: Options,
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
    zeros = f32_zeros(params)
    return state_cls(
      count=jnp.zeros([], jnp.int32),
      rng_key=new_key(seed),
      **{name: zeros for name in fields},
      server_error=zeros if needs_server_error else (),
      bits=bits_init(server=has_server),
    )

  def update_fn(
    updates, state, params=None, *, participating=None, probability=None, weights=None, **extra
  ):
    del params, extra
    _record_axis(axis_name)
    check_worker_state(fn, state, axis_name)
    for name in (axis_name, dense_axis_name):
      if name is not None:
        check_bound(fn, name)
    weighted = participating is not None or probability is not None or weights is not None
    if axis_name is None and weighted:
      raise ValueError(
        f"{fn}: participating / probability / weights need an axis_name (the workers)"
      )
    if weights is not None and probability is not None:
      raise ValueError(f"{fn}: give weights or probability, not both")
    leaves, treedef = flatten(updates)
    check_dtypes(fn, updates, leaves)
    if dense_axis_name is not None:
      # hierarchical: the fast axis is reduced first, uncompressed, in float32
      means = jax.lax.pmean(to_f32(leaves), dense_axis_name)
      leaves = [m.astype(x.dtype) for m, x in zip(means, leaves, strict=True)]
    workers = None if axis_name is None else int(jax.lax.axis_size(axis_name))
    plan = make_plan(compressor, scope, min_size, leaves, method, workers)
    if contractive:
      for group in plan.groups:
        check_contractive(fn, compressor, plan.group_size(group))
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
    )
    old = {name: flatten(getattr(state, name))[0] for name in fields}
    out, new = algorithm(step, to_f32(leaves), old)
    if participating is not None:
      for name in worker_fields:
        new[name] = [
          jnp.where(participating, a, b) for a, b in zip(new[name], old[name], strict=True)
        ]
    new_state = state_cls(
      count=optax.safe_increment(state.count),
      rng_key=next_key,
      **{name: treedef.unflatten(new[name]) for name in fields},
      server_error=treedef.unflatten(step.server_error) if needs_server_error else (),
      bits=step.bits(state.bits),
    )
    return cast_like(out, leaves, treedef), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
