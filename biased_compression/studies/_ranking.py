"""Claim 3: Top-k combined with natural dithering beats the other compressors per bit.

Beznosikov et al. propose a new biased compressor, Top-k followed by natural dithering of the
k kept values, and report that in their experiments it outperforms every other compression
technique. This study trains the experiments layer's tasks with error feedback and every
compressor family at matched bit budgets, and ranks the families by the loss they reach with
the same number of bits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

import biased_compression as bc
from biased_compression import experiments as ex
from biased_compression.experiments import _output
from biased_compression.experiments import _tasks
from biased_compression.studies import _claims

__all__ = [
  "CLAIM",
  "DEFAULT_FAMILIES",
  "FAMILIES",
  "Match",
  "compressor_ranking",
  "is_first",
  "match_budget",
  "verdict_of",
]

# name -> label in tables and plots
FAMILIES = {
  "top_k_nd": "Top-k + natural dithering",
  "top_k": "Top-k",
  "rand_k": "rand-k",
  "natural_dithering": "natural dithering",
  "scaled_sign": "scaled sign",
  "natural_compression": "natural compression",
}
# the small default leaves out rand-k (with error feedback it trails every other family, and
# each family costs a compiled program per task); the full size has them all
DEFAULT_FAMILIES = ("top_k_nd", "top_k", "natural_dithering", "scaled_sign", "natural_compression")
# natural dithering with b level bits is best used with all 2^b - 1 levels; the library allows
# up to 64 levels, so b = 1 .. 6
_DITHERING_LEVELS = tuple(2**b - 1 for b in range(1, 7))
_FLOAT_BITS = 32  # the runner's parameters are float32


@dataclasses.dataclass(frozen=True)
class Match:
  """The compressor of one family at one budget.

  Attributes:
    family: a key of `FAMILIES`.
    compressor: the operator error feedback uses (unbiased ones scaled by `bc.contractive`),
      or None when the family cannot reach the budget.
    parameter: its parameter in words (``"k/d = 0.031"``, ``"s = 3"``).
    bits_per_step: the bits one worker sends per step (summed over the leaves), or, when
      None was matched, the least the family can send.
  """

  family: str
  compressor: bc.Compressor | None
  parameter: str
  bits_per_step: int


def _leaf_sizes(params: Any) -> list[int]:
  return [int(np.size(leaf)) for leaf in jax.tree.leaves(params)]


def _step_bits(c: bc.Compressor, sizes: Sequence[int]) -> int:
  # what `bc.bits_sent` adds per step: each leaf compressed on its own (scope="leaf"), its
  # payload_bits(d, float32), which `bits(d)` equals by contract and computes without
  # tracing (the bisection evaluates it often)
  return sum(c.bits(d) for d in sizes)


def _for_error_feedback(c: bc.Compressor, sizes: Sequence[int]) -> bc.Compressor:
  """``c`` itself when it is contractive on every leaf, else ``contractive(c)`` (C/beta).

  Error feedback's analysis needs C in B3(delta): unbiased operators (rand-k, natural
  dithering, natural compression) are scaled by 1/(1 + omega), as the paper prescribes,
  and a biased one whose B2 constant beta reaches 2 (Top-k + natural dithering with many
  kept values) by 1/beta.
  """
  if c.unbiased or not all(math.isfinite(c.delta(d)) for d in sizes if d):
    return bc.contractive(c)
  return c


def _largest_fitting(make: Callable[[int], bc.Compressor], top: int, limit: float, sizes):
  """The largest j in 1 .. top with bits(make(j)) <= limit (bits nondecreasing in j)."""
  if _step_bits(make(1), sizes) > limit:
    return None
  lo, hi = 1, top
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if _step_bits(make(mid), sizes) <= limit:
      lo = mid
    else:
      hi = mid - 1
  return lo


def match_budget(family: str, budget: float, sizes: Sequence[int], *, levels: int = 7) -> Match:
  """The compressor of ``family`` that sends the most bits not above ``budget`` per coordinate.

  Bits are counted as the runner counts them (`bc.bits_sent`): per step and worker, the sum
  over the parameter leaves of ``c.payload_bits(d_leaf)`` for float32 leaves, and the
  budget is ``budget * sum(sizes)`` bits. The sparsifiers (Top-k, Top-k + natural dithering,
  rand-k) take a ``ratio`` r = j / max(sizes), so the largest leaf keeps exactly j values
  and each leaf ``max(1, round(r d_leaf))``; j is the largest that fits (bisection: the bits
  grow with j). Natural dithering takes the most levels s = 2^b - 1 that fit (a norm and
  1 + b bits a coordinate, so it needs more than 2 bits a coordinate); scaled sign (a norm
  and 1 bit a coordinate) and natural compression (9 bits a coordinate) fit or not.

  Args:
    family: a key of `FAMILIES`.
    budget: bits per coordinate, > 0.
    sizes: the sizes of the parameter leaves (each compressed on its own).
    levels: the natural dithering levels of Top-k + natural dithering.

  Returns:
    A `Match`; its ``compressor`` is None when even the family's smallest message exceeds
    the budget (``bits_per_step`` is then that smallest message).

  Raises:
    ValueError: for an unknown family, a budget that is not a positive number, or no leaf.
  """
  if family not in FAMILIES:
    raise ValueError(f"match_budget: family must be one of {', '.join(FAMILIES)}, got {family!r}")
  if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < math.inf:
    raise ValueError(f"match_budget: budget must be a positive number, got {budget!r}")
  sizes = [int(d) for d in sizes]
  if not sizes or min(sizes) < 1:
    raise ValueError(f"match_budget: sizes must be positive leaf sizes, got {sizes!r}")
  limit = budget * sum(sizes)
  top = max(sizes)
  sparsifiers = {
    "top_k": lambda r: bc.top_k(r),
    "top_k_nd": lambda r: bc.top_k_natural_dithering(r, levels=levels),
    "rand_k": lambda r: bc.rand_k(r),
  }
  if family in sparsifiers:
    make = lambda j: sparsifiers[family](j / top)  # noqa: E731
    j = _largest_fitting(make, top, limit, sizes)
    if j is None:
      return Match(family, None, "-", _step_bits(make(1), sizes))
    c = make(j)
    extra = f", s = {levels}" if family == "top_k_nd" else ""
    return Match(
      family, _for_error_feedback(c, sizes), f"k/d = {j / top:.3g}{extra}", _step_bits(c, sizes)
    )
  if family == "natural_dithering":
    fitting = [s for s in _DITHERING_LEVELS if _step_bits(bc.natural_dithering(s), sizes) <= limit]
    if not fitting:
      return Match(family, None, "-", _step_bits(bc.natural_dithering(1), sizes))
    c = bc.natural_dithering(fitting[-1])
    return Match(family, _for_error_feedback(c, sizes), f"s = {fitting[-1]}", _step_bits(c, sizes))
  c = bc.scaled_sign() if family == "scaled_sign" else bc.natural_compression()
  bits = _step_bits(c, sizes)
  if bits > limit:
    return Match(family, None, "-", bits)
  return Match(family, _for_error_feedback(c, sizes), "", bits)


def _ranks(losses: Sequence[float]) -> list[int]:
  """Competition ranks (1 = lowest loss; equal losses share a rank; NaN counts as +inf)."""
  vals = [math.inf if not math.isfinite(v) else v for v in losses]
  return [1 + sum(w < v for w in vals) for v in vals]


def is_first(losses: dict[str, float], tolerance: float, family: str = "top_k_nd") -> bool:
  """Whether ``family`` is first: its loss <= (1 + tolerance) x the best other family's.

  A loss that is NaN or inf (a diverged run) is never first; ``family`` alone is first.
  """
  mine = losses[family]
  others = [v for k, v in losses.items() if k != family and math.isfinite(v)]
  if not math.isfinite(mine):
    return False
  return not others or mine <= (1.0 + tolerance) * min(others)


def verdict_of(firsts: Sequence[bool]) -> str:
  """The claim's verdict from whether Top-k + ND was first in each task x budget cell.

  ``reproduced`` if first in every cell, ``partly`` if in at least half, else (or with no
  cell at all) ``not reproduced``.
  """
  firsts = list(firsts)
  if not firsts:
    return "not reproduced"
  wins = sum(bool(f) for f in firsts)
  if wins == len(firsts):
    return "reproduced"
  if 2 * wins >= len(firsts):
    return "partly"
  return "not reproduced"


def _loss_at_bits(result: ex.RunResult, bits: float, num_workers: int) -> float:
  """The loss at the last iterate reached with at most ``bits`` per worker."""
  value = float(result.curves["loss"][_last_within(result, bits, num_workers)])
  return value if math.isfinite(value) else math.inf


def _steps_for(total: float, per_step: int) -> int:
  """Steps a compressor sending ``per_step`` bits a step takes to send ``total`` bits."""
  return max(1, int(math.floor(total / per_step * (1 + 1e-12))))


def _last_within(result: ex.RunResult, bits: float, num_workers: int) -> int:
  """The last iterate t reached with at most ``bits`` per worker."""
  sent = np.asarray(result.curves["bits"], np.float64) / num_workers
  return max(int(np.searchsorted(sent, bits * (1 + 1e-12), side="right")) - 1, 0)


def _curve(result: ex.RunResult, bits: float, num_workers: int) -> dict[str, Any]:
  """The loss against the bits per worker up to ``bits`` (JSON lists)."""
  t = _last_within(result, bits, num_workers) + 1
  sent = np.asarray(result.curves["bits"][:t], np.float64) / num_workers
  loss = [v if math.isfinite(v) else None for v in result.curves["loss"][:t].tolist()]
  return {"lr": result.config.lr, "bits_per_worker": sent.tolist(), "loss": loss}


def _check_options(
  tasks, budgets, families, levels, num_workers, steps, lrs, batch_size, tolerance, libsvm, seed
):
  fn = "compressor_ranking"

  def positive_int(name, value, low=1):
    return _tasks._check_int(fn, name, value, low)

  def numbers(name, value):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
      raise ValueError(f"{fn}: {name} must be a non-empty tuple of positive numbers, got {value!r}")
    for v in value:
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise ValueError(f"{fn}: {name} must hold positive finite numbers, got {value!r}")
    return tuple(float(v) for v in value)

  if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
    raise ValueError(f"{fn}: tasks must be a non-empty tuple of task names, got {tasks!r}")
  for t in tasks:
    if t not in ex.TASKS:
      raise ValueError(f"{fn}: tasks must be names of {', '.join(ex.TASKS)}, got {tasks!r}")
  if len(set(tasks)) != len(tasks):
    raise ValueError(f"{fn}: tasks must not repeat a name, got {tasks!r}")
  budgets = numbers("budgets", budgets)
  if isinstance(families, str) or not isinstance(families, Sequence):
    raise ValueError(f"{fn}: families must be a tuple of family names, got {families!r}")
  if any(f not in FAMILIES for f in families) or len(set(families)) != len(families):
    raise ValueError(
      f"{fn}: families must be distinct names of {', '.join(FAMILIES)}, got {families!r}"
    )
  if "top_k_nd" not in families or len(families) < 2:
    raise ValueError(
      f"{fn}: families must hold 'top_k_nd' (the claim's compressor) and at least one other "
      f"family, got {families!r}"
    )
  positive_int("levels", levels)
  if levels > 64:
    raise ValueError(f"{fn}: levels must be an int in [1, 64], got {levels!r}")
  positive_int("num_workers", num_workers)
  positive_int("steps", steps)
  lrs = numbers("lrs", lrs)
  positive_int("batch_size", batch_size, low=0)
  if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
    raise ValueError(f"{fn}: tolerance must be a number >= 0, got {tolerance!r}")
  if not 0 <= tolerance < math.inf:
    raise ValueError(f"{fn}: tolerance must be a number >= 0, got {tolerance!r}")
  if not isinstance(libsvm, str):
    raise ValueError(f"{fn}: libsvm must be a path (a str; '' for breast_cancer), got {libsvm!r}")
  positive_int("seed", seed, low=0)
  return tuple(tasks), budgets, tuple(families), lrs


def compressor_ranking(
  *,
  tasks: tuple[str, ...] = ("logistic", "mlp", "cnn"),
  budgets: tuple[float, ...] = (2.5, 4.5),
  families: tuple[str, ...] = DEFAULT_FAMILIES,
  levels: int = 7,
  num_workers: int = 4,
  steps: int = 60,
  lrs: tuple[float, ...] = (1.0, 3.0),
  batch_size: int = 0,
  tolerance: float = 0.01,
  libsvm: str = "",
  seed: int = 0,
  show_progress: bool = True,
) -> _claims.Finding:
  r"""Ranks the compressor families, with error feedback, by the loss reached per bit.

  For each task (the experiments layer's ``"logistic"``: logistic regression on the bundled
  breast_cancer set, or on the LIBSVM file ``libsvm``; ``"mlp"`` and ``"cnn"`` on the bundled
  digits; each split by sorted labels over n workers) and each budget b (bits per
  coordinate), every family gets the parameter whose message is the largest not above b
  (`match_budget`: Top-k and rand-k their k, Top-k + natural dithering its k with ``levels``
  levels, natural dithering its levels; scaled sign, about 1 bit, and natural compression,
  9 bits, fit or not). Bits are counted per leaf, exactly as the runner counts them; a family
  that cannot reach a budget is left out of it (the table says what it would need).

  Every compressor runs error feedback (EF14 / EF-SGD, ``algorithm="ef"``; n workers, full
  gradients unless ``batch_size`` > 0):

  .. math::

     p_i = e_i + \gamma g_i, \quad \Delta_i = C(p_i), \quad e_i \leftarrow p_i - \Delta_i,
     \quad x \leftarrow x - \tfrac1n \textstyle\sum_i \Delta_i,

  with unbiased C (rand-k, natural dithering, natural compression) scaled into B3 by
  ``contractive`` (C/(1 + omega)), as is a biased C whose B2 constant reaches 2 (so that
  error feedback's analysis applies to every one).

  Metric: a task x budget cell gives every family the same total, B = ``steps`` x b x d bits
  per worker (d the number of parameters): a compressor sending m <= b d bits a step runs
  floor(B / m) >= ``steps`` steps. Its *loss at equal bits* is the training loss f(x_t) at
  the last iterate reached with at most B bits, at its best step size of ``lrs`` for that
  cell (chosen by that loss; a diverged run counts as +inf). Each distinct compressor of a
  task runs once, as one compiled program over the step-size grid, for the most steps any of
  its cells needs. Families are ranked by the loss at equal bits (1 = lowest; equal losses
  share a rank).

  Verdict: Top-k + natural dithering is *first* in a cell if its loss at equal bits is at
  most (1 + ``tolerance``) times the lowest of the other families'. Cells where it cannot
  reach the budget, or where no other family can, are not counted. ``reproduced`` if it is
  first in every counted cell, ``partly`` if in at least half, ``not reproduced`` otherwise
  (or when no cell counts).

  Args:
    tasks: names of `biased_compression.experiments.TASKS`.
    budgets: bits per coordinate per step and worker.
    families: keys of `FAMILIES`; must include ``"top_k_nd"`` and another.
    levels: the natural dithering levels s of Top-k + natural dithering (s = 7: 4 bits a
      kept value).
    num_workers: n.
    steps: steps of a compressor that sends exactly the budget (the cells' horizon).
    lrs: the step sizes tried for every compressor.
    batch_size: samples per worker per step; 0 for full gradients.
    tolerance: the relative margin within which Top-k + ND counts as first.
    libsvm: a LIBSVM file for the logistic task ('' for the bundled breast_cancer).
    seed: the compressors' (and mini-batches') seed.
    show_progress: progress bars (only on a terminal).

  Returns:
    The `Finding`: a row per task, budget and family (the parameter, the bits per
    coordinate it sent, the step size, the loss at equal bits and its rank), a figure of the
    loss (f - f* where the task knows f*) against the bits per worker per cell, and the
    curves in ``record``.

  Raises:
    ValueError: for a bad option (the message names it).

  References:
    Beznosikov, Horvath, Richtarik, Safaryan, On Biased Compression for Distributed
    Learning, 2023, https://arxiv.org/abs/2002.12410
  """
  tasks, budgets, families, lrs = _check_options(
    tasks, budgets, families, levels, num_workers, steps, lrs, batch_size, tolerance, libsvm, seed
  )
  cells, task_info = [], {}
  for name in tasks:
    task_options = {"dataset": f"libsvm:{libsvm}"} if (libsvm and name == "logistic") else {}
    task = ex.make_task(name, num_workers, **task_options)
    sizes = _leaf_sizes(task.params)
    d = sum(sizes)
    task_info[name] = {"name": task.name, "d": d, "leaves": sizes, "f_star": task.f_star}
    matches = {b: [match_budget(f, b, sizes, levels=levels) for f in families] for b in budgets}
    # each distinct compressor runs once, long enough for every cell it is in
    need: dict[str, int] = {}
    for b, ms in matches.items():
      for m in ms:
        if m.compressor is not None:
          t = _steps_for(steps * b * d, m.bits_per_step)
          need[repr(m.compressor)] = max(need.get(repr(m.compressor), 0), t)
    base = ex.RunConfig(
      task=name,
      task_options=task_options,
      num_workers=num_workers,
      algorithm="ef",
      compressor="top_k(0.1)",
      steps=steps,
      seed=seed,
      batch_size=batch_size or None,
    )
    grids = {}
    bar = _output.progress(total=len(need), desc=f"{name}: compressors", disable=not show_progress)
    with bar:
      for spec, t in need.items():
        bar.set_postfix_str(spec)
        config = base.replace(compressor=spec, steps=t, label=spec)
        grids[spec] = ex.run(config, task=task, lrs=lrs, show_progress=show_progress)
        bar.update(1)
    for b in budgets:
      total = steps * b * d  # the cell's bits per worker
      runs, losses = {}, {}
      for m in matches[b]:
        if m.compressor is None:
          continue
        grid = grids[repr(m.compressor)]
        at = [_loss_at_bits(r, total, num_workers) for r in grid]
        i = int(np.argmin(at))
        runs[m.family], losses[m.family] = grid[i], at[i]
      cells.append(
        {
          "task": name,
          "budget": b,
          "matches": matches[b],
          "runs": runs,
          "losses": losses,
          "total": total,
        }
      )
  rows, firsts = [], []
  for cell in cells:
    name, b, losses = cell["task"], cell["budget"], cell["losses"]
    fams = list(losses)
    ranks = dict(zip(fams, _ranks([losses[f] for f in fams]), strict=True))
    counted = "top_k_nd" in losses and len(losses) >= 2
    first = is_first(losses, tolerance) if counted else None
    if counted:
      firsts.append(first)
    order = sorted(fams, key=lambda f: ranks[f])
    cell.update(ranks=ranks, counted=counted, first=first, order=order)
    d = task_info[name]["d"]
    for m in sorted(cell["matches"], key=lambda m: (m.compressor is None, ranks.get(m.family, 0))):
      row = {
        "task": name,
        "budget": b,
        "compressor": FAMILIES[m.family],
        "family": m.family,
        "parameter": m.parameter,
        "predicted_bits_per_coord": m.bits_per_step / d,
      }
      if m.compressor is None:
        row["note"] = f"left out: needs {m.bits_per_step / d:.3g} bits/coord"
      else:
        r = cell["runs"][m.family]
        row.update(
          spec=repr(m.compressor),
          bits_per_coord=float(r.curves["bits"][-1]) / (num_workers * r.config.steps * d),
          steps=_last_within(r, cell["total"], num_workers),
          lr=r.config.lr,
          loss_at_equal_bits=losses[m.family],
          rank=ranks[m.family],
        )
      rows.append(row)
  verdict = verdict_of(firsts)
  measured = _measured(cells, firsts, tolerance, budgets, tasks)
  figures = _figures(cells, task_info, num_workers, families)
  columns = [
    ("task", "task", "{}"),
    ("budget", "budget (bits/coord)", "{:g}"),
    ("compressor", "compressor", "{}"),
    ("parameter", "parameter", "{}"),
    ("bits_per_coord", "bits/coord sent", "{:.3f}"),
    ("steps", "steps", "{}"),
    ("lr", "step size", "{:g}"),
    ("loss_at_equal_bits", "loss at equal bits", "{:.5g}"),
    ("rank", "rank", "{}"),
    ("note", "note", "{}"),
  ]
  record = {
    "tasks": task_info,
    "cells": [
      {
        "task": c["task"],
        "budget": c["budget"],
        "bits_per_worker": c["total"],
        "curves": {f: _curve(r, c["total"], num_workers) for f, r in c["runs"].items()},
        "order": c["order"],
        "losses": c["losses"],
        "counted": c["counted"],
        "top_k_nd_first": c["first"],
        "specs": {
          m.family: None if m.compressor is None else repr(m.compressor) for m in c["matches"]
        },
      }
      for c in cells
    ],
    "tolerance": tolerance,
  }
  return _claims.Finding(
    verdict=verdict,
    measured=measured,
    columns=columns,
    rows=rows,
    figures=figures,
    record=record,
  )


def _measured(cells, firsts, tolerance, budgets, tasks) -> str:
  wins, total = sum(bool(f) for f in firsts), len(firsts)
  parts = [
    f"With error feedback and each compressor at its best step size, Top-k + natural "
    f"dithering had the lowest loss at equal bits (within {tolerance:.0%}) in {wins} of "
    f"{total} task x budget cells."
  ]
  for name in tasks:
    bits = []
    for c in cells:
      if c["task"] != name:
        continue
      if not c["order"]:
        bits.append(f"{c['budget']:g} bits/coord: no family fits")
        continue
      order = " > ".join(f"{FAMILIES[f]} ({c['losses'][f]:.4g})" for f in c["order"])
      note = "" if c["counted"] else " (not counted)"
      bits.append(f"{c['budget']:g} bits/coord{note}: {order}")
    parts.append(f"**{name}** (loss at equal bits, best first): " + "; ".join(bits) + ".")
  rest = [
    is_first({f: v for f, v in c["losses"].items() if f != "scaled_sign"}, tolerance)
    for c in cells
    if c["counted"] and "scaled_sign" in c["losses"] and len(c["losses"]) >= 3
  ]
  if rest:
    parts.append(
      f"Leaving scaled sign out, it was first in {sum(rest)} of the {len(rest)} cells where "
      "scaled sign had taken part."
    )
  leaders = {}
  for c in cells:
    if c["counted"] and not c["first"]:
      leaders[FAMILIES[c["order"][0]]] = leaders.get(FAMILIES[c["order"][0]], 0) + 1
  if leaders:
    who = ", ".join(f"{k} ({v})" for k, v in sorted(leaders.items(), key=lambda kv: -kv[1]))
    parts.append(f"Where it was not first, the leader was: {who}.")
  return " ".join(parts)


def _figures(cells, task_info, num_workers, families) -> dict[str, Any]:
  """Loss (f - f* where known) against bits per worker: a panel per task x budget."""
  import matplotlib
  from matplotlib.figure import Figure

  tasks = list(dict.fromkeys(c["task"] for c in cells))
  budgets = list(dict.fromkeys(c["budget"] for c in cells))
  height = 3.2 * len(budgets) + 0.8
  fig = Figure(figsize=(4.2 * len(tasks), height))
  axes = np.asarray(fig.subplots(len(budgets), len(tasks), squeeze=False))
  colours = matplotlib.colormaps["tab10"]
  handles = {}
  for c in cells:
    ax = axes[budgets.index(c["budget"]), tasks.index(c["task"])]
    f_star = task_info[c["task"]]["f_star"]
    for family, r in c["runs"].items():
      t = _last_within(r, c["total"], num_workers) + 1
      bits = np.asarray(r.curves["bits"][:t], np.float64) / num_workers
      y = np.asarray(r.curves["loss"][:t], np.float64)
      if f_star is not None:
        y = np.maximum(y - f_star, 1e-12)
      colour = colours(list(FAMILIES).index(family) % colours.N)
      lw = 2.2 if family == "top_k_nd" else 1.2
      (line,) = ax.plot(bits, y, color=colour, lw=lw, label=FAMILIES[family])
      handles.setdefault(family, line)
    # every family ends at the same total, so a linear bits axis compares the whole runs
    ax.set_xlim(0, c["total"])
    ax.set_yscale("log")
    ax.set_title(f"{c['task']}, budget {c['budget']:g} bits/coord", fontsize=9)
    ax.set_xlabel("bits sent per worker")
    ax.set_ylabel("f(x) - f*" if f_star is not None else "training loss")
    ax.grid(True, which="both", alpha=0.3)
  order = [f for f in families if f in handles]
  fig.legend(
    [handles[f] for f in order],
    [FAMILIES[f] for f in order],
    loc="lower center",
    ncol=min(len(order), 6),
    fontsize=8,
    frameon=False,
  )
  fig.subplots_adjust(bottom=1.0 / height, top=1 - 0.6 / height, hspace=0.45, wspace=0.3)
  fig.suptitle("Error feedback with each compressor at a matched budget (bits/coord per step)")
  return {"loss_vs_bits": fig}


CLAIM = _claims.Claim(
  name="compressor_ranking",
  number=3,
  title="Top-k + natural dithering beats the other compressors per bit",
  paper=(
    "Beznosikov, Horváth, Richtárik, Safaryan, On Biased Compression for Distributed "
    "Learning, 2023, https://arxiv.org/abs/2002.12410"
  ),
  statement=(
    "The paper's new compressor, Top-k combined with natural dithering, outperforms all "
    "other compression techniques in its experiments: with error feedback it reaches a "
    "lower loss for the bits communicated."
  ),
  options={
    "tasks": _claims.Option(("logistic", "mlp", "cnn"), "tasks of the experiments layer"),
    "budgets": _claims.Option(
      (2.5, 4.5), "bits per coordinate per step", full=(1.0, 1.5, 2.5, 4.5, 6.0, 10.0)
    ),
    "families": _claims.Option(
      DEFAULT_FAMILIES, "compressor families (top_k_nd and others)", full=tuple(FAMILIES)
    ),
    "levels": _claims.Option(7, "natural dithering levels of Top-k + ND"),
    "num_workers": _claims.Option(4, "workers n", full=8),
    "steps": _claims.Option(60, "steps at the budget (the bits horizon)", full=1000),
    "lrs": _claims.Option((1.0, 3.0), "step sizes tried", full=(0.1, 0.3, 1.0, 3.0, 10.0)),
    "batch_size": _claims.Option(0, "samples per worker per step (0: full gradients)"),
    "tolerance": _claims.Option(0.01, "relative margin for 'first'"),
    "libsvm": _claims.Option("", "a LIBSVM file for the logistic task ('' = breast_cancer)"),
    "seed": _claims.Option(0, "seed of the compressors and batches"),
  },
  study=compressor_ranking,
)
