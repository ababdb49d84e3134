r"""Claim 6: unbiased compression makes DCSGD fragile to large, heavy-tailed gradient noise;
DSignSGD stays robust.

The study, `heavy_tailed_noise`, trains a noisy quadratic on n simulated workers with
uncompressed DSGD, DCSGD under unbiased compressors and DSignSGD, for gradient noise of
growing scale, Gaussian and Student-t, and compares the final losses. The helpers
`_problem`, `_noise` and `_tail_loss` are shared with claim 7 (`_scaling_rules`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import biased_compression as bc
from biased_compression.experiments import _output
from biased_compression.experiments import _tasks
from biased_compression.studies import _claims

__all__ = ["CLAIM", "heavy_tailed_noise"]

PAPER = (
  "Compagnoni, Islamov, Proske, Lucchi, Unbiased and Sign Compression in Distributed "
  "Learning: Comparing Noise Resilience via SDEs, AISTATS 2025, "
  "[arXiv:2502.17009](https://arxiv.org/abs/2502.17009)"
)
AXIS = "workers"
SIGN_METHODS = ("mean", "majority_vote")
TUNINGS = ("per_method", "per_setting")


def _problem(dim: int, seed: int, mu: float = 0.1) -> tuple[jax.Array, jax.Array]:
  """The quadratic f(x) = 1/2 sum_j h_j (x_j - x*_j)^2: curvatures h log-spaced in [mu, 1]
  (L = 1) and a minimiser x* ~ N(0, I) drawn from ``seed``; training starts at 0."""
  h = jnp.logspace(math.log10(mu), 0.0, dim, dtype=jnp.float32)
  x_star = jax.random.normal(jax.random.key(seed), (dim,), jnp.float32)
  return h, x_star


def _loss(h: jax.Array, x_star: jax.Array, x: jax.Array) -> jax.Array:
  return 0.5 * jnp.sum(h * (x - x_star) ** 2, axis=-1)


def _noise(key: jax.Array, df: float, shape: tuple[int, ...]) -> jax.Array:
  """Standard Gaussian (``df == 0``) or standard Student-t noise with ``df`` degrees.

  For an integer ``df`` the t variable is drawn as z / sqrt(chi2/df) with chi2 a sum of df
  squared normals (exact, and about 50x faster on CPU than ``jax.random.t``, whose gamma
  draws dominate the study's time); other ``df`` use ``jax.random.t``.
  """
  if df == 0:
    return jax.random.normal(key, shape, jnp.float32)
  if float(df).is_integer():
    nu = int(df)
    zs = jax.random.normal(key, (nu + 1, *shape), jnp.float32)
    chi2 = jnp.sum(zs[1:] ** 2, axis=0)
    # chi2 == 0 has probability 0 but float32 can round a tiny value to 0: keep it finite
    return zs[0] * jax.lax.rsqrt(jnp.maximum(chi2 / nu, 1e-30))
  return jax.random.t(key, df, shape, jnp.float32)


def _parse_noise(name: str) -> float:
  """``"gaussian"`` -> 0; ``"t<nu>"`` (``"t1"``, ``"t2.5"``) -> nu > 0."""
  if name == "gaussian":
    return 0.0
  if isinstance(name, str) and name.startswith("t"):
    try:
      nu = float(name[1:])
    except ValueError:
      nu = math.nan
    if math.isfinite(nu) and nu > 0:
      return nu
  raise ValueError(
    f"heavy_tailed_noise: noises must be 'gaussian' or 't<nu>' with nu > 0 (e.g. 't1', "
    f"'t2.5'), got {name!r}"
  )


def _tail_loss(losses: np.ndarray, axis: int = 0) -> np.ndarray:
  """The mean loss over the last tenth of the steps (``axis``); a non-finite loss anywhere in
  that window (a diverged run) gives +inf, never NaN."""
  losses = np.asarray(losses, np.float64)
  t = losses.shape[axis]
  tail = np.take(losses, np.arange(t - max(1, t // 10), t), axis=axis)
  with np.errstate(over="ignore", invalid="ignore"):
    mean = np.mean(np.where(np.isfinite(tail), tail, np.inf), axis=axis)
  return np.where(np.isfinite(mean), mean, np.inf)


def _method_tx(kind: str, compressor: bc.Compressor, sign_method: str, seed: Any = 0):
  """DSignSGD (``kind == "sign"``: the mean of the signs, or their majority vote) or
  DCSGD / DSGD with ``compressor``: the aggregate of the workers' messages."""
  if kind == "sign":
    method = "auto" if sign_method == "mean" else sign_method  # auto: the exact mean
    return bc.compress(bc.sign(), axis_name=AXIS, method=method, seed=seed)
  return bc.compress(compressor, axis_name=AXIS, seed=seed)


def _run_method(
  kind: str,
  compressor: bc.Compressor,
  sign_method: str,
  *,
  h: jax.Array,
  x_star: jax.Array,
  lrs: np.ndarray,
  scales: np.ndarray,
  dfs: Sequence[float],
  seeds: int,
  workers: int,
  steps: int,
  seed: int,
) -> np.ndarray:
  """Losses per step of one method on every (noise, scale, seed, lr): (steps, nz, ns, nseed,
  nlr). One jitted ``lax.scan`` over the steps; the n workers under ``bc.simulate``, every
  setting in one ``vmap``. The noise of a step is drawn once per (noise, seed) and shared by
  every scale and learning rate (common random numbers: the curves differ by the method's
  parameters only)."""
  program = _program(
    kind, compressor, sign_method, tuple(dfs), len(scales), seeds, len(lrs), workers, steps
  )
  out = program(
    jax.random.key(seed),
    jnp.asarray(lrs, jnp.float32),
    jnp.asarray(scales, jnp.float32),
    h,
    x_star,
    jnp.int32(seed),
  )
  return np.asarray(out)


@functools.cache
def _program(kind, compressor, sign_method, dfs, ns, seeds, nl, workers, steps):
  """The jitted program of `_run_method` (cached: reruns with other rates, scales, seeds or
  tunings reuse the compilation)."""
  nz = len(dfs)
  shape = (nz, ns, seeds, nl)
  m = int(np.prod(shape))
  sim = bc.simulate(_method_tx(kind, compressor, sign_method), workers, axis_name=AXIS)
  update = jax.vmap(sim.update, in_axes=(0, 0, None))

  @jax.jit
  def program(key, lrs, scales, h, x_star, seed):
    d = h.shape[0]
    x0 = jnp.zeros(d, jnp.float32)
    # each seed its own compressor randomness (the same across scales and rates)
    comp_seeds = jnp.broadcast_to(
      (seed * 1009 + jnp.arange(seeds))[None, None, :, None], shape
    ).reshape(m)
    # the seed only sets the state's key: ``update`` (built with seed 0) runs any of them
    state = jax.vmap(
      lambda s: bc.simulate(_method_tx(kind, compressor, sign_method, s), workers).init(x0)
    )(comp_seeds)
    x = jnp.zeros((*shape, d), jnp.float32)
    lr = lrs[None, None, None, :, None]
    sigma = scales[None, :, None, None, None, None]

    def step(carry, k):
      x, state = carry
      keys = jax.random.split(k, nz)
      z = jnp.stack([_noise(keys[i], dfs[i], (seeds, workers, d)) for i in range(nz)])
      # (nz, 1, seeds, 1, n, d) * sigma: the noise of every worker, shared by the rates
      grads = (h * (x - x_star))[..., None, :] + sigma * z[:, None, :, None]
      u, state = update(grads.reshape(m, workers, d), state, x0)
      x = x - lr * u.reshape(*shape, d)
      return (x, state), _loss(h, x_star, x)

    _, losses = jax.lax.scan(step, (x, state), jax.random.split(key, steps))
    return losses

  return program


def _check_options(
  *,
  dim: int,
  workers: int,
  steps: int,
  seeds: int,
  scales: Sequence[float],
  noises: Sequence[str],
  compressors: Sequence[str],
  lrs: Sequence[float],
  sign_method: str,
  tuning: str,
) -> tuple[list[float], list[bc.Compressor]]:
  fn = "heavy_tailed_noise"
  for name, value, low in (
    ("dim", dim, 2),
    ("workers", workers, 1),
    ("steps", steps, 1),
    ("seeds", seeds, 1),
  ):
    _tasks._check_int(fn, name, value, low)
  for name, values, least in (("scales", scales, 2), ("lrs", lrs, 1)):
    if (
      not isinstance(values, (tuple, list))
      or len(values) < least
      or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
        for v in values
      )
      or len(set(values)) != len(values)
    ):
      raise ValueError(
        f"{fn}: {name} must be a tuple of at least {least} distinct finite numbers > 0, "
        f"got {values!r}"
      )
  if not isinstance(noises, (tuple, list)) or not noises or len(set(noises)) != len(noises):
    raise ValueError(f"{fn}: noises must be a non-empty tuple of distinct names, got {noises!r}")
  dfs = [_parse_noise(n) for n in noises]
  if not isinstance(compressors, (tuple, list)) or not compressors:
    raise ValueError(
      f"{fn}: compressors must be a non-empty tuple of unbiased compressor specs, "
      f"got {compressors!r}"
    )
  parsed = []
  for spec in compressors:
    try:
      c = bc.parse_compressor(spec)
    except (ValueError, TypeError) as e:
      raise ValueError(f"{fn}: compressors: {spec!r} is not a compressor ({e})") from None
    if not c.unbiased:
      raise ValueError(
        f"{fn}: compressors must be unbiased (the claim is about DCSGD with unbiased "
        f"compression), got {spec!r}"
      )
    parsed.append(c)
  if sign_method not in SIGN_METHODS:
    raise ValueError(f"{fn}: sign_method must be one of {SIGN_METHODS}, got {sign_method!r}")
  if tuning not in TUNINGS:
    raise ValueError(f"{fn}: tuning must be one of {TUNINGS}, got {tuning!r}")
  return dfs, parsed


def _growth(low: float, high: float) -> float:
  """high / low, +inf when high diverged or low is 0 (never NaN)."""
  if not math.isfinite(high):
    return math.inf
  return high / low if low > 0 else math.inf


def heavy_tailed_noise(
  *,
  dim: int = 64,
  workers: int = 8,
  steps: int = 300,
  seeds: int = 4,
  scales: tuple = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
  noises: tuple = ("gaussian", "t1", "t2", "t3"),
  compressors: tuple = ("rand_k(0.25)", "natural_dithering(3)", "standard_dithering(4)"),
  lrs: tuple = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
  sign_method: str = "mean",
  tuning: str = "per_method",
  seed: int = 0,
  show_progress: bool = True,
) -> _claims.Finding:
  r"""DSGD, DCSGD (unbiased compressors) and DSignSGD under growing Gaussian and Student-t
  gradient noise: the final loss against the noise scale.

  The problem is the quadratic f(x) = 1/2 sum_j h_j (x_j - x*_j)^2 in ``dim`` dimensions,
  curvatures h_j log-spaced in [0.1, 1], x* ~ N(0, I), started at x_0 = 0. Each of the
  ``workers`` workers gets, at every step, g_i = grad f(x) + sigma z_i with z_i i.i.d.
  standard Gaussian (``"gaussian"``) or standard Student-t with nu degrees of freedom
  (``"t<nu>"``: nu = 1 is Cauchy, nu <= 2 has infinite variance, nu <= 1 no mean); sigma runs
  over ``scales``. The methods (n workers under `biased_compression.simulate`, one
  ``bc.compress`` over the worker axis):

  * DSGD: x <- x - eta (1/n) sum_i g_i (``bc.identity()``);
  * DCSGD: x <- x - eta (1/n) sum_i C_i(g_i), one line per unbiased C in ``compressors``;
  * DSignSGD: x <- x - eta (1/n) sum_i sign(g_i) (``sign_method="mean"``), or
    x <- x - eta sign(sum_i sign(g_i)) (``"majority_vote"``, signSGD with majority vote).

  For linear dynamics the stationary loss of DCSGD grows like
  eta (1 + omega) sigma^2 / n (infinite for nu <= 2), while each coordinate of a DSignSGD
  step is at most eta whatever the noise: its loss is bounded by what a random walk of
  ``steps`` steps of size eta can reach.

  The final loss of a run is the mean of f over the last tenth of the steps, averaged over
  ``seeds`` seeds; a run whose loss is not finite counts as +inf (diverged). Under Cauchy
  noise the expected loss of DSGD / DCSGD is infinite: their measured mean is set by the
  largest draws of the run and grows with the steps and seeds. Step sizes:
  every method runs every rate of ``lrs`` (all settings in one ``vmap``); ``tuning``
  picks, for each method, ``"per_method"``: the rate with the lowest final loss at the
  smallest scale of the Gaussian noise (of the first noise without one), kept for every
  noise and scale, as a tuned recipe meets noisier gradients; or ``"per_setting"``: the
  best rate for every (noise, scale), an oracle that lets every method slow down.

  Verdict. A noise counts as heavy-tailed when it is a Student-t. For each one, DSignSGD
  *wins* when, at the largest scale, its final loss is below that of DCSGD with every
  compressor, and its growth (final loss at the largest scale over the smallest) is below
  every DCSGD growth. ``"reproduced"`` when DSignSGD wins on every heavy-tailed noise,
  ``"partly"`` on some (or, with no Student-t noise, on the Gaussian), ``"not reproduced"``
  on none.

  Args:
    dim: the dimension d >= 2.
    workers: the number of workers n.
    steps: the number of steps T.
    seeds: the number of seeds per setting.
    scales: the noise scales sigma (at least two).
    noises: ``"gaussian"`` and ``"t<nu>"`` names.
    compressors: unbiased compressor specs (`biased_compression.parse_compressor`).
    lrs: the step sizes tried.
    sign_method: ``"mean"`` or ``"majority_vote"``.
    tuning: ``"per_method"`` or ``"per_setting"``.
    seed: the seed of x*, the noise and the compressors.
    show_progress: a progress bar over the methods (on a terminal).

  Returns:
    The `Finding`: one row per (noise, scale) with every method's final loss; the record
    holds every rate's losses, the chosen rates and the mean loss curves.

  References:
    Compagnoni, Islamov, Proske, Lucchi, Unbiased and sign compression in distributed
    learning: comparing noise resilience via SDEs, AISTATS 2025, arXiv:2502.17009.
    Bernstein, Wang, Azizzadenesheli, Anandkumar, signSGD: compressed optimisation for
    non-convex problems, 2018, arXiv:1802.04434.
  """
  dfs, parsed = _check_options(
    dim=dim,
    workers=workers,
    steps=steps,
    seeds=seeds,
    scales=scales,
    noises=noises,
    compressors=compressors,
    lrs=lrs,
    sign_method=sign_method,
    tuning=tuning,
  )
  scales_arr = np.sort(np.asarray(scales, np.float64))
  lrs_arr = np.sort(np.asarray(lrs, np.float64))
  h, x_star = _problem(dim, seed)
  f0 = float(_loss(h, x_star, jnp.zeros(dim)))
  sign_label = "DSignSGD" + (" (majority vote)" if sign_method == "majority_vote" else "")
  methods = [("DSGD", "dcsgd", bc.identity())]
  methods += [(f"DCSGD {c.name}", "dcsgd", c) for c in parsed]
  methods += [(sign_label, "sign", bc.sign())]
  ref_noise = next((i for i, df in enumerate(dfs) if df == 0), 0)

  finals, curves, chosen = {}, {}, {}
  for label, kind, c in _output.progress(
    iterable=methods, desc="heavy_tailed_noise", disable=not show_progress
  ):
    losses = _run_method(
      kind,
      c,
      sign_method,
      h=h,
      x_star=x_star,
      lrs=lrs_arr,
      scales=scales_arr,
      dfs=dfs,
      seeds=seeds,
      workers=workers,
      steps=steps,
      seed=seed,
    )  # (T, nz, ns, seeds, nlr)
    per_seed = _tail_loss(losses)  # (nz, ns, seeds, nlr)
    final = np.where(np.isfinite(per_seed).all(axis=2), per_seed.mean(axis=2), np.inf)
    if tuning == "per_method":
      best = np.full(final.shape[:2], int(np.argmin(final[ref_noise, 0])))
    else:
      best = np.argmin(final, axis=2)
    nz, ns = final.shape[:2]
    finals[label] = np.array([[final[z, s, best[z, s]] for s in range(ns)] for z in range(nz)])
    chosen[label] = lrs_arr[best]
    with np.errstate(over="ignore", invalid="ignore"):
      mean_curve = np.mean(np.where(np.isfinite(losses), losses, np.inf), axis=3)
    curves[label] = [[_thin(mean_curve[:, z, s, best[z, s]]) for s in range(ns)] for z in range(nz)]

  labels = [m[0] for m in methods]
  dcsgd = [f"DCSGD {c.name}" for c in parsed]
  rows, wins = [], {}
  for z, noise in enumerate(noises):
    for s, sigma in enumerate(scales_arr):
      row = {"noise": noise, "scale": float(sigma)}
      row.update({lab: float(finals[lab][z, s]) for lab in labels})
      rows.append(row)
    top = {lab: float(finals[lab][z, -1]) for lab in labels}
    growth = {lab: _growth(float(finals[lab][z, 0]), top[lab]) for lab in labels}
    wins[noise] = {
      "lower_at_largest": all(top[sign_label] < top[lab] for lab in dcsgd),
      "slower_growth": all(growth[sign_label] < growth[lab] for lab in dcsgd),
      "loss_at_largest": top,
      "growth": growth,
      "blow_up_scale": {lab: _blow_up(scales_arr, finals[lab][z], f0) for lab in labels},
    }
    wins[noise]["wins"] = wins[noise]["lower_at_largest"] and wins[noise]["slower_growth"]

  heavy = [n for n, df in zip(noises, dfs, strict=True) if df > 0]
  judged = heavy or list(noises)
  won = [n for n in judged if wins[n]["wins"]]
  if heavy and len(won) == len(heavy):
    verdict = "reproduced"
  elif won:
    verdict = "partly"
  else:
    verdict = "not reproduced"

  columns = [("noise", "noise", "{}"), ("scale", "scale σ", "{:g}")]
  columns += [(lab, lab, "{:.3g}") for lab in labels]
  measured = _measured(
    noises, judged, wins, scales_arr, f0, sign_label, dcsgd, chosen, tuning, steps, seeds
  )
  figures = {"final_loss": _figure(noises, scales_arr, finals, labels, f0, tuning)}
  record = {
    "initial_loss": f0,
    "scales": scales_arr,
    "lrs": lrs_arr,
    "noises": list(noises),
    "methods": labels,
    "final_loss": {lab: finals[lab] for lab in labels},
    "chosen_lr": {lab: chosen[lab] for lab in labels},
    "curves": curves,
    "per_noise": wins,
  }
  return _claims.Finding(
    verdict=verdict, measured=measured, columns=columns, rows=rows, figures=figures, record=record
  )


def _thin(curve: np.ndarray, points: int = 60) -> list[float]:
  """At most ``points`` evenly spaced values of a curve (the record stays small)."""
  idx = np.unique(np.linspace(0, len(curve) - 1, min(points, len(curve))).round().astype(int))
  return [float(v) for v in curve[idx]]


def _blow_up(scales: np.ndarray, finals: np.ndarray, f0: float) -> float | None:
  """The smallest scale from which the final loss stays above the initial loss f(x_0)
  (training made things worse), or None if it never does."""
  above = np.asarray(finals) > f0
  for s in range(len(scales)):
    if above[s:].all():
      return float(scales[s])
  return None


def _fmt(v: float) -> str:
  return "inf" if not math.isfinite(v) else f"{v:.3g}"


def _measured(noises, judged, wins, scales, f0, sign_label, dcsgd, chosen, tuning, steps, seeds):
  top = scales[-1]
  parts = []
  for n in judged:
    w = wins[n]
    dc = [w["loss_at_largest"][lab] for lab in dcsgd]
    gr = [w["growth"][lab] for lab in dcsgd]
    ups = [w["blow_up_scale"][lab] for lab in dcsgd]
    first_up = min((u for u in ups if u is not None), default=None)
    sign_up = w["blow_up_scale"][sign_label]
    parts.append(
      f"{n}: at σ = {top:g} DCSGD's final loss is {_fmt(min(dc))}–{_fmt(max(dc))} against "
      f"{sign_label}'s {_fmt(w['loss_at_largest'][sign_label])} (growth from σ = "
      f"{scales[0]:g}: ×{_fmt(min(gr))}–×{_fmt(max(gr))} against "
      f"×{_fmt(w['growth'][sign_label])}); DCSGD ends above f(x₀) from σ = "
      f"{'never' if first_up is None else f'{first_up:g}'}, {sign_label} "
      f"{'never' if sign_up is None else f'from σ = {sign_up:g}'}"
    )
  rates = ", ".join(f"{lab} {float(np.ravel(v)[0]):g}" for lab, v in chosen.items())
  tuned = (
    f"one step size per method, tuned at the smallest Gaussian scale ({rates})"
    if tuning == "per_method"
    else "the best step size of the grid for every method, noise and scale"
  )
  won = [n for n in judged if wins[n]["wins"]]
  return (
    f"Final loss (mean of the last tenth of {steps} steps, {seeds} seeds; f(x₀) = {f0:.3g}) "
    f"with {tuned}. " + "; ".join(parts) + ". "
    f"{sign_label} is lower at the largest scale and grows slower than every unbiased "
    f"DCSGD on {len(won)} of {len(judged)} noises judged ({', '.join(won) or 'none'})."
  )


def _figure(noises, scales, finals, labels, f0, tuning):
  from matplotlib.figure import Figure

  nz = len(noises)
  fig = Figure(figsize=(3.6 * nz, 3.4), layout="constrained")
  axes = fig.subplots(1, nz, squeeze=False)[0]
  finite = np.concatenate([np.ravel(v) for v in finals.values()])
  finite = finite[np.isfinite(finite) & (finite > 0)]
  cap = float(finite.max()) * 10 if finite.size else 10.0
  for z, (ax, noise) in enumerate(zip(axes, noises, strict=True)):
    for m, lab in enumerate(labels):
      y = np.asarray(finals[lab][z], np.float64)
      # DCSGD lines can coincide (two ditherings): markers and dashes keep each visible
      (line,) = ax.plot(
        scales,
        np.where(np.isfinite(y), y, np.nan),
        marker="os^vDP*"[m % 7],
        ms=3.5,
        ls=("-", "--", ":", "-.")[m % 4],
        label=lab,
      )
      bad = ~np.isfinite(y)
      if bad.any():  # diverged runs: drawn at the top of the panel, as x
        ax.plot(scales[bad], np.full(bad.sum(), cap), "x", color=line.get_color())
    ax.axhline(f0, color="grey", ls="--", lw=0.8, label="f(x₀)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise scale σ")
    ax.set_title(noise if noise != "t1" else "t1 (Cauchy)")
  axes[0].set_ylabel("final loss f(x) (x: diverged)")
  axes[-1].legend(fontsize=7)
  fig.suptitle(f"Final loss against the gradient noise ({tuning.replace('_', ' ')} step size)")
  return fig


CLAIM = _claims.Claim(
  name="heavy_tailed_noise",
  number=6,
  title="Unbiased compression is fragile to heavy-tailed noise; sign is robust",
  paper=PAPER,
  statement=(
    "Unbiased compression makes DCSGD more vulnerable to large and heavy-tailed gradient "
    "noise, while DSignSGD remains robust, even under large and heavy-tailed noise (from "
    "the abstract; the paper's SDE analysis was not available)."
  ),
  options={
    "dim": _claims.Option(64, "dimension of the quadratic"),
    "workers": _claims.Option(8, "number of workers", full=16),
    "steps": _claims.Option(300, "steps per run", full=2000),
    "seeds": _claims.Option(4, "seeds per setting", full=16),
    "scales": _claims.Option(
      (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
      "gradient noise scales σ",
      full=tuple(float(v) for v in np.logspace(-2, 3, 16).round(4)),
    ),
    "noises": _claims.Option(
      ("gaussian", "t1", "t2", "t3"),
      "noises: gaussian, t<nu> (Student-t)",
      full=("gaussian", "t1", "t1.5", "t2", "t3", "t5", "t10"),
    ),
    "compressors": _claims.Option(
      ("rand_k(0.25)", "natural_dithering(3)", "standard_dithering(4)"),
      "unbiased compressors of DCSGD",
      full=("rand_k(0.25)", "rand_k(0.05)", "natural_dithering(3)", "standard_dithering(4)"),
    ),
    "lrs": _claims.Option(
      (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
      "step sizes tried",
      full=(1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    ),
    "sign_method": _claims.Option("mean", "DSignSGD's aggregate: mean or majority_vote"),
    "tuning": _claims.Option("per_method", "step size: per_method or per_setting"),
    "seed": _claims.Option(0, "seed"),
  },
  study=heavy_tailed_noise,
)
