"""Claim 5: the induced compressor, a better alternative to error feedback (Horváth and
Richtárik, ICLR 2021).

For a biased (contractive) C1 ∈ B3(δ) and an unbiased C2 ∈ U(ω), the induced compressor

  C_ind(x) = C1(x) + C2(x − C1(x))

is unbiased, E C_ind(x) = C1(x) + (x − C1(x)) = x, with
E‖C_ind(x) − x‖² = E‖C2(r) − r‖² ≤ ω‖r‖² ≤ ω(1 − 1/δ)‖x‖² for r = x − C1(x): C_ind ∈
U(ω(1 − 1/δ)), and it sends bits(C1) + bits(C2). So methods built for unbiased compressors
(DCGD, DIANA, partial participation with importance weights) apply to Top-k through it,
instead of error feedback. This study runs both halves of the claim on heterogeneous
logistic regression:

* **equal bits**: DIANA and DCGD with induced(Top-k, Rand-k) against EF with Top-2k (the same
  2k values and 2k indices per step), EF21 with Top-2k, EF with Top-k (half the bits a step,
  so twice the steps) and uncompressed GD, each at its best step size, compared at one bit
  budget;
* **partial participation**: worker i sends with probability p_i (non-uniform); the server
  aggregates the participants S with importance weights, (1/n) Σ_{i∈S} m_i / p_i (unbiased),
  or without them (the mean over S for DCGD, biased toward frequent workers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import biased_compression as bc
from biased_compression import experiments as ex
from biased_compression.experiments import _output
from biased_compression.experiments import _tasks
from biased_compression.studies import _claims

__all__ = [
  "CLAIM",
  "induced_vs_ef",
  "participation_aggregates",
  "probabilities",
  "resolution",
  "stall_point_gap",
  "uniform_weights",
  "verdict_rule",
]

# the matched methods' bits per step may differ by this relative amount at most
BITS_TOLERANCE = 0.01
AXIS = "workers"
WEIGHTINGS = ("importance", "uniform")
_MAX_POINTS = 400  # curves kept in the JSON record
_BIAS_DRAWS = 20_000  # Monte Carlo draws of the one-step aggregate


FN = "induced_vs_ef"


def resolution(f_star: float) -> float:
  """4 ulp of float32 at f*: a gap f(x) − f* below it is float32 rounding of the loss."""
  return float(4 * np.spacing(np.float32(abs(f_star))))


def _check_lrs(name: str, values: Any) -> tuple[float, ...]:
  ok = isinstance(values, (tuple, list)) and len(values) > 0
  ok = ok and all(
    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    for v in values
  )
  if not ok:
    raise ValueError(
      f"induced_vs_ef: {name} must be a non-empty sequence of finite step sizes > 0, got {values!r}"
    )
  return tuple(float(v) for v in values)


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _induced(k: int) -> bc.Compressor:
  return bc.induced(bc.top_k(k=k), bc.rand_k(k=k))


def probabilities(n: int, low: float, high: float) -> np.ndarray:
  """p_i = low + (high − low)·i/(n − 1): worker i's participation probability.

  With the sorted-label split, the later workers hold the second class, so they are the
  frequent ones.
  """
  if n == 1:
    return np.array([high], np.float32)
  return np.linspace(low, high, n).astype(np.float32)


def _subsets(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every participation mask S ⊆ [n] (n ≤ 16) and its probability Π_{i∈S} p_i Π_{i∉S}(1−p_i)."""
  n = p.shape[0]
  masks = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)
  probs = np.prod(np.where(masks > 0, p, 1.0 - p), axis=1)
  return masks, probs


def uniform_weights(p: np.ndarray, *, draws: int = 1 << 16, seed: int = 0) -> np.ndarray:
  """w_i = E[1{i ∈ S} / |S|; S ≠ ∅]: the expected weight of worker i in the mean over S.

  Exact (all 2^n masks) for n ≤ 16, Monte Carlo with ``draws`` masks above.
  """
  p = np.asarray(p, np.float64)
  if p.shape[0] <= 16:
    masks, probs = _subsets(p)
  else:
    rng = np.random.default_rng(seed)
    masks = (rng.random((draws, p.shape[0])) < p).astype(np.float64)
    probs = np.full(draws, 1.0 / draws)
  size = masks.sum(axis=1)
  share = np.where(size[:, None] > 0, masks / np.maximum(size, 1.0)[:, None], 0.0)
  return probs @ share


def stall_point_gap(task: Any, weights: np.ndarray, l2: float = 1e-3) -> float:
  """f(x̃) − f* for x̃ = argmin_x Σ_i w_i f_i(x), by Newton's method in float64.

  x̃ is where the expected step of an aggregate Σ_i w_i ∇f_i(x) vanishes: the point DCGD with
  the mean over the participants drifts to (w = `uniform_weights`), whatever its step size.
  ``task`` is the experiments' logistic task (its ``train`` = (a, y) per worker).
  """
  a = np.asarray(task.train[0], np.float64)
  s = 2.0 * np.asarray(task.train[1], np.float64) - 1.0
  w = np.asarray(weights, np.float64)
  n, m, d = a.shape
  x = np.zeros(d)

  def losses(x):
    z = np.einsum("nmd,d->nm", a, x) * s
    return np.mean(np.logaddexp(0.0, -z), axis=1) + 0.5 * l2 * x @ x

  for _ in range(60):
    z = np.einsum("nmd,d->nm", a, x) * s
    q = 1.0 / (1.0 + np.exp(z))  # sigmoid(−z)
    grad = -np.einsum("n,nmd,nm->d", w, a, q * s) / m + w.sum() * l2 * x
    curv = q * (1.0 - q)
    hess = np.einsum("n,nmd,nm,nme->de", w, a, curv, a) / m + w.sum() * l2 * np.eye(d)
    step = np.linalg.solve(hess, grad)
    x = x - step
    if np.linalg.norm(step) < 1e-13 * (1.0 + np.linalg.norm(x)):
      break
  return float(np.mean(losses(x)) - task.f_star)


def participation_aggregates(
  grads: jax.Array,
  probability: Sequence[float] | jax.Array,
  *,
  weighting: str,
  compressor: bc.Compressor | None = None,
  draws: int = 4000,
  seed: int = 0,
) -> jax.Array:
  """``draws`` independent one-step aggregates of DCGD under partial participation.

  Each draw samples S (worker i with probability p_i, independently) and returns the
  aggregate of `bc.compress` over the simulated workers: with ``weighting="importance"``
  (``participating`` and ``probability`` given to ``update``) it is
  (1/n) Σ_{i∈S} C(g_i)/p_i, whose mean over S and C is (1/n) Σ_i g_i; with ``"uniform"``
  (``participating`` only) it is the mean over S, whose mean is Σ_i w_i g_i with
  w_i = E[1{i∈S}/|S|] (`uniform_weights`), not the mean gradient unless p is constant.

  Args:
    grads: (n, d) the workers' gradients, fixed.
    probability: (n,) the p_i in (0, 1].
    weighting: ``"importance"`` or ``"uniform"``.
    compressor: unbiased C (default: the identity).
    draws: the number of draws.
    seed: seeds the masks and the compressor.

  Returns:
    (draws, d) float32: one aggregate per row.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(
      f"participation_aggregates: weighting must be one of {WEIGHTINGS}, got {weighting!r}"
    )
  grads = jnp.asarray(grads, jnp.float32)
  n = grads.shape[0]
  p = jnp.asarray(probability, jnp.float32)
  c = bc.identity() if compressor is None else compressor
  # DCGD keeps no memory: successive steps on fixed gradients are independent draws
  workers = bc.simulate(bc.compress(c, axis_name=AXIS, seed=seed), n, axis_name=AXIS)

  @jax.jit
  def sample(grads, p):
    state = workers.init(grads[0])
    key = jax.random.key(seed)

    def step(state, t):
      mask = jax.random.uniform(jax.random.fold_in(key, t), (n,)) < p
      extra = {"participating": mask}
      if weighting == "importance":
        extra["probability"] = p
      out, state = workers.update(grads, state, grads[0], **extra)
      return state, out

    return jax.lax.scan(step, state, jnp.arange(draws))[1]

  return sample(grads, p)


# -- part 1: equal bits ------------------------------------------------------------------------


def _at_budget(result: ex.RunResult, budget: float, n: int) -> tuple[float, int]:
  """(gap, step) at the last iterate reached with at most ``budget`` bits per worker."""
  bits = np.asarray(result.curves["bits"], np.float64) / n
  t = int(np.nonzero(bits <= budget * (1 + 1e-12))[0][-1])
  gap = float(result.curves["gap"][t])
  return (gap if math.isfinite(gap) else math.inf), t


def _equal_bits(dataset, n, ratio, steps, lrs, show_progress):
  task = ex.make_task("logistic", n, dataset=dataset, heterogeneous=True)
  d = task.num_params
  k = max(1, round(ratio * d))
  if 2 * k > d:
    raise ValueError(f"induced_vs_ef: ratio={ratio!r} gives 2k = {2 * k} > d = {d} on {dataset!r}")
  base = ex.RunConfig(
    task="logistic",
    task_options={"dataset": dataset, "heterogeneous": True},
    num_workers=n,
    steps=steps,
  )
  ind = f"induced(top_k(k={k}), rand_k(k={k}))"
  labels = {
    "gd": "GD (uncompressed)",
    "diana": f"DIANA induced(Top-{k}, Rand-{k})",
    "dcgd": f"DCGD induced(Top-{k}, Rand-{k})",
    "ef": f"EF Top-{2 * k}",
    "ef21": f"EF21 Top-{2 * k}",
    "ef_k": f"EF Top-{k}",
  }
  matched = [
    base.replace(algorithm="diana", compressor=ind, label=labels["diana"]),
    base.replace(algorithm="dcgd", compressor=ind, label=labels["dcgd"]),
    base.replace(algorithm="ef", compressor=f"top_k(k={2 * k})", label=labels["ef"]),
    base.replace(algorithm="ef21", compressor=f"top_k(k={2 * k})", label=labels["ef21"]),
    base.replace(algorithm="gd", label=labels["gd"]),
  ]
  comparison = ex.compare(matched, task=task, lrs=lrs, show_progress=show_progress)
  grids = dict(zip(["diana", "dcgd", "ef", "ef21", "gd"], comparison.grid, strict=True))
  # per-step bits from the runs (per worker): the budget is the induced methods' T steps
  per_step = {key: float(runs[0].curves["bits"][-1]) / (steps * n) for key, runs in grids.items()}
  budget = per_step["diana"] * steps
  # Top-k sends half as much a step: give it the steps that spend the same budget
  k_bits = bc.top_k(k=k).bits(d)
  k_steps = max(1, math.ceil(budget / k_bits))
  half = base.replace(
    algorithm="ef", compressor=f"top_k(k={k})", label=labels["ef_k"], steps=k_steps
  )
  grids["ef_k"] = ex.compare([half], task=task, lrs=lrs, show_progress=show_progress).grid[0]
  per_step["ef_k"] = float(grids["ef_k"][0].curves["bits"][-1]) / (k_steps * n)
  rows, best = [], {}
  for key in ("diana", "dcgd", "ef", "ef21", "ef_k", "gd"):
    # the step size is chosen by the gap at the budget, the comparison's own metric
    scored = [(_at_budget(r, budget, n), r) for r in grids[key]]
    (gap, t), r = min(scored, key=lambda s: s[0][0])
    best[key] = r
    rows.append(
      {
        "part": "equal bits",
        "dataset": dataset,
        "method": labels[key],
        "bits_per_step": per_step[key],
        "lr": r.config.lr,
        "steps_at_budget": t,
        "gap_at_budget": gap,
        "final_gap": float(r.curves["gap"][-1]),
      }
    )
  return {
    "task": task,
    "d": d,
    "k": k,
    "budget": budget,
    "rows": rows,
    "best": best,
    "labels": labels,
    "per_step": per_step,
  }


# -- part 2: partial participation -------------------------------------------------------------


def _pp_program(task, compressor, p, algorithm, weighting, steps):
  """jit(vmap over step sizes × seeds) of ``steps`` steps of ``algorithm`` ("dcgd", "diana"
  or "diana_ref") under partial participation; returns f(x_t) for t = 0 .. steps − 1."""
  n = task.num_workers
  d = task.num_params
  p = jnp.asarray(p, jnp.float32)
  alpha = 1.0 / (1.0 + compressor.omega(d))

  def one(lr, seed):
    mask_key = jax.random.fold_in(jax.random.key(10_007), seed)
    params = task.params
    if algorithm == "diana_ref":
      # DIANA with arbitrary sampling written out: the estimate uses the importance weights,
      # the server's shift stays the mean of the workers' shifts (moved by (α/n) Σ_S m_i)
      comp_key = jax.random.fold_in(jax.random.key(20_011), seed)
      state = jnp.zeros((n, d), jnp.float32)
    else:
      make = bc.compress if algorithm == "dcgd" else bc.diana
      tx = optax.chain(make(compressor, axis_name=AXIS, seed=seed), optax.sgd(lr))
      workers = bc.simulate(tx, n, axis_name=AXIS)
      state = workers.init(params)

    def step(carry, t):
      params, state = carry
      losses, grads = jax.vmap(jax.value_and_grad(task.loss), in_axes=(None, 0))(params, task.train)
      mask = jax.random.uniform(jax.random.fold_in(mask_key, t), (n,)) < p
      if algorithm == "diana_ref":
        keys = jax.random.split(jax.random.fold_in(comp_key, t), n)
        m = jax.vmap(lambda v, kk: compressor.compress(v, key=kk))(grads - state, keys)
        sent = jnp.where(mask[:, None], m, 0.0)
        g = jnp.mean(state, axis=0) + jnp.mean(sent / p[:, None], axis=0)
        state = state + alpha * sent
        params = params - lr * g
      else:
        extra = {"participating": mask}
        if weighting == "importance":
          extra["probability"] = p
        updates, state = workers.update(grads, state, params, **extra)
        params = optax.apply_updates(params, updates)
      return (params, state), jnp.mean(losses)

    return jax.lax.scan(step, (params, state), jnp.arange(steps))[1]

  return jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))


def _participation(task, k, lo, hi, steps, lrs, seeds, show_progress):
  n = task.num_workers
  p = probabilities(n, lo, hi)
  c = _induced(k)
  settings = [
    ("dcgd", "importance", "DCGD induced, importance weights 1/(n p_i)"),
    ("dcgd", "uniform", "DCGD induced, mean over participants"),
    ("diana", "importance", "DIANA induced (bc.diana), importance weights"),
    ("diana", "uniform", "DIANA induced (bc.diana), participating only: (1/n) Σ_S"),
    ("diana_ref", "importance", "DIANA induced (reference: shift = mean of workers'), importance"),
  ]
  tail = max(1, steps // 10)
  lr_arr = jnp.asarray(lrs, jnp.float32)
  seed_arr = jnp.arange(seeds)
  out = []
  with _output.progress(
    total=len(settings), desc="participation", disable=not show_progress
  ) as bar:
    for algorithm, weighting, label in settings:
      loss = np.asarray(_pp_program(task, c, p, algorithm, weighting, steps)(lr_arr, seed_arr))
      gap = loss.astype(np.float64) - task.f_star  # (lrs, seeds, steps)
      score = np.mean(gap[:, :, -tail:], axis=(1, 2))
      score = np.where(np.isfinite(score), score, np.inf)
      i = int(np.argmin(score))
      curve = np.mean(gap[i], axis=0)
      out.append(
        {
          "algorithm": algorithm,
          "weighting": weighting,
          "label": label,
          "lr": float(lrs[i]),
          "tail_gap": float(score[i]),
          "curve": curve,
        }
      )
      bar.update(1)
  w = uniform_weights(p)
  predicted = stall_point_gap(task, w, l2=1e-3)
  # one-step bias at x_0 of the two DCGD aggregates, Monte Carlo over masks and C
  grads = jax.vmap(jax.grad(task.loss), in_axes=(None, 0))(task.params, task.train)
  target = np.asarray(jnp.mean(grads, axis=0), np.float64)
  bias, noise = {}, {}
  for weighting in WEIGHTINGS:
    draws = np.asarray(
      participation_aggregates(grads, p, weighting=weighting, compressor=c, draws=_BIAS_DRAWS),
      np.float64,
    )
    scale = np.linalg.norm(target)
    bias[weighting] = float(np.linalg.norm(draws.mean(axis=0) - target) / scale)
    # the Monte Carlo noise of that norm: ||standard errors|| / ||grad f||
    noise[weighting] = float(
      np.linalg.norm(draws.std(axis=0, ddof=1)) / math.sqrt(len(draws)) / scale
    )
  return {
    "p": p,
    "settings": out,
    "predicted": predicted,
    "bias": bias,
    "noise": noise,
    "weights": w,
    "tail": tail,
  }


# -- the study ---------------------------------------------------------------------------------


def _downsample(x: np.ndarray, y: np.ndarray) -> tuple[list, list]:
  idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), _MAX_POINTS)).astype(int))
  return np.asarray(x)[idx].tolist(), [
    float(v) if math.isfinite(v) else None for v in np.asarray(y)[idx]
  ]


def verdict_rule(equal_bits_ok: bool, participation_ok: bool) -> str:
  """``reproduced`` if both halves hold, ``partly`` if one does, else ``not reproduced``."""
  if equal_bits_ok and participation_ok:
    return "reproduced"
  if equal_bits_ok or participation_ok:
    return "partly"
  return "not reproduced"


def induced_vs_ef(
  *,
  datasets: tuple[str, ...] = ("breast_cancer",),
  num_workers: int = 8,
  ratio: float = 0.1,
  steps: int = 1000,
  lrs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
  pp_steps: int = 2000,
  pp_lrs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0),
  pp_seeds: int = 3,
  p_low: float = 0.2,
  p_high: float = 0.9,
  tolerance: float = 0.1,
  show_progress: bool = True,
) -> _claims.Finding:
  """The induced compressor against error feedback at equal bits, and under partial
  participation.

  **Set-up.** Logistic regression f(x) = (1/n) Σ_i f_i(x), f_i(x) = (1/m) Σ_j
  log(1 + exp(−s_j a_jᵀx)) + (10⁻³/2)‖x‖², on each bundled ``dataset`` split over n workers by
  sorted labels (heterogeneous: ∇f_i(x*) ≠ 0), full local gradients, x₀ = 0; f* by Newton's
  method, so the metric is the gap f(x) − f*. k = max(1, round(ratio·d)).

  **Part 1, equal bits.** C_ind = induced(Top-k, Rand-k) ∈ U(ω(1 − k/d)) with ω = d/k − 1
  sends k values + k indices for each part: the same 2k values and 2k indices as Top-2k, so
  DIANA / DCGD with C_ind and EF / EF21 with Top-2k send the same bits a step (checked from the
  runs' bit counters: they are *matched* when the relative difference is at most
  ``BITS_TOLERANCE`` = 1%). These run ``steps`` steps; the bit budget B is what the induced
  methods send in them (per worker). EF with Top-k sends half as much a step and runs
  ⌈B / bits(Top-k)⌉ steps; uncompressed GD (32 bits a value) reaches B after fewer steps. Every
  method runs on the step-size grid ``lrs`` (`biased_compression.experiments.compare`) and
  keeps the step size whose gap at the budget (the last iterate within B bits) is lowest.
  DIANA: m_i = C(∇f_i − h_i), h_i ← h_i + α m_i with α = 1/(1 + ω_ind), g = h + (1/n) Σ m_i;
  DCGD: g = (1/n) Σ C(∇f_i); EF: Δ_i = C(e_i + γ∇f_i), e_i ← e_i + γ∇f_i − Δ_i.

  **Part 2, partial participation** (the first dataset). At each step worker i takes part
  with probability p_i = p_low + (p_high − p_low)·i/(n − 1), independently (the later workers,
  of the second class, are the frequent ones). DCGD with C_ind and ``participating`` and
  ``probability`` passed to ``update`` aggregates (1/n) Σ_{i∈S} C(∇f_i)/p_i, unbiased for
  ∇f; with ``participating`` only it takes the mean over S, whose expectation is
  Σ_i w_i ∇f_i with w_i = E[1{i∈S}/|S|] ∝̸ 1/n: it drifts to x̃ = argmin Σ_i w_i f_i, a stall
  gap f(x̃) − f* that no step size removes (computed by Newton's method and reported). The
  one-step relative bias ‖E g − ∇f(x₀)‖/‖∇f(x₀)‖ of both is measured by Monte Carlo (20000
  draws, with its noise level). DIANA (`bc.diana`) runs both ways as well, next to a
  reference DIANA with arbitrary sampling written out here (g = h + (1/n) Σ_S m_i/p_i,
  h_i ← h_i + α m_i for i ∈ S, h the mean of the h_i), since `bc.diana` moves its server shift
  by the importance-weighted sum, which then drifts from the mean of the workers' shifts.
  Each runs ``pp_steps`` steps for ``pp_seeds`` seeds on the grid ``pp_lrs`` (vmapped); the
  score is the gap averaged over the last 10% of the steps and the seeds, at the best step size.

  **Verdict.** Equal bits holds if, on every dataset, the matched bits differ by at most 1%
  and DIANA-induced's gap at the budget is at most (1 + ``tolerance``) times EF-Top-2k's,
  both gaps floored at 4 ulp of float32 at f* (`resolution`: below it f(x) − f* is the
  rounding of the float32 loss, and two converged runs tie). Participation holds if
  DCGD-induced with importance weights ends (tail gap) below DCGD-induced with the mean over
  the participants. ``reproduced`` if both hold, ``partly`` if one does, ``not reproduced``
  if neither.

  Args:
    datasets: bundled binary data sets (``"breast_cancer"``, ``"digits_binary"``, ...).
    num_workers: n >= 2.
    ratio: k/d, in (0, 0.5] (2k ≤ d).
    steps: steps of the matched methods (part 1).
    lrs: the step-size grid of part 1.
    pp_steps: steps of part 2.
    pp_lrs: the step-size grid of part 2.
    pp_seeds: seeds (masks and compressors) of part 2.
    p_low, p_high: the range of the p_i, 0 < p_low ≤ p_high ≤ 1.
    tolerance: the relative tolerance of the equal-bits comparison, >= 0.
    show_progress: progress bars (only on a terminal).

  Returns:
    The `Finding`: rows of both parts, figures ``equal_bits`` (gap against bits per worker)
    and ``participation`` (gap against steps), curves in ``record``.

  References:
    Horváth, Richtárik, A Better Alternative to Error Feedback for Communication-Efficient
    Distributed Learning, ICLR 2021, arXiv:2006.11077 (https://arxiv.org/abs/2006.11077).
    Mishchenko, Gorbunov, Takáč, Richtárik, Distributed Learning with Compressed Gradient
    Differences, 2019, arXiv:1901.09269 (https://arxiv.org/abs/1901.09269).
    Stich, Cordonnier, Jaggi, Sparsified SGD with Memory, 2018, arXiv:1809.07599
    (https://arxiv.org/abs/1809.07599).
  """
  if isinstance(datasets, str) or not isinstance(datasets, (tuple, list)) or not datasets:
    raise ValueError(
      f"induced_vs_ef: datasets must be a non-empty tuple of names, got {datasets!r}"
    )
  if not all(isinstance(s, str) for s in datasets):
    raise ValueError(f"induced_vs_ef: datasets must be names (str), got {datasets!r}")
  n = _tasks._check_int(FN, "num_workers", num_workers, 2)
  if not (_number(ratio) and 0 < ratio <= 0.5):
    raise ValueError(f"induced_vs_ef: ratio must be in (0, 0.5], got {ratio!r}")
  steps = _tasks._check_int(FN, "steps", steps, 1)
  pp_steps = _tasks._check_int(FN, "pp_steps", pp_steps, 1)
  pp_seeds = _tasks._check_int(FN, "pp_seeds", pp_seeds, 1)
  lrs = _check_lrs("lrs", lrs)
  pp_lrs = _check_lrs("pp_lrs", pp_lrs)
  if not (_number(p_low) and 0 < p_low <= 1):
    raise ValueError(f"induced_vs_ef: p_low must be in (0, 1], got {p_low!r}")
  if not (_number(p_high) and p_low <= p_high <= 1):
    raise ValueError(f"induced_vs_ef: p_high must be in [p_low, 1] = [{p_low}, 1], got {p_high!r}")
  if not (_number(tolerance) and tolerance >= 0):
    raise ValueError(f"induced_vs_ef: tolerance must be a finite number >= 0, got {tolerance!r}")

  parts = [_equal_bits(s, n, ratio, steps, lrs, show_progress) for s in datasets]
  first = parts[0]
  pp = _participation(
    first["task"], first["k"], p_low, p_high, pp_steps, pp_lrs, pp_seeds, show_progress
  )

  rows: list[dict[str, Any]] = []
  checks = []
  for part in parts:
    by = {r["method"]: r for r in part["rows"]}
    lab = part["labels"]
    # gaps below the float32 resolution of f at x* are indistinguishable: compare at the floor
    floor = resolution(part["task"].f_star)
    ef_gap = max(by[lab["ef"]]["gap_at_budget"], floor)
    diana_gap = max(by[lab["diana"]]["gap_at_budget"], floor)
    bits_diff = abs(part["per_step"]["diana"] - part["per_step"]["ef"]) / part["per_step"]["ef"]
    checks.append(
      {
        "dataset": part["rows"][0]["dataset"],
        "bits_relative_difference": bits_diff,
        "resolution": floor,
        "diana_over_ef": diana_gap / ef_gap,
        "dcgd_over_ef": max(by[lab["dcgd"]]["gap_at_budget"], floor) / ef_gap,
        "holds": bool(bits_diff <= BITS_TOLERANCE and diana_gap <= (1 + tolerance) * ef_gap),
      }
    )
    for r in part["rows"]:
      rows.append({**r, "vs_ef": max(r["gap_at_budget"], floor) / ef_gap})
  equal_ok = all(c["holds"] for c in checks)
  byw = {(s["algorithm"], s["weighting"]): s for s in pp["settings"]}
  imp, uni = byw[("dcgd", "importance")], byw[("dcgd", "uniform")]
  pp_ok = bool(imp["tail_gap"] < uni["tail_gap"])
  for s in pp["settings"]:
    row = {
      "part": "participation",
      "dataset": datasets[0],
      "method": s["label"],
      "lr": s["lr"],
      "tail_gap": s["tail_gap"],
    }
    if s["algorithm"] == "dcgd":
      row["one_step_bias"] = pp["bias"][s["weighting"]]
      row["one_step_noise"] = pp["noise"][s["weighting"]]
    if s["algorithm"] == "dcgd" and s["weighting"] == "uniform":
      row["predicted_stall"] = pp["predicted"]
    rows.append(row)
  verdict = verdict_rule(equal_ok, pp_ok)

  c0 = checks[0]
  da, dr = byw[("diana", "importance")], byw[("diana", "uniform")]
  ref = byw[("diana_ref", "importance")]
  per_dataset = "; ".join(
    f"{c['dataset']}: DIANA/EF gap ratio {c['diana_over_ef']:.3g}, DCGD/EF {c['dcgd_over_ef']:.3g}"
    for c in checks
  )
  measured = (
    f"At equal bits ({first['per_step']['diana']:.0f} vs {first['per_step']['ef']:.0f} bits per "
    f"step per worker for induced(Top-{first['k']}, Rand-{first['k']}) and Top-{2 * first['k']}, "
    f"relative difference {c0['bits_relative_difference']:.2g}; budget {first['budget']:.4g} "
    "bits), "
    f"DIANA with the induced compressor {'matches or beats' if equal_ok else 'does not match'} EF "
    f"within {tolerance:.0%} ({per_dataset}; a ratio < 1 means induced is better; gaps are "
    f"floored at the float32 resolution {c0['resolution']:.2g}). "
    f"Under partial participation (p_i from {p_low:g} to {p_high:g}), DCGD-induced with importance "
    f"weights ends at gap {imp['tail_gap']:.3g} against {uni['tail_gap']:.3g} with the mean over "
    f"the participants (predicted stall {pp['predicted']:.3g}; one-step relative bias "
    f"{pp['bias']['importance']:.2g} vs {pp['bias']['uniform']:.2g}, Monte Carlo noise "
    f"{pp['noise']['importance']:.2g}). "
    f"`bc.diana` ends at {da['tail_gap']:.3g} with importance weights and {dr['tail_gap']:.3g} "
    f"with participating only, the reference DIANA with importance weights at "
    f"{ref['tail_gap']:.3g}."
  )
  columns = [
    ("part", "part", "{}"),
    ("dataset", "dataset", "{}"),
    ("method", "method / weighting", "{}"),
    ("bits_per_step", "bits/step", "{:.0f}"),
    ("lr", "lr", "{:g}"),
    ("steps_at_budget", "steps at budget", "{}"),
    ("gap_at_budget", "f − f* at budget", "{:.3g}"),
    ("vs_ef", "÷ EF Top-2k", "{:.3g}"),
    ("tail_gap", "final gap (tail mean)", "{:.3g}"),
    ("one_step_bias", "one-step rel. bias", "{:.2g}"),
    ("one_step_noise", "± MC s.e.", "{:.2g}"),
    ("predicted_stall", "predicted stall", "{:.3g}"),
  ]
  record = {
    "checks": checks,
    "bits_tolerance": BITS_TOLERANCE,
    "tolerance": tolerance,
    "equal_bits_holds": equal_ok,
    "participation_holds": pp_ok,
    "probabilities": pp["p"].tolist(),
    "uniform_weights": pp["weights"].tolist(),
    "predicted_stall": pp["predicted"],
    "one_step_bias": pp["bias"],
    "one_step_noise": pp["noise"],
    "equal_bits": [],
    "participation": [],
  }
  for part in parts:
    for key, r in part["best"].items():
      bits, gap = _downsample(np.asarray(r.curves["bits"]) / n, np.asarray(r.curves["gap"]))
      record["equal_bits"].append(
        {
          "dataset": part["rows"][0]["dataset"],
          "method": part["labels"][key],
          "lr": r.config.lr,
          "bits": bits,
          "gap": gap,
        }
      )
  for s in pp["settings"]:
    t, gap = _downsample(np.arange(len(s["curve"])), s["curve"])
    record["participation"].append({"method": s["label"], "lr": s["lr"], "step": t, "gap": gap})
  figures = {
    "equal_bits": _plot_equal_bits(parts, n),
    "participation": _plot_participation(pp, datasets[0]),
  }
  return _claims.Finding(verdict, measured, columns, rows, figures=figures, record=record)


def _plot_equal_bits(parts, n):
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5.5 * len(parts), 4.2))
  axes = np.atleast_1d(fig.subplots(1, len(parts)))
  styles = {
    "diana": ("C0", "-"),
    "dcgd": ("C0", "--"),
    "ef": ("C3", "-"),
    "ef21": ("C1", "-"),
    "ef_k": ("C3", ":"),
    "gd": ("k", "-"),
  }
  for ax, part in zip(axes, parts, strict=True):
    for key, r in part["best"].items():
      colour, ls = styles[key]
      bits = np.maximum(np.asarray(r.curves["bits"], np.float64) / n, 1.0)
      gap = np.maximum(np.asarray(r.curves["gap"], np.float64), 1e-12)
      ax.plot(
        bits, gap, color=colour, ls=ls, lw=1.3, label=f"{part['labels'][key]} (lr {r.config.lr:g})"
      )
    ax.axvline(part["budget"], color="grey", lw=0.8, ls="--", label="budget")
    floor = resolution(part["task"].f_star)
    ax.axhline(floor, color="grey", lw=0.8, ls=":", label="float32 resolution of f")
    ax.set_ylim(bottom=floor / 3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(left=max(1.0, part["budget"] * 1e-3), right=part["budget"] * 1.5)
    ax.set_xlabel("bits sent per worker")
    ax.set_ylabel("f(x) − f*")
    ax.set_title(f"{part['rows'][0]['dataset']}: d = {part['d']}, k = {part['k']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
  return fig


def _plot_participation(pp, dataset):
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6.5, 4.5))
  ax = fig.subplots()
  styles = {
    ("dcgd", "importance"): ("C0", "-"),
    ("dcgd", "uniform"): ("C3", "-"),
    ("diana", "importance"): ("C0", ":"),
    ("diana", "uniform"): ("C3", ":"),
    ("diana_ref", "importance"): ("C2", "--"),
  }
  for s in pp["settings"]:
    colour, ls = styles[(s["algorithm"], s["weighting"])]
    gap = np.maximum(s["curve"], 1e-12)
    ax.plot(
      np.arange(len(gap)), gap, color=colour, ls=ls, lw=1.2, label=f"{s['label']} (lr {s['lr']:g})"
    )
  ax.axhline(
    pp["predicted"], color="grey", lw=0.8, ls="--", label="predicted stall of the mean over S"
  )
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("f(x) − f* (mean over seeds)")
  ax.set_title(
    f"{dataset}: partial participation, p_i in [{pp['p'].min():.2g}, {pp['p'].max():.2g}]"
  )
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  return fig


CLAIM = _claims.Claim(
  name="induced_vs_ef",
  number=5,
  title="The induced compressor, a better alternative to error feedback",
  paper=(
    "Horváth, Richtárik, A Better Alternative to Error Feedback for Communication-Efficient "
    "Distributed Learning, ICLR 2021, https://arxiv.org/abs/2006.11077"
  ),
  statement=(
    "The induced compressor C1(x) + C2(x − C1(x)) (C1 biased, C2 unbiased) is unbiased, so "
    "methods for unbiased compressors (DCGD, DIANA, partial participation) apply to it; at equal "
    "bits it matches or beats error feedback with the biased compressor, and under partial "
    "participation the importance weights 1/(n p_i) keep the aggregate unbiased."
  ),
  options={
    "datasets": _claims.Option(
      ("breast_cancer",),
      "bundled binary data sets (participation runs on the first)",
      full=("breast_cancer", "digits_binary", "wine_binary"),
    ),
    "num_workers": _claims.Option(8, "n workers"),
    "ratio": _claims.Option(0.1, "k/d of Top-k and Rand-k in the induced compressor"),
    "steps": _claims.Option(1000, "steps of the matched methods", full=5000),
    "lrs": _claims.Option((0.1, 0.3, 1.0, 3.0, 10.0, 30.0), "step-size grid (equal bits)"),
    "pp_steps": _claims.Option(2000, "steps under partial participation", full=10000),
    "pp_lrs": _claims.Option((0.03, 0.1, 0.3, 1.0, 3.0), "step-size grid (participation)"),
    "pp_seeds": _claims.Option(3, "seeds under partial participation", full=10),
    "p_low": _claims.Option(0.2, "smallest participation probability"),
    "p_high": _claims.Option(0.9, "largest participation probability"),
    "tolerance": _claims.Option(0.1, "relative tolerance of 'matches EF' at equal bits"),
  },
  study=induced_vs_ef,
)
