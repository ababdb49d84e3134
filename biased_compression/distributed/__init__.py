"""n workers behind one interface: simulated under ``jax.vmap`` or one per device.

* `simulate` (``jax.vmap`` with an axis name, on one device) and `shard` (``jax.shard_map``
  over a mesh axis) return the same `Workers`: ``init(params)`` and ``update(grads, state,
  params)`` on global arrays with a leading worker axis.
* Below them: `init_workers` (the worker-stacked state), `simulated_update` and
  `device_update`; `worker_key` is the key a worker draws from at a step.
"""

from biased_compression.distributed._backends import Workers
from biased_compression.distributed._backends import shard
from biased_compression.distributed._backends import simulate
from biased_compression.distributed._backends import worker_key
from biased_compression.distributed._workers import device_update
from biased_compression.distributed._workers import init_workers
from biased_compression.distributed._workers import simulated_update

__all__ = [
  "Workers",
  "device_update",
  "init_workers",
  "shard",
  "simulate",
  "simulated_update",
  "worker_key",
]
