"""Test set-up: 8 CPU devices for the multi-device tests, and the registry's fast subset."""

import os

import pytest

# Must be set before JAX initialises its backends. XLA_FLAGS covers older JAX; the config
# option is the supported spelling on current JAX.
_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax  # noqa: E402

try:
  jax.config.update("jax_num_cpu_devices", 8)
except (AttributeError, RuntimeError):  # older JAX, or backends already initialised
  pass

# One registry entry per family: what `-m "not slow"` runs of a sweep over the registry
# (`bc.standard_compressors()`); the full run tests every entry.
REPRESENTATIVES = (
  "top_k",
  "rand_k",
  "natural_dithering",
  "scaled_sign",
  "sign",
  "natural_compression",
  "induced",
  "top_k_natural_dithering",
  "standard_dithering",
  "cast_bf16",
)


def registry_params(names, key=lambda case: case):
  """``names`` (registry names, or cases whose ``key`` is one) as pytest parameters: the
  representatives run by default, the others are marked ``slow``."""
  return [pytest.param(*(n if isinstance(n, tuple) else (n,)), marks=_marks(key(n))) for n in names]


def _marks(name):
  return () if name in REPRESENTATIVES else pytest.mark.slow
