"""`compare`: which method reaches a loss with the fewest bits, with tuned step sizes.

Each method (a `RunConfig`) runs on a grid of step sizes, as one compiled program per
method; the best step size is the one with the lowest final training loss (the papers'
rule; a run that diverges counts as +inf). The result gives a table, a plot of the loss
against the bits sent and against the steps, and JSON / CSV records of every curve.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from biased_compression.experiments import _config
from biased_compression.experiments import _output
from biased_compression.experiments import _runner
from biased_compression.experiments import _tasks

__all__ = ["Comparison", "compare", "default_methods", "DEFAULT_LRS"]

DEFAULT_LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def default_methods(ratio: float = 0.1) -> list[_config.RunConfig]:
  """The main job's methods: uncompressed GD; every family of compressors without and with
  error feedback; EF21; the induced compressor with and without DIANA; DSignSGD."""
  k = f"ratio={ratio}"
  r = _config.RunConfig
  return [
    r(algorithm="gd"),
    r(algorithm="dcgd", compressor=f"top_k({k})"),
    r(algorithm="ef", compressor=f"top_k({k})"),
    r(algorithm="dcgd", compressor=f"rand_k({k})"),
    r(algorithm="ef", compressor=f"contractive(rand_k({k}))"),
    r(algorithm="dcgd", compressor="natural_compression()"),
    r(algorithm="ef", compressor="natural_compression()"),
    r(algorithm="dcgd", compressor="natural_dithering(4)"),
    r(algorithm="ef", compressor="contractive(natural_dithering(4))"),
    r(algorithm="dcgd", compressor="scaled_sign()"),
    r(algorithm="ef", compressor="scaled_sign()"),
    r(algorithm="dcgd", compressor=f"top_k_natural_dithering({ratio}, levels=7)"),
    r(algorithm="ef", compressor=f"top_k_natural_dithering({ratio}, levels=7)"),
    r(algorithm="ef21", compressor=f"top_k({k})"),
    r(algorithm="dcgd", compressor=f"induced(top_k({k}), rand_k({k}))"),
    r(algorithm="diana", compressor=f"induced(top_k({k}), rand_k({k}))"),
    r(algorithm="dcgd", compressor="sign()", label="DSignSGD"),
  ]


def _final(result: _runner.RunResult) -> float:
  value = result.final_loss
  return value if math.isfinite(value) else math.inf


@dataclasses.dataclass
class Comparison:
  """The outcome of `compare`.

  Attributes:
    task: the task's name.
    best: per method, the run at its best step size.
    grid: per method, the runs at every step size.
    target: the loss the bits-to-target column measures.
    num_workers, num_params: n and d.
  """

  task: str
  best: list[_runner.RunResult]
  grid: list[list[_runner.RunResult]]
  target: float
  num_workers: int
  num_params: int
  f_star: float | None = None

  def baseline(self) -> _runner.RunResult | None:
    for r in self.best:
      if r.config.algorithm == "gd":
        return r
    return None

  def rows(self) -> list[dict[str, Any]]:
    """One dict per method: the table's numbers."""
    base = self.baseline()
    base_bits = None if base is None else base.bits_to_reach(self.target)
    out = []
    for r in self.best:
      c = r.curves
      steps = len(c["loss"]) - 1
      bits_step = float(c["bits"][-1]) / (steps * self.num_workers)
      to_target = r.bits_to_reach(self.target) / self.num_workers
      ratio = math.nan
      if base_bits is not None and math.isfinite(to_target) and base_bits > 0:
        ratio = base_bits / self.num_workers / to_target
      row = {
        "method": r.config.name,
        "lr": r.config.lr,
        "final_loss": r.final_loss,
        "bits_per_step": bits_step,
        "bits_to_target": to_target,
        "saving_vs_gd": ratio,
      }
      if "gap" in c:
        row["final_gap"] = float(c["gap"][-1])
      for name in ("accuracy", "test_accuracy"):
        if name in c:
          row[name] = float(c[name][-1])
      out.append(row)
    return out

  def table(self) -> str:
    """A plain-text table (bits are per worker)."""
    rows = self.rows()
    cols = [
      ("method", "method", "{}"),
      ("lr", "lr", "{:g}"),
      ("final_loss", "final loss", "{:.5g}"),
      ("final_gap", "f - f*", "{:.3g}"),
      ("test_accuracy", "test acc", "{:.3f}"),
      ("bits_per_step", "bits/step", "{:.4g}"),
      ("bits_to_target", "bits to target", "{:.4g}"),
      ("saving_vs_gd", "x fewer than GD", "{:.3g}"),
    ]
    table = _output.rows_table(rows, cols, missing={"final_loss": "diverged"})
    note = (
      f"{self.task}: n = {self.num_workers}, d = {self.num_params}; bits per worker; target "
      f"loss {self.target:.5g}; step size chosen from the grid by final training loss"
    )
    return note + "\n" + table

  def to_dict(self) -> dict[str, Any]:
    return {
      "task": self.task,
      "num_workers": self.num_workers,
      "num_params": self.num_params,
      "f_star": self.f_star,
      "target": self.target,
      "table": [{k: _finite(v) for k, v in row.items()} for row in self.rows()],
      "best": [r.to_dict() for r in self.best],
      "grid": [[r.to_dict() for r in runs] for runs in self.grid],
    }

  def write(self, folder: str | pathlib.Path, *, plot: bool = True) -> dict[str, pathlib.Path]:
    """Writes ``results.json``, ``curves.csv``, ``table.txt`` and the plots (PNG and PDF)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "results.json", "csv": folder / "curves.csv"}
    paths["json"].write_text(json.dumps(self.to_dict(), indent=1))
    with paths["csv"].open("w", newline="") as f:
      names = sorted({k for r in self.best for k in r.curves} - {"step"})
      writer = csv.writer(f)
      writer.writerow(["method", "lr", "step", *names])
      for r in self.best:
        for t in range(len(r.curves["step"])):
          values = [r.curves[k][t] if k in r.curves else "" for k in names]
          writer.writerow([r.config.name, r.config.lr, t, *values])
    paths["table"] = folder / "table.txt"
    paths["table"].write_text(self.table() + "\n")
    if plot:
      paths.update(self.plot(folder))
    return paths

  def plot(self, folder: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Loss (or f - f*) against bits per worker and against steps: ``loss.png``/``.pdf``.

    One colour per compressor; solid lines for error feedback (EF, EF21, ...), dashed for
    compressed gradients without it (DCGD, DSignSGD), dotted for DIANA; GD in black.
    """
    # the object-oriented API: no pyplot, so a notebook's backend is left as it is
    import matplotlib
    from matplotlib.figure import Figure

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = "gap" if self.f_star is not None else "loss"
    fig = Figure(figsize=(12, 5.5))
    ax_bits, ax_steps = fig.subplots(1, 2)
    # one colour per compressor, one line style per kind of algorithm
    specs = list(dict.fromkeys(r.config.compressor for r in self.best if r.config.compressor))
    colours = matplotlib.colormaps["tab10" if len(specs) <= 10 else "tab20"]
    styles = {"dcgd": "--", "diana": ":", "gd": "-"}
    for r in self.best:
      c = r.curves
      y = np.asarray(c[key], np.float64)
      if key == "gap":
        y = np.maximum(y, 1e-12)
      spec = r.config.compressor
      colour = "black" if spec is None else colours(specs.index(spec) % colours.N)
      style = styles.get(r.config.algorithm, "-")
      bits = np.maximum(np.asarray(c["bits"], np.float64) / self.num_workers, 1.0)
      kwargs = {"color": colour, "ls": style, "lw": 2.0 if spec is None else 1.2}
      ax_bits.plot(bits, y, label=r.config.name, **kwargs)
      ax_steps.plot(c["step"], y, **kwargs)
    ylabel = "f(x) - f*" if key == "gap" else "training loss"
    for ax, xlabel in ((ax_bits, "bits sent per worker"), (ax_steps, "step")):
      ax.set_yscale("log")
      ax.set_xlabel(xlabel)
      ax.set_ylabel(ylabel)
      ax.grid(True, which="both", alpha=0.3)
    ax_bits.set_xscale("log")
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    rows = -(-len(self.best) // 3)
    fig.subplots_adjust(bottom=0.12 + 0.035 * rows, top=0.9, wspace=0.25)
    fig.suptitle(f"{self.task} (n = {self.num_workers}, d = {self.num_params})")
    out = {}
    for ext in ("png", "pdf"):
      out[ext] = folder / f"loss.{ext}"
      fig.savefig(out[ext], dpi=130)
    return out


def _finite(v):
  return None if isinstance(v, float) and not math.isfinite(v) else v


def compare(
  methods: Sequence[_config.RunConfig],
  *,
  task: _tasks.Task | None = None,
  lrs: Sequence[float] = DEFAULT_LRS,
  target: float | None = None,
  backend: str = "vmap",
  mesh=None,
  show_progress: bool = True,
) -> Comparison:
  """Runs every method on a grid of step sizes and keeps each one's best.

  Every config must name the same task, workers, steps and seed (they differ in algorithm,
  compressor and options). The target loss of the bits-to-target column is ``target`` or,
  by default, the loss uncompressed GD reaches halfway through the run (the median final
  loss when no GD run is given).

  Args:
    methods: the runs to compare (e.g. `default_methods`, with ``replace(task=...)``).
    task: the task, if already built (default: from the first config).
    lrs: the step sizes tried for every method.
    target: the target loss.
    backend: ``"vmap"`` or ``"shard"`` (see `run`).
    mesh: the mesh of the shard backend.
    show_progress: progress bars over the methods and the steps (only on a terminal).

  Returns:
    A `Comparison`.
  """
  if not methods:
    raise ValueError("compare: methods is empty")
  first = methods[0]
  keys = ("task", "task_options", "num_workers", "steps", "seed", "batch_size")
  for m in methods[1:]:
    for k in keys:
      if getattr(m, k) != getattr(first, k):
        raise ValueError(
          f"compare: every method must share {k}: {m.name} has {getattr(m, k)!r}, "
          f"{first.name} has {getattr(first, k)!r}"
        )
  if task is None:
    task = _tasks.make_task(first.task, first.num_workers, **first.task_options)
  grid = []
  with _output.progress(total=len(methods), desc="methods", disable=not show_progress) as bar:
    for m in methods:
      bar.set_postfix_str(m.name)
      runs = _runner.run(
        m, task=task, lrs=lrs, backend=backend, mesh=mesh, show_progress=show_progress
      )
      grid.append(runs)
      bar.update(1)
  best = [min(runs, key=_final) for runs in grid]
  if target is None:
    gd = [r for r in best if r.config.algorithm == "gd"]
    if gd:
      target = float(gd[0].curves["loss"][len(gd[0].curves["loss"]) // 2])
    else:
      target = float(np.median([_final(r) for r in best]))
  return Comparison(
    task=task.name,
    best=best,
    grid=grid,
    target=target,
    num_workers=task.num_workers,
    num_params=task.num_params,
    f_star=task.f_star,
  )
