"""``biased-compression bench powersgd``: PowerSGD's compute per step against a dense all-reduce.

For one matrix of d = rows x cols parameters and each rank r, on the local device:

* ``powersgd_ms``: one worker's PowerSGD step without its communication (M + e, M Q, two
  Gram-Schmidt orthogonalisations, M^T P, P Q^T, the new error): `bc.powersgd` on one worker,
  jitted, which is exactly that work;
* ``pass_ms``: one read-and-write pass over the same d values (the floor of any step);
* ``allreduce_ms``: the dense float32 all-reduce of d values over the local devices under
  ``jax.shard_map`` (only with 2 devices or more; on one CPU host they share its memory, so
  this is a memory cost, not a network's);
* bits per worker: dense 32 d, PowerSGD 32 (rows + cols) r, and the modelled ring all-reduce
  time of each at the given link bandwidth for n workers (2 (n - 1) / n of the bytes, plus
  2 (n - 1) latencies per all-reduce; PowerSGD has two). PyTorch's DDP hook sends the same
  two all-reduces of the same factors, so the modelled time is also the hook's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from biased_compression import transforms
from biased_compression.bench import _timing

__all__ = ["bench_powersgd", "powersgd_table"]


def _shape(d: int) -> tuple[int, int]:
  rows = 1 << (int(math.log2(d)) // 2)
  return rows, d // rows


def _ring_ms(bits: int, n: int, gbits: float, latency_us: float, collectives: int) -> float:
  seconds = 2 * (n - 1) / n * bits / (gbits * 1e9) + collectives * 2 * (n - 1) * latency_us * 1e-6
  return 1e3 * seconds


def _allreduce_ms(x: jax.Array, repeats: int) -> float | None:
  n = jax.device_count()
  if n < 2:
    return None
  mesh = jax.make_mesh((n,), ("w",), axis_types=(jax.sharding.AxisType.Explicit,))
  stacked = jax.device_put(jnp.broadcast_to(x, (n, *x.shape)), NamedSharding(mesh, P("w")))
  mean = jax.jit(
    jax.shard_map(lambda v: jax.lax.pmean(v, "w"), mesh=mesh, in_specs=P("w"), out_specs=P("w"))
  )
  return _timing.time_call(mean, stacked, repeats=repeats)


def bench_powersgd(
  sizes: Sequence[int] = (1 << 20, 1 << 22, 1 << 24),
  ranks: Sequence[int] = (1, 2, 4),
  *,
  workers: int = 8,
  gbits: float = 10.0,
  latency_us: float = 10.0,
  repeats: int = 5,
) -> list[dict[str, Any]]:
  """One row per (size, rank): the times and bits of the module docstring."""
  out = []
  for d in sizes:
    rows, cols = _shape(int(d))
    key = jax.random.PRNGKey(d)
    g = jax.random.normal(key, (rows, cols))
    pass_ms = _timing.reference_ms(g, repeats)
    allreduce = _allreduce_ms(g.reshape(-1), repeats)
    dense_bits = 32 * rows * cols
    for r in ranks:
      tx = transforms.powersgd(int(r), min_compression_rate=1.0)
      state = tx.init(g)
      update = jax.jit(tx.update)
      _, state = update(g, state)
      ms = _timing.time_call(lambda s, u=update, x=g: u(x, s)[0], state, repeats=repeats)
      bits = 32 * (rows + cols) * min(rows, cols, int(r))
      out.append(
        {
          "d": rows * cols,
          "shape": f"{rows}x{cols}",
          "rank": int(r),
          "powersgd_ms": ms,
          "pass_ms": pass_ms,
          "allreduce_ms": allreduce,
          "devices": jax.device_count(),
          "bits": bits,
          "dense_bits": dense_bits,
          "workers": workers,
          "gbits": gbits,
          "model_dense_ms": _ring_ms(dense_bits, workers, gbits, latency_us, 1),
          "model_powersgd_ms": _ring_ms(bits, workers, gbits, latency_us, 2),
        }
      )
  return out


def powersgd_table(rows: Sequence[dict[str, Any]]) -> str:
  head = (
    "| d | matrix | rank | PowerSGD compute ms | one pass ms | dense all-reduce ms | bits / dense "
    "| modelled all-reduce ms, dense -> PowerSGD (n, Gbit/s) |"
  )
  lines = [head, "|" + "---|" * 8]
  for r in rows:
    ar = "-" if r["allreduce_ms"] is None else f"{r['allreduce_ms']:.2f} ({r['devices']} dev.)"
    lines.append(
      f"| {_timing.format_size(r['d'])} | {r['shape']} | {r['rank']} | {r['powersgd_ms']:.2f} "
      f"| {r['pass_ms']:.2f} | {ar} | {r['bits'] / r['dense_bits']:.2e} "
      f"| {r['model_dense_ms']:.2f} -> {r['model_powersgd_ms']:.3f} "
      f"({r['workers']}, {r['gbits']:g}) |"
    )
  return "\n".join(lines)
