"""The worker-stacked state and the per-backend update functions under the backends.

The state of n workers has a leading worker axis, ``(n, *leaf_shape)``, in vmap simulation
and in shard_map alike (`init_workers`); `simulated_update` maps ``tx.update`` over it with
``jax.vmap`` and `device_update` strips the one-worker block inside ``jax.shard_map``. The
one interface over both is `biased_compression.distributed.simulate` /
`biased_compression.distributed.shard`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def init_workers(
  tx: optax.GradientTransformation,
  params: optax.Params,
  num_workers: int,
  *,
  sharding: jax.sharding.Sharding | None = None,
):
  """The state of ``num_workers`` simulated workers: ``tx.init(params)`` with a leading axis.

  Every worker starts from the same state (the same seed: per-worker randomness comes from
  the worker's axis index, folded into the key at each step). `biased_compression.simulate`
  and `biased_compression.shard` call it; use it directly for a hand-written loop, with
  `simulated_update` (``jax.vmap`` over the workers) or `device_update` (``shard_map``).

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
  function strips the state's block axis, runs ``tx.update`` and puts it back (the updates
  are given and returned without a block axis: the caller strips and restores theirs, as in
  the example; `biased_compression.shard` does all of this), and checks

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
