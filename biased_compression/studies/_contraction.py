"""Claim 1: compressed gradient descent contracts f - f* at the rate its class predicts.

Beznosikov et al. prove that one step of compressed gradient descent on an L-smooth,
mu-strongly convex f contracts the expected suboptimality by at least 1 - mu/(delta L) for a
contractive C in B3(delta) at the step 1/L, and by 1 - mu/((1 + omega) L) for an unbiased C
in U(omega) at the step 1/((1 + omega) L). The study runs compressed GD with every such
operator of the library on a strongly convex quadratic with known mu and L and compares the
measured contraction of E[f - f*] with those bounds.
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

__all__ = [
  "CLAIM",
  "DEFAULT_COMPRESSORS",
  "constants",
  "linear_convergence",
  "measure",
  "quadratic",
  "verdict",
]

PAPER = (
  "Beznosikov, Horváth, Richtárik, Safaryan, On Biased Compression for Distributed Learning, "
  "2023 (JMLR 24(276)), https://arxiv.org/abs/2002.12410"
)

# every contractive (B3) operator of the library, then the unbiased (U) ones; specs without
# commas (registry names where the call would need one) so a command line can list them
DEFAULT_COMPRESSORS = (
  "top_k(0.1)",
  "rand_k_biased",
  "scaled_sign",
  "grouped_sign(16)",
  "exponential_rounding_nearest",
  "adaptive_random_sparsification",
  "top_k_natural_dithering(0.1)",
  "contractive_top_k_nd",
  "contractive(natural_dithering(2))",
  "cast(bfloat16)",
  "rand_k(0.1)",
  "natural_compression",
  "natural_dithering(4)",
  "standard_dithering(4)",
  "exponential_rounding(4.0)",
  "induced",
)

# the gap at which a run's rate is read (relative to f(x0) - f*): far above float32's
# relative resolution of f, so every measured ratio is a ratio of resolved numbers
_CUT = 1e-6
# float32 rounding of f(x_T) and f(x0): a relative error of at most ~T * 2^-24 on their
# ratio; 1e-4 covers T up to ~1e3 steps before the cut with a wide margin
_ROUNDING = 1e-4
# Monte-Carlo tolerance in standard errors of the mean gap (one-sided, ~0.1% false alarm
# per compressor when the bound is attained exactly)
_SIGMAS = 3.0


def quadratic(dim: int, condition: float, seed: int = 0) -> tuple[np.ndarray, float, float]:
  r"""The Hessian of the study's quadratic: A = Q diag(lambda) Q^T, mu = 1/condition, L = 1.

  The eigenvalues are evenly spread over [mu, L] (both ends included) and Q is a random
  rotation (the QR factor of a Gaussian matrix, seeded), so no coordinate system is special
  for the compressors.

  Args:
    dim: the dimension d.
    condition: L / mu >= 1.
    seed: the rotation's seed.

  Returns:
    (A as float64 (d, d), mu, L).
  """
  mu, lip = 1.0 / condition, 1.0
  lam = np.linspace(mu, lip, dim) if dim > 1 else np.array([mu])
  q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
  q = q * np.sign(np.diag(r))  # Haar-distributed
  return (q * lam) @ q.T, mu, lip


@functools.partial(jax.jit, static_argnames=("compressor", "steps"))
def _gaps(compressor, a, e0, keys, eta, *, steps):
  """f(x_t) - f* for t = 0..steps, one row per key (a draw of the compressor's randomness).

  The iteration is run on the error e = x - x*: grad f(x) = A e depends on e only, so
  e <- e - eta C(A e) is exactly compressed GD, and float32 keeps e's relative precision
  down to tiny gaps (x itself would lose it once |x - x*| << |x*|).
  """

  def one(key):
    def body(carry, _):
      e, key = carry
      key, sub = jax.random.split(key)
      e = e - eta * compressor.compress(a @ e, key=sub if compressor.needs_key else None)
      return (e, key), 0.5 * e @ (a @ e)

    _, f = jax.lax.scan(body, (e0, key), None, length=steps)
    return jnp.concatenate([(0.5 * e0 @ (a @ e0))[None], f])

  return jax.vmap(one)(keys)


def constants(compressor: bc.Compressor, d: int, mu: float, lip: float) -> dict[str, Any]:
  r"""The class, step size and contraction bound the theorem gives for ``compressor``.

  Unbiased C in U(omega): eta = 1/((1+omega) L), bound 1 - mu/((1+omega) L). Otherwise
  C in B3(delta): eta = 1/L, bound 1 - mu/(delta L).

  Raises:
    ValueError: for an operator in neither class at ``d`` (``sign``).
  """
  if compressor.unbiased and math.isfinite(compressor.omega(d)):
    omega = float(compressor.omega(d))
    return {
      "class": f"U({omega:.4g})",
      "constant": 1.0 + omega,
      "eta": 1.0 / ((1.0 + omega) * lip),
      "bound": 1.0 - mu / ((1.0 + omega) * lip),
    }
  delta = float(compressor.delta(d))
  if not math.isfinite(delta):
    raise ValueError(
      f"linear_convergence: compressors must be in B3(delta) or U(omega); {compressor.name} "
      f"is in neither at d={d} (wrap an unbiased operator in contractive(...))"
    )
  return {
    "class": f"B3({delta:.4g})",
    "constant": delta,
    "eta": 1.0 / lip,
    "bound": 1.0 - mu / (delta * lip),
  }


def measure(gaps: np.ndarray, bound: float, cut: float = _CUT) -> dict[str, Any]:
  r"""The measured contraction of the mean gap of ``gaps`` (draws, T + 1) against ``bound``.

  With m_t the mean over draws of f(x_t) - f* and T' the first step with m_t < cut * m_0 (or
  T): the rate (m_T'/m_0)^(1/T'), the worst one-step ratio max_{t<T'} m_{t+1}/m_t, and
  whether m_T' <= bound^T' m_0 (1 + 1e-4) + 3 SE(m_T'), SE the standard error of the mean
  over draws (the float32 rounding and Monte-Carlo tolerances); ``rate_tolerance`` is the
  rate at which that holds with equality.
  """
  gaps = np.asarray(gaps, np.float64)
  m = gaps.mean(0)
  below = np.flatnonzero(m < cut * m[0])
  t = int(below[0]) if below.size else m.size - 1
  t = max(t, 1)
  se = gaps[:, t].std(ddof=1) / math.sqrt(gaps.shape[0]) if gaps.shape[0] > 1 else 0.0
  allowed = bound**t * m[0] * (1.0 + _ROUNDING) + _SIGMAS * se
  with np.errstate(divide="ignore", invalid="ignore"):
    steps = m[1 : t + 1] / m[:t]
  return {
    "rate": float((m[t] / m[0]) ** (1.0 / t)),
    "rate_tolerance": float((allowed / m[0]) ** (1.0 / t)),
    "worst_step": float(np.max(steps)),
    "steps_used": t,
    "final_gap": float(m[t] / m[0]),
    "within": bool(m[t] <= allowed),
  }


def verdict(within: Sequence[bool]) -> str:
  """``reproduced`` if every compressor is within its bound, ``partly`` if more than half,
  else ``not reproduced``."""
  within = list(within)
  if within and all(within):
    return "reproduced"
  if 2 * sum(within) > len(within):
    return "partly"
  return "not reproduced"


def _check(dim, condition, steps, draws, compressors, seed):
  for name, value in (("dim", dim), ("steps", steps), ("draws", draws)):
    _tasks._check_int("linear_convergence", name, value, 1)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"linear_convergence: seed must be an int, got {seed!r}")
  if not (isinstance(condition, (int, float)) and math.isfinite(condition) and condition >= 1):
    raise ValueError(f"linear_convergence: condition must be a number >= 1, got {condition!r}")
  if isinstance(compressors, str) or not compressors:
    raise ValueError(
      f"linear_convergence: compressors must be a non-empty sequence of specs, got {compressors!r}"
    )


def linear_convergence(
  *,
  dim: int = 100,
  condition: float = 10.0,
  steps: int = 3000,
  draws: int = 64,
  compressors: Sequence[str] = DEFAULT_COMPRESSORS,
  seed: int = 0,
  show_progress: bool = True,
) -> _claims.Finding:
  r"""Compressed GD on a strongly convex quadratic: measured contraction against the bound.

  The problem is f(x) = 1/2 (x - x*)^T A (x - x*) with A = Q diag(lambda) Q^T, the
  eigenvalues evenly spread over [mu, L] = [1/condition, 1] and Q a random rotation
  (`quadratic`), started from a Gaussian x0 - x* (seeded). Each compressor runs
  x <- x - eta C(grad f(x)) for ``steps`` steps, ``draws`` times with independent keys, all
  draws of one compressor in one jitted `jax.lax.scan` under `jax.vmap` (on the error
  x - x*, which is the same iteration). The theorem (one line from L-smoothness and the
  Polyak-Lojasiewicz inequality ||grad f||^2 >= 2 mu (f - f*)):

  .. math::
    C \in B_3(\delta),\ \eta = 1/L:\quad E f(x^+) - f^* \le (1 - \mu/(\delta L))(f(x) - f^*),

    C \in U(\omega),\ \eta = 1/((1+\omega)L):\quad
    E f(x^+) - f^* \le (1 - \mu/((1+\omega)L))(f(x) - f^*),

  with delta = ``C.delta(d)`` and omega = ``C.omega(d)`` (an unbiased C uses the U bound).
  Measured, on the mean gap m_t over draws: the rate (m_T/m_0)^(1/T), T the first step where
  m_t < 1e-6 m_0 or ``steps``, and the worst one-step ratio max_t m_{t+1}/m_t; the slack
  (1 - rate)/(1 - bound) says how many times faster than the bound the gap falls.

  Verdict: a compressor is within its bound if m_T <= bound^T m_0 (1 + 1e-4) + 3 SE(m_T)
  (SE the standard error of the mean over draws; 1e-4 covers float32 rounding of the gap
  ratio, 3 SE the Monte-Carlo error, so an exactly tight bound passes with probability
  ~99.9%). ``reproduced`` if every compressor is within its bound, ``partly`` if more than
  half are, else ``not reproduced``.

  Args:
    dim: the dimension d.
    condition: L/mu.
    steps: steps per run.
    draws: independent runs of each compressor (its random keys).
    compressors: `bc.parse_compressor` specs, each in B3(delta) or U(omega).
    seed: seeds the rotation, x0 and the compressors' keys.
    show_progress: a progress bar over the compressors (on a terminal).

  Returns:
    The `Finding`: a row per compressor (class, step, bound, measured rate, tolerance, worst
    step, slack), the gap curves and the rate-vs-bound scatter as figures, curves in
    ``record``.

  Raises:
    ValueError: for a bad option or a compressor in neither class.

  References:
    Beznosikov, Horváth, Richtárik, Safaryan, On Biased Compression for Distributed
    Learning, 2023, https://arxiv.org/abs/2002.12410 (Theorems on CGD for B3 and U).
  """
  _check(dim, condition, steps, draws, compressors, seed)
  ops = []
  for spec in compressors:
    c = bc.parse_compressor(spec)
    ops.append((spec, c, constants(c, dim, 1.0 / condition, 1.0)))
  a64, mu, lip = quadratic(dim, float(condition), seed)
  a = jnp.asarray(a64, jnp.float32)
  e0 = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(dim), jnp.float32)
  keys = jax.random.split(jax.random.key(seed), draws)
  rows, curves = [], {}
  with _output.progress(total=len(ops), desc="compressors", disable=not show_progress) as bar:
    for spec, c, k in ops:
      bar.set_postfix_str(spec)
      gaps = np.asarray(_gaps(c, a, e0, keys, jnp.float32(k["eta"]), steps=steps))
      got = measure(gaps, k["bound"])
      rows.append(
        {
          "compressor": spec,
          "operator": c.name,
          "class": k["class"],
          "eta": k["eta"],
          "bound": k["bound"],
          **got,
          "slack": (1.0 - got["rate"]) / (1.0 - k["bound"]),
          "random": bool(c.needs_key),
        }
      )
      curves[spec] = gaps.mean(0)[: got["steps_used"] + 1] / gaps[0, 0]
      bar.update(1)
  within = [r["within"] for r in rows]
  slack = np.array([r["slack"] for r in rows])
  tight = min(rows, key=lambda r: r["slack"])
  steps_ok = sum(r["worst_step"] <= r["bound"] for r in rows)
  measured = (
    f"Compressed GD on a {dim}-dimensional quadratic with L/mu = {condition:g}, "
    f"{draws} draws per compressor: {sum(within)} of {len(rows)} compressors contract "
    f"E[f - f*] at least as fast as their bound. The measured rates are {slack.min():.3g} to "
    f"{slack.max():.3g} times faster than the bounds (median {np.median(slack):.3g}, in "
    f"(1 - rate)/(1 - bound)); the tightest is `{tight['compressor']}` "
    f"({tight['class']}): {tight['rate']:.5f} against {tight['bound']:.5f}. The worst "
    f"one-step ratio of the mean gap is below the bound for {steps_ok} of {len(rows)}."
  )
  if not all(within):
    over = [r["compressor"] for r in rows if not r["within"]]
    measured += f" Above the bound (beyond the tolerance): {', '.join(over)}."
  columns = [
    ("compressor", "compressor", "`{}`"),
    ("class", "class", "{}"),
    ("eta", "step η·L", "{:.4g}"),
    ("bound", "bound", "{:.5f}"),
    ("rate", "measured rate", "{:.5f}"),
    ("rate_tolerance", "allowed (tol.)", "{:.5f}"),
    ("worst_step", "worst step ratio", "{:.5f}"),
    ("steps_used", "steps", "{}"),
    ("slack", "(1−rate)/(1−bound)", "{:.3g}"),
    ("within", "within bound", "{}"),
  ]
  return _claims.Finding(
    verdict=verdict(within),
    measured=measured,
    columns=columns,
    rows=rows,
    figures=_figures(rows, curves),
    record={
      "mu": mu,
      "L": lip,
      "eigenvalues": np.linalg.eigvalsh(a64).tolist(),
      "curves": {k: v.tolist() for k, v in curves.items()},
    },
  )


def _figures(rows, curves):
  from matplotlib.figure import Figure

  scatter = Figure(figsize=(5.5, 4.5))
  ax = scatter.subplots()
  x = np.array([1.0 - r["bound"] for r in rows])
  y = np.array([max(1.0 - r["rate"], 1e-12) for r in rows])
  for r, xi, yi in zip(rows, x, y, strict=True):
    ax.scatter(xi, yi, marker="o" if r["class"].startswith("B3") else "s", s=25)
    ax.annotate(r["compressor"], (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points")
  lo, hi = min(x.min(), y.min()) / 2, max(x.max(), y.max()) * 2
  ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = bound")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("1 − bound  (μ/(δL) or μ/((1+ω)L))")
  ax.set_ylabel("1 − measured rate of E[f − f*]")
  ax.set_title("Above the line: faster than the bound (o B3, □ U)")
  ax.legend(fontsize=8)

  gaps = Figure(figsize=(6.5, 4.5))
  ax = gaps.subplots()
  chosen = sorted(rows, key=lambda r: r["slack"])
  chosen = [chosen[i] for i in sorted({0, len(chosen) // 2, len(chosen) - 1})]
  for r in chosen:
    curve = curves[r["compressor"]]
    t = np.arange(curve.size)
    (line,) = ax.plot(t, curve, lw=1.5, label=f"{r['compressor']} measured")
    ax.plot(t, r["bound"] ** t, "--", color=line.get_color(), lw=1, label="its bound")
  ax.set_yscale("log")
  ax.set_xlabel("step t")
  ax.set_ylabel("(E f(x_t) − f*) / (f(x_0) − f*)")
  ax.set_title("Mean gap over draws against the bound (1 − μ/(δL))^t")
  ax.legend(fontsize=7)
  return {"rates": scatter, "gaps": gaps}


CLAIM = _claims.Claim(
  name="linear_convergence",
  number=1,
  title="Compressed GD converges linearly at its class's rate",
  paper=PAPER,
  statement=(
    "For L-smooth, μ-strongly convex f and C ∈ B3(δ), compressed GD x ← x − (1/L)C(∇f(x)) "
    "contracts f − f* by at least 1 − μ/(δL) per step in expectation; for unbiased "
    "C ∈ U(ω) at η = 1/((1+ω)L), by 1 − μ/((1+ω)L)."
  ),
  options={
    "dim": _claims.Option(100, "dimension d of the quadratic", full=1000),
    "condition": _claims.Option(10.0, "condition number L/mu", full=100.0),
    "steps": _claims.Option(3000, "steps per run", full=20000),
    "draws": _claims.Option(64, "independent runs per compressor", full=256),
    "compressors": _claims.Option(DEFAULT_COMPRESSORS, "compressor specs", type=str),
    "seed": _claims.Option(0, "seed of the problem and the keys"),
  },
  study=linear_convergence,
)
