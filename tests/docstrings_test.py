"""Every example in the package's docstrings runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import biased_compression

MODULES = sorted(
  m.name
  for m in pkgutil.walk_packages(biased_compression.__path__, "biased_compression.")
  if not m.name.endswith("__main__")
)


# _vectors' example trains the MLP of the benchmark's test vectors (15 s or so on 2 cores)
SLOW = {"biased_compression.metrics._vectors"}


@pytest.mark.parametrize(
  "name", [pytest.param(m, marks=pytest.mark.slow if m in SLOW else ()) for m in MODULES]
)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} failing example(s) in {name}"
