"""Multi-host data-parallel training with compressed error feedback, on local CPU processes.

Run it::

  python -m biased_compression.examples.multihost --processes 2 --devices-per-process 2

The launcher (this module run without ``--process-id``) starts ``--processes`` copies of
itself. Each is one JAX process with ``--devices-per-process`` CPU devices; they join through
``jax.distributed.initialize`` (a coordinator on 127.0.0.1, gloo collectives between the
processes) into one mesh ``("data",)`` of ``processes * devices_per_process`` devices, exactly
as the processes of a multi-host job on GPU or TPU hosts would. Every device is one worker of
EF-SGD: it computes the gradient of a small MLP on its own shard of a regression data set and
sends the compressed update through ``bc.error_feedback(..., axis_name="data")``, so the only
traffic between devices and processes is the encoded payloads (an all-gather, or all-to-all
plus all-gather for ``--method two_stage``). The launcher prints the loss, the bits each
worker sent, and a checksum of the final parameters; ``--compare`` also runs the same
training in one process with as many devices and checks that the parameters are identical.

What each process does (`train`), and what a real multi-host job must do too:

1. Before the backend starts: ``jax_num_cpu_devices`` and ``jax_cpu_collectives_implementation
   = "gloo"``, then ``jax.distributed.initialize``. ``jax.devices()`` is then the global list.
2. Global arrays from host data: every process runs the same NumPy generator and
   ``jax.make_array_from_callback`` materialises only its own devices' shards. The per-worker
   optimizer state (`bc.init_workers`) is created by a jitted function with ``out_shardings``
   ``P("data")``, so no process ever holds another's state.
3. One ``jax.jit(jax.shard_map(...))`` runs all the steps (a ``lax.scan``): one compilation,
   no per-step dispatch.
4. Results: the replicated parameters are read from the process's own shards; the sharded
   losses and states are gathered with ``multihost_utils.process_allgather``.

The training is deterministic and bit-reproducible across layouts: a worker's data, its keys
(the seed folded with its mesh index) and its program do not depend on which process hosts
it, and the collectives only move bytes (the decoded messages are summed in float32 on each
device, in the same order). So ``P`` processes of ``k`` devices give the same bits as one
process of ``P * k`` devices; ``tests/multihost_test.py`` checks it.

Functions for scripts and tests: `train` (the training on a mesh of given devices, in the
current process), `setup` (its jitted function and inputs, e.g. for ``bc.wire_bytes``),
`run_multiprocess` (launch the processes, return their `Result`) and `main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import biased_compression as bc

__all__ = [
  "COMPRESSORS",
  "Config",
  "Result",
  "WorkerError",
  "main",
  "make_optimizer",
  "run_multiprocess",
  "setup",
  "train",
]

AXIS = "data"
INPUTS = 16
HIDDEN = 32
METHODS = ("all_gather", "two_stage", "auto")

# Compressors for error feedback (which needs C in B3: unbiased ones are made contractive).
COMPRESSORS: dict[str, Callable[[float], bc.Compressor]] = {
  "top_k": lambda ratio: bc.top_k(ratio),
  "rand_k": lambda ratio: bc.contractive(bc.rand_k(ratio)),
  "scaled_sign": lambda ratio: bc.scaled_sign(),
  "natural_dithering": lambda ratio: bc.contractive(bc.natural_dithering(7)),
  "top_k_natural_dithering": lambda ratio: bc.contractive(bc.top_k_natural_dithering(ratio)),
  "identity": lambda ratio: bc.identity(),
}
_SPARSIFIERS = ("top_k", "rand_k", "top_k_natural_dithering")


@dataclasses.dataclass(frozen=True)
class Config:
  """What to train; the same on every process.

  Attributes:
    steps: training steps (full-batch gradient steps on each device's shard).
    compressor: a key of `COMPRESSORS`.
    ratio: the kept fraction of the sparsifiers (top_k, rand_k, top_k_natural_dithering).
    method: the compressed all-reduce, ``"all_gather"``, ``"two_stage"`` or ``"auto"``.
    learning_rate: the SGD step size (applied before error feedback).
    samples_per_device: rows of the data set on each device.
    seed: seed of the data, the initial parameters and the compressor's randomness.
    rank: 0 for error feedback with ``compressor``; r >= 1 for PowerSGD of rank r instead
      (`biased_compression.powersgd`: two float32 all-reduces of factors a step; compressor,
      ratio and method are then unused).
  """

  steps: int = 50
  compressor: str = "top_k"
  ratio: float = 0.05
  method: str = "all_gather"
  learning_rate: float = 0.1
  samples_per_device: int = 64
  seed: int = 0
  rank: int = 0

  def __post_init__(self):
    if self.compressor not in COMPRESSORS:
      raise ValueError(f"compressor must be one of {sorted(COMPRESSORS)}, got {self.compressor!r}")
    if self.method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
    if self.steps < 1 or self.samples_per_device < 1:
      raise ValueError("steps and samples_per_device must be >= 1")
    if self.rank < 0:
      raise ValueError(f"rank must be >= 0 (0: error feedback), got {self.rank!r}")
    COMPRESSORS[self.compressor](self.ratio)  # fails here, not in every worker
    if self.method == "two_stage" and self.compressor in _SPARSIFIERS:
      # two_stage splits each leaf into one chunk per worker and keeps k / n per chunk; a
      # ratio of the example's small leaves (b1 has 32 entries) rarely gives such a k.
      raise ValueError(
        f"--method two_stage needs a compressor whose per-leaf k is a multiple of the number "
        f"of workers; use --compressor scaled_sign or natural_dithering with it, or "
        f"--method all_gather with {self.compressor}"
      )

  def argv(self) -> list[str]:
    """The command-line flags that rebuild this configuration."""
    out = []
    for field in dataclasses.fields(self):
      out += ["--" + field.name.replace("_", "-"), str(getattr(self, field.name))]
    return out


@dataclasses.dataclass(frozen=True)
class Result:
  """The outcome of a training run.

  Attributes:
    params: the final parameters (NumPy float32), identical on every device.
    losses: float32 ``(steps, n)``: each worker's loss on its shard before each step.
    bits: int64 ``(n,)``: the exact bits each worker sent in total (`bc.bits_sent`).
    num_processes: how many processes ran it.
    num_devices: the workers n (devices on the ``"data"`` axis).
  """

  params: dict[str, np.ndarray]
  losses: np.ndarray
  bits: np.ndarray
  num_processes: int
  num_devices: int

  @property
  def loss(self) -> np.ndarray:
    """The training loss before each step (the mean over the equally sized shards)."""
    return self.losses.mean(axis=1)

  def checksum(self) -> str:
    """SHA-256 (16 hex digits) of the final parameters' bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(self.params):
      h.update(name.encode())
      h.update(np.ascontiguousarray(self.params[name], np.float32).tobytes())
    return h.hexdigest()[:16]


# -- the model and the data (NumPy, so that every process builds the same) -------------------


def init_params(seed: int) -> dict[str, np.ndarray]:
  """A 16-32-1 tanh MLP."""
  rng = np.random.default_rng((seed, 0))
  return {
    "w1": (rng.standard_normal((INPUTS, HIDDEN)) / math.sqrt(INPUTS)).astype(np.float32),
    "b1": np.zeros((HIDDEN,), np.float32),
    "w2": (rng.standard_normal((HIDDEN, 1)) / math.sqrt(HIDDEN)).astype(np.float32),
    "b2": np.zeros((1,), np.float32),
  }


def make_data(num_devices: int, samples_per_device: int, seed: int):
  """(x, y) of ``num_devices * samples_per_device`` rows; rows of device i come from its own
  distribution (heterogeneous workers) and do not depend on ``num_devices``."""
  teacher = np.random.default_rng((seed, 1))
  w = teacher.standard_normal((INPUTS, 1)).astype(np.float32)
  xs, ys = [], []
  for i in range(num_devices):
    rng = np.random.default_rng((seed, 2, i))
    shift = 0.5 * rng.standard_normal((1, INPUTS))
    x = (rng.standard_normal((samples_per_device, INPUTS)) + shift).astype(np.float32)
    noise = 0.1 * rng.standard_normal((samples_per_device, 1))
    xs.append(x)
    ys.append((np.tanh(x @ w / math.sqrt(INPUTS)) + noise).astype(np.float32))
  return np.concatenate(xs), np.concatenate(ys)


def loss_fn(params, x, y) -> jax.Array:
  """Mean squared error of the MLP on (x, y)."""
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  pred = hidden @ params["w2"] + params["b2"]
  return jnp.mean((pred - y) ** 2)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """EF-SGD: ``optax.sgd`` then error feedback across the ``"data"`` axis (or PowerSGD)."""
  if config.rank:
    return optax.chain(
      optax.sgd(config.learning_rate),
      bc.powersgd(config.rank, axis_name=AXIS, seed=config.seed),
    )
  compressor = COMPRESSORS[config.compressor](config.ratio)
  return optax.chain(
    optax.sgd(config.learning_rate),
    bc.error_feedback(compressor, axis_name=AXIS, seed=config.seed, method=config.method),
  )


# -- training on a mesh (one process or many) --------------------------------------------------


def _global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  # Each process materialises only the shards of its own devices.
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _replicated_value(x: jax.Array) -> np.ndarray:
  """The value of a replicated array, read from this process's devices (checked equal)."""
  shards = [np.asarray(s.data) for s in x.addressable_shards]
  for s in shards[1:]:
    if s.tobytes() != shards[0].tobytes():
      raise AssertionError("replicated parameters differ between the devices of this process")
  return shards[0]


def _fetch(tree: Any) -> Any:
  """NumPy copies of global arrays; sharded ones are gathered from every process."""

  def fetch(x):
    if x.is_fully_addressable:
      return np.asarray(x)
    return multihost_utils.process_allgather(x, tiled=True)

  return jax.tree.map(fetch, tree)


def _train_loop(update, steps, params, state, x, y):
  """The body of the shard_map: one device's view (its block of x, y and of the state)."""

  def step(carry, _):
    params, state = carry
    # check_vma=False (see train) makes this the gradient of this device's loss only; with
    # check_vma=True, jax.grad of the replicated params would psum it across the axis.
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  (params, state), losses = jax.lax.scan(step, (params, state), length=steps)
  return params, state, losses[:, None]


def make_mesh(devices: Sequence[Any]) -> jax.sharding.Mesh:
  """A 1-D mesh ``("data",)`` over ``devices`` (in that order)."""
  return jax.sharding.Mesh(
    np.asarray(devices), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,)
  )


def setup(config: Config, devices: Sequence[Any] | None = None):
  """The jitted training function and its global inputs, ``run(*args) -> (params, state,
  losses)``, on a mesh of ``devices`` (default: every device of every process).

  Args:
    config: the configuration.
    devices: the mesh's devices; worker i is ``devices[i]``.

  Returns:
    ``(run, args)``; e.g. ``bc.wire_bytes(run, *args)`` reads the traffic of a step.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  mesh = make_mesh(devices)
  replicated = NamedSharding(mesh, P())
  sharded = NamedSharding(mesh, P(AXIS))
  tx = make_optimizer(config)

  x, y = make_data(n, config.samples_per_device, config.seed)
  x, y = _global_array(x, sharded), _global_array(y, sharded)
  params = {k: _global_array(v, replicated) for k, v in init_params(config.seed).items()}
  # The state of the n workers (leading axis n), created where it lives: device i holds
  # worker i's block.
  state = jax.jit(lambda p: bc.init_workers(tx, p, n), out_shardings=sharded)(params)

  # check_vma=False, for two reasons. (1) The compressed mean is the same on every device,
  # but it is computed from an all_gather, which JAX types as device-varying, so
  # out_specs=P() for the parameters would be rejected. (2) With check_vma=True, jax.grad
  # with respect to replicated (P()) inputs inserts a dense psum of the gradients (the
  # transpose of the implicit broadcast): a full-size uncompressed all-reduce, the traffic
  # this library exists to avoid (params would need jax.lax.pcast(..., to="varying") first).
  run = jax.jit(
    jax.shard_map(
      functools.partial(_train_loop, bc.device_update(tx, AXIS), config.steps),
      mesh=mesh,
      in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
      out_specs=(P(), P(AXIS), P(None, AXIS)),
      check_vma=False,
    )
  )
  return run, (params, state, x, y)


def train(config: Config, devices: Sequence[Any] | None = None) -> Result:
  """Trains on a mesh of ``devices`` (default: every device of every process).

  In a multi-process job every process must call it with the same arguments (after
  ``jax.distributed.initialize``). In one process, pass a subset of ``jax.devices()`` to
  train on fewer devices.

  Args:
    config: the configuration.
    devices: the mesh's devices; worker i is ``devices[i]``.

  Returns:
    The `Result` (the same on every process).
  """
  run, args = setup(config, devices)
  params, state, losses = run(*args)
  losses, state = _fetch((losses, state))
  return Result(
    params={k: _replicated_value(v) for k, v in params.items()},
    losses=losses,
    bits=np.asarray(bc.bits_sent(state)),
    num_processes=jax.process_count(),
    num_devices=args[2].sharding.mesh.size,
  )


# -- one worker process ------------------------------------------------------------------------


def _save(result: Result, path: str) -> None:
  arrays = {f"param/{k}": v for k, v in result.params.items()}
  np.savez(
    path,
    losses=result.losses,
    bits=result.bits,
    num_processes=result.num_processes,
    num_devices=result.num_devices,
    **arrays,
  )


def _load(path: str) -> Result:
  with np.load(path) as f:
    return Result(
      params={k.split("/", 1)[1]: f[k] for k in f.files if k.startswith("param/")},
      losses=f["losses"],
      bits=f["bits"],
      num_processes=int(f["num_processes"]),
      num_devices=int(f["num_devices"]),
    )


def _worker(args: argparse.Namespace, config: Config) -> None:
  """One process of the job: configure the backend, join the others, train, save."""
  # All of this must happen before anything touches the backend.
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", args.devices_per_process)
  if args.processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=f"127.0.0.1:{args.port}",
      coordinator_bind_address=f"127.0.0.1:{args.port}",  # not every interface
      num_processes=args.processes,
      process_id=args.process_id,
      initialization_timeout=max(1, int(args.timeout)),
    )
  expected = args.processes * args.devices_per_process
  if jax.device_count() != expected or jax.local_device_count() != args.devices_per_process:
    raise RuntimeError(
      f"process {args.process_id}: {jax.local_device_count()} local / {jax.device_count()} "
      f"global devices, expected {args.devices_per_process} / {expected}"
    )
  result = train(config)
  _save(result, os.path.join(args.output_dir, f"process_{args.process_id}.npz"))
  if args.processes > 1:
    jax.distributed.shutdown()


# -- the launcher ------------------------------------------------------------------------------


class WorkerError(RuntimeError):
  """A worker process failed or timed out; the message holds its stderr.

  Attributes:
    stderr: the end of the stderr of each failed or stopped process, by process id.
  """

  def __init__(self, message: str, stderr: dict[int, str]):
    super().__init__(message)
    self.stderr = stderr


def free_port() -> int:
  """A TCP port that was free a moment ago on 127.0.0.1."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child_env() -> dict[str, str]:
  env = dict(os.environ)
  # The worker sets its device count itself; an inherited forced count (e.g. from a test
  # session configured with 8 devices) must not leak in.
  flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = " ".join(flags.split())
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_NUM_CPU_DEVICES", None)
  # Import this very copy of the package in the children.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
  return env


def _tail(path: str, limit: int = 6000) -> str:
  try:
    with open(path, errors="replace") as f:
      text = f.read()
  except OSError:
    return "<no output>"
  text = text.strip() or "<empty>"
  return text if len(text) <= limit else "...\n" + text[-limit:]


def _worker_command(
  process_id: int,
  num_processes: int,
  devices_per_process: int,
  port: int,
  directory: str,
  timeout: float,
  config: Config,
) -> list[str]:
  """The command line of one worker process."""
  return [
    sys.executable,
    "-m",
    "biased_compression.examples.multihost",
    *("--process-id", str(process_id), "--processes", str(num_processes)),
    *("--devices-per-process", str(devices_per_process), "--port", str(port)),
    *("--output-dir", directory, "--timeout", str(timeout)),
    *config.argv(),
  ]


def _launch(
  num_processes: int,
  devices_per_process: int,
  config: Config,
  port: int,
  directory: str,
  timeout: float,
) -> list[Result]:
  """Runs the worker processes to completion; kills them all if one fails or time is up."""
  env = _child_env()
  procs: list[subprocess.Popen] = []
  files = []
  logs = [os.path.join(directory, f"process_{i}.stderr") for i in range(num_processes)]
  try:
    for i in range(num_processes):
      cmd = _worker_command(i, num_processes, devices_per_process, port, directory, timeout, config)
      out = open(os.path.join(directory, f"process_{i}.stdout"), "wb")
      err = open(logs[i], "wb")
      files += [out, err]
      procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env))
    deadline = time.monotonic() + timeout
    while True:
      codes = [p.poll() for p in procs]
      failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        first = failed[0]
        tails = {i: _tail(logs[i]) for i in failed}
        raise WorkerError(
          f"worker process {first} of {num_processes} exited with status {codes[first]} "
          f"(the others were stopped); its stderr:\n{tails[first]}",
          tails,
        )
      if all(c == 0 for c in codes):
        break
      if time.monotonic() > deadline:
        running = [i for i, c in enumerate(codes) if c is None]
        tails = {i: _tail(logs[i], 3000) for i in running}
        text = "\n".join(f"--- process {i} stderr:\n{t}" for i, t in tails.items())
        raise WorkerError(
          f"worker processes {running} of {num_processes} still running after {timeout:g} s; "
          f"stopped them.\n{text}",
          tails,
        )
      time.sleep(0.02)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
    for p in procs:
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:  # pragma: no cover
        pass
    for f in files:
      f.close()
  results = []
  for i in range(num_processes):
    try:
      results.append(_load(os.path.join(directory, f"process_{i}.npz")))
    except OSError as e:
      tail = _tail(logs[i])
      raise WorkerError(
        f"worker process {i} exited normally but left no result ({e}); its stderr:\n{tail}",
        {i: tail},
      ) from None
  return results


def _port_taken(error: WorkerError) -> bool:
  """Whether the coordinator (process 0) could not bind its port (taken since we chose it)."""
  text = error.stderr.get(0, "").lower()
  return "address already in use" in text or "failed to add port" in text


def run_multiprocess(
  num_processes: int = 2,
  devices_per_process: int = 2,
  config: Config | None = None,
  *,
  timeout: float = 300.0,
  port: int | None = None,
) -> Result:
  """Trains with ``num_processes`` local processes of ``devices_per_process`` CPU devices.

  Each process runs this module with ``--process-id``; with one process there is no
  ``jax.distributed`` at all (a plain single-process run on as many devices, the reference).
  Every process saves what it saw, and the launcher checks that they agree bit for bit.

  Args:
    num_processes: how many processes.
    devices_per_process: CPU devices in each.
    config: the training configuration (default `Config()`).
    timeout: seconds for the whole run; then every process is killed.
    port: the coordinator's port (default: a free one, retried once if it got taken).

  Returns:
    The `Result`, with the final parameters as NumPy arrays.

  Raises:
    WorkerError: a process failed (its stderr is in the message) or the run timed out.
  """
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError("num_processes and devices_per_process must be >= 1")
  config = Config() if config is None else config
  attempts = 2 if port is None else 1
  with tempfile.TemporaryDirectory(prefix="bc_multihost_") as directory:
    for attempt in range(attempts):
      try:
        results = _launch(
          num_processes,
          devices_per_process,
          config,
          port or free_port(),
          directory,
          timeout,
        )
        break
      except WorkerError as e:
        if attempt + 1 < attempts and _port_taken(e):
          continue
        raise
  first = results[0]
  for i, other in enumerate(results[1:], 1):
    same = other.losses.tobytes() == first.losses.tobytes()
    same = same and other.bits.tobytes() == first.bits.tobytes()
    same = same and all(other.params[k].tobytes() == v.tobytes() for k, v in first.params.items())
    if not same:
      raise AssertionError(f"process {i} ended with other results than process 0")
  return first


# -- the command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  """The command-line parser (launcher and worker flags)."""
  d = Config()
  p = argparse.ArgumentParser(
    prog="python -m biased_compression.examples.multihost",
    description="EF-SGD with compressed all-reduce over N local CPU processes (gloo).",
  )
  p.add_argument("--processes", type=int, default=2, help="processes (default 2)")
  p.add_argument("--devices-per-process", type=int, default=2, help="CPU devices each")
  p.add_argument("--steps", type=int, default=d.steps)
  p.add_argument("--compressor", choices=sorted(COMPRESSORS), default=d.compressor)
  p.add_argument("--ratio", type=float, default=d.ratio, help="kept fraction (sparsifiers)")
  p.add_argument("--method", choices=METHODS, default=d.method)
  p.add_argument("--learning-rate", type=float, default=d.learning_rate)
  p.add_argument("--samples-per-device", type=int, default=d.samples_per_device)
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument(
    "--rank", type=int, default=d.rank, help="PowerSGD of this rank instead of EF (default 0: EF)"
  )
  p.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole run")
  p.add_argument(
    "--compare",
    action="store_true",
    help="also train in one process with as many devices and check the parameters agree",
  )
  # internal: set by the launcher for the worker processes
  p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
  return p


def _report(result: Result, config: Config, elapsed: float) -> None:
  n = result.num_devices
  method = f"EF-SGD with {COMPRESSORS[config.compressor](config.ratio).name}"
  method += f", method={config.method}"
  if config.rank:
    method = f"PowerSGD rank {config.rank}"
  print(
    f"{result.num_processes} processes x {n // result.num_processes} CPU devices = {n} "
    f"workers; {method}, {config.steps} steps "
    f"({elapsed:.1f} s)"
  )
  loss = result.loss
  print("step  loss")
  for t in sorted({*range(0, config.steps, max(1, config.steps // 10)), config.steps - 1}):
    print(f"{t:4d}  {loss[t]:.6f}")
  dense = 32 * sum(v.size for v in result.params.values()) * config.steps
  print(
    f"bits sent per worker: {result.bits.tolist()} ({result.bits[0] / dense:.4f} of dense "
    f"float32, {dense})"
  )
  print(f"final parameters: checksum {result.checksum()}")


def main(argv: Sequence[str] | None = None) -> int:
  """The launcher, or with ``--process-id`` one worker. Returns the exit status."""
  args = build_parser().parse_args(argv)
  try:
    config = Config(
      steps=args.steps,
      compressor=args.compressor,
      ratio=args.ratio,
      method=args.method,
      learning_rate=args.learning_rate,
      samples_per_device=args.samples_per_device,
      seed=args.seed,
      rank=args.rank,
    )
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.process_id is not None:
    if args.output_dir is None or (args.processes > 1 and args.port is None):
      print("error: a worker (--process-id) needs --output-dir and --port", file=sys.stderr)
      return 2
    _worker(args, config)
    return 0
  if args.processes < 1 or args.devices_per_process < 1:
    print("error: --processes and --devices-per-process must be >= 1", file=sys.stderr)
    return 2
  start = time.monotonic()
  try:
    result = run_multiprocess(
      args.processes, args.devices_per_process, config, timeout=args.timeout
    )
  except WorkerError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  _report(result, config, time.monotonic() - start)
  if args.compare:
    n = args.processes * args.devices_per_process
    try:
      reference = run_multiprocess(1, n, config, timeout=args.timeout)
    except WorkerError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    same = reference.checksum() == result.checksum()
    print(
      f"single process x {n} devices: checksum {reference.checksum()}, "
      f"{'bit-identical' if same else 'DIFFERENT'}"
    )
    if not same:
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
