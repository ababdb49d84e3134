"""The notebooks in colabs/ run top to bottom (small size) and are committed without outputs."""

import json
import pathlib
import re

import pytest

_COLABS = pathlib.Path(__file__).resolve().parent.parent / "colabs"
_NOTEBOOKS = sorted(_COLABS.glob("*.ipynb"))
_MAGIC = re.compile(r"^(\s*)[!%]")


def _load(path: pathlib.Path) -> dict:
  with path.open(encoding="utf-8") as f:
    return json.load(f)


def _code_cells(notebook: dict) -> list[dict]:
  return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _source(cell: dict) -> str:
  source = cell["source"]
  return source if isinstance(source, str) else "".join(source)


def _strip_magics(source: str) -> str:
  """Replaces IPython shell escapes and magics (``!cmd``, ``%cmd``) by ``pass``.

  ``pass`` keeps the indentation, so a magic inside a block (``if on_colab: !pip ...``) still
  leaves valid Python.
  """
  lines = []
  for line in source.splitlines():
    match = _MAGIC.match(line)
    lines.append(f"{match.group(1)}pass" if match else line)
  return "\n".join(lines) + "\n"


def test_there_are_notebooks():
  assert _NOTEBOOKS, f"no notebooks found in {_COLABS}"


@pytest.mark.parametrize("path", _NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs(path):
  notebook = _load(path)
  assert notebook["nbformat"] == 4
  for i, cell in enumerate(_code_cells(notebook)):
    assert cell.get("outputs") == [], f"{path.name}: code cell {i} has committed outputs"
    assert cell.get("execution_count") is None, f"{path.name}: code cell {i} has a count"


@pytest.mark.slow  # each notebook trains and plots: 20 s or so on 2 cores
@pytest.mark.parametrize("path", _NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
  monkeypatch.setenv("BC_NOTEBOOK_DIM", "1024")
  monkeypatch.setenv("BC_NOTEBOOK_DRAWS", "4")
  monkeypatch.setenv("BC_NOTEBOOK_STEPS", "100")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  import matplotlib.pyplot as plt  # a test dependency: the notebooks plot

  # Agg cannot show figures; plt.show() would only warn.
  monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
  namespace = {"__name__": "__main__"}
  try:
    for i, cell in enumerate(_code_cells(_load(path))):
      code = compile(_strip_magics(_source(cell)), f"{path.name}[code cell {i}]", "exec")
      exec(code, namespace)
  finally:
    plt.close("all")
