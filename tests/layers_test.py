"""The package's layers: no module imports a higher layer, and core code loads no tooling.

The order (README, "Where things live"): ops < compressors < collectives < transforms <
coding < distributed < metrics < experiments < studies < bench < cli, examples. A module may
import its own layer and lower ones; the top-level package (`import biased_compression`)
re-exports layers up to metrics, so only the experiments and above may import it.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

import biased_compression

PACKAGE = pathlib.Path(biased_compression.__file__).parent
LAYERS = (
  "ops",
  "compressors",
  "collectives",
  "transforms",
  "coding",
  "distributed",
  "metrics",
  "experiments",
  "studies",
  "bench",
  "cli",
  "examples",
)
RANK = {name: i for i, name in enumerate(LAYERS)}
RANK["examples"] = RANK["cli"]
TOP = RANK["metrics"]  # what `import biased_compression` loads
CORE = RANK["metrics"]  # core code: no plotting, no benchmarks, no CLI


def layer_of(module: str) -> int | None:
  """The rank of a module ``biased_compression.<layer>...``; None for the package itself."""
  parts = module.split(".")
  if parts[0] != "biased_compression":
    raise ValueError(module)
  if len(parts) == 1 or parts[1] == "__init__":
    return None
  return RANK[parts[1]]


def imports(source: str, module: str) -> list[tuple[str, int]]:
  """(imported module, line) for every import of the library or of matplotlib in a source."""
  package = module.rsplit(".", 1)[0]
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
        base = base.rstrip(".")
      if base == "biased_compression":
        # `from biased_compression import X` is an import of the layer X, or of the top level
        found += [
          (f"biased_compression.{a.name}" if a.name in RANK else base, node.lineno)
          for a in node.names
        ]
      else:
        found.append((base, node.lineno))
  return [(m, line) for m, line in found if m.split(".")[0] in ("biased_compression", "matplotlib")]


def violations(source: str, module: str) -> list[str]:
  """The imports of one module that break the layering."""
  own = layer_of(module)
  out = []
  for target, line in imports(source, module):
    if target.startswith("matplotlib"):
      if own is None or own <= CORE:
        out.append(f"{module}:{line} imports {target} (core code must not plot)")
      continue
    rank = layer_of(target)
    if own is None:  # the top-level __init__ re-exports layers up to metrics only
      if rank is not None and rank > TOP:
        out.append(f"{module}:{line} re-exports {target}, above the core layers")
    elif rank is None:
      if own <= TOP:
        out.append(f"{module}:{line} imports the top-level package from a core layer")
    elif rank > own:
      out.append(f"{module}:{line} ({LAYERS[own]}) imports {target} ({LAYERS[rank]})")
  return out


def modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    yield ".".join(rel.parts), path


def test_every_module_is_in_a_layer():
  for module, _ in modules():
    parts = module.split(".")
    if len(parts) > 1 and parts[1] != "__init__":
      assert parts[1] in RANK, f"{module} is not in a layer folder of {LAYERS}"


def test_no_lower_layer_imports_a_higher_one():
  bad = [v for module, path in modules() for v in violations(path.read_text(), module)]
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
  "source, module, expected",
  [
    ("from biased_compression.transforms import _skeleton", "biased_compression.ops._topk", 1),
    ("from biased_compression.bench import _timing", "biased_compression.metrics._wire", 1),
    ("import biased_compression as bc", "biased_compression.compressors._base", 1),
    ("from biased_compression import cli", "biased_compression.transforms._dcgd", 1),
    ("import matplotlib.pyplot as plt", "biased_compression.distributed._backends", 1),
    ("from biased_compression.bench import _timing", "biased_compression", 1),
    ("from . import _base", "biased_compression.compressors._quantization", 0),
    ("from ..bench import _timing", "biased_compression.compressors._quantization", 1),
    ("from biased_compression.ops import _topk", "biased_compression.compressors._base", 0),
    ("import biased_compression as bc", "biased_compression.examples.multihost", 0),
    ("import matplotlib", "biased_compression.bench._timing", 0),
  ],
)
def test_the_check_flags_what_it_should(source, module, expected):
  assert len(violations(source, module)) == expected, violations(source, module)


def test_importing_the_library_loads_no_tooling():
  code = (
    "import sys, biased_compression\n"
    "bad = [m for m in sys.modules if m.split('.')[0] == 'matplotlib'\n"
    "       or m.startswith(('biased_compression.bench', 'biased_compression.cli',\n"
    "                        'biased_compression.examples', 'biased_compression.experiments'))]\n"
    "print(bad)\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout
