"""Claim 2: distributed GD with Top-k and no error feedback can diverge; error feedback fixes it.

Beznosikov et al. show that distributed compressed GD with a biased compressor can diverge
on a heterogeneous problem whose every f_i is strongly convex, and that error feedback
repairs it. The study runs the library's 3-worker Top-1 example (README, "Why error
feedback") at several step sizes next to its exact growth rate 1 + 5 lr, and two random
families of heterogeneous quadratics, where the growth rate DCGD should have is predicted
from the Top-k supports it settles on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import biased_compression as bc
from biased_compression.experiments import _output
from biased_compression.experiments import _tasks
from biased_compression.studies import _claims

__all__ = [
  "CLAIM",
  "EXAMPLE_A",
  "FAMILIES",
  "divergence_without_ef",
  "example_hessians",
  "family",
  "predicted_rate",
]

PAPER = (
  "Beznosikov, Horváth, Richtárik, Safaryan, On Biased Compression for Distributed Learning, "
  "2023 (JMLR 24(276)), https://arxiv.org/abs/2002.12410"
)

# a_1 = (-4, 3, 3) and its cyclic shifts: at x = t(1, 1, 1) worker i's largest gradient entry
# is its own coordinate, -15t, so the mean of the Top-1 messages is -5t(1, 1, 1)
EXAMPLE_A = np.array([[-4.0, 3, 3], [3, -4, 3], [3, 3, -4]])
METHODS = ("dcgd", "ef", "ef21")
FAMILIES = ("perturbed", "gaussian")
# a run converged if its final norm is below this fraction of its initial norm (EF21's
# float32 floor, where its estimates g_i stop resolving the gradient, is ~1e-7 of it)
_CONVERGED = 1e-3
# measured and predicted growth rates agree if within this relative error
_MATCH = 1e-3
# a growth rate within this of 1 is a stall (float32 resolution of ||x_{t+w}|| / ||x_t||)
_STALL = 1e-5
# the longest cycle of Top-k supports looked for at the end of a run
_MAX_PERIOD = 12


def example_hessians(a: np.ndarray = EXAMPLE_A) -> np.ndarray:
  r"""The Hessians H_i = 2 a_i a_i^T + I of f_i(x) = <a_i, x>^2 + ||x||^2 / 2, shape (n, d, d)."""
  a = np.asarray(a, np.float64)
  return 2.0 * np.einsum("ij,ik->ijk", a, a) + np.eye(a.shape[1])


def family(
  kind: str, instances: int, workers: int, dim: int, *, noise: float = 0.5, seed: int = 0
) -> np.ndarray:
  r"""Random heterogeneous quadratics f_i(x) = 1/2 x^T H_i x, H_i = 2 a_i a_i^T + I (x* = 0).

  ``"perturbed"``: a_i = 3 * 1 - 7 e_{i mod d} + ``noise`` * xi_i, the example's vectors
  generalised to n workers in d dimensions and perturbed by Gaussian xi_i. ``"gaussian"``:
  a_i = xi_i, no structure. Every f_i is 1-strongly convex, so is the mean.

  Returns:
    The Hessians, shape (instances, workers, dim, dim), float64.
  """
  rng = np.random.default_rng(seed)
  xi = rng.standard_normal((instances, workers, dim))
  if kind == "perturbed":
    base = 3.0 * np.ones((workers, dim))
    base[np.arange(workers), np.arange(workers) % dim] -= 7.0
    a = base + noise * xi
  elif kind == "gaussian":
    a = xi
  else:
    raise ValueError(f"family: kind must be one of {FAMILIES}, got {kind!r}")
  return 2.0 * np.einsum("sij,sik->sijk", a, a) + np.eye(dim)


def _transform(method: str, k: int):
  c = bc.top_k(k=k)
  if method == "dcgd":
    return bc.compress(c, axis_name="workers")
  if method == "ef":
    return bc.error_feedback(c, axis_name="workers")
  return bc.ef21(c, axis_name="workers")


@functools.partial(jax.jit, static_argnames=("method", "k", "steps"))
def _runs(h, lr, x0, *, method, k, steps):
  """log ||x_t|| (t = 1..steps) and worker i's Top-k support at x_t (t = 0..steps-1), for one
  problem h (n, d, d), under `jax.vmap` over (h, lr, x0) by the caller.

  DCGD with Top-k is positively homogeneous (T(c x) = c T(x), c > 0, and the transformation
  keeps no state that scales), so its x is renormalised every step and log ||x|| summed:
  the same trajectory up to scale, without overflow when it diverges (or underflow when it
  converges). EF and EF21 carry x-scaled state and converge, so they run as they are.
  """
  n = h.shape[0]
  tx = optax.chain(optax.sgd(lr), _transform(method, k))
  workers = bc.simulate(tx, n, axis_name="workers")
  renormalise = method == "dcgd"

  def body(carry, _):
    x, state, log_norm = carry
    g = h @ x  # worker i's gradient is H_i x
    support = jax.lax.top_k(jnp.abs(g), k)[1]  # the entries Top-k keeps (same tie rule)
    updates, state = workers.update(g, state, x)
    x = x + updates
    norm = jnp.linalg.norm(x)
    if renormalise:
      log_norm = log_norm + jnp.log(norm)
      x = x / jnp.where(norm > 0, norm, 1.0)
    else:
      log_norm = jnp.log(norm)
    return (x, state, log_norm), (log_norm, support)

  start = (x0, workers.init(x0), jnp.log(jnp.linalg.norm(x0)))
  _, (log_norms, supports) = jax.lax.scan(body, start, None, length=steps)
  return log_norms, supports


def _batch(h, lr, x0, method, k, steps):
  fn = jax.vmap(functools.partial(_runs, method=method, k=k, steps=steps))
  log_norms, supports = fn(
    jnp.asarray(h, jnp.float32), jnp.asarray(lr, jnp.float32), jnp.asarray(x0, jnp.float32)
  )
  return np.asarray(log_norms, np.float64), np.asarray(supports)


def predicted_rate(
  h: np.ndarray, lr: float, supports: np.ndarray, log_norms: np.ndarray, window: int
) -> dict[str, Any]:
  r"""DCGD's measured growth of ||x|| at the end of a run and the rate its supports predict.

  With worker i's Top-k support S_i (P_i the projection on it) fixed, one step is linear,
  x <- (I - lr M) x, M = (1/n) sum_i P_i H_i. If the supports repeat with period p over the
  last ``window`` steps (p = 1: they stabilised), ||x|| grows by the spectral radius
  rho(prod_j (I - lr M_j))^(1/p) per step, the product over one period. The measured rate is
  (||x_T|| / ||x_{T-w}||)^(1/w), w the largest multiple of p up to ``window``.

  Args:
    h: (n, d, d) Hessians.
    lr: the step size.
    supports: (T, n, k) the supports at each step.
    log_norms: (T,) log ||x_t|| after each step.
    window: how many final steps to check.

  Returns:
    ``period`` (None if no period up to min(12, window/2) fits), ``measured``,
    ``predicted`` (NaN without a period).
  """
  steps = supports.shape[0]
  window = min(window, steps - 1)
  tail = supports[steps - window :]
  period = None
  # at least two full periods in the window, so a repeat is seen, not assumed
  for p in range(1, min(_MAX_PERIOD, window // 2) + 1):
    if np.array_equal(tail[p:], tail[:-p]):
      period = p
      break
  w = window if period is None else max(period, window - window % period)
  measured = math.exp((log_norms[-1] - log_norms[-1 - w]) / w)
  if period is None:
    return {"period": None, "measured": measured, "predicted": math.nan}
  n, d = h.shape[0], h.shape[-1]
  product = np.eye(d)
  for s in supports[steps - period :]:
    mask = np.zeros((n, d))
    np.put_along_axis(mask, s, 1.0, axis=1)
    m = (mask[:, :, None] * h).mean(0)
    product = (np.eye(d) - lr * m) @ product
  rho = float(np.abs(np.linalg.eigvals(product)).max())
  return {"period": period, "measured": measured, "predicted": rho ** (1.0 / period)}


def _check(step_sizes, steps, instances, dim, workers, k, noise, seed):
  for name, value in (
    ("steps", steps),
    ("instances", instances),
    ("dim", dim),
    ("workers", workers),
    ("k", k),
  ):
    _tasks._check_int("divergence_without_ef", name, value, 1)
  if steps < 8:
    raise ValueError(f"divergence_without_ef: steps must be at least 8, got {steps!r}")
  if k >= dim:
    raise ValueError(f"divergence_without_ef: k must be below dim={dim}, got {k!r}")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"divergence_without_ef: seed must be an int, got {seed!r}")
  if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
    raise ValueError(f"divergence_without_ef: noise must be a number >= 0, got {noise!r}")
  if (
    isinstance(step_sizes, str)
    or not step_sizes
    or not all(
      isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
      for s in step_sizes
    )
  ):
    raise ValueError(
      f"divergence_without_ef: step_sizes must be positive numbers (in units of 1/L), got "
      f"{step_sizes!r}"
    )


def divergence_without_ef(
  *,
  step_sizes: Sequence[float] = (0.05, 0.1, 0.2),
  steps: int = 3000,
  instances: int = 32,
  dim: int = 3,
  workers: int = 3,
  k: int = 1,
  noise: float = 0.5,
  seed: int = 0,
  show_progress: bool = True,
) -> _claims.Finding:
  r"""Distributed GD with Top-k: divergence without error feedback, convergence with it.

  **The example.** Three workers, f_i(x) = <a_i, x>^2 + ||x||^2 / 2 with a_1 = (-4, 3, 3)
  and its cyclic shifts, x0 = (1, 1, 1). The mean Hessian is positive definite (x* = 0), but
  at x = t(1, 1, 1) worker i's gradient is t(2 <a_i, 1> a_i + 1) = t(13, 13, 13) - 28t e_i,
  whose largest entry is its own -15t, so the mean of the Top-1 messages is -5t(1, 1, 1):

  .. math::
    x_{t+1} = (1 + 5\,lr)\, x_t \quad \text{for every } lr > 0.

  DCGD (``bc.compress(bc.top_k(k=1))``), EF (``bc.error_feedback``) and EF21 (``bc.ef21``)
  run under ``bc.simulate(optax.chain(optax.sgd(lr), ...), 3, axis_name="workers")`` at each
  lr = s / L (s in ``step_sizes``, L the mean Hessian's largest eigenvalue), one jitted
  `jax.lax.scan` per method vmapped over the step sizes. Measured: DCGD's growth
  (||x_T|| / ||x_{T-w}||)^(1/w) over the last quarter w of the run, and EF's and EF21's final
  ||x_T|| / ||x_0|| and rate.

  **The families.** ``instances`` random problems of ``workers`` workers in ``dim``
  dimensions, f_i(x) = 1/2 x^T H_i x, H_i = 2 a_i a_i^T + I (common minimiser x* = 0):
  ``perturbed`` a_i = 3 * 1 - 7 e_i + ``noise`` * xi_i (the example generalised and
  perturbed) and ``gaussian`` a_i = xi_i (`family`), at lr = 0.1 / L, x0 Gaussian. Once the
  Top-k supports S_i repeat (period p, found in the last quarter), DCGD is linear,
  x <- (I - lr M) x with M = (1/n) sum_i P_i H_i, and ||x|| grows by
  rho(prod over a period of (I - lr M_j))^(1/p) per step (`predicted_rate`), compared with
  the measured growth; EF and EF21 run on every instance.

  An instance diverges if its measured growth exceeds 1 + 1e-5 and stalls if it is within
  1e-5 of 1 (DCGD stops at a point x != x* where the kept entries' mean vanishes, e.g. every
  worker keeps the same coordinate); the supports may also never repeat (a quasi-periodic
  sequence), where no finite product predicts the rate: those are counted and reported.

  Verdict: ``reproduced`` if the example's measured growth equals 1 + 5 lr within 1e-3
  relative and exceeds 1 at every step size while EF and EF21 converge there (final norm
  below 1e-3 of the initial), and on the families at least one instance diverges, every
  diverging instance whose supports repeat has its measured rate within 1e-3 relative of the
  predicted one, and EF converges on every instance; ``partly`` if the example holds but the
  families do not; ``not reproduced`` if the example fails.

  Args:
    step_sizes: the example's step sizes, in units of 1/L.
    steps: steps per run.
    instances: random problems per family.
    dim: the families' dimension d.
    workers: the families' number of workers n.
    k: Top-k's k in the families (the example uses Top-1).
    noise: the perturbation of the ``perturbed`` family.
    seed: seeds the families and their starting points.
    show_progress: a progress bar (on a terminal).

  Returns:
    The `Finding`: rows per example step size (measured and predicted growth, EF and EF21
    final norms) and per family (fraction diverging, with repeating supports, matching the
    prediction; EF's and EF21's convergence), ||x_t|| curves and the measured-vs-predicted
    scatter as figures.

  Raises:
    ValueError: for a bad option.

  References:
    Beznosikov, Horváth, Richtárik, Safaryan, On Biased Compression for Distributed
    Learning, 2023, https://arxiv.org/abs/2002.12410 (the divergence example of Top-1
    without error feedback).
  """
  _check(step_sizes, steps, instances, dim, workers, k, noise, seed)
  window = max(steps // 4, 2)
  bar = _output.progress(total=len(METHODS) * (1 + len(FAMILIES)), disable=not show_progress)
  h = example_hessians()
  lip = float(np.linalg.eigvalsh(h.mean(0)).max())
  lrs = np.array([s / lip for s in step_sizes])
  x0 = np.ones((len(lrs), 3))
  hs = np.broadcast_to(h, (len(lrs), *h.shape))
  example = {}
  for method in METHODS:
    bar.set_postfix_str(f"example {method}")
    example[method] = _batch(hs, lrs, x0, method, 1, steps)[0]
    bar.update(1)
  rows, curves = [], {}
  log0 = math.log(math.sqrt(3.0))
  example_ok = True
  for j, (s, lr) in enumerate(zip(step_sizes, lrs, strict=True)):
    dcgd = example["dcgd"][j]
    measured = math.exp((dcgd[-1] - dcgd[-1 - window]) / window)
    predicted = 1.0 + 5.0 * lr
    row = {
      "setting": f"example, lr = {s:g}/L",
      "lr": float(lr),
      "measured": measured,
      "predicted": predicted,
      "rel_error": abs(measured / predicted - 1.0),
      "dcgd_log10_growth": (dcgd[-1] - log0) / math.log(10.0),
    }
    for method in ("ef", "ef21"):
      curve = example[method][j]
      row[f"{method}_final"] = math.exp(curve[-1] - log0)
      row[f"{method}_rate"] = math.exp((curve[-1] - log0) / steps)
    ok = (
      row["rel_error"] <= _MATCH
      and measured > 1.0
      and row["ef_final"] < _CONVERGED
      and row["ef21_final"] < _CONVERGED
    )
    row["as_claimed"] = ok
    example_ok &= ok
    rows.append(row)
    curves[f"{s:g}"] = {m: example[m][j].tolist() for m in METHODS}

  rng = np.random.default_rng(seed + 1)
  families_ok = True
  any_diverge = False
  scatter = {}
  for kind in FAMILIES:
    hf = family(kind, instances, workers, dim, noise=noise, seed=seed)
    lip_f = np.linalg.eigvalsh(hf.mean(1)).max(-1)
    lr_f = 0.1 / lip_f
    x0_f = rng.standard_normal((instances, dim))
    runs = {}
    for method in METHODS:
      bar.set_postfix_str(f"{kind} {method}")
      runs[method] = _batch(hf, lr_f, x0_f, method, k, steps)
      bar.update(1)
    log_norms, supports = runs["dcgd"]
    per = [
      predicted_rate(hf[i], lr_f[i], supports[i], log_norms[i], window) for i in range(instances)
    ]
    measured = np.array([p["measured"] for p in per])
    predicted = np.array([p["predicted"] for p in per])
    periodic = np.array([p["period"] is not None for p in per])
    with np.errstate(invalid="ignore"):
      rel = np.abs(measured / predicted - 1.0)
    match = periodic & (rel <= _MATCH)
    diverge = measured > 1.0 + _STALL
    top = int(np.argmax(np.where(periodic, measured, -np.inf)))
    stall = np.abs(measured - 1.0) <= _STALL
    start = np.log(np.linalg.norm(x0_f, axis=1))
    final = {m: np.exp(runs[m][0][:, -1] - start) for m in ("ef", "ef21")}
    conv = {m: final[m] < _CONVERGED for m in final}
    row = {
      "setting": f"{kind} family, {instances} instances, n = {workers}, d = {dim}, Top-{k}",
      "lr": "0.1/L",
      # the periodic instance that grows fastest: its measured and predicted growth
      "measured": float(measured[top]) if periodic.any() else math.nan,
      "predicted": float(predicted[top]) if periodic.any() else math.nan,
      "max_growth": float(measured.max()),
      "rel_error": float(np.max(rel[periodic])) if periodic.any() else math.nan,
      "diverging": float(diverge.mean()),
      "stalled": float(stall.mean()),
      "periodic": float(periodic.mean()),
      "matching": float(match.mean()),
      "diverging_periodic": float(periodic[diverge].mean()) if diverge.any() else math.nan,
      "diverging_matching": (
        float(match[diverge & periodic].mean()) if (diverge & periodic).any() else math.nan
      ),
      "ef_final": float(final["ef"].max()),
      "ef21_final": float(final["ef21"].max()),
      "ef_converged": float(conv["ef"].mean()),
      "ef21_converged": float(conv["ef21"].mean()),
    }
    # the prediction exists only where the supports repeat: an aperiodic sequence (an
    # irrational rotation of supports) is reported, not counted against the claim
    ok = bool(match[diverge & periodic].all() and conv["ef"].all())
    row["as_claimed"] = ok
    families_ok &= ok
    any_diverge |= bool(diverge.any())
    rows.append(row)
    scatter[kind] = {
      "measured": measured.tolist(),
      "predicted": predicted.tolist(),
      "period": [p["period"] for p in per],
      "ef_final": final["ef"].tolist(),
      "ef21_final": final["ef21"].tolist(),
    }
  bar.close()

  ex = rows[: len(step_sizes)]
  fam = {r["setting"].split()[0]: r for r in rows[len(step_sizes) :]}
  measured_text = (
    "The 3-worker Top-1 example: without error feedback ||x|| grows by "
    + ", ".join(f"{r['measured']:.6f}" for r in ex)
    + " per step at lr = "
    + ", ".join(f"{s:g}" for s in step_sizes)
    + f"/L, against 1 + 5 lr (largest relative error {max(r['rel_error'] for r in ex):.1e}); "
    f"with EF and EF21 the final ||x_T||/||x_0|| after {steps} steps is at most "
    f"{max(max(r['ef_final'], r['ef21_final']) for r in ex):.1e}. "
  )
  for kind, r in fam.items():
    share = r["matching"] / max(r["periodic"], 1e-9)
    measured_text += (
      f"{kind.capitalize()} family ({instances} instances): DCGD diverges on "
      f"{r['diverging']:.0%} and stalls at a non-optimal point on {r['stalled']:.0%}; its "
      f"Top-{k} supports repeat on {r['periodic']:.0%} of the instances and there the "
      f"predicted growth matches the measured one on {share:.0%} "
      f"(worst relative error {r['rel_error']:.1e}); EF converges on "
      f"{r['ef_converged']:.0%}, EF21 on {r['ef21_converged']:.0%}. "
    )
  if not example_ok:
    verdict = "not reproduced"
  elif not (families_ok and any_diverge):
    verdict = "partly"
  else:
    verdict = "reproduced"
  columns = [
    ("setting", "setting", "{}"),
    ("measured", "DCGD growth", "{:.6f}"),
    ("predicted", "predicted", "{:.6f}"),
    ("rel_error", "rel. error", "{:.1e}"),
    ("diverging", "diverging", "{:.0%}"),
    ("stalled", "stalled", "{:.0%}"),
    ("diverging_periodic", "diverging: supports repeat", "{:.0%}"),
    ("diverging_matching", "of those, predicted", "{:.0%}"),
    ("ef_final", "EF ‖x_T‖/‖x_0‖ (max)", "{:.1e}"),
    ("ef21_final", "EF21 ‖x_T‖/‖x_0‖ (max)", "{:.1e}"),
    ("ef_converged", "EF converged", "{:.0%}"),
    ("as_claimed", "as claimed", "{}"),
  ]
  return _claims.Finding(
    verdict=verdict,
    measured=measured_text.strip(),
    columns=columns,
    rows=rows,
    figures=_figures(step_sizes, lrs, curves, scatter, steps),
    record={"L": lip, "example_log_norms": curves, "families": scatter},
  )


def _figures(step_sizes, lrs, curves, scatter, steps):
  from matplotlib.figure import Figure

  norms = Figure(figsize=(6.5, 4.5))
  ax = norms.subplots()
  j = len(step_sizes) // 2
  s, lr = step_sizes[j], lrs[j]
  t = np.arange(1, steps + 1)
  labels = {"dcgd": "DCGD (no EF)", "ef": "EF", "ef21": "EF21"}
  for m in METHODS:
    ax.plot(t, np.exp(np.array(curves[f"{s:g}"][m])), lw=1.5, label=labels[m])
  ax.plot(t, math.sqrt(3.0) * (1 + 5 * lr) ** t, "k--", lw=1, label="predicted (1 + 5 lr)^t")
  ax.set_yscale("log")
  ax.set_xlabel("step t")
  ax.set_ylabel("‖x_t‖")
  ax.set_title(f"3 workers, Top-1, lr = {s:g}/L")
  ax.legend(fontsize=8)

  rates = Figure(figsize=(5.5, 4.5))
  ax = rates.subplots()
  lo, hi = math.inf, -math.inf
  for kind, marker in zip(FAMILIES, "os", strict=True):
    p = np.array(scatter[kind]["predicted"], np.float64)
    m = np.array(scatter[kind]["measured"], np.float64)
    ok = np.isfinite(p)
    ax.scatter(
      p[ok], m[ok], marker=marker, s=18, label=f"{kind} ({ok.sum()} with periodic supports)"
    )
    if ok.any():
      lo, hi = min(lo, p[ok].min(), m[ok].min()), max(hi, p[ok].max(), m[ok].max())
  if math.isfinite(lo):
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
  ax.axhline(1.0, color="grey", lw=0.8)
  ax.set_xlabel("predicted growth ρ(∏(I − lr M_j))^(1/p)")
  ax.set_ylabel("measured growth of ‖x‖ per step")
  ax.set_title("DCGD with Top-k on random heterogeneous quadratics")
  ax.legend(fontsize=7)
  return {"norms": norms, "rates": rates}


CLAIM = _claims.Claim(
  name="divergence_without_ef",
  number=2,
  title="Top-k without error feedback can diverge",
  paper=PAPER,
  statement=(
    "Distributed GD with a biased compressor (Top-1) and no error feedback can diverge on a "
    "heterogeneous problem even though each f_i is strongly convex; error feedback fixes it."
  ),
  options={
    "step_sizes": _claims.Option((0.05, 0.1, 0.2), "the example's step sizes, times 1/L"),
    "steps": _claims.Option(3000, "steps per run", full=20000),
    "instances": _claims.Option(32, "random problems per family", full=512),
    "dim": _claims.Option(3, "the families' dimension", full=8),
    "workers": _claims.Option(3, "the families' number of workers", full=8),
    "k": _claims.Option(1, "Top-k's k in the families"),
    "noise": _claims.Option(0.5, "the perturbed family's noise"),
    "seed": _claims.Option(0, "seed of the families"),
  },
  study=divergence_without_ef,
)
