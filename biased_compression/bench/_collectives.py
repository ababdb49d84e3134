"""``biased-compression bench collectives``: traffic and time of the compressed all-reduce.

Three parts:

1. **Bytes per device per step** against the number of workers n, for the dense float32
   all-reduce, all_gather and two_stage, read from the compiled programs with `wire_bytes`
   for n = 2 .. (CPU devices available), and from the analytic model beyond (the model is
   printed next to the measurement where both exist, so its accuracy is visible).
2. **Step time** of the compressed mean against the dense ``pmean`` on the local devices.
   On one CPU host the "devices" share the same cores and memory, so this measures the
   compute overhead of compression, not a network.
3. **Modelled step time** of a large model on a slow network with the alpha-beta model:
   a collective of m sequential messages moving B bytes per device costs m * alpha + B / bw.
   Ring all-reduce and all_gather take n - 1 (all-reduce: 2 (n - 1)) messages; all_to_all
   n - 1. The compression time is a cost per value measured on this machine at
   ``min(d, COST_MAX_D)`` values and extrapolated linearly to the model size; below
   ``COST_MIN_RELIABLE_D`` fixed per-call overhead dominates it, so it is overstated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from biased_compression.bench import _timing
from biased_compression.collectives import _collectives
from biased_compression.compressors import _base
from biased_compression.compressors import _quantization
from biased_compression.compressors import _sparsification
from biased_compression.metrics import _wire

__all__ = [
  "bench_compressors_for_collectives",
  "traffic",
  "step_times",
  "network_model",
  "cost_fields",
  "cost_warning",
]

# The modelled step's compression cost is timed at min(d, COST_MAX_D) values, so that a large
# --dim does not make the timing itself long.
COST_MAX_D = 1 << 22
# Below this many values the timed calls are mostly fixed per-call overhead (dispatch, launch),
# which a linear extrapolation to the model size multiplies: measured at d = 2^16 the modelled
# 10 Gbit/s speed-up came out 0.71x where d = 2^20 gave 3.14x (issue 9).
COST_MIN_RELIABLE_D = 1 << 20


def bench_compressors_for_collectives(
  d: int = 1 << 20, ns: Sequence[int] = (2,)
) -> dict[str, _base.Compressor]:
  """The compressors of the benchmark: 1 bit (scaled sign), Top-k 1 %, natural dithering.

  Top-k keeps a fixed k near 1 % of d that every n of ``ns`` divides, since two_stage keeps
  k / n per chunk (k = 10 496 of 2^20 for n up to 256: 1.001 %).
  """
  step = math.lcm(*ns)
  return {
    "scaled_sign": _quantization.scaled_sign(),
    "top_k_1pct": _sparsification.top_k(k=min(d, step * max(1, round(0.01 * d / step)))),
    "natural_dithering_3": _quantization.natural_dithering(3),
  }


def model_bytes(method: str, compressor: _base.Compressor | None, d: int, n: int) -> int:
  """Bytes one device sends per step (the analytic model of `wire_bytes`'s rules)."""
  if method == "dense":
    return 2 * (n - 1) * 4 * d // n
  up, down = _collectives.traffic_bits(compressor, method, d, n)
  if method == "all_gather":
    return (n - 1) * up // 8
  # two_stage: an all_to_all of the n chunk payloads, an all_gather of the server's chunk
  return ((n - 1) * up // n + (n - 1) * down) // 8


def _mesh(n: int):
  devices = jax.devices()[:n]
  return jax.sharding.Mesh(devices, ("w",), axis_types=(jax.sharding.AxisType.Explicit,))


def _program(method: str, compressor, d: int, n: int):
  """A jitted shard_map'd mean over n devices, and its sharded input."""
  mesh = _mesh(n)
  x = jax.device_put(jax.random.normal(jax.random.key(0), (n, d)), NamedSharding(mesh, P("w")))
  key = jax.random.key(1)

  def body(v):
    v = v[0]
    if method == "dense":
      return jax.lax.pmean(v, "w")[None]
    err = jnp.zeros_like(v) if method == "two_stage" else None
    r = _collectives.compressed_mean(
      v,
      compressor,
      "w",
      key=key if compressor.needs_key else None,
      method=method,
      server_error=err,
    )
    return r.mean[None]

  f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("w"), out_specs=P("w")))
  return f, x


def traffic(d: int, ns: Sequence[int]) -> list[dict[str, Any]]:
  """Bytes per device per step, measured where n <= the device count, else modelled."""
  rows = []
  available = jax.device_count()
  for n in ns:
    cases = [("dense", "dense", None)] + [
      (name, method, c)
      for name, c in bench_compressors_for_collectives(d, ns).items()
      for method in ("all_gather", "two_stage")
    ]
    for name, method, c in cases:
      modelled = model_bytes(method, c, d, n)
      measured = None
      if n <= available:
        f, x = _program(method, c, d, n)
        measured = _wire.wire_bytes(f, x)["sent"]
      rows.append(
        {
          "part": "traffic",
          "d": d,
          "n": n,
          "compressor": name,
          "method": method,
          "measured_bytes": measured,
          "model_bytes": modelled,
          "dense_over_this": model_bytes("dense", None, d, n) / (measured or modelled),
        }
      )
  return rows


def step_times(d: int, n: int, repeats: int) -> list[dict[str, Any]]:
  """Wall time of one compressed mean against the dense pmean on n local devices."""
  rows = []
  f, x = _program("dense", None, d, n)
  dense_ms = _timing.time_call(f, x, repeats=repeats)
  rows.append(
    {"part": "time", "d": d, "n": n, "compressor": "dense", "method": "dense", "ms": dense_ms}
  )
  for name, c in bench_compressors_for_collectives(d, (n,)).items():
    for method in ("all_gather", "two_stage"):
      f, x = _program(method, c, d, n)
      ms = _timing.time_call(f, x, repeats=repeats)
      rows.append(
        {
          "part": "time",
          "d": d,
          "n": n,
          "compressor": name,
          "method": method,
          "ms": ms,
          "over_dense": ms / dense_ms,
        }
      )
  return rows


def network_model(
  params: int,
  n: int,
  gbits: Sequence[float],
  compute_ms: float,
  alpha_us: float,
  encode_ms_per_million: float,
) -> list[dict[str, Any]]:
  """Modelled step time: compute + communication (+ compression) for dense and two_stage.

  Args:
    params: model size (float32 parameters).
    n: workers.
    gbits: link bandwidths in Gbit/s.
    compute_ms: forward + backward time of one step (an assumption, stated in the output).
    alpha_us: latency per message.
    encode_ms_per_million: compression cost (encode + decode of both stages) per million
      coordinates; measured on this machine by the caller, or 0 for "free" compression.
  """
  rows = []
  sign = _quantization.scaled_sign()
  for bw in gbits:
    bytes_per_s = bw * 1e9 / 8
    dense_bytes = model_bytes("dense", None, params, n)
    dense_ms = 1e3 * (2 * (n - 1) * alpha_us * 1e-6 + dense_bytes / bytes_per_s)
    ts_bytes = model_bytes("two_stage", sign, params, n)
    ts_ms = 1e3 * (2 * (n - 1) * alpha_us * 1e-6 + ts_bytes / bytes_per_s)
    comp_ms = encode_ms_per_million * params / 1e6
    rows.append(
      {
        "part": "model",
        "params": params,
        "n": n,
        "gbit_s": bw,
        "compute_ms": compute_ms,
        "dense_comm_ms": dense_ms,
        "two_stage_sign_comm_ms": ts_ms,
        "compression_ms": comp_ms,
        "speedup": (compute_ms + dense_ms) / (compute_ms + ts_ms + comp_ms),
        "speedup_free_compression": (compute_ms + dense_ms) / (compute_ms + ts_ms),
      }
    )
  return rows


def sign_cost_ms_per_million(d: int, repeats: int, n: int = 16) -> float:
  """Measured compression work of one two_stage scaled-sign step, per million values.

  A device encodes its d values (n chunks), decodes the n chunks it receives (d values),
  encodes its summed chunk (d / n) and decodes the n gathered chunks (d values): one encode
  and two decodes of d values, plus an encode of d / n.
  """
  c = _quantization.scaled_sign()
  x = jax.random.normal(jax.random.key(2), (d,))
  enc = jax.jit(lambda v: c.encode(v))
  dec = jax.jit(lambda p: c.decode(p, (d,), jnp.float32))
  payload = enc(x)
  enc_ms = _timing.time_call(enc, x, repeats=repeats)
  dec_ms = _timing.time_call(dec, payload, repeats=repeats)
  return (enc_ms * (1 + 1 / n) + 2 * dec_ms) * 1e6 / d


def cost_fields(measured_d: int, ms_per_million: float) -> dict[str, Any]:
  """The JSON fields saying how `network_model`'s ``compression_ms`` was obtained."""
  return {
    "compression_ms_per_million": ms_per_million,
    "compression_measured_d": measured_d,
    "compression_extrapolation": "linear",
    "compression_overhead_dominated": measured_d < COST_MIN_RELIABLE_D,
  }


def cost_warning(measured_d: int) -> str | None:
  """Why the modelled compression time is too high when measured at a small d, else None."""
  if measured_d >= COST_MIN_RELIABLE_D:
    return None
  reliable = _timing.format_size(COST_MIN_RELIABLE_D)
  return (
    f"below d = {reliable} the measured cost per value is dominated by fixed per-call "
    "overhead, so the extrapolated compression time is overstated (and the speed-up "
    f"understated); use --dim {reliable} or more for the modelled step"
  )


def tables(rows: Sequence[dict[str, Any]]) -> str:
  """The three parts as plain-text tables."""
  fmt = _timing.format_sig
  out = []
  traffic_rows = [r for r in rows if r["part"] == "traffic"]
  if traffic_rows:
    out.append(f"Bytes sent per device per step, d = {traffic_rows[0]['d']}")
    out.append(
      _timing.format_table(
        ["n", "compressor", "method", "measured", "model", "dense / this"],
        [
          [
            str(r["n"]),
            r["compressor"],
            r["method"],
            "-" if r["measured_bytes"] is None else str(r["measured_bytes"]),
            str(r["model_bytes"]),
            fmt(r["dense_over_this"]),
          ]
          for r in traffic_rows
        ],
        align="><<",
      )
    )
  time_rows = [r for r in rows if r["part"] == "time"]
  if time_rows:
    out.append("")
    out.append(
      f"Time of one mean on {time_rows[0]['n']} local CPU devices, d = {time_rows[0]['d']} "
      "(compute overhead only: the devices share this host's cores)"
    )
    out.append(
      _timing.format_table(
        ["compressor", "method", "ms", "/ dense"],
        [
          [r["compressor"], r["method"], fmt(r["ms"]), fmt(r.get("over_dense", 1.0))]
          for r in time_rows
        ],
        align="<<",
      )
    )
  model_rows = [r for r in rows if r["part"] == "model"]
  if model_rows:
    r0 = model_rows[0]
    out.append("")
    out.append(
      f"Modelled step, {r0['params'] / 1e6:.0f}M parameters, {r0['n']} workers, compute "
      f"{r0['compute_ms']:g} ms (assumed), two_stage scaled sign vs dense float32 ring"
    )
    out.append(
      _timing.format_table(
        ["Gbit/s", "dense comm ms", "1-bit comm ms", "compression ms", "speed-up", "if free"],
        [
          [
            f"{r['gbit_s']:g}",
            fmt(r["dense_comm_ms"]),
            fmt(r["two_stage_sign_comm_ms"]),
            fmt(r["compression_ms"]),
            fmt(r["speedup"]) + "x",
            fmt(r["speedup_free_compression"]) + "x",
          ]
          for r in model_rows
        ],
      )
    )
    if "compression_measured_d" in r0:
      out.append(
        f"compression ms: {fmt(r0['compression_ms_per_million'])} ms per million values "
        "(one encode and two decodes of the values, an encode of 1/n of them: a two_stage "
        "step's work), measured on this machine at "
        f"d = {_timing.format_size(r0['compression_measured_d'])} and extrapolated linearly "
        f"to {r0['params']} parameters"
      )
      warning = cost_warning(r0["compression_measured_d"])
      if warning is not None:
        out.append(f"warning: {warning}")
  return "\n".join(out)
