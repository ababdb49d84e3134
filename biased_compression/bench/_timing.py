"""Benchmarks behind ``biased-compression bench``: timing helpers, the compressor benchmark,
plain-text tables and the JSON record writer.

Every benchmark reports its times next to a memory-bound reference measured on the same
array in the same run, ``jax.jit(lambda x: x * 1.0001)`` (one read and one write of the
array), so that ratios can be compared across machines. Each benchmark returns a list of
flat dicts (one per measurement) that `write_record` stores with the machine description.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from biased_compression.compressors import _base
from biased_compression.experiments._output import format_sig
from biased_compression.experiments._output import format_table
from biased_compression.experiments._output import progress
from biased_compression.ops import _topk

__all__ = [
  "time_call",
  "reference_ms",
  "bench_compressors",
  "machine_info",
  "write_record",
  "format_table",
  "format_sig",
  "compressor_bench_tables",
  "bench_topk",
  "topk_bench_tables",
  "TOPK_METHODS",
  "progress",
  "format_size",
]


def format_size(d: int) -> str:
  """``2^s`` for a power of two, else the plain count: the syntax ``--sizes`` accepts.

  >>> format_size(1 << 20), format_size(1000)
  ('2^20', '1000')
  """
  s = d.bit_length() - 1
  return f"2^{s}" if d > 0 and d == 1 << s else str(d)


def _vector_key(key: jax.Array, d: int) -> jax.Array:
  # Folded with log2(d) as when sizes were given as log2: powers of two keep their vectors.
  return jax.random.fold_in(key, d.bit_length() - 1)


def time_call(fn: Callable[..., Any], *args: Any, repeats: int = 5) -> float:
  """Minimum wall time of ``fn(*args)`` in milliseconds over ``repeats`` calls.

  One warm-up call (compilation for a jitted ``fn``) runs first and is not counted; every
  call is followed by ``jax.block_until_ready`` on its result.

  Args:
    fn: the function to time, typically a ``jax.jit``-ed one.
    *args: its arguments, already on the device.
    repeats: number of timed calls, >= 1.

  Returns:
    The fastest timed call, in milliseconds.
  """
  if repeats < 1:
    raise ValueError(f"time_call: repeats must be >= 1, got {repeats!r}")
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return 1e3 * best


_reference = jax.jit(lambda x: x * 1.0001)
_read_reference = jax.jit(jnp.sum)


def reference_ms(x: jax.Array, repeats: int = 5) -> float:
  """Time of the memory-bound reference ``x * 1.0001`` on ``x``, in milliseconds."""
  return time_call(_reference, x, repeats=repeats)


def read_reference_ms(x: jax.Array, repeats: int = 5) -> float:
  """Time of one read of ``x`` (``jnp.sum``), in milliseconds.

  At d >= 2^23 on CPU most of the multiply reference is spent allocating its fresh output
  buffer (page faults), which encoders with small outputs never pay; this read-only
  reference is recorded beside it so that such ratios can be read both ways.
  """
  return time_call(_read_reference, x, repeats=repeats)


def _encoder(c: _base.Compressor) -> Callable[[jax.Array, jax.Array], Any]:
  # The key is a jit argument (never a closed-over constant); deterministic operators
  # ignore it, exactly as `encode` does.
  return jax.jit(lambda x, key: c.encode(x, key=key if c.needs_key else None))


def _decoder(c: _base.Compressor, d: int) -> Callable[[Any, jax.Array], jax.Array]:
  return jax.jit(lambda p, key: c.decode(p, (d,), jnp.float32, key=key if c.needs_key else None))


def bench_compressors(
  compressors: Mapping[str, _base.Compressor],
  sizes: Sequence[int],
  *,
  repeats: int = 5,
  seed: int = 0,
  on_size_done: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
  """Times ``encode`` and ``decode`` of every compressor on a float32 Gaussian vector.

  For each size d the reference ``x * 1.0001`` is timed before and after the
  compressors (the minimum of both is used), so that slow drifts of the machine do not
  bias the ratios. Encode and decode are jitted separately and timed by `time_call`;
  decode is timed on a payload encoded once beforehand. Random operators get the fixed key
  ``jax.random.key(seed)`` as a jit argument.

  Args:
    compressors: name -> compressor, e.g. ``standard_compressors()``.
    sizes: vector sizes (element counts).
    repeats: timed calls per measurement (the minimum is kept), after one warm-up call.
    seed: seed of the input vector and of the key.
    on_size_done: called as ``on_size_done(d, rows)`` when a size is finished, with that
      size's result rows (used to print tables as they complete).

  Returns:
    One dict per (size, compressor) with keys ``compressor, operator, d, encode_ms,
    decode_ms, reference_ms, encode_ratio, decode_ratio, bits_per_coord``.
  """
  results: list[dict[str, Any]] = []
  key = jax.random.key(seed)
  total = len(sizes) * len(compressors)
  with progress(total=total, desc="bench compressors") as bar:
    for d in sizes:
      x = jax.block_until_ready(jax.random.normal(_vector_key(key, d), (d,), jnp.float32))
      ref_before = reference_ms(x, repeats)
      read_before = read_reference_ms(x, repeats)
      timings = []
      for name, c in compressors.items():
        bar.set_postfix_str(f"d={format_size(d)} {name}", refresh=False)
        encode = _encoder(c)
        decode = _decoder(c, d)
        encode_ms = time_call(encode, x, key, repeats=repeats)
        payload = jax.block_until_ready(encode(x, key))
        decode_ms = time_call(decode, payload, key, repeats=repeats)
        del payload
        timings.append((name, c, encode_ms, decode_ms))
        bar.update(1)
      ref = min(ref_before, reference_ms(x, repeats))
      read_ref = min(read_before, read_reference_ms(x, repeats))
      rows = [
        {
          "compressor": name,
          "operator": c.name,
          "d": d,
          "encode_ms": encode_ms,
          "decode_ms": decode_ms,
          "reference_ms": ref,
          "encode_ratio": encode_ms / ref,
          "decode_ratio": decode_ms / ref,
          "read_reference_ms": read_ref,
          "encode_read_ratio": encode_ms / read_ref,
          "bits_per_coord": c.bits(d) / d,
        }
        for name, c, encode_ms, decode_ms in timings
      ]
      results.extend(rows)
      if on_size_done is not None:
        on_size_done(d, rows)
  return results


def compressor_bench_tables(results: Iterable[Mapping[str, Any]]) -> str:
  """Plain-text tables of `bench_compressors` results, one per vector size."""
  by_d: dict[int, list[Mapping[str, Any]]] = {}
  for row in results:
    by_d.setdefault(row["d"], []).append(row)
  blocks = []
  for d, rows in by_d.items():
    title = (
      f"d = {format_size(d)} = {d} float32 (x ~ N(0, 1)); reference x * 1.0001: "
      f"{rows[0]['reference_ms']:.4g} ms, read-only sum(x): {rows[0]['read_reference_ms']:.4g} "
      "ms; times are the min over the repeats"
    )
    table = format_table(
      ["name", "bits/coord", "encode ms", "decode ms", "encode/ref", "decode/ref", "encode/read"],
      [
        [
          r["compressor"],
          f"{r['bits_per_coord']:.2f}",
          f"{r['encode_ms']:.4g}",
          f"{r['decode_ms']:.4g}",
          f"{r['encode_ratio']:.3g}",
          f"{r['decode_ratio']:.3g}",
          f"{r['encode_read_ratio']:.3g}",
        ]
        for r in rows
      ],
      align="<rrrrrr",
    )
    blocks.append(f"{title}\n{table}")
  return "\n\n".join(blocks)


TOPK_METHODS = ("exact_sort", "radix", "approx")


def _torch_topk() -> Callable[[np.ndarray, int], Callable[[], Any]] | None:
  """A timer factory for ``torch.topk(|x|, k)`` when PyTorch is importable, else None."""
  try:
    import torch  # optional: never a dependency
  except ImportError:
    return None

  def make(x: np.ndarray, k: int) -> Callable[[], Any]:
    xt = torch.from_numpy(np.array(x))  # a writable copy
    return lambda: torch.topk(xt.abs(), k, sorted=False).indices.numpy()

  return make


def bench_topk(
  sizes: Sequence[int],
  ratios: Sequence[float],
  *,
  repeats: int = 5,
  seed: int = 0,
  methods: Sequence[str] = TOPK_METHODS,
  on_size_done: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
  """Times the Top-k selection methods of `_topk.abs_top_k` on a float32 Gaussian vector.

  For each size d and ``k = max(1, round(ratio * d))``, every method in ``methods``
  is jitted and timed by `time_call` as ``abs_top_k(x, k, method=...)`` (values and
  indices), next to the references ``x * 1.0001`` and ``jnp.sum(x)`` timed before and after
  (the minimum is kept). ``torch.topk(|x|, k)`` on the same data is timed too when PyTorch
  is importable (with its default threads; never a dependency). Each result is compared
  with ``jax.lax.top_k``'s set of indices: ``recall`` is the fraction of that set found
  (1.0 for the exact methods; ties are absent from Gaussian data).

  Args:
    sizes: vector sizes (element counts).
    ratios: fractions of the entries to keep, each in (0, 1].
    repeats: timed calls per measurement (the minimum is kept), after one warm-up call.
    seed: seed of the input vector.
    methods: `abs_top_k` methods to time ("exact_sort" is always timed: it is the baseline).
    on_size_done: called as ``on_size_done(d, rows)`` when a size is finished.

  Returns:
    One dict per (size, ratio, method) with keys ``method, d, k, ratio, ms,
    reference_ms, read_reference_ms, reference_ratio, read_ratio, speedup_vs_lax_top_k,
    recall``.
  """
  methods = ["exact_sort", *(m for m in methods if m != "exact_sort")]
  torch_topk = _torch_topk()
  results: list[dict[str, Any]] = []
  total = len(sizes) * len(ratios) * (len(methods) + (torch_topk is not None))
  with progress(total=total, desc="bench topk") as bar:
    for d in sizes:
      x = jax.block_until_ready(
        jax.random.normal(_vector_key(jax.random.key(seed), d), (d,), jnp.float32)
      )
      ref_before = reference_ms(x, repeats)
      read_before = read_reference_ms(x, repeats)
      timings = []
      for ratio in ratios:
        k = max(1, round(ratio * d))
        expected = None
        for method in methods:
          bar.set_postfix_str(f"d={format_size(d)} k={k} {method}", refresh=False)
          fn = jax.jit(lambda x, k=k, method=method: _topk.abs_top_k(x, k, method=method))
          ms = time_call(fn, x, repeats=repeats)
          found = np.asarray(fn(x)[1])
          if expected is None:
            expected = found
          timings.append((method, k, ratio, ms, _recall(found, expected)))
          bar.update(1)
        if torch_topk is not None:
          bar.set_postfix_str(f"d={format_size(d)} k={k} torch.topk", refresh=False)
          call = torch_topk(np.asarray(x), k)
          ms = _time_host(call, repeats)
          timings.append(("torch.topk", k, ratio, ms, _recall(call(), expected)))
          bar.update(1)
      ref = min(ref_before, reference_ms(x, repeats))
      read_ref = min(read_before, read_reference_ms(x, repeats))
      base = {(k, m): ms for m, k, _, ms, _ in timings}
      rows = [
        {
          "method": method,
          "d": d,
          "k": k,
          "ratio": ratio,
          "ms": ms,
          "reference_ms": ref,
          "read_reference_ms": read_ref,
          "reference_ratio": ms / ref,
          "read_ratio": ms / read_ref,
          "speedup_vs_lax_top_k": base[(k, "exact_sort")] / ms,
          "recall": recall,
        }
        for method, k, ratio, ms, recall in timings
      ]
      results.extend(rows)
      if on_size_done is not None:
        on_size_done(d, rows)
  return results


def _recall(found: np.ndarray, expected: np.ndarray) -> float:
  return len(np.intersect1d(found, expected)) / len(expected)


def _time_host(fn: Callable[[], Any], repeats: int) -> float:
  """`time_call` for a host function (one warm-up call, then the minimum, in ms)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return 1e3 * best


def topk_bench_tables(results: Iterable[Mapping[str, Any]]) -> str:
  """Plain-text tables of `bench_topk` results, one per (size, k)."""
  groups: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
  for row in results:
    groups.setdefault((row["d"], row["k"]), []).append(row)
  blocks = []
  for (d, k), rows in groups.items():
    title = (
      f"d = {format_size(d)} float32 (x ~ N(0, 1)), k = {k} ({rows[0]['ratio']:g}); reference "
      f"x * 1.0001: {rows[0]['reference_ms']:.4g} ms, read-only sum(x): "
      f"{rows[0]['read_reference_ms']:.4g} ms; times are the min over the repeats"
    )
    table = format_table(
      ["method", "ms", "/ref", "/read", "vs lax.top_k", "recall"],
      [
        [
          r["method"],
          f"{r['ms']:.4g}",
          f"{r['reference_ratio']:.3g}",
          f"{r['read_ratio']:.3g}",
          f"{r['speedup_vs_lax_top_k']:.3g}x",
          f"{r['recall']:.4f}",
        ]
        for r in rows
      ],
      align="<",
    )
    blocks.append(f"{title}\n{table}")
  return "\n\n".join(blocks)


def machine_info() -> dict[str, Any]:
  """Where a benchmark ran: platform, CPU count, JAX version and device kind."""
  device = jax.devices()[0]
  return {
    "platform": platform.platform(),
    "machine": platform.machine(),
    "processor": platform.processor(),
    "python": platform.python_version(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
  }


def write_record(
  path: str | os.PathLike[str], results: Sequence[Mapping[str, Any]], argv: Sequence[str]
) -> dict[str, Any]:
  """Writes a benchmark record as JSON: machine, date, command and results.

  Shared by every ``bench`` subcommand, so all records have the same layout.

  Args:
    path: output file; missing parent directories are created.
    results: the benchmark's result rows (JSON-serialisable dicts).
    argv: the command line arguments (without the program name).

  Returns:
    The record that was written.
  """
  record = {
    "machine": machine_info(),
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "command": ["biased-compression", *argv],
    "results": [dict(r) for r in results],
  }
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=2) + "\n")
  return record
