"""The frame every claim study shares: what a claim is, what its run finds, and the report.

A `Claim` is a statement of a seed paper made runnable: its name (the ``reproduce`` command's
argument), the paper and its statement, the options of its study (a small default that runs
in minutes on a 2-core CPU, and the full size), and the function that runs it. Running it
gives a `Finding`: what was measured (a table, figures, a JSON record), a short text, and a
verdict, ``reproduced``, ``partly`` or ``not reproduced``, by a rule the study's docstring
states. `report` puts findings side by side in one Markdown file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["VERDICTS", "Claim", "Finding", "Option", "markdown_table", "report"]

VERDICTS = ("reproduced", "partly", "not reproduced")


@dataclasses.dataclass(frozen=True)
class Option:
  """One option of a claim's study.

  Attributes:
    default: the small size (what ``reproduce NAME`` runs).
    help: one line for ``--help``.
    full: the full size (``reproduce NAME --full``); None means the same as ``default``.
    type: the element type for the command line, when ``default`` cannot tell (a None
      default); tuples are written as comma lists (``--ps 0,0.1``).
  """

  default: Any
  help: str
  full: Any = None
  type: type | None = None

  def value(self, full: bool) -> Any:
    return self.full if (full and self.full is not None) else self.default

  def element_type(self) -> type:
    if self.type is not None:
      return self.type
    value = self.default if self.default is not None else self.full
    if isinstance(value, tuple):
      return type(value[0]) if value else str
    return type(value) if value is not None else str


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim of a paper, with the study that checks it.

  Attributes:
    name: the command's argument (``biased-compression reproduce NAME``).
    number: its place in the report.
    title: a short title.
    paper: ``Authors, Title, year, arXiv link``.
    statement: what the paper states, in one or two sentences.
    options: the study's keyword options.
    study: ``study(*, show_progress, **options) -> Finding``.
  """

  name: str
  number: int
  title: str
  paper: str
  statement: str
  options: Mapping[str, Option]
  study: Callable[..., Finding]

  def defaults(self, full: bool = False) -> dict[str, Any]:
    return {k: o.value(full) for k, o in self.options.items()}

  def run(self, *, full: bool = False, show_progress: bool = True, **overrides: Any) -> Finding:
    """Runs the study at its small (or ``full``) size with ``overrides`` applied."""
    unknown = sorted(set(overrides) - set(self.options))
    if unknown:
      raise ValueError(
        f"reproduce {self.name}: unknown options {unknown}; options: {sorted(self.options)}"
      )
    options = {**self.defaults(full), **overrides}
    start = time.perf_counter()
    finding = self.study(show_progress=show_progress, **options)
    finding.claim = self.name
    finding.options = _jsonable(options)
    finding.seconds = time.perf_counter() - start
    if finding.verdict not in VERDICTS:
      raise RuntimeError(f"{self.name}: verdict {finding.verdict!r} is not one of {VERDICTS}")
    return finding


@dataclasses.dataclass
class Finding:
  """What one run of a claim's study measured.

  Attributes:
    verdict: one of `VERDICTS`.
    measured: what was measured, in a few sentences (Markdown).
    columns: the table's (key, header, format) triples.
    rows: the table's rows, dicts keyed by the columns' keys (more keys are kept in JSON).
    figures: name -> matplotlib ``Figure`` (written as ``<name>.png``).
    record: everything else worth keeping (curves, settings), JSON-able.
    claim, options, seconds: filled by `Claim.run`.
  """

  verdict: str
  measured: str
  columns: Sequence[tuple[str, str, str]]
  rows: list[dict[str, Any]]
  figures: dict[str, Any] = dataclasses.field(default_factory=dict)
  record: dict[str, Any] = dataclasses.field(default_factory=dict)
  claim: str = ""
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: float = math.nan

  def table(self) -> str:
    """The table in Markdown."""
    return markdown_table(self.columns, self.rows)

  def to_dict(self) -> dict[str, Any]:
    return _jsonable(
      {
        "claim": self.claim,
        "verdict": self.verdict,
        "measured": self.measured,
        "options": self.options,
        "seconds": self.seconds,
        "columns": [list(c) for c in self.columns],
        "rows": self.rows,
        "figures": list(self.figures),
        "record": self.record,
      }
    )

  @classmethod
  def load(cls, folder: str | pathlib.Path) -> Finding:
    """The finding `write` left in ``folder`` (its figures as names only: ``None`` values),
    so that `report` can be rebuilt from written results."""
    data = json.loads((pathlib.Path(folder) / "result.json").read_text())
    return cls(
      verdict=data["verdict"],
      measured=data["measured"],
      columns=[tuple(c) for c in data["columns"]],
      rows=data["rows"],
      figures=dict.fromkeys(data.get("figures", ())),
      record=data["record"],
      claim=data["claim"],
      options=data["options"],
      seconds=math.nan if data["seconds"] is None else data["seconds"],
    )

  def write(self, folder: str | pathlib.Path, *, plot: bool = True) -> dict[str, pathlib.Path]:
    """Writes ``result.json``, ``table.md`` and (with ``plot``) ``<figure>.png``."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"json": folder / "result.json", "table": folder / "table.md"}
    out["json"].write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
    out["table"].write_text(self.table() + "\n")
    if plot:
      for name, fig in self.figures.items():
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        out[name] = path
    return out


def _jsonable(value: Any) -> Any:
  """``value`` with NumPy numbers and arrays as Python ones and non-finite floats as None."""
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _cell(value: Any, fmt: str) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "-" if value is None or math.isnan(value) else ("inf" if value > 0 else "-inf")
  try:
    return fmt.format(value)
  except (ValueError, TypeError):
    return str(value)


def markdown_table(columns: Sequence[tuple[str, str, str]], rows: Sequence[Mapping]) -> str:
  """A Markdown table of dict rows; ``columns`` are (key, header, format) triples, kept only
  where some row has the key (a missing value prints ``-``)."""
  cols = [c for c in columns if any(c[0] in r for r in rows)]
  lines = [
    "| " + " | ".join(h for _, h, _ in cols) + " |",
    "|" + "|".join("---" for _ in cols) + "|",
  ]
  for r in rows:
    lines.append("| " + " | ".join(_cell(r.get(k), f) for k, _, f in cols) + " |")
  return "\n".join(lines)


def report(
  claims: Sequence[Claim],
  findings: Sequence[Finding],
  folder: str | pathlib.Path,
  *,
  command: str = "biased-compression reproduce",
) -> pathlib.Path:
  """Writes ``REPORT.md`` in ``folder``: per claim, the paper's statement, what was measured
  (the table and the figures its finding wrote under ``folder/<name>/``), and the verdict.

  Args:
    claims: the claims, in the report's order.
    findings: their findings (``finding.claim`` names its claim).
    folder: where the findings were written (``folder/<claim name>/``).
    command: the command line that reruns a claim (shown per claim).

  Returns:
    The report's path.
  """
  folder = pathlib.Path(folder)
  by_name = {f.claim: f for f in findings}
  counts = {v: sum(f.verdict == v for f in findings) for v in VERDICTS}
  lines = [
    "# The papers' claims, rerun",
    "",
    "Generated by `biased-compression reproduce all`. Each section gives a seed paper's "
    "statement, what this run measured, and a verdict (reproduced, partly, not reproduced) "
    "by the rule the study documents. " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".",
    "",
    "| # | claim | verdict | seconds |",
    "|---|---|---|---|",
  ]
  for c in claims:
    f = by_name.get(c.name)
    verdict = f.verdict if f else "not run"
    seconds = f"{f.seconds:.0f}" if f else "-"
    lines.append(
      f"| {c.number} | [{c.title}](#{c.number}-{_anchor(c.title)}) | {verdict} | {seconds} |"
    )
  for c in claims:
    f = by_name.get(c.name)
    lines += [
      "",
      f"## {c.number}. {c.title}",
      "",
      f"*{c.paper}*",
      "",
      f"**The paper:** {c.statement}",
      "",
    ]
    if f is None:
      lines += ["Not run.", ""]
      continue
    options = ", ".join(f"{k}={v}" for k, v in f.options.items())
    lines += [
      f"**Measured** (`{command} {c.name}`; {options}; {f.seconds:.0f} s): {f.measured}",
      "",
      f"**Verdict: {f.verdict}.**",
      "",
      f.table(),
      "",
    ]
    for name in f.figures:
      if (folder / c.name / f"{name}.png").exists():
        lines += [f"![{c.title}: {name}]({c.name}/{name}.png)", ""]
  path = folder / "REPORT.md"
  folder.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines).rstrip() + "\n")
  return path


def _anchor(title: str) -> str:
  keep = "".join(ch.lower() if ch.isalnum() else ("-" if ch in " -" else "") for ch in title)
  return keep
