"""One interface for the n workers of a distributed method: simulated or on devices.

`simulate(tx, n)` runs the workers under ``jax.vmap`` with an axis name on one device;
`shard(tx, mesh, axis_name)` runs one worker per device of a mesh axis under
``jax.shard_map``. Both return a `Workers` with the same ``init`` and ``update`` on global
per-worker arrays (a leading worker axis of n), so a training loop, a test or an experiment
switches backend by changing one line. The compressed collectives are the same code in both
(`biased_compression.collectives`), and so are the results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from biased_compression.collectives import _collectives
from biased_compression.distributed import _workers

__all__ = ["Workers", "simulate", "shard", "worker_key"]


class Workers(NamedTuple):
  """n workers running one transformation: what `simulate` and `shard` return.

  Attributes:
    init: ``init(params) -> state``: the state of every worker, a leading worker axis on
      every leaf (the layout of `init_workers`; a checkpoint holds every worker's error).
    update: ``update(grads, state, params=None, **extra_args) -> (updates, state)``:
      ``grads`` holds one gradient per worker (a leading axis of n on every leaf); the
      returned ``updates`` are the aggregate, one copy without a worker axis, ready for
      ``optax.apply_updates``. Extra arguments (``participating``, ``probability``,
      ``weights``) have a leading worker axis too. Jit it as you would ``tx.update``.
    num_workers: n.
    axis_name: the worker axis the transformation communicates over.
  """

  init: Callable[[optax.Params], Any]
  update: Callable[..., tuple[Any, Any]]
  num_workers: int
  axis_name: Any


def _check_leading(fn: str, what: str, tree: Any, n: int) -> None:
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(tree)}
  if sizes and sizes != {n}:
    shown = sorted(map(str, sizes))
    hint = " (from tx.init: use Workers.init)" if what == "state" else ""
    raise ValueError(
      f"{fn}: every leaf of the {what} needs a leading worker axis of {n}, got leading sizes "
      f"{shown}{hint}"
    )


def _check_communicates(fn: str, seen: list, axis_name) -> None:
  if axis_name not in seen:
    found = f" (it uses {sorted(set(map(repr, seen)))})" if seen else ""
    raise ValueError(
      f"{fn}: no transformation of the library in tx communicates over the worker axis "
      f"{axis_name!r}{found} (no exchange of the library's collectives, a transformation's or "
      "bc.compressed_mean's, was traced), so the workers would not be averaged and each "
      f"would follow its own data: build the communicating part with axis_name={axis_name!r}, e.g. "
      f"bc.error_feedback(C, axis_name={axis_name!r})"
    )


def _worker_step(fn, update, axis_name):
  """One worker's ``update``, checked to communicate over ``axis_name``."""

  def step(grads, state, params, extra):
    with _collectives.recording_axes() as seen:
      out, state = update(grads, state, params, **extra)
    _check_communicates(fn, seen, axis_name)
    return out, state

  return step


def simulate(
  tx: optax.GradientTransformation, num_workers: int, *, axis_name: Any = "workers"
) -> Workers:
  """n simulated workers on one device: ``jax.vmap`` over the worker axis ``axis_name``.

  Args:
    tx: the transformation; its communicating part must use ``axis_name``.
    num_workers: n >= 1.
    axis_name: the worker axis name given to the library's transformations.

  Returns:
    A `Workers`. Its ``update`` refuses a ``tx`` in which no transformation of the library
    communicates over ``axis_name`` (a single-worker chain would silently train each worker
    on its own data).

  Example:
    >>> import jax, jax.numpy as jnp, optax, biased_compression as bc
    >>> tx = optax.chain(optax.sgd(1.0), bc.compress(bc.sign(), axis_name="workers"))
    >>> workers = bc.simulate(tx, 4)
    >>> params = jnp.zeros(2)
    >>> state = workers.init(params)
    >>> grads = jnp.array([[1.0, -1], [1, 1], [-1, 1], [1, 1]])  # one row per worker
    >>> updates, state = jax.jit(workers.update)(grads, state, params)
    >>> updates  # minus the mean of the workers' signs
    Array([-0.5, -0.5], dtype=float32)
  """
  n = _check_workers("simulate", num_workers)
  step = jax.vmap(
    _worker_step("simulate", tx.update, axis_name), in_axes=(0, 0, None, 0), axis_name=axis_name
  )

  def init(params):
    return _workers.init_workers(tx, params, n)

  def update(grads, state, params=None, **extra_args):
    _check_leading("simulate", "state", state, n)
    _check_leading("simulate", "gradients", grads, n)
    _check_leading("simulate", "extra arguments", extra_args, n)
    out, state = step(grads, state, params, extra_args)
    return jax.tree.map(lambda u: u[0], out), state

  return Workers(init, update, n, axis_name)


def shard(tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, axis_name: Any) -> Workers:
  """One worker per device of ``mesh``'s axis ``axis_name``, under ``jax.shard_map``.

  The state lives sharded over the devices, one worker each (``PartitionSpec(axis_name)``);
  gradients are given as global arrays with a leading worker axis and are placed the same way
  (each device computes nothing but its own worker's step); the aggregate comes back
  replicated. The gradients are per worker, so the trap of ``jax.grad`` of replicated
  parameters inside shard_map (already summed over the devices) does not arise. In a
  multi-process job (``jax.distributed.initialize``) build the global arrays with
  ``jax.make_array_from_process_local_data``.

  Args:
    tx: the transformation; its communicating part must use ``axis_name``.
    mesh: a mesh with an axis ``axis_name`` of n devices (other axes are replicated).
    axis_name: the mesh axis of the workers.

  Returns:
    A `Workers` with the same interface and results as ``simulate(tx, n, axis_name=...)``.

  Example (8 devices)::

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    workers = bc.shard(tx, mesh, "data")
    state = workers.init(params)
    updates, state = jax.jit(workers.update)(grads, state, params)  # grads: (8, ...)
  """
  if axis_name not in mesh.shape:
    raise ValueError(f"shard: mesh has axes {tuple(mesh.shape)}, not axis_name {axis_name!r}")
  n = int(mesh.shape[axis_name])
  workers = NamedSharding(mesh, P(axis_name))
  replicated = NamedSharding(mesh, P())
  device_update = _workers.device_update(tx, axis_name)
  step = _worker_step("shard", device_update, axis_name)

  def body(grads, state, params, extra):
    one = jax.tree.map(lambda x: x[0], (grads, extra))
    return step(one[0], state, params, one[1])

  # check_vma=False: the aggregate is equal on every device but typed varying by JAX (it comes
  # from an all_gather); returned with P() it is one replicated copy.
  mapped = jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(P(axis_name), P(axis_name), P(), P(axis_name)),
    out_specs=(P(), P(axis_name)),
    check_vma=False,
  )

  def init(params):
    return _workers.init_workers(tx, params, n, sharding=workers)

  def update(grads, state, params=None, **extra_args):
    _check_leading("shard", "state", state, n)
    _check_leading("shard", "gradients", grads, n)
    _check_leading("shard", "extra arguments", extra_args, n)
    grads, state, extra_args = _place((grads, state, extra_args), workers)
    params = _place(params, replicated)
    return mapped(grads, state, params, extra_args)

  return Workers(init, update, n, axis_name)


def _place(tree: Any, sharding: NamedSharding) -> Any:
  """Puts every leaf on ``sharding`` (a copy only where it lives elsewhere), in or out of jit."""

  def put(x):
    if isinstance(x, jax.core.Tracer):
      return jax.reshard(x, sharding)
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


def _check_workers(fn: str, num_workers) -> int:
  if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f"{fn}: num_workers must be an int >= 1, got {num_workers!r}")
  return num_workers


def worker_key(key: jax.Array, worker: int | jax.Array, leaf: int = 0) -> jax.Array:
  """The key worker ``worker``'s compressor gets for leaf ``leaf`` from a collective's key.

  `compressed_mean` (and every transformation, with its step key) folds the worker's axis
  index into the shared key, then the index of the leaf (or of the group of leaves under
  ``scope="global"``): ``C.compress(x_i, key=worker_key(key, i, leaf))`` is worker i's
  message. Compressors with shared randomness (rand-k with ``shared_indices=True``) use
  ``fold_in(key, leaf)`` instead, the same on every worker.
  """
  return jax.random.fold_in(jax.random.fold_in(key, worker), leaf)
