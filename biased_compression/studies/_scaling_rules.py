r"""Claim 7: the SDE scaling rules keep DCSGD's and DSignSGD's loss curves.

The study, `scaling_rules`, runs a noisy quadratic on simulated workers and checks that
`biased_compression.dcsgd_scaled_lr` brings DCSGD's loss curve back onto DSGD's (in the time
t = k eta), and that `biased_compression.sign_scaled_lr` keeps DSignSGD's curve when the
batch (or the number of workers) grows (in the time tau = k eta sqrt(B)), where the same rate
or the linear rule do not.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import biased_compression as bc
from biased_compression.experiments import _output
from biased_compression.experiments import _tasks
from biased_compression.studies import _claims
from biased_compression.studies import _heavy_tails

__all__ = ["CLAIM", "scaling_rules"]

AXIS = _heavy_tails.AXIS
# the curvatures' range: the slowest coordinate relaxes in a few time units, so that the
# horizons reach the stationary plateau the rules are about
MU = 0.5


def _run_curve(
  kind: str,
  compressor: bc.Compressor,
  *,
  h: jax.Array,
  x_star: jax.Array,
  lr: float,
  noise: float,
  batch_size: int,
  workers: int,
  steps: int,
  seeds: int,
  seed: int,
) -> np.ndarray:
  """Loss after each step, per seed: (seeds, steps + 1), the first column f(x_0).

  A worker's gradient is grad f(x) + (noise / sqrt(B)) z, z ~ N(0, I): the mean of B
  per-sample gradients with Gaussian noise of standard deviation ``noise``, drawn at once.
  One jitted ``lax.scan`` over the steps, the seeds in a ``vmap``; the rate and the noise
  are arguments, so runs that differ only in them share one compilation.
  """
  program = _program(kind, compressor, workers, steps)
  keys = jax.random.split(jax.random.key(seed), seeds)
  comp_seeds = seed * 1009 + jnp.arange(seeds)
  std = noise / math.sqrt(batch_size)
  out = program(jnp.float32(lr), jnp.float32(std), h, x_star, keys, comp_seeds)
  return np.asarray(out, np.float64)


@functools.cache
def _program(kind: str, compressor: bc.Compressor, workers: int, steps: int):
  sim = bc.simulate(_heavy_tails._method_tx(kind, compressor, "mean"), workers)

  def one(lr, std, h, x_star, key, comp_seed):
    d = h.shape[0]
    x0 = jnp.zeros(d, jnp.float32)
    tx = _heavy_tails._method_tx(kind, compressor, "mean", comp_seed)
    state = bc.simulate(tx, workers).init(x0)

    def step(carry, k):
      x, state = carry
      grads = h * (x - x_star) + std * jax.random.normal(k, (workers, d), jnp.float32)
      u, state = sim.update(grads, state, x0)
      x = x - lr * u
      return (x, state), _heavy_tails._loss(h, x_star, x)

    _, losses = jax.lax.scan(step, (x0, state), jax.random.split(key, steps))
    return jnp.concatenate([_heavy_tails._loss(h, x_star, x0)[None], losses])

  return jax.jit(jax.vmap(one, in_axes=(None, None, None, None, 0, 0)))


def _gaps(
  times: np.ndarray, curve: np.ndarray, ref_times: np.ndarray, ref: np.ndarray
) -> dict[str, float]:
  """How far ``curve`` (the mean loss at ``times``) is from the reference's, on the common
  time range: ``plateau``, |P / P_ref - 1| with P the time-average of the loss over the last
  half of the range; ``curve``, the largest |log(L / L_ref)| over the range (the transient
  too), the reference interpolated linearly in time."""
  horizon = min(times[-1], ref_times[-1])
  keep = times <= horizon * (1 + 1e-9)
  t, y = times[keep], curve[keep]
  r = np.interp(t, ref_times, ref)
  late = t >= horizon / 2
  plateau = float(np.mean(y[late]))
  ref_plateau = float(np.mean(r[late]))
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    ratio = np.abs(np.log(y / r))
  if not np.isfinite(plateau) or not np.all(np.isfinite(ratio)):
    return {"plateau": math.inf, "curve": math.inf, "value": plateau, "ref": ref_plateau}
  return {
    "plateau": abs(plateau / ref_plateau - 1.0),
    "curve": float(ratio.max()),
    "value": plateau,
    "ref": ref_plateau,
  }


def _check(
  *,
  dim: int,
  workers: int,
  batch_size: int,
  steps: int,
  sign_steps: int,
  seeds: int,
  kappa: int,
  lr: float,
  sign_lr: float,
  noise: float,
  sign_noise: float,
  compressor: str,
  factor: float,
) -> bc.Compressor:
  fn = "scaling_rules"
  for name, value, low in (
    ("dim", dim, 2),
    ("workers", workers, 1),
    ("batch_size", batch_size, 1),
    ("steps", steps, 2),
    ("sign_steps", sign_steps, 2),
    ("seeds", seeds, 1),
    ("kappa", kappa, 2),
  ):
    _tasks._check_int(fn, name, value, low)
  for name, value in (
    ("lr", lr),
    ("sign_lr", sign_lr),
    ("noise", noise),
    ("sign_noise", sign_noise),
    ("factor", factor),
  ):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
      raise ValueError(f"{fn}: {name} must be a finite number > 0, got {value!r}")
  if factor < 1:
    raise ValueError(f"{fn}: factor must be >= 1, got {factor!r}")
  try:
    c = bc.parse_compressor(compressor)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{fn}: compressor {compressor!r} is not a compressor ({e})") from None
  if not c.unbiased or c.omega(dim) <= 0:
    raise ValueError(
      f"{fn}: compressor must be unbiased with omega > 0 (the rule rescales by 1 + omega), "
      f"got {compressor!r}"
    )
  if sign_steps / kappa**1.5 < 2:
    raise ValueError(
      f"{fn}: sign_steps must leave at least 2 steps to the fastest scaled run "
      f"(sign_steps / kappa^1.5), got sign_steps={sign_steps!r} with kappa={kappa!r}"
    )
  return c


def scaling_rules(
  *,
  dim: int = 64,
  workers: int = 4,
  batch_size: int = 1,
  steps: int = 200,
  sign_steps: int = 4000,
  seeds: int = 32,
  kappa: int = 4,
  lr: float = 0.1,
  sign_lr: float = 0.02,
  noise: float = 1.0,
  sign_noise: float = 10.0,
  compressor: str = "rand_k(0.25)",
  factor: float = 3.0,
  seed: int = 0,
  show_progress: bool = True,
) -> _claims.Finding:
  r"""Do the SDE scaling rules restore the loss curves? DCSGD against DSGD, DSignSGD at a
  larger batch or more workers against itself.

  The problem is the quadratic f(x) = 1/2 sum_j h_j (x_j - x*_j)^2 in ``dim`` dimensions
  (curvatures log-spaced in [0.5, 1], x* ~ N(0, I), started at 0), on N = ``workers``
  simulated workers whose gradients are grad f(x) + (sigma / sqrt(B)) z, z ~ N(0, I) (a
  mini-batch of B samples with Gaussian noise sigma each). Every curve is the mean loss over
  ``seeds`` seeds. The rules (derived in `biased_compression.transforms._scaling`; the
  paper's printed form was not available) keep, to first order in the rate,

  * DCSGD with C in U(omega): eta (1 + omega) / (B N), curves matched in t = k eta;
  * DSignSGD (mean of signs): eta / (N sqrt(B)), curves matched in tau = k eta sqrt(B).

  Runs. DCSGD part (noise sigma = ``noise``): the reference DSGD at (``lr``, B, N) for
  ``steps`` steps; DCSGD with ``compressor`` at the same rate (its noise is 1 + omega times
  larger: a higher plateau); DCSGD at the rule's rate lr / (1 + omega) for (1 + omega)
  ``steps`` steps; and, when (1 + omega) B is an integer, DCSGD at the same rate with the
  batch (1 + omega) B (the rule solved for B). DSignSGD part (sigma = ``sign_noise``, large
  so that the signal-to-noise ratio is small, the SDE's regime): the reference at
  (``sign_lr``, B, N) for ``sign_steps`` steps; at batch kappa B with the same rate, with the
  square-root rule sqrt(kappa) ``sign_lr`` and with the linear rule kappa ``sign_lr``; and at
  kappa N workers with the rule's kappa ``sign_lr``; each for the steps that reach the same
  tau.

  Distance to the reference (on the common time range, the reference interpolated): the
  plateau gap |P / P_ref - 1|, P the time-average of the mean loss over the last half of the
  range, and the curve gap max |log(L / L_ref)| (transient included).

  Verdict. The DCSGD rule *holds* when the rule's plateau gap times ``factor`` is at most
  the same-rate DCSGD's; the sign rule holds when its plateau gap (batch kappa B) times
  ``factor`` is at most both the same-rate and the linear-rule gaps. ``"reproduced"`` when
  both hold, ``"partly"`` when one does, ``"not reproduced"`` otherwise. The batch variant
  of the DCSGD rule and the workers variant of the sign rule are reported, not judged.

  Args:
    dim: the dimension d >= 2.
    workers: the number of workers N.
    batch_size: the reference batch size B per worker.
    steps: the DSGD reference's steps.
    sign_steps: the DSignSGD reference's steps.
    seeds: the seeds per curve.
    kappa: the factor (an int >= 2) of the batch (and of the workers) in the sign part.
    lr: the DSGD / DCSGD reference rate.
    sign_lr: the DSignSGD reference rate.
    noise: the per-sample noise sigma of the DCSGD part.
    sign_noise: the per-sample noise sigma of the DSignSGD part.
    compressor: DCSGD's unbiased compressor (a `biased_compression.parse_compressor` spec).
    factor: how much closer than the alternatives the rule's plateau must be (>= 1).
    seed: the seed of x*, the noise and the compressor.
    show_progress: a progress bar over the runs (on a terminal).

  Returns:
    The `Finding`: one row per run (its rate, batch, workers, steps, plateau and gaps); the
    record holds the mean loss curves against their time.

  References:
    Compagnoni, Islamov, Proske, Lucchi, Unbiased and sign compression in distributed
    learning: comparing noise resilience via SDEs, AISTATS 2025, arXiv:2502.17009.
    Malladi, Lyu, Panigrahi, Arora, On the SDEs and scaling rules for adaptive gradient
    algorithms, 2022, arXiv:2205.10287.
  """
  c = _check(
    dim=dim,
    workers=workers,
    batch_size=batch_size,
    steps=steps,
    sign_steps=sign_steps,
    seeds=seeds,
    kappa=kappa,
    lr=lr,
    sign_lr=sign_lr,
    noise=noise,
    sign_noise=sign_noise,
    compressor=compressor,
    factor=factor,
  )
  omega = float(c.omega(dim))
  h, x_star = _heavy_tails._problem(dim, seed, MU)
  b, n = batch_size, workers
  ident = bc.identity()
  # (group, label, kind, compressor, lr, batch, workers, steps, noise, time per step)
  runs: list[tuple[Any, ...]] = []
  runs.append(("dcsgd", "DSGD (reference)", "dcsgd", ident, lr, b, n, steps, noise))
  runs.append(("dcsgd", f"DCSGD {c.name}, same η", "dcsgd", c, lr, b, n, steps, noise))
  lr_rule = bc.dcsgd_scaled_lr(
    lr, omega=omega, batch_size=b, num_workers=n, base_batch_size=b, base_num_workers=n
  )
  rule_steps = max(2, round(steps * lr / lr_rule))
  runs.append(("dcsgd", "DCSGD, rule η/(1+ω)", "dcsgd", c, lr_rule, b, n, rule_steps, noise))
  b_rule = (1 + omega) * b
  if abs(b_rule - round(b_rule)) < 1e-9:
    b_rule = round(b_rule)
    lr_b = bc.dcsgd_scaled_lr(
      lr, omega=omega, batch_size=b_rule, num_workers=n, base_batch_size=b, base_num_workers=n
    )
    runs.append(("dcsgd", "DCSGD, rule B(1+ω)", "dcsgd", c, lr_b, b_rule, n, steps, noise))
  kb, kn = kappa * b, kappa * n
  sign = bc.sign()
  sign_runs = [
    ("DSignSGD (reference)", sign_lr, b, n),
    ("DSignSGD κB, same η", sign_lr, kb, n),
    (
      "DSignSGD κB, rule √κ η",
      bc.sign_scaled_lr(
        sign_lr, batch_size=kb, num_workers=n, base_batch_size=b, base_num_workers=n
      ),
      kb,
      n,
    ),
    ("DSignSGD κB, linear κη", kappa * sign_lr, kb, n),
    (
      "DSignSGD κN, rule κη",
      bc.sign_scaled_lr(
        sign_lr, batch_size=b, num_workers=kn, base_batch_size=b, base_num_workers=n
      ),
      b,
      kn,
    ),
  ]
  tau_ref = sign_lr * math.sqrt(b)
  for label, eta, bb, nn in sign_runs:
    k = max(2, round(sign_steps * tau_ref / (eta * math.sqrt(bb))))
    runs.append(("sign", label, "sign", sign, eta, bb, nn, k, sign_noise))

  curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  meta: dict[str, dict[str, Any]] = {}
  for group, label, kind, comp, eta, bb, nn, k, sigma in _output.progress(
    iterable=runs, desc="scaling_rules", disable=not show_progress
  ):
    losses = _run_curve(
      kind,
      comp,
      h=h,
      x_star=x_star,
      lr=eta,
      noise=sigma,
      batch_size=bb,
      workers=nn,
      steps=k,
      seeds=seeds,
      seed=seed,
    )
    with np.errstate(over="ignore", invalid="ignore"):
      mean = np.mean(np.where(np.isfinite(losses), losses, np.inf), axis=0)
    step_time = eta if group == "dcsgd" else eta * math.sqrt(bb)
    curves[label] = (np.arange(k + 1) * step_time, mean)
    meta[label] = {
      "group": group,
      "lr": eta,
      "batch": bb,
      "workers": nn,
      "steps": k,
      "noise_scale": (
        bc.dcsgd_noise_scale(
          eta, omega=0.0 if comp is ident else omega, batch_size=bb, num_workers=nn
        )
        if group == "dcsgd"
        else bc.sign_noise_scale(eta, batch_size=bb, num_workers=nn)
      ),
    }

  rows = []
  gaps: dict[str, dict[str, float]] = {}
  for label, m in meta.items():
    ref = "DSGD (reference)" if m["group"] == "dcsgd" else "DSignSGD (reference)"
    g = _gaps(*curves[label], *curves[ref])
    gaps[label] = g
    rows.append(
      {
        "run": label,
        "lr": m["lr"],
        "batch": m["batch"],
        "workers": m["workers"],
        "steps": m["steps"],
        "noise_scale": m["noise_scale"],
        "plateau": g["value"],
        "plateau_gap": g["plateau"],
        "curve_gap": g["curve"],
        "reference": label == ref,
      }
    )
  same = gaps[f"DCSGD {c.name}, same η"]["plateau"]
  rule = gaps["DCSGD, rule η/(1+ω)"]["plateau"]
  dcsgd_holds = bool(rule * factor <= same)
  s_same = gaps["DSignSGD κB, same η"]["plateau"]
  s_rule = gaps["DSignSGD κB, rule √κ η"]["plateau"]
  s_lin = gaps["DSignSGD κB, linear κη"]["plateau"]
  sign_holds = bool(s_rule * factor <= min(s_same, s_lin))
  verdict = ("not reproduced", "partly", "reproduced")[int(dcsgd_holds) + int(sign_holds)]

  def pct(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{100 * v:.1f}%"

  extra_b = gaps.get("DCSGD, rule B(1+ω)")
  measured = (
    f"DCSGD with {c.name} (ω = {omega:g}) at DSGD's η = {lr:g}: plateau "
    f"{pct(same)} off DSGD's ({gaps[f'DCSGD {c.name}, same η']['value']:.3g} against "
    f"{gaps['DSGD (reference)']['value']:.3g}); at the rule's η/(1+ω) = {lr_rule:.3g} "
    f"({rule_steps} steps, same t = kη) {pct(rule)}"
    + (f", with the batch (1+ω)B instead {pct(extra_b['plateau'])}" if extra_b else "")
    + f" (curve gap max|log L/L_ref| {gaps['DCSGD, rule η/(1+ω)']['curve']:.2f} against "
    f"{gaps[f'DCSGD {c.name}, same η']['curve']:.2f}). DSignSGD at κ = {kappa}× the batch, "
    f"in τ = kη√B: same η {pct(s_same)}, square-root rule {pct(s_rule)}, linear rule "
    f"{pct(s_lin)}; at κ× the workers with the rule's κη "
    f"{pct(gaps['DSignSGD κN, rule κη']['plateau'])}. The DCSGD rule "
    f"{'holds' if dcsgd_holds else 'does not hold'} and the sign rule "
    f"{'holds' if sign_holds else 'does not hold'} at the factor {factor:g}."
  )
  columns = [
    ("run", "run", "{}"),
    ("lr", "η", "{:.4g}"),
    ("batch", "B", "{}"),
    ("workers", "N", "{}"),
    ("steps", "steps", "{}"),
    ("noise_scale", "SDE noise scale", "{:.4g}"),
    ("plateau", "plateau loss", "{:.4g}"),
    ("plateau_gap", "plateau gap", "{:.3f}"),
    ("curve_gap", "max abs log L/L_ref", "{:.3f}"),
  ]
  record = {
    "omega": omega,
    "curves": {
      label: {"time": _heavy_tails._thin(t, 200), "loss": _heavy_tails._thin(y, 200)}
      for label, (t, y) in curves.items()
    },
    "gaps": gaps,
    "dcsgd_rule_holds": dcsgd_holds,
    "sign_rule_holds": sign_holds,
  }
  return _claims.Finding(
    verdict=verdict,
    measured=measured,
    columns=columns,
    rows=rows,
    figures={"curves": _figure(curves, meta, omega, kappa)},
    record=record,
  )


def _figure(curves, meta, omega, kappa):
  from matplotlib.figure import Figure

  fig = Figure(figsize=(10, 3.6), layout="constrained")
  ax_d, ax_s = fig.subplots(1, 2)
  for label, (t, y) in curves.items():
    ax = ax_d if meta[label]["group"] == "dcsgd" else ax_s
    ref = "reference" in label
    ax.plot(t, y, lw=2.2 if ref else 1.1, color="black" if ref else None, label=label)
  ax_d.set_xlabel("time t = kη")
  ax_d.set_title(f"DCSGD (ω = {omega:g}) against DSGD")
  ax_s.set_xlabel("time τ = kη√B")
  ax_s.set_title(f"DSignSGD, κ = {kappa}")
  for ax in (ax_d, ax_s):
    ax.set_yscale("log")
    ax.set_ylabel("mean loss f(x)")
    ax.legend(fontsize=7)
  return fig


CLAIM = _claims.Claim(
  name="scaling_rules",
  number=7,
  title="Scaling rules keep DCSGD's and DSignSGD's dynamics",
  paper=_heavy_tails.PAPER,
  statement=(
    "New scaling rules for the hyper-parameters mitigate the degradation due to compression "
    "(from the abstract). Derived here from the SDEs (the printed rules were not available): "
    "DCSGD keeps its dynamics when η(1+ω)/(BN) is constant, DSignSGD when η/(N√B) is."
  ),
  options={
    "dim": _claims.Option(64, "dimension of the quadratic"),
    "workers": _claims.Option(4, "number of workers N", full=8),
    "batch_size": _claims.Option(1, "reference batch size B"),
    "steps": _claims.Option(200, "DSGD reference steps", full=1000),
    "sign_steps": _claims.Option(4000, "DSignSGD reference steps", full=16000),
    "seeds": _claims.Option(32, "seeds per curve", full=256),
    "kappa": _claims.Option(4, "batch / workers factor of the sign part"),
    "lr": _claims.Option(0.1, "DSGD / DCSGD reference rate"),
    "sign_lr": _claims.Option(0.02, "DSignSGD reference rate", full=0.005),
    "noise": _claims.Option(1.0, "per-sample noise of the DCSGD part"),
    "sign_noise": _claims.Option(10.0, "per-sample noise of the DSignSGD part"),
    "compressor": _claims.Option("rand_k(0.25)", "DCSGD's unbiased compressor"),
    "factor": _claims.Option(3.0, "how much closer the rule must be"),
    "seed": _claims.Option(0, "seed"),
  },
  study=scaling_rules,
)
