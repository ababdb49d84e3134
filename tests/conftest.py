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

# The registry entries that `-m "not slow"` runs of a sweep over the registry
# (`bc.standard_compressors()`); the full run tests every entry. REPRESENTATIVES has one entry
# per family (the round trips, the key checks); CORE five of them (a biased and an unbiased
# sparsifier, a random and a deterministic quantiser, a composite) for the other sweeps: edge
# inputs, vmap, key draws, error feedback, EF21 and the Monte-Carlo constants.
REPRESENTATIVES = (
  "top_k",
  "rand_k",
  "natural_dithering",
  "scaled_sign",
  "grouped_sign",
  "sign",
  "natural_compression",
  "induced",
  "top_k_natural_dithering",
  "standard_dithering",
  "cast_bf16",
)
CORE = ("top_k", "rand_k", "natural_dithering", "scaled_sign", "top_k_natural_dithering")


def registry_params(names, key=lambda case: case, fast=REPRESENTATIVES):
  """``names`` (registry names, or cases whose ``key`` is one) as pytest parameters: those in
  ``fast`` run by default, the others are marked ``slow``."""
  slow = pytest.mark.slow
  return [
    pytest.param(*(n if isinstance(n, tuple) else (n,)), marks=() if key(n) in fast else slow)
    for n in names
  ]
