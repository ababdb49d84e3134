"""The runner benchmark (``biased-compression bench runner``): simulated workers per second.

Logistic regression with d features (synthetic, scikit-learn's ``make_classification``),
n workers, EF with Top-k: steps per second of

* ``runner``: `biased_compression.experiments.run` with its per-step logging (loss,
  accuracy, test loss, bits) and its progress bar on, compilation excluded;
* ``bare``: the same steps as one jitted ``lax.scan`` with no logging at all (the floor);
* ``loop``: the design of the papers' public PyTorch code, a Python loop over the workers
  per step, each computing its gradient (autograd), adding its error, taking the Top-k and
  updating its error, then the server's mean: in PyTorch when it is importable, else in
  NumPy (hand-written gradients, a much lighter baseline).

Every variant runs the same algorithm on the same data; the ratios are what the runner
gains over the per-worker loop and what its logging costs over the bare step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

import biased_compression as bc
from biased_compression import experiments

__all__ = ["bench_runner", "runner_tables"]


def _task(n: int, d: int, per_worker: int, seed: int) -> experiments.Task:
  from sklearn.datasets import make_classification

  m = n * per_worker
  x, y = make_classification(
    n_samples=int(m / 0.8) + 1, n_features=d, n_informative=d // 2, random_state=seed
  )
  x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
  data = experiments.Dataset(x, y.astype(np.int32), 2, f"synthetic(d={d})")
  return experiments.logistic_regression(data, n, l2=1e-3, seed=seed)


def _bare(task: experiments.Task, config: experiments.RunConfig, steps: int) -> float:
  """Seconds per step of the same training with nothing logged (one jitted scan)."""
  workers = bc.simulate(experiments.make_transformation(config), task.num_workers)

  def train(params, state):
    def step(carry, _):
      params, state = carry
      grads = jax.vmap(jax.grad(task.loss), in_axes=(None, 0))(params, task.train)
      updates, state = workers.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), None, length=steps)[0]

  params, state = task.params, workers.init(task.params)
  fn = jax.jit(train).lower(params, state).compile()
  jax.block_until_ready(fn(params, state))
  start = time.perf_counter()
  jax.block_until_ready(fn(params, state))
  return (time.perf_counter() - start) / steps


def _time_loop(step, n: int, steps: int) -> float:
  step()  # warm-up
  count = max(1, min(steps, int(2e5 // n)))  # about the same time budget at every n
  start = time.perf_counter()
  for _ in range(count):
    step()
  return (time.perf_counter() - start) / count


def _torch_loop(task: experiments.Task, lr: float, ratio: float, steps: int) -> float | None:
  """Seconds per step of the papers' design in PyTorch, or None without PyTorch.

  For each worker: autograd of its loss, its error added, Top-k, its error updated; then
  the server's mean. One intra-op thread: these are tiny operations, for which more threads
  only add contention (measured: 23 ms against 320 ms a step at n = 100 on 2 busy cores).
  """
  try:
    import torch
  except ImportError:
    return None
  a, y, n, m, d, k, l2 = _arrays(task, ratio)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  at, yt = torch.from_numpy(a), torch.from_numpy(y)
  w = torch.zeros(d, requires_grad=True)
  errors = [torch.zeros(d) for _ in range(n)]

  def step():
    total = torch.zeros(d)
    for i in range(n):
      loss = torch.nn.functional.binary_cross_entropy_with_logits(at[i] @ w, yt[i])
      loss = loss + 0.5 * l2 * (w * w).sum()
      (g,) = torch.autograd.grad(loss, w)
      p = lr * g + errors[i]
      idx = torch.topk(p.abs(), k).indices
      c = torch.zeros(d)
      c[idx] = p[idx]
      errors[i] = p - c
      total += c
    with torch.no_grad():
      w.sub_(total / n)

  try:
    return _time_loop(step, n, steps)
  finally:
    torch.set_num_threads(threads)


def _numpy_loop(task: experiments.Task, lr: float, ratio: float, steps: int) -> float:
  """Seconds per step of the same loop in NumPy with hand-written gradients (a much lighter
  baseline than autograd: no graph, no dispatcher)."""
  a, y, n, m, d, k, l2 = _arrays(task, ratio)
  s = 2.0 * y - 1.0
  x = np.zeros(d, np.float32)
  errors = np.zeros((n, d), np.float32)

  def step():
    nonlocal x
    total = np.zeros(d, np.float32)
    for i in range(n):
      z = (a[i] @ x) * s[i]
      g = -(a[i].T @ (s[i] / (1.0 + np.exp(z)))) / m + l2 * x
      p = lr * g + errors[i]
      idx = np.argpartition(np.abs(p), d - k)[d - k :]
      c = np.zeros(d, np.float32)
      c[idx] = p[idx]
      errors[i] = p - c
      total += c
    x = x - total / n

  return _time_loop(step, n, steps)


def _arrays(task: experiments.Task, ratio: float):
  a = np.array(task.train[0], np.float32)  # writable copies (PyTorch shares their memory)
  y = np.array(task.train[1], np.float32)
  n, m, d = a.shape
  return a, y, n, m, d, max(1, math.ceil(ratio * d)), float(task.info["mu"])


def bench_runner(
  workers: Sequence[int] = (10, 100, 1000),
  *,
  dim: int = 100,
  steps: int = 200,
  per_worker: int = 10,
  ratio: float = 0.1,
  seed: int = 0,
) -> list[dict[str, Any]]:
  """Times the runner, the bare compiled step and the per-worker loop at each n.

  Returns:
    One row per n: ms per step of each variant, and the ratios.
  """
  rows = []
  for n in workers:
    task = _task(n, dim, per_worker, seed)
    config = experiments.RunConfig(
      task="logistic",
      num_workers=n,
      algorithm="ef",
      compressor=f"top_k({ratio})",
      lr=0.5,
      steps=steps,
      seed=seed,
    )
    (result,) = experiments.run(config, task=task, desc=f"runner n={n}")
    runner_s = result.seconds / steps
    bare_s = _bare(task, config, steps)
    torch_s = _torch_loop(task, config.lr, ratio, steps)
    numpy_s = _numpy_loop(task, config.lr, ratio, steps)
    row = {
      "workers": n,
      "dim": dim,
      "steps": steps,
      "runner_ms": 1e3 * runner_s,
      "bare_ms": 1e3 * bare_s,
      "numpy_loop_ms": 1e3 * numpy_s,
      "runner_vs_numpy": numpy_s / runner_s,
      "logging_overhead": runner_s / bare_s,
    }
    if torch_s is not None:
      row.update(torch_loop_ms=1e3 * torch_s, runner_vs_torch=torch_s / runner_s)
    rows.append(row)
  return rows


def runner_tables(rows: Sequence[dict[str, Any]]) -> str:
  from biased_compression.bench import _timing

  torch = "torch_loop_ms" in rows[0]
  headers = ["n", "runner ms/step", "bare ms/step", "overhead"]
  headers += ["pytorch loop ms", "runner vs pytorch"] if torch else []
  headers += ["numpy loop ms", "runner vs numpy"]
  body = []
  for r in rows:
    cells = [str(r["workers"]), _timing.format_sig(r["runner_ms"])]
    cells += [_timing.format_sig(r["bare_ms"]), f"{r['logging_overhead']:.2f}x"]
    if torch:
      cells += [_timing.format_sig(r["torch_loop_ms"]), f"{r['runner_vs_torch']:.1f}x"]
    cells += [_timing.format_sig(r["numpy_loop_ms"]), f"{r['runner_vs_numpy']:.1f}x"]
    body.append(cells)
  r0 = rows[0]
  note = (
    f"EF-Top-k(10%), {r0['steps']} steps, logistic regression with d = {r0['dim']}. runner: "
    "experiments.run with logging and progress; bare: one jitted scan, nothing logged; "
    "overhead: runner / bare; loops: a Python loop over the workers per step (PyTorch "
    "autograd as in the papers' code, one thread; NumPy with hand-written gradients)"
  )
  if not torch:
    note += "; PyTorch is not installed"
  return note + "\n" + _timing.format_table(headers, body)
