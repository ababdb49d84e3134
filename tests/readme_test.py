"""Every ```python block of README.md runs as written, each alone in a fresh interpreter.

A block preceded by an HTML comment ``<!-- not run: why -->`` is a fragment and is skipped.
The blocks run on the CPU with 8 devices (the mesh examples need them), from an empty
temporary directory, and must exit with status 0.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

_README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_NOT_RUN = re.compile(r"^<!--\s*not run\b.*-->$")
_DEVICES = 8


def _blocks(text: str) -> list[tuple[int, str, bool]]:
  """(line of the opening fence, source, skipped) of every ```python block."""
  blocks = []
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    if lines[i].strip() == "```python":
      start = i + 1  # 1-based line of the fence
      previous = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
      body = []
      i += 1
      while i < len(lines) and lines[i].strip() != "```":
        body.append(lines[i])
        i += 1
      if i == len(lines):
        raise ValueError(f"README.md:{start}: unterminated ```python block")
      blocks.append((start, "\n".join(body) + "\n", bool(_NOT_RUN.match(previous))))
    i += 1
  return blocks


def _label(line: int, source: str) -> str:
  first = next((s.strip() for s in source.splitlines() if s.strip()), "")
  return f"L{line}: {first[:50]}"


_BLOCKS = _blocks(_README.read_text(encoding="utf-8"))


def _env() -> dict[str, str]:
  env = dict(os.environ)
  flag = f"--xla_force_host_platform_device_count={_DEVICES}"  # older JAX
  if flag not in env.get("XLA_FLAGS", ""):
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
  env["JAX_NUM_CPU_DEVICES"] = str(_DEVICES)  # current JAX (the jax_num_cpu_devices option)
  env["JAX_PLATFORMS"] = "cpu"  # the mesh examples need 8 devices, also on a 1-GPU machine
  env["MPLBACKEND"] = "Agg"
  return env


def test_readme_has_python_blocks():
  assert sum(not skipped for _, _, skipped in _BLOCKS) >= 5, _BLOCKS


@pytest.mark.slow  # a fresh interpreter per block, each importing JAX and compiling: ~30 s
@pytest.mark.parametrize(
  "line, source",
  [
    pytest.param(
      line,
      source,
      id=_label(line, source),
      marks=pytest.mark.skip(reason="marked <!-- not run --> in README.md") if skipped else (),
    )
    for line, source, skipped in _BLOCKS
  ],
)
def test_readme_block_runs(line, source, tmp_path):
  script = tmp_path / f"readme_line_{line}.py"
  script.write_text(source, encoding="utf-8")
  result = subprocess.run(
    [sys.executable, str(script)],
    cwd=tmp_path,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, (
    f"README.md block at line {line} exited with {result.returncode}\n"
    f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-8000:]}"
  )
