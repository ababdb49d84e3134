"""The COCO-EF benchmark (``biased-compression bench coco``): one step of n simulated workers.

Linear regression (`biased_compression.experiments.linear_regression`: the n workers' shards
are the m = n parts, f_j(x) = 1/(2 m_s) ||A_j x - b_j||^2), the code ``sgc_cyclic(n, d)``,
i.i.d. stragglers with probability p and a Top-k compressor; ms per step of

* ``library``: the way a user runs `biased_compression.coco_ef`: one jitted ``lax.scan`` of
  steps, each the part gradients (``vmap`` of ``jax.grad`` over the parts), `encode_all`,
  ``workers.update`` of ``optax.chain(optax.sgd(lr), coco_ef(C, code, coding.iid(p)))``
  under `biased_compression.simulate` and ``optax.apply_updates``; compilation excluded;
* ``library, mask given``: the same step with ``stragglers=None`` and the mask drawn once per
  step outside the workers and passed as ``participating=`` (as a real system learns it from
  timing), which shows what the in-state straggler draw costs;
* ``loop``: the design of the papers' public PyTorch code, a Python loop over the workers per
  step: the stragglers drawn, then for each worker that arrives its coded local loss
  sum_j B[i, j] f_j differentiated by autograd, its error added, Top-k by ``torch.topk`` on
  |.|, its error updated and w_i times its message accumulated; then the SGD step. In PyTorch
  (one intra-op thread, as in the runner benchmark) when it is importable, and in NumPy with
  hand-written gradients (a much lighter baseline: no graph, no dispatcher).

The loops implement Top-k only; another compressor is timed in the library alone.
`check_loops` runs the three on the same straggler masks (the library's, from
`biased_compression.coding.alive_workers`) and returns their parameters: they agree to float32
rounding (Gaussian data, so Top-k has no ties).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

import biased_compression as bc
from biased_compression import coding
from biased_compression import experiments
from biased_compression.bench import _timing
from biased_compression.compressors import _base
from biased_compression.compressors import _sparsification

__all__ = [
  "bench_coco",
  "check_loops",
  "coco_tables",
  "loops_support",
  "parse_coco_compressor",
]

AXIS = "workers"
# Worker-steps per timed repeat of a loop: about the same time budget at every n.
_LOOP_BUDGET = 50_000


def parse_coco_compressor(spec: str | _base.Compressor, dim: int) -> _base.Compressor:
  """The compressor of ``spec`` (as `biased_compression.parse_compressor` reads it), checked
  to be usable with error feedback on vectors of ``dim`` entries.

  Raises:
    ValueError: an unreadable spec, or an unbiased compressor that is not contractive (error
      feedback needs C in B3; wrap it in ``contractive(...)``).
  """
  compressor = bc.parse_compressor(spec)
  if compressor.unbiased and not np.isfinite(compressor.delta(dim)):
    raise ValueError(
      f"{compressor.name} is unbiased and not contractive at d = {dim}: error feedback needs a "
      f"contractive compressor; use contractive({compressor.name}) or a biased one (top_k)"
    )
  return compressor


def loops_support(compressor: _base.Compressor) -> bool:
  """Whether the Python loops implement ``compressor``: an exact Top-k (not "approx")."""
  return isinstance(compressor, _sparsification.TopK) and compressor.method != "approx"


def _setup(n: int, dim: int, d: int, seed: int) -> tuple[experiments.Task, coding.GradientCode]:
  task = experiments.make_task("linear_regression", n, dim=dim, seed=seed)
  return task, coding.sgc_cyclic(n, d)


def _weights(code: coding.GradientCode, p: float) -> np.ndarray:
  """The SGC decoding weights of the arrivals, 1 / (m d (1 - p)), as the library uses them."""
  return (coding.sgc_weights(code, p) / code.num_parts).astype(np.float32)


# -- the library ------------------------------------------------------------------------------


def _library_workers(task, code, compressor, p: float, lr: float, mask_given: bool):
  stragglers = None if mask_given else coding.iid(p)
  coco = bc.coco_ef(compressor, code, stragglers, p=p, axis_name=AXIS)
  return bc.simulate(optax.chain(optax.sgd(lr), coco), task.num_workers, axis_name=AXIS)


def _library_step(task, code, workers):
  """One step ``(params, state, **extra) -> (params, state)``: part gradients, encoding, the
  workers' update and the SGD step."""

  def step(params, state, **extra):
    parts = jax.vmap(jax.grad(task.loss), in_axes=(None, 0))(params, task.train)
    updates, state = workers.update(coding.encode_all(code, parts), state, params, **extra)
    return optax.apply_updates(params, updates), state

  return step


def _time_library(task, code, compressor, p, lr, steps, repeats, mask_given, seed) -> float:
  """Seconds per step of a jitted scan of ``steps`` steps (min over repeats, compile excluded)."""
  workers = _library_workers(task, code, compressor, p, lr, mask_given)
  step = _library_step(task, code, workers)
  n = task.num_workers

  def train(params, state, key):
    def body(carry, key):
      params, state = carry
      if mask_given:
        alive = jax.random.uniform(key, (n,)) >= p
        return step(params, state, participating=alive), None
      return step(params, state), None

    keys = jax.random.split(key, steps)
    return jax.lax.scan(body, (params, state), keys)[0]

  args = (task.params, workers.init(task.params), jax.random.key(seed))
  fn = jax.jit(train).lower(*args).compile()
  return _timing.time_call(fn, *args, repeats=repeats) / 1e3 / steps


# -- the loops --------------------------------------------------------------------------------


def _worker_data(task, code):
  """Each worker's data: its parts' rows stacked, (n, d m_s, D) and (n, d m_s), with the
  code's coefficient of each row's part, (n, d m_s)."""
  a = np.array(task.train[0], np.float32)
  b = np.array(task.train[1], np.float32)
  n, m_s, _ = a.shape
  parts = [code.parts_of(i) for i in range(n)]
  if len({len(q) for q in parts}) != 1:
    raise ValueError(f"bench coco: the loops need every worker to hold as many parts ({code})")
  idx = np.asarray(parts)
  coef = np.repeat(code.B[np.arange(n)[:, None], idx].astype(np.float32), m_s, axis=1)
  return a[idx].reshape(n, -1, a.shape[-1]), b[idx].reshape(n, -1), coef, m_s


class _NumpyLoop:
  """COCO-EF as a Python loop over the workers in NumPy, hand-written gradients."""

  def __init__(self, task, code, k: int, p: float, lr: float):
    self.a, self.b, self.coef, self.m_s = _worker_data(task, code)
    n, _, dim = self.a.shape
    self.k, self.lr, self.w = k, np.float32(lr), _weights(code, p)
    self.x = np.zeros(dim, np.float32)
    self.errors = np.zeros((n, dim), np.float32)

  def step(self, alive: np.ndarray) -> None:
    dim = self.x.shape[0]
    total = np.zeros(dim, np.float32)
    for i in np.flatnonzero(alive):
      a = self.a[i]
      r = (a @ self.x - self.b[i]) * self.coef[i]
      g = (a.T @ r) / np.float32(self.m_s)  # (B g)_i, the gradient of sum_j B[i, j] f_j
      p = self.errors[i] - self.lr * g
      idx = np.argpartition(np.abs(p), dim - self.k)[dim - self.k :]
      c = np.zeros(dim, np.float32)
      c[idx] = p[idx]
      self.errors[i] = p - c
      total += self.w[i] * c
    self.x = self.x + total

  def params(self) -> np.ndarray:
    return self.x.copy()


class _TorchLoop:
  """COCO-EF as a Python loop over the workers in PyTorch: autograd of each worker's coded
  local loss, ``torch.topk`` on |.|. One intra-op thread: these are tiny operations, for
  which more threads only add contention (see the runner benchmark)."""

  def __init__(self, torch, task, code, k: int, p: float, lr: float):
    a, b, coef, m_s = _worker_data(task, code)
    n, _, dim = a.shape
    self.torch, self.k, self.lr, self.m_s = torch, k, lr, m_s
    self.a, self.b = torch.from_numpy(a), torch.from_numpy(b)
    self.coef, self.w = torch.from_numpy(coef), _weights(code, p).tolist()
    self.x = torch.zeros(dim, requires_grad=True)
    self.errors = [torch.zeros(dim) for _ in range(n)]

  def step(self, alive: np.ndarray) -> None:
    torch, x = self.torch, self.x
    total = torch.zeros(x.shape[0])
    for i in np.flatnonzero(alive).tolist():
      # the coded local loss sum_j B[i, j] f_j of the worker's parts
      loss = 0.5 * (self.coef[i] * (self.a[i] @ x - self.b[i]) ** 2).sum() / self.m_s
      (g,) = torch.autograd.grad(loss, x)
      p = self.errors[i] - self.lr * g
      idx = torch.topk(p.abs(), self.k).indices
      c = torch.zeros_like(p)
      c[idx] = p[idx]
      self.errors[i] = p - c
      total += self.w[i] * c
    with torch.no_grad():
      x.add_(total)

  def params(self) -> np.ndarray:
    return self.x.detach().numpy().copy()


def _import_torch():
  try:
    import torch  # optional: never a dependency
  except ImportError:
    return None
  return torch


@contextlib.contextmanager
def _one_thread(torch) -> Iterator[None]:
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield
  finally:
    torch.set_num_threads(threads)


def _time_loop(loop, n: int, p: float, steps: int, repeats: int, seed: int) -> float:
  """Seconds per step of ``loop`` (min over repeats), the stragglers drawn at every step."""
  rng = np.random.default_rng(seed)
  loop.step(rng.random(n) >= p)  # warm-up
  count = max(1, min(steps, _LOOP_BUDGET // n))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(count):
      loop.step(rng.random(n) >= p)
    best = min(best, (time.perf_counter() - start) / count)
  return best


# -- the check --------------------------------------------------------------------------------


def check_loops(
  num_workers: int = 8,
  dim: int = 10,
  steps: int = 3,
  *,
  d: int = 2,
  p: float = 0.3,
  compressor: str | _base.Compressor = "top_k:0.05",
  lr: float = 0.1,
  seed: int = 0,
  torch: bool | None = None,
) -> dict[str, Any]:
  """The parameters of the library and of the loops after each step, on the same stragglers.

  The library runs its jitted step (`coco_ef` with ``coding.iid(p)``); before each step the
  mask it draws is read with `biased_compression.coding.alive_workers` and given to the loops.

  Args:
    num_workers: n.
    dim: the features D.
    steps: the steps run.
    d: the replication of ``sgc_cyclic(n, d)``.
    p: the straggling probability.
    compressor: a Top-k spec or compressor.
    lr: the step size.
    seed: the task's data.
    torch: run the PyTorch loop too (None: when it is importable; True: required).

  Returns:
    ``{"library": (steps, D), "numpy": (steps, D), "torch": (steps, D) or None, "alive":
    (steps, n) bool}``, float32 parameters after each step.

  Raises:
    ValueError: a compressor the loops do not implement.
    ImportError: ``torch=True`` without PyTorch.
  """
  c = parse_coco_compressor(compressor, dim)
  if not loops_support(c):
    raise ValueError(f"check_loops: the loops implement an exact top_k only, got {c.name}")
  torch_mod = _import_torch() if torch is None or torch else None
  if torch and torch_mod is None:
    raise ImportError("check_loops: torch=True but PyTorch is not importable")
  task, code = _setup(num_workers, dim, d, seed)
  k = c.num_values(dim)
  workers = _library_workers(task, code, c, p, lr, mask_given=False)
  step = jax.jit(_library_step(task, code, workers))
  alive_of = jax.jit(lambda state: coding.alive_workers(coding.iid(p), state[-1], num_workers))
  loops = {"numpy": _NumpyLoop(task, code, k, p, lr)}
  if torch_mod is not None:
    loops["torch"] = _TorchLoop(torch_mod, task, code, k, p, lr)
  params, state = task.params, workers.init(task.params)
  out: dict[str, list] = {"library": [], "alive": [], **{name: [] for name in loops}}
  for _ in range(steps):
    alive = np.asarray(alive_of(state))
    params, state = step(params, state)
    out["library"].append(np.asarray(params))
    out["alive"].append(alive)
    for name, loop in loops.items():
      with _one_thread(torch_mod) if name == "torch" else contextlib.nullcontext():
        loop.step(alive)
      out[name].append(loop.params())
  result = {name: np.stack(values) for name, values in out.items()}
  result.setdefault("torch", None)
  return result


# -- the benchmark ----------------------------------------------------------------------------


def bench_coco(
  workers: Sequence[int] = (100, 1000),
  *,
  dim: int = 100,
  p: float = 0.3,
  d: int = 2,
  compressor: str | _base.Compressor = "top_k:0.05",
  steps: int = 200,
  repeats: int = 3,
  lr: float = 0.1,
  seed: int = 0,
) -> list[dict[str, Any]]:
  """Times one COCO-EF step in the library and in the per-worker loops at each n.

  Args:
    workers: the worker counts n (each is also the number of parts m).
    dim: the features D.
    p: the straggling probability (i.i.d. per worker and step).
    d: the replication of ``sgc_cyclic(n, d)``, 1 <= d <= min(workers).
    compressor: a spec for `biased_compression.parse_compressor`; the loops run for an exact
      Top-k only.
    steps: steps of the library's scan; the loops run min(steps, 50000 / n) steps per repeat.
    repeats: timed runs after a warm-up (the minimum is kept).
    lr: the step size.
    seed: the task's data and the loops' straggler draws.

  Returns:
    One row per n: ms per step of each variant, and the speed-ups of the library over the
    loops (keys ``torch_*`` only when PyTorch is importable, loop keys only for Top-k).
  """
  c = parse_coco_compressor(compressor, dim)
  loops = loops_support(c)
  torch = _import_torch() if loops else None
  rows = []
  for n in workers:
    task, code = _setup(n, dim, d, seed)
    args = (task, code, c, p, lr, steps, repeats)
    library_s = _time_library(*args, mask_given=False, seed=seed)
    given_s = _time_library(*args, mask_given=True, seed=seed)
    row = {
      "workers": n,
      "dim": dim,
      "d": d,
      "p": p,
      "compressor": c.name,
      "k": c.num_values(dim) if isinstance(c, _sparsification.TopK) else None,
      "steps": steps,
      "repeats": repeats,
      "library_ms": 1e3 * library_s,
      "library_mask_given_ms": 1e3 * given_s,
    }
    if loops:
      k = c.num_values(dim)
      numpy_s = _time_loop(_NumpyLoop(task, code, k, p, lr), n, p, steps, repeats, seed)
      row.update(numpy_loop_ms=1e3 * numpy_s, library_vs_numpy=numpy_s / library_s)
      if torch is not None:
        loop = _TorchLoop(torch, task, code, k, p, lr)
        with _one_thread(torch):
          torch_s = _time_loop(loop, n, p, steps, repeats, seed)
        row.update(torch_loop_ms=1e3 * torch_s, library_vs_torch=torch_s / library_s)
    rows.append(row)
  return rows


def coco_tables(rows: Sequence[dict[str, Any]]) -> str:
  """The plain-text table of `bench_coco` rows, with a note on what was timed."""
  from biased_compression.bench import _timing

  r0 = rows[0]
  loops = "numpy_loop_ms" in r0
  torch = "torch_loop_ms" in r0
  headers = ["n", "library ms/step", "mask given ms/step"]
  headers += ["torch loop ms/step", "numpy loop ms/step", "vs torch", "vs numpy"]
  body = []
  for r in rows:
    cells = [str(r["workers"]), _timing.format_sig(r["library_ms"])]
    cells.append(_timing.format_sig(r["library_mask_given_ms"]))
    cells.append(_timing.format_sig(r["torch_loop_ms"]) if torch else "-")
    cells.append(_timing.format_sig(r["numpy_loop_ms"]) if loops else "-")
    cells.append(f"{r['library_vs_torch']:.1f}x" if torch else "-")
    cells.append(f"{r['library_vs_numpy']:.1f}x" if loops else "-")
    body.append(cells)
  kept = "" if r0["k"] is None else f" (k = {r0['k']})"
  note = (
    f"COCO-EF with {r0['compressor']}{kept}, sgc_cyclic(n, {r0['d']}), i.i.d. "
    f"stragglers p = {r0['p']:g}, linear regression with D = {r0['dim']}, min over "
    f"{r0['repeats']} repeats. library: one jitted scan of {r0['steps']} steps (part "
    "gradients, encode_all, workers.update, apply_updates; compile excluded); mask given: "
    "stragglers=None and participating= drawn outside the workers; loops: a Python loop "
    "over the workers per step (PyTorch autograd as in the papers' code, one thread; NumPy "
    "with hand-written gradients); vs: loop time / library time"
  )
  if not loops:
    note += f"; the loops implement Top-k only, so {r0['compressor']} ran in the library alone"
  elif not torch:
    note += "; PyTorch is not installed"
  return note + "\n" + _timing.format_table(headers, body)
