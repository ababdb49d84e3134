"""Bytes on the wire, read from the compiled program (`wire_bytes`).

The collectives' operand shapes are parsed out of the optimised HLO text, so the count is
what XLA will actually move, independent of the library's own bit model (`bits_sent`,
`traffic_bits`); tests compare the two.
"""

from __future__ import annotations

import math
import re

import jax

# -- reading the traffic out of the compiled program ------------------------------------------

_COLLECTIVES = {
  "all-gather": "all_gather",
  "all-to-all": "all_to_all",
  "all-reduce": "all_reduce",
  "reduce-scatter": "reduce_scatter",
  "collective-permute": "collective_permute",
}
_OP = re.compile(
  r"=\s*(?P<result>\(.*?\)|[a-z0-9]+\[[^\]]*\](?:\{[^}]*\})?)\s+"
  r"(?P<op>all-gather|all-to-all|all-reduce|reduce-scatter|collective-permute)(?P<start>-start)?\("
  r"(?P<operands>.*?)\)(?P<attrs>.*)$"
)
_SHAPE = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
}


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    if dtype not in _BYTES:
      continue
    total += _BYTES[dtype] * math.prod(int(x) for x in dims.split(",") if x)
  return total


def _group_size(attrs: str, default: int) -> int:
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
  if m:
    return len(m.group(1).split(","))
  return default


def wire_bytes(fn, *args, **kwargs) -> dict:
  """Bytes each device sends in the collectives of ``jax.jit(fn)(*args)``.

  Compiles ``fn`` and reads every all-gather, all-to-all, all-reduce, reduce-scatter and
  collective-permute of the per-device program (so call it on a ``jax.shard_map``'d or
  ``jax.pmap``'d function; a vmap simulation has no collectives). For a group of n devices
  and an operand of S bytes, a device sends and receives: all-gather (n - 1) S; all-to-all
  and reduce-scatter (n - 1) / n S; all-reduce 2 (n - 1) / n S (ring); collective-permute S.
  A collective inside a loop is counted once. In these symmetric collectives a device
  receives what it sends, so one number is reported.

  Returns:
    ``{"sent": int, "ops": [{"op", "group", "operand_bytes", "sent"}, ...]}``.
  """
  text = jax.jit(fn).lower(*args, **kwargs).compile().as_text()
  ops = []
  for line in text.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    op = _COLLECTIVES[m.group("op")]
    result = _shape_bytes(m.group("result"))
    n = _group_size(m.group("attrs"), jax.device_count())
    # The compiled text names operands without shapes: size them from the result.
    if op == "all_gather":
      operand, sent = result // n, (n - 1) * (result // n)
    elif op == "all_to_all":
      operand, sent = result, (n - 1) * result // n
    elif op == "reduce_scatter":
      operand, sent = result * n, (n - 1) * result
    elif op == "all_reduce":
      operand, sent = result, 2 * (n - 1) * result // n
    else:
      operand, sent = result, result
    ops.append({"op": op, "group": n, "operand_bytes": operand, "sent": sent})
  total = sum(o["sent"] for o in ops)
  return {"sent": total, "ops": ops}
