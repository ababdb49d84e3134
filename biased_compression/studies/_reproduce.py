"""`reproduce` and `reproduce_all`: run claims by name, write their files and the report."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from biased_compression.experiments import _output
from biased_compression.studies import _claims

__all__ = ["CLAIMS", "reproduce", "reproduce_all"]

# filled by `register` in the claim modules' order (studies/__init__.py imports them)
CLAIMS: dict[str, _claims.Claim] = {}


def register(claim: _claims.Claim) -> _claims.Claim:
  """Adds ``claim`` to `CLAIMS` (in the report's order, by number)."""
  if claim.name in CLAIMS and CLAIMS[claim.name] is not claim:
    raise ValueError(f"a claim named {claim.name!r} is already registered")
  CLAIMS[claim.name] = claim
  ordered = sorted(CLAIMS.values(), key=lambda c: c.number)
  CLAIMS.clear()
  CLAIMS.update((c.name, c) for c in ordered)
  return claim


def _claim(name: str) -> _claims.Claim:
  if name not in CLAIMS:
    raise ValueError(f"reproduce: name must be one of {', '.join(CLAIMS)} or 'all', got {name!r}")
  return CLAIMS[name]


def reproduce(
  name: str,
  out: str | pathlib.Path | None = None,
  *,
  full: bool = False,
  plot: bool = True,
  show_progress: bool = True,
  **options: Any,
) -> _claims.Finding:
  """Runs one claim's study and (with ``out``) writes its files to ``out/<name>/``.

  Args:
    name: a key of `CLAIMS` (``"linear_convergence"``, ...).
    out: the output folder, or None to write nothing.
    full: the study's full size instead of its small default.
    plot: write the figures.
    show_progress: progress bars (only on a terminal).
    **options: the study's options, overriding the size's defaults.

  Returns:
    The `Finding`.
  """
  finding = _claim(name).run(full=full, show_progress=show_progress, **options)
  if out is not None:
    finding.write(pathlib.Path(out) / name, plot=plot)
  return finding


def reproduce_all(
  out: str | pathlib.Path,
  *,
  names: Sequence[str] | None = None,
  full: bool = False,
  plot: bool = True,
  show_progress: bool = True,
  options: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[_claims.Finding], pathlib.Path]:
  """Runs every claim (or ``names``), writes each one's files and ``out/REPORT.md``.

  Args:
    out: the output folder.
    names: the claims to run (default: all of `CLAIMS`, in order).
    full: the studies' full sizes.
    plot: write the figures (the report links them).
    show_progress: a progress bar over the claims (only on a terminal).
    options: per claim name, options overriding its defaults (the tests run tiny sizes).

  Returns:
    (the findings, the report's path).
  """
  names = list(CLAIMS) if names is None else [_claim(n).name for n in names]
  options = options or {}
  unknown = sorted(set(options) - set(names))
  if unknown:
    raise ValueError(f"reproduce_all: options given for claims not run: {unknown}")
  findings = []
  with _output.progress(total=len(names), desc="claims", disable=not show_progress) as bar:
    for name in names:
      bar.set_postfix_str(name)
      findings.append(
        reproduce(
          name, out, full=full, plot=plot, show_progress=show_progress, **options.get(name, {})
        )
      )
      bar.update(1)
  path = _claims.report([CLAIMS[n] for n in names], findings, out)
  return findings, path
