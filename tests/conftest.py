"""Test set-up: 8 CPU devices for the multi-device tests, and the shared registry."""

import os

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
