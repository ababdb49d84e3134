"""The straggler experiment: COCO-EF against its baselines, over p, d and the compressor.

For each straggler probability p, replication d and biased compressor C, every method below
runs on the same task with n workers whose n shards are the parts of a gradient code, each
with its best step size from a small grid (`compare`):

* ``coco_ef``: `biased_compression.coco_ef` (C with error feedback, ``sgc_cyclic(n, d)``,
  the SGC weights 1 / (m d (1 - p)));
* ``coco_ef_no_ef``: the same without error feedback;
* ``unbiased``: gradient coding with rand-k at no more bits than C, no error (same weights);
* ``diana``: gradient coding with compressed differences (DIANA shifts, the same rand-k);
* ``uncoded_ef``: error feedback with C, each worker its own part (d = 1), the mean over the
  workers that arrive (it does not depend on d);
* ``gc_exact``: uncompressed gradient coding (32-bit values) with the exact decoding
  (fractional repetition when d divides n, else cyclic repetition, s = d - 1; least squares
  when the arrivals cannot decode; it does not depend on C).

`StragglerStudy.table` compares them at equal bits: each method's loss (and accuracy) at
the last iterate reached within the smallest total any method of the setting sent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

import biased_compression as bc
from biased_compression.experiments import _compare
from biased_compression.experiments import _config
from biased_compression.experiments import _output
from biased_compression.experiments import _runner
from biased_compression.experiments import _tasks

__all__ = ["METHODS", "StragglerStudy", "straggler_study", "unbiased_counterpart"]

METHODS = {
  "coco_ef": "COCO-EF",
  "coco_ef_no_ef": "COCO-EF without EF",
  "unbiased": "GC, unbiased rand-k",
  "diana": "GC, DIANA rand-k",
  "uncoded_ef": "uncoded EF",
  "gc_exact": "exact GC, uncompressed",
}
DEFAULT_COMPRESSORS = ("top_k(ratio=0.05)", "grouped_sign(group_size=32)")
DEFAULT_LRS = (0.03, 0.1, 0.3, 1.0)
# heterogeneous parts (each its own true model around a common one), as error feedback is
# studied: with identical parts biased compression needs no error feedback
DEFAULT_LINEAR = {"dim": 100, "heterogeneity": 1.0}


def unbiased_counterpart(compressor: bc.Compressor, size: int) -> bc.Compressor:
  """rand-k with the largest k whose payload at ``size`` values is at most ``compressor``'s."""
  budget = compressor.payload_bits(size)
  best = 1
  for k in range(1, size + 1):
    if bc.rand_k(k=k).payload_bits(size) <= budget:
      best = k
    else:
      break
  return bc.rand_k(ratio=best / size) if size > 0 else bc.rand_k(k=1)


def _exact_code(n: int, d: int) -> str:
  return f"fractional_repetition:{d - 1}" if n % d == 0 else f"cyclic_repetition:{d - 1}"


def _configs(base: _config.RunConfig, method: str, p: float, d: int, spec: str, size: int):
  c = bc.parse_compressor(spec)
  coded = {"code": f"sgc_cyclic:{d}", "stragglers": p}
  label = METHODS[method]
  if method == "coco_ef":
    return base.replace(algorithm="ef", compressor=spec, label=label, **coded)
  if method == "coco_ef_no_ef":
    return base.replace(algorithm="dcgd", compressor=spec, label=label, **coded)
  rand = repr(unbiased_counterpart(c, size))
  if method == "unbiased":
    return base.replace(algorithm="dcgd", compressor=rand, label=f"{label} ({rand})", **coded)
  if method == "diana":
    return base.replace(algorithm="diana", compressor=rand, label=f"{label} ({rand})", **coded)
  if method == "uncoded_ef":
    return base.replace(
      algorithm="ef",
      compressor=spec,
      label=label,
      code="sgc_cyclic:1",
      stragglers=p,
      decoding="mean",
    )
  return base.replace(
    algorithm="gd",
    label=label,
    code=_exact_code(base.num_workers, d),
    stragglers=p,
    decoding="exact",
  )


def _shared(method: str) -> tuple[bool, bool]:
  """(depends on d, depends on the compressor)."""
  return method != "uncoded_ef", method != "gc_exact"


@dataclasses.dataclass
class Setting:
  """One (p, d, compressor) cell of the study: its `Comparison` of the methods."""

  p: float
  d: int
  compressor: str
  comparison: _compare.Comparison
  methods: list[str]

  def at_equal_bits(self) -> list[dict[str, Any]]:
    """Each method at the smallest final total of bits any method of the setting sent."""
    budget = min(float(r.curves["bits"][-1]) for r in self.comparison.best)
    n = self.comparison.num_workers
    rows = []
    for r, method in zip(self.comparison.best, self.methods, strict=True):
      c = r.curves
      t = int(np.nonzero(np.asarray(c["bits"], np.float64) <= budget)[0][-1])
      row = {
        "p": self.p,
        "d": self.d,
        "compressor": self.compressor,
        "method": method,
        "label": r.config.name,
        "lr": r.config.lr,
        "bits_per_worker": budget / n,
        "steps_within": t,
        "loss": float(c["loss"][t]),
        "final_loss": r.final_loss,
      }
      if "gap" in c:
        row["gap"] = float(c["gap"][t])
      for name in ("accuracy", "test_accuracy"):
        if name in c:
          row[name] = float(c[name][t])
      if "alive" in c:
        row["mean_alive"] = float(np.nanmean(c["alive"]))
      rows.append(row)
    return rows


@dataclasses.dataclass
class StragglerStudy:
  """The outcome of `straggler_study`: one `Setting` per (p, d, compressor)."""

  task: str
  num_workers: int
  num_params: int
  f_star: float | None
  settings: list[Setting]

  def rows(self) -> list[dict[str, Any]]:
    return [row for s in self.settings for row in s.at_equal_bits()]

  def table(self) -> str:
    """The equal-bits table (loss, f - f*, test accuracy at each setting's bit budget)."""
    rows = self.rows()
    cols = [
      ("p", "p", "{:g}"),
      ("d", "d", "{}"),
      ("compressor", "compressor", "{}"),
      ("label", "method", "{}"),
      ("lr", "lr", "{:g}"),
      ("bits_per_worker", "bits/worker", "{:.4g}"),
      ("steps_within", "steps", "{}"),
      ("loss", "loss", "{:.5g}"),
      ("gap", "f - f*", "{:.3g}"),
      ("test_accuracy", "test acc", "{:.3f}"),
    ]
    note = (
      f"{self.task}: n = {self.num_workers} workers, d_model = {self.num_params}; at equal "
      "bits (each setting's smallest total), step size from the grid by final loss"
    )
    diverged = {"loss": "diverged", "gap": "diverged"}
    return note + "\n" + _output.rows_table(rows, cols, missing=diverged)

  def winners(self) -> list[dict[str, Any]]:
    """Per setting, the method with the lowest loss at equal bits."""
    out = []
    for s in self.settings:
      rows = s.at_equal_bits()
      best = min(rows, key=lambda r: r["loss"] if math.isfinite(r["loss"]) else math.inf)
      out.append({"p": s.p, "d": s.d, "compressor": s.compressor, "best": best["method"]})
    return out

  def to_dict(self) -> dict[str, Any]:
    return {
      "task": self.task,
      "num_workers": self.num_workers,
      "num_params": self.num_params,
      "f_star": self.f_star,
      "table": [{k: _compare._finite(v) for k, v in row.items()} for row in self.rows()],
      "winners": self.winners(),
      "settings": [
        {
          "p": s.p,
          "d": s.d,
          "compressor": s.compressor,
          "methods": s.methods,
          "comparison": s.comparison.to_dict(),
        }
        for s in self.settings
      ],
    }

  def write(self, folder: str | pathlib.Path, *, plot: bool = True) -> dict[str, pathlib.Path]:
    """Writes ``results.json``, ``table.txt`` and (with ``plot``) one figure per compressor
    and x axis: ``loss_vs_bits_<C>.png`` / ``loss_vs_steps_<C>.png`` (and PDFs)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "results.json", "table": folder / "table.txt"}
    paths["json"].write_text(json.dumps(self.to_dict(), indent=1))
    paths["table"].write_text(self.table() + "\n")
    if plot:
      paths.update(self.plot(folder))
    return paths

  def plot(self, folder: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """A grid of panels (rows p, columns d) per compressor: loss or f - f* against bits
    per worker, and against steps. f - f* is drawn from float32's resolution at f* up
    (below it the gap is rounding). Uses matplotlib's ``Figure`` directly, so the pyplot
    backend (a notebook's inline one) is not touched."""
    # the object-oriented API: no pyplot, so a notebook's backend is left as it is
    import matplotlib
    from matplotlib.figure import Figure

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = "gap" if self.f_star is not None else "loss"
    # f - f* below float32's resolution at f* is rounding (it may print negative)
    floor = max(1e-12, 2.0**-23 * abs(self.f_star or 0.0))
    ps = sorted({s.p for s in self.settings})
    ds = sorted({s.d for s in self.settings})
    colours = dict(zip(METHODS, matplotlib.colormaps["tab10"].colors, strict=False))
    out = {}
    for spec in dict.fromkeys(s.compressor for s in self.settings):
      slug = "".join(ch if ch.isalnum() else "_" for ch in spec).strip("_")
      for axis in ("bits", "steps"):
        width, height = max(8.0, 4.0 * len(ds)), 3.2 * len(ps) + 2.0
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(len(ps), len(ds), squeeze=False, sharey=True)
        for s in self.settings:
          if s.compressor != spec:
            continue
          ax = axes[ps.index(s.p)][ds.index(s.d)]
          for r, method in zip(s.comparison.best, s.methods, strict=True):
            c = r.curves
            y = np.asarray(c[key], np.float64)
            y = np.maximum(y, floor) if key == "gap" else y
            if axis == "bits":
              x = np.maximum(np.asarray(c["bits"], np.float64) / self.num_workers, 1.0)
            else:
              x = c["step"]
            ax.plot(x, y, color=colours.get(method), lw=1.3, label=METHODS.get(method, method))
          ax.set_yscale("log")
          if axis == "bits":
            ax.set_xscale("log")
          ax.set_title(f"p = {s.p:g}, d = {s.d}", fontsize=9)
          ax.grid(True, which="both", alpha=0.3)
        for ax in axes[-1]:
          ax.set_xlabel("bits sent per worker" if axis == "bits" else "step")
        for row in axes:
          row[0].set_ylabel("f(x) - f*" if key == "gap" else "training loss")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.suptitle(f"{self.task}\n{spec}, n = {self.num_workers} workers", fontsize=10)
        fig.subplots_adjust(bottom=1.3 / height, top=1 - 0.8 / height, hspace=0.45, wspace=0.15)
        for ext in ("png", "pdf"):
          path = folder / f"loss_vs_{axis}_{slug}.{ext}"
          fig.savefig(path, dpi=120)
          out[f"{axis}_{slug}_{ext}"] = path
    return out


def straggler_study(
  *,
  task: str = "linear_regression",
  task_options: dict | None = None,
  num_workers: int = 100,
  ps: Sequence[float] = (0.1, 0.3, 0.5),
  ds: Sequence[int] = (1, 2, 3),
  compressors: Sequence[str] = DEFAULT_COMPRESSORS,
  methods: Sequence[str] = tuple(METHODS),
  steps: int = 300,
  lrs: Sequence[float] = DEFAULT_LRS,
  batch_size: int | None = None,
  seed: int = 0,
  show_progress: bool = True,
) -> StragglerStudy:
  """Runs every method at every (p, d, compressor) (see the module) and returns the study.

  Args:
    task: a name of `biased_compression.experiments.TASKS` (``"linear_regression"``: f*
      known; ``"mlp"``: a classifier on scikit-learn's digits).
    task_options: its options (default ``{"dim": 100, "heterogeneity": 1.0}`` for linear
      regression: heterogeneous parts).
    num_workers: n, also the number of parts.
    ps: straggling probabilities in [0, 1).
    ds: replications, 1 <= d <= n.
    compressors: biased compressor specs (`biased_compression.parse_compressor`).
    methods: a subset of `METHODS`.
    steps: T.
    lrs: the step sizes tried for every method.
    batch_size: samples per part per step (stochastic gradients), or None for full ones.
    seed: the seed of the runs (stragglers, compressors, mini-batches).
    show_progress: progress bars (on a terminal).

  Returns:
    A `StragglerStudy`.
  """
  fn = "straggler_study"
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    raise ValueError(f"{fn}: methods must be a non-empty subset of {list(METHODS)}, got {methods}")
  for p in ps:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
      raise ValueError(f"{fn}: every p must lie in [0, 1), got {p!r}")
  for d in ds:
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= num_workers:
      raise ValueError(f"{fn}: every d must be an int in [1, n = {num_workers}], got {d!r}")
  if not ps or not ds or not compressors:
    raise ValueError(f"{fn}: ps, ds and compressors must be non-empty")
  specs = [repr(bc.parse_compressor(c)) for c in compressors]
  if task_options is None:
    task_options = dict(DEFAULT_LINEAR) if task == "linear_regression" else {}
  options = dict(task_options)
  built = _tasks.make_task(task, num_workers, **options)
  size = max(int(np.prod(np.shape(x))) for x in jax.tree.leaves(built.params))
  base = _config.RunConfig(
    task=task,
    task_options=options,
    num_workers=num_workers,
    steps=steps,
    seed=seed,
    batch_size=batch_size,
  )
  cache: dict[tuple, _runner.RunResult] = {}
  grids: dict[tuple, list[_runner.RunResult]] = {}
  settings = []
  total = len(ps) * len(ds) * len(specs)
  with _output.progress(total=total, desc="settings", disable=not show_progress) as bar:
    for p in ps:
      for d in ds:
        for spec in specs:
          best, grid = [], []
          for method in methods:
            by_d, by_c = _shared(method)
            key = (method, p, d if by_d else None, spec if by_c else None)
            if key not in cache:
              config = _configs(base, method, p, d, spec, size)
              runs = _runner.run(config, task=built, lrs=lrs, show_progress=show_progress)
              grids[key] = runs
              cache[key] = min(runs, key=_compare._final)
            best.append(cache[key])
            grid.append(grids[key])
          comparison = _compare.Comparison(
            task=built.name,
            best=best,
            grid=grid,
            target=float(np.median([_compare._final(r) for r in best])),
            num_workers=num_workers,
            num_params=built.num_params,
            f_star=built.f_star,
          )
          settings.append(Setting(p, d, spec, comparison, list(methods)))
          bar.update(1)
  return StragglerStudy(built.name, num_workers, built.num_params, built.f_star, settings)
