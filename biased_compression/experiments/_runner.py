"""The runner: n workers training a task with one of the library's methods, compiled whole.

`run` trains one `RunConfig` (or a grid of step sizes at once: the grid is a ``jax.vmap``
axis of one compiled program) with n workers simulated under ``jax.vmap`` (``backend=
"vmap"``, the default, on one device) or one per device under ``jax.shard_map``
(``backend="shard"``), through `biased_compression.simulate` / `biased_compression.shard`.
Steps run in a ``lax.scan`` of ``chunk`` steps at a time, so a progress bar can move
between chunks. It records, at every iterate x_0 .. x_T:

* ``loss``: the global training loss f(x_t) = (1/n) sum_i f_i(x_t), on the full data;
* ``gap``: f(x_t) - f* where the task knows f*;
* ``accuracy`` (training data), ``test_loss`` and ``test_accuracy`` where the task has them;
* ``bits``: what all the workers sent to reach x_t (`biased_compression.bit_words` read in
  the scan; ``bits[T]`` equals the sum over the workers of `bits_sent` of the final state);
* ``alive``: with a gradient code, how many workers arrived at step t (``alive[t]``, the step
  to x_t; ``alive[0]`` is NaN);
* ``time``: wall-clock seconds from the start of the first chunk (compilation excluded),
  measured at the end of each chunk and spread evenly over its steps.

Everything is deterministic: the same config and seed give the same curves.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import biased_compression as bc
from biased_compression.experiments import _config
from biased_compression.experiments import _output
from biased_compression.experiments import _tasks

__all__ = ["RunResult", "run"]

BACKENDS = ("vmap", "shard")


@dataclasses.dataclass
class RunResult:
  """The curves of one run (arrays of T + 1 values, one per iterate x_0 .. x_T).

  Attributes:
    config: the `RunConfig` (with the step size of this run).
    curves: ``{"step", "loss", "bits", "time", ...}`` as NumPy arrays (see the module).
    seconds: wall time of the run's steps (compilation excluded; for a grid, of the whole
      grid, which ran as one program).
  """

  config: _config.RunConfig
  curves: dict[str, np.ndarray]
  seconds: float

  @property
  def final_loss(self) -> float:
    return float(self.curves["loss"][-1])

  def bits_to_reach(self, target: float) -> float:
    """Bits sent until the loss first reaches ``target`` (inf if it never does)."""
    hit = np.nonzero(self.curves["loss"] <= target)[0]
    return float(self.curves["bits"][hit[0]]) if hit.size else math.inf

  def to_dict(self) -> dict[str, Any]:
    return {
      "config": self.config.to_dict(),
      "seconds": self.seconds,
      "curves": {k: _json_list(v) for k, v in self.curves.items()},
    }


def _json_list(values: np.ndarray) -> list:
  out = np.asarray(values).tolist()
  if np.asarray(values).dtype.kind == "f":
    out = [None if not math.isfinite(v) else v for v in out]
  return out


def _sample(train, key, batch_size: int):
  """batch_size samples per worker, drawn with replacement from its own shard."""
  leaves = jax.tree.leaves(train)
  n, m = leaves[0].shape[0], leaves[0].shape[1]
  idx = jax.random.randint(key, (n, batch_size), 0, m)
  return jax.tree.map(lambda x: jax.vmap(lambda xi, ii: xi[ii])(x, idx), train)


def _metrics(task: _tasks.Task, params, data, loss=None) -> dict[str, jax.Array]:
  """The logged values at ``params``; ``data`` = (train, test) as the program's arguments."""
  train, test = data
  if loss is None:
    loss = jnp.mean(jax.vmap(task.loss, in_axes=(None, 0))(params, train))
  out = {"loss": loss}
  if task.accuracy is not None:
    acc = jax.vmap(task.accuracy, in_axes=(None, 0))(params, train)
    out["accuracy"] = jnp.mean(acc)
  if test is not None:
    out["test_loss"] = task.loss(params, test)
    if task.accuracy is not None:
      out["test_accuracy"] = task.accuracy(params, test)
  return out


def _workers(tx, n: int, backend: str, mesh):
  if backend == "vmap":
    return bc.simulate(tx, n, axis_name=_config.AXIS)
  return bc.shard(tx, mesh, _config.AXIS)


def _program(task: _tasks.Task, config: _config.RunConfig, backend: str, mesh, chunk: int):
  """(init(lr) -> carry, advance(carry, lr, first, data) -> (carry, metrics of `chunk` steps)).

  The data travel as arguments, not as constants baked into the compiled program (which
  made XLA copy and fold them: slow compiles and large programs for image sets).
  """
  n = task.num_workers
  total = config.steps
  code = None if config.code is None else _config.make_code(config.code, n)

  def workers_for(lr):
    return _workers(_config.make_transformation(config, lr), n, backend, mesh)

  def init(lr):
    workers = workers_for(lr)
    params = task.params
    return params, workers.init(params), jax.random.key(config.seed)

  def advance(carry, lr, first, data):
    workers = workers_for(lr)
    train = data[0]

    def step(carry, t):
      old = carry
      params, state, key = carry
      key, sub = jax.random.split(key)
      if config.batch_size is None:
        # full gradients: the loss at x_t comes with them (the mean over equal shards is f)
        losses, grads = jax.vmap(jax.value_and_grad(task.loss), in_axes=(None, 0))(params, train)
        metrics = _metrics(task, params, data, loss=jnp.mean(losses))
      else:
        batch = _sample(train, sub, config.batch_size)
        metrics = _metrics(task, params, data)
        grads = jax.vmap(jax.grad(task.loss), in_axes=(None, 0))(params, batch)
      if code is not None:  # the shards are the code's parts: each worker's coded gradient
        grads = bc.coding.encode_all(code, grads)
      before = state
      updates, state = workers.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      metrics["bits"] = bc.bit_words(state)  # the total after this step, per worker
      if code is not None:  # an arrival sent bits, a straggler nothing
        sent = jnp.any(metrics["bits"] != bc.bit_words(before), axis=-1)
        metrics["alive"] = jnp.sum(sent.reshape(n, -1).any(axis=-1).astype(jnp.float32))
      # the last chunk may run past the end: those steps leave the carry as it was
      new = jax.tree.map(lambda a, b: jnp.where(t < total, a, b), (params, state, key), old)
      return new, metrics

    return jax.lax.scan(step, carry, first + jnp.arange(chunk))

  return init, advance


def run(
  config: _config.RunConfig,
  *,
  task: _tasks.Task | None = None,
  lrs: Sequence[float] | None = None,
  backend: str = "vmap",
  mesh: jax.sharding.Mesh | None = None,
  chunk: int | None = None,
  show_progress: bool = True,
  desc: str | None = None,
) -> list[RunResult]:
  """Trains ``config`` (at each step size of ``lrs``, default ``[config.lr]``).

  Args:
    config: the run.
    task: the task, if already built (default: ``make_task(config.task, n,
      **config.task_options)``).
    lrs: a grid of step sizes, run together as one compiled program (vmap backend); the
      shard backend runs them one after the other.
    backend: ``"vmap"`` (n simulated workers on one device) or ``"shard"`` (one worker per
      device of ``mesh``'s axis ``"workers"``).
    mesh: for ``backend="shard"``: a mesh with an axis ``"workers"`` of n devices.
    chunk: steps per compiled chunk (default: 20 chunks per run, of at least 50 steps;
      the progress bar moves once per chunk).
    show_progress: a progress bar over the steps (only on a terminal).
    desc: the bar's label.

  Returns:
    One `RunResult` per step size, in the order of ``lrs``.
  """
  if backend not in BACKENDS:
    raise ValueError(f"run: backend must be one of {BACKENDS}, got {backend!r}")
  if backend == "shard" and (mesh is None or _config.AXIS not in mesh.shape):
    raise ValueError(f"run: backend='shard' needs a mesh with an axis {_config.AXIS!r}")
  if task is None:
    task = _tasks.make_task(config.task, config.num_workers, **config.task_options)
  if task.num_workers != config.num_workers:
    raise ValueError(
      f"run: the task has {task.num_workers} workers, the config {config.num_workers}"
    )
  if config.batch_size is not None and not task.batchable:
    raise ValueError(f"run: task {task.name!r} has no sample axis; use batch_size=None")
  lrs = [config.lr] if lrs is None else [float(x) for x in lrs]
  if not lrs or not all(math.isfinite(x) and x > 0 for x in lrs):
    raise ValueError(f"run: lrs must be finite step sizes > 0, got {lrs!r}")
  steps = config.steps
  chunk = min(steps, max(50, math.ceil(steps / 20))) if chunk is None else int(chunk)
  if chunk < 1:
    raise ValueError(f"run: chunk must be >= 1, got {chunk!r}")
  init, advance = _program(task, config, backend, mesh, chunk)
  data = (task.train, task.test)
  if backend == "vmap" and len(lrs) > 1:
    # the grid is one program: a batch axis over the step sizes
    init_fn = jax.jit(jax.vmap(init))
    advance_fn = jax.jit(jax.vmap(advance, in_axes=(0, 0, None, None)))
    final_fn = jax.jit(jax.vmap(lambda c, data: _metrics(task, c[0], data), in_axes=(0, None)))
    groups = [(init_fn, advance_fn, final_fn, jnp.asarray(lrs, jnp.float32), True)]
  else:
    # one program per step size (no batch axis: e.g. XLA:CPU would batch a CNN's kernels
    # into a slow grouped convolution)
    init_fn, advance_fn = jax.jit(init), jax.jit(advance)
    final_fn = jax.jit(lambda c, data: _metrics(task, c[0], data))
    groups = [(init_fn, advance_fn, final_fn, jnp.float32(lr), False) for lr in lrs]
  outputs = []
  for init_fn, advance_fn, final_fn, lr, batched in groups:
    carry = init_fn(lr)
    compiled = advance_fn.lower(carry, lr, 0, data).compile()  # the times exclude it
    chunks, ends, done = [], [], 0
    bar = _output.progress(
      total=steps, desc=desc or config.name, leave=False, disable=not show_progress
    )
    with bar:
      start = time.perf_counter()
      while done < steps:
        carry, metrics = compiled(carry, lr, done, data)
        chunks.append(jax.device_get(metrics))
        k = min(chunk, steps - done)
        ends.append((time.perf_counter() - start, k))
        done += k
        bar.update(k)
    seconds = float(time.perf_counter() - start)
    last = jax.device_get(final_fn(carry, data))
    times, prev = [], 0.0
    for end, k in ends:  # each chunk's time spread evenly over its steps
      times.append(prev + (end - prev) * np.arange(1, k + 1) / k)
      prev = end
    outputs.append((chunks, times, last, seconds, batched))
  results = []
  for index, lr in enumerate(lrs):
    group = outputs[0] if len(outputs) == 1 else outputs[index]
    chunks, times, last, seconds, batched = group
    pick = (lambda x, i=index: x[i]) if batched else (lambda x: x)
    curves = _assemble(task, chunks, times, last, pick, steps)
    results.append(RunResult(config.replace(lr=lr), curves, seconds))
  return results


def _assemble(task, chunks, times, last, pick, steps) -> dict[str, np.ndarray]:
  """Curves at x_0 .. x_T from the chunks' per-step metrics (at x_0 .. x_{T-1}) and x_T."""
  names = [k for k in chunks[0] if k not in ("bits", "alive")]
  curves = {"step": np.arange(steps + 1)}
  for name in names:
    values = np.concatenate([np.asarray(pick(c[name])) for c in chunks])[:steps]
    curves[name] = np.append(values.astype(np.float64), float(np.asarray(pick(last[name]))))
  words = np.concatenate([np.asarray(pick(c["bits"])) for c in chunks])[:steps]
  per_worker = bc.words_to_bits(words)  # (steps, n): each worker's total after each step
  totals = np.asarray(per_worker, np.int64).reshape(steps, -1).sum(axis=1)
  curves["bits"] = np.concatenate([[0], totals]).astype(np.int64)
  if "alive" in chunks[0]:  # arrivals of step t at index t (none before x_0)
    alive = np.concatenate([np.asarray(pick(c["alive"])) for c in chunks])[:steps]
    curves["alive"] = np.concatenate([[np.nan], alive.astype(np.float64)])
  if task.f_star is not None:
    curves["gap"] = curves["loss"] - task.f_star
  seconds = np.concatenate(times)[:steps]
  curves["time"] = np.concatenate([[0.0], seconds])
  return curves
