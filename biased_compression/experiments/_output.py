"""Terminal output shared by the experiments, the benchmarks and the CLI.

Progress bars that stay silent unless stderr is a terminal, and plain-text tables.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

__all__ = ["format_sig", "format_table", "progress"]


def _stderr_is_terminal() -> bool:
  isatty = getattr(sys.stderr, "isatty", None)
  try:
    return bool(isatty and isatty())
  except ValueError:  # a closed stream
    return False


def progress(**kwargs: Any) -> tqdm:
  """A tqdm progress bar on stderr, silent unless stderr is a terminal.

  Every bar of the command line and the benchmarks goes through here, so that redirected
  or captured stderr (a log file, CI, ``2>&1 | tee``) never fills with carriage-return
  frames. tqdm's own ``disable=None`` does the same test, but only on the stream it is
  given; spelling it out keeps the rule in one place whatever tqdm's default becomes.

  Args:
    **kwargs: passed to ``tqdm`` (``iterable``, ``total``, ``desc``, ...); ``disable=True``
      silences it on a terminal too.
  """
  kwargs["disable"] = kwargs.get("disable", False) or not _stderr_is_terminal()
  return tqdm(file=sys.stderr, **kwargs)


def format_sig(value: float, digits: int = 3) -> str:
  """``value`` with ``digits`` significant digits; ``inf`` / ``nan`` spelled as such."""
  return f"{value:.{digits}g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
  """A plain-text table with a header and a dashed rule.

  Args:
    headers: column titles.
    rows: the cells, already formatted as strings.
    align: one character per column, ``<`` (left) or ``>`` / ``r`` (right); columns past
      its end are right-aligned.

  Returns:
    The table, lines joined by newlines (no trailing newline).
  """
  widths = [len(h) for h in headers]
  for row in rows:
    widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
  aligns = ["<" if (align[i : i + 1] == "<") else ">" for i in range(len(headers))]

  def line(cells: Sequence[str]) -> str:
    return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, aligns, widths, strict=True)).rstrip()

  out = [line(headers), "  ".join("-" * w for w in widths)]
  out.extend(line(row) for row in rows)
  return "\n".join(out)


def rows_table(
  rows: Sequence[dict], columns: Sequence[tuple[str, str, str]], *, missing: dict | None = None
) -> str:
  """`format_table` of dict rows: ``columns`` are (key, header, format) triples, kept only
  where some row has the key; a missing or non-finite value prints ``missing[key]`` (or
  ``"-"``)."""
  missing = missing or {}
  cols = [col for col in columns if any(col[0] in row for row in rows)]

  def cell(row, key, fmt):
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
      return missing.get(key, "-")
    return fmt.format(value)

  body = [[cell(row, k, f) for k, _, f in cols] for row in rows]
  return format_table([h for _, h, _ in cols], body, align="<")
