r"""Hyper-parameter scaling rules for DCSGD and DSignSGD, from their SDEs.

Compagnoni et al. (2025) model distributed compressed SGD (DCSGD, unbiased compressors) and
distributed SignSGD (DSignSGD) by stochastic differential equations and propose scaling
rules: how to change the learning rate when the compression, the batch size or the number
of workers changes, so that the training dynamics stay the same. Only the paper's abstract
was available here: the rules below are **derived** in this docstring (first order in the
learning rate, the usual SDE approximation) and match the invariants the follow-up works
state; the paper's printed form of them could not be checked.

**DCSGD.** N workers, each with a mini-batch of B samples whose gradient noise has
covariance Sigma per sample, and an unbiased compressor C in U(omega) drawn independently
on each worker:

.. math::

  x_{k+1} = x_k - \frac{\eta}{N} \sum_{i=1}^N C_i(g_i), \qquad
  g_i = \nabla f(x_k) + \xi_i, \quad \operatorname{Cov}\xi_i = \Sigma / B.

The update's mean is -eta grad f. For rand-k (C(g) = (d/k) m * g, m the mask of a uniform
k-subset, omega = d/k - 1, independent of the noise) one worker's message has, exactly,

.. math::

  \operatorname{Cov}C(g)_{jj} = (1+\omega)\frac{\Sigma_{jj}}{B} + \omega\,(\partial_j f)^2,
  \qquad
  \operatorname{Cov}C(g)_{jl} = \rho\,\frac{\Sigma_{jl}}{B} + (\rho - 1)\,\partial_j f\,
  \partial_l f, \quad \rho = \frac{(1+\omega)(k-1)}{d-1},

and the mean of N independent messages divides this by N. Where the gradient noise dominates
(near a minimum) and for a diagonal Sigma it is (1 + omega) Sigma / (B N); for any U(omega)
operator E||C(g)||^2 <= (1 + omega) E||g||^2 bounds the inflation in trace. In the time
t = k eta, the SDE with the same first two moments per step is

.. math::

  dX_t = -\nabla f(X_t)\,dt + \sqrt{\frac{\eta (1+\omega)}{B N}}\,\Sigma^{1/2}\,dW_t :

the compression multiplies the noise's variance by (1 + omega). Its law is unchanged when
eta (1 + omega) / (B N) is constant: the **linear rule** of `dcsgd_scaled_lr`. From a
reference (eta_0, omega_0, B_0, N_0),

.. math::

  \eta = \eta_0 \,\frac{1 + \omega_0}{1 + \omega}\,\frac{B N}{B_0 N_0}

(e.g. compressing with omega at the same B and N: eta = eta_0 / (1 + omega); B -> kappa B:
eta -> kappa eta). The curves match in the time t = k eta, so the run with the smaller
rate takes proportionally more steps.

**DSignSGD.** The mean of the workers' signs, x_{k+1} = x_k - (eta/N) sum_i sign(g_i), with
per-coordinate noise of standard deviation sigma_j / sqrt(B) (Gaussian; a mean of B samples
is nearly Gaussian by the central limit theorem). Per coordinate,

.. math::

  \mathbb{E}\,\mathrm{sign}(g_{ij}) = \operatorname{erf}\Big(\frac{\sqrt{B}\,\partial_j f}
  {\sqrt2\,\sigma_j}\Big) \approx \sqrt{\tfrac{2}{\pi}}\,\frac{\sqrt{B}\,\partial_j f}
  {\sigma_j}

for a small signal-to-noise ratio sqrt(B) |d_j f| / sigma_j (near a minimum, or under large
noise), and Var sign(g_ij) = 1 - (E sign)^2 ~ 1, so the mean of N independent signs has
variance ~ 1/N per coordinate. One step is then
x_{k+1} - x_k ~ -eta sqrt(B) sqrt(2/pi) Sigma^{-1/2} grad f + eta N^{-1/2} zeta with
zeta of unit variance. In the time tau = k eta sqrt(B) (one step lasts eta sqrt(B)),

.. math::

  dX_\tau = -\sqrt{\tfrac{2}{\pi}}\,\Sigma^{-1/2}\nabla f(X_\tau)\,d\tau
  + \sqrt{\frac{\eta}{N\sqrt{B}}}\,dW_\tau ,

whose law is unchanged when eta / (N sqrt(B)) is constant: `sign_scaled_lr`,

.. math::

  \eta = \eta_0 \,\frac{N}{N_0}\,\sqrt{\frac{B}{B_0}} ,

a **square-root rule** in the batch size (B -> kappa B: eta -> sqrt(kappa) eta) and a linear
one in the number of workers (the mean of N signs keeps its mean and divides its variance by
N, as a larger batch does for SGD). The curves match in tau = k eta sqrt(B). The sign's noise
term does not grow with sigma (its drift shrinks as 1/sigma instead), which is why
DSignSGD's step stays bounded (|x_{k+1} - x_k| <= eta per coordinate) whatever the noise.

Both are first-order (small eta) statements; at finite eta the discrete plateaus differ from
the SDE's by relative O(eta L) terms (e.g. 1 / (1 - eta h / 2) on a quadratic of curvature h).

References:
  Compagnoni, Islamov, Proske, Lucchi, Unbiased and sign compression in distributed
  learning: comparing noise resilience via SDEs, AISTATS 2025, arXiv:2502.17009.
  Malladi, Lyu, Panigrahi, Arora, On the SDEs and scaling rules for adaptive gradient
  algorithms, 2022, arXiv:2205.10287.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["dcsgd_noise_scale", "dcsgd_scaled_lr", "sign_noise_scale", "sign_scaled_lr"]


def _check_lr(fn: str, lr) -> float:
  if (
    isinstance(lr, bool)
    or not isinstance(lr, numbers.Real)
    or not math.isfinite(float(lr))
    or float(lr) <= 0
  ):
    raise ValueError(f"{fn}: lr must be a finite number > 0, got {lr!r}")
  return float(lr)


def _check_omega(fn: str, name: str, omega) -> float:
  if (
    isinstance(omega, bool)
    or not isinstance(omega, numbers.Real)
    or not math.isfinite(float(omega))
    or float(omega) < 0
  ):
    raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {omega!r}")
  return float(omega)


def _check_count(fn: str, name: str, value) -> int:
  # a float batch size (2.0, 1.5) is refused rather than rounded: it is usually a mistake
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"{fn}: {name} must be an int >= 1, got {value!r}")
  return int(value)


def dcsgd_noise_scale(lr: float, *, omega: float, batch_size: int, num_workers: int) -> float:
  r"""DCSGD's SDE noise scale eta (1 + omega) / (B N), the quantity `dcsgd_scaled_lr` keeps.

  Args:
    lr: the learning rate eta > 0.
    omega: the compressor's variance parameter (C in U(omega); 0 for no compression).
    batch_size: the per-worker batch size B >= 1.
    num_workers: the number of workers N >= 1.

  Returns:
    eta (1 + omega) / (B N): the variance of the SDE's diffusion, per unit of the
    per-sample covariance (see the module docstring).

  Example:
    >>> dcsgd_noise_scale(0.1, omega=3.0, batch_size=2, num_workers=4)
    0.05
  """
  fn = "dcsgd_noise_scale"
  lr = _check_lr(fn, lr)
  omega = _check_omega(fn, "omega", omega)
  b = _check_count(fn, "batch_size", batch_size)
  n = _check_count(fn, "num_workers", num_workers)
  return lr * (1.0 + omega) / (b * n)


def dcsgd_scaled_lr(
  lr: float,
  *,
  omega: float,
  batch_size: int = 1,
  num_workers: int = 1,
  base_omega: float = 0.0,
  base_batch_size: int = 1,
  base_num_workers: int = 1,
) -> float:
  r"""The learning rate that keeps DCSGD's dynamics: the linear rule.

  With the reference run at (lr, base_omega, base_batch_size, base_num_workers), the
  returned rate eta keeps eta (1 + omega) / (B N) equal to the reference's (derived from
  DCSGD's SDE in the module docstring):

  .. math::

    \eta = \mathrm{lr}\,\frac{1 + \omega_0}{1 + \omega}\,\frac{B N}{B_0 N_0} .

  The loss curves then match in the time t = k eta (the smaller rate takes
  proportionally more steps to the same t).

  Args:
    lr: the reference learning rate > 0.
    omega: the new compressor's variance parameter (``compressor.omega(d)``), >= 0.
    batch_size: the new per-worker batch size B >= 1.
    num_workers: the new number of workers N >= 1.
    base_omega: the reference's omega (0: uncompressed DSGD).
    base_batch_size: the reference's B_0.
    base_num_workers: the reference's N_0.

  Returns:
    The new learning rate.

  Raises:
    ValueError: lr <= 0 or not finite, an omega < 0, a batch size or a number of workers
      that is not an int >= 1.

  Example:
    >>> import biased_compression as bc
    >>> dcsgd_scaled_lr(0.1, omega=bc.rand_k(0.25).omega(64))  # rand-k: omega = d/k - 1 = 3
    0.025

  References:
    Compagnoni, Islamov, Proske, Lucchi, Unbiased and sign compression in distributed
    learning: comparing noise resilience via SDEs, AISTATS 2025, arXiv:2502.17009.
  """
  fn = "dcsgd_scaled_lr"
  lr = _check_lr(fn, lr)
  omega = _check_omega(fn, "omega", omega)
  base_omega = _check_omega(fn, "base_omega", base_omega)
  b = _check_count(fn, "batch_size", batch_size)
  n = _check_count(fn, "num_workers", num_workers)
  b0 = _check_count(fn, "base_batch_size", base_batch_size)
  n0 = _check_count(fn, "base_num_workers", base_num_workers)
  return lr * ((1.0 + base_omega) / (1.0 + omega)) * ((b * n) / (b0 * n0))


def sign_noise_scale(lr: float, *, batch_size: int, num_workers: int) -> float:
  r"""DSignSGD's SDE noise scale eta / (N sqrt(B)), the quantity `sign_scaled_lr` keeps.

  Args:
    lr: the learning rate eta > 0.
    batch_size: the per-worker batch size B >= 1.
    num_workers: the number of workers N >= 1.

  Returns:
    eta / (N sqrt(B)): the variance of the SDE's diffusion in the time tau = k eta sqrt(B)
    (see the module docstring).

  Example:
    >>> sign_noise_scale(0.1, batch_size=4, num_workers=5)
    0.01
  """
  fn = "sign_noise_scale"
  lr = _check_lr(fn, lr)
  b = _check_count(fn, "batch_size", batch_size)
  n = _check_count(fn, "num_workers", num_workers)
  return lr / (n * math.sqrt(b))


def sign_scaled_lr(
  lr: float,
  *,
  batch_size: int = 1,
  num_workers: int = 1,
  base_batch_size: int = 1,
  base_num_workers: int = 1,
) -> float:
  r"""The learning rate that keeps DSignSGD's dynamics: square root in B, linear in N.

  DSignSGD here is the mean of the N workers' signs (``bc.compress(bc.sign())`` over the
  worker axis). The returned rate keeps eta / (N sqrt(B)) equal to the reference's (derived
  from DSignSGD's SDE, for a small signal-to-noise ratio, in the module docstring):

  .. math::

    \eta = \mathrm{lr}\,\frac{N}{N_0}\,\sqrt{\frac{B}{B_0}} .

  The loss curves then match in the time tau = k eta sqrt(B).

  Args:
    lr: the reference learning rate > 0.
    batch_size: the new per-worker batch size B >= 1.
    num_workers: the new number of workers N >= 1.
    base_batch_size: the reference's B_0.
    base_num_workers: the reference's N_0.

  Returns:
    The new learning rate.

  Raises:
    ValueError: lr <= 0 or not finite, a batch size or a number of workers that is not an
      int >= 1.

  Example:
    >>> sign_scaled_lr(0.01, batch_size=16, base_batch_size=4)  # 4x the batch: 2x the rate
    0.02

  References:
    Compagnoni, Islamov, Proske, Lucchi, Unbiased and sign compression in distributed
    learning: comparing noise resilience via SDEs, AISTATS 2025, arXiv:2502.17009.
  """
  fn = "sign_scaled_lr"
  lr = _check_lr(fn, lr)
  b = _check_count(fn, "batch_size", batch_size)
  n = _check_count(fn, "num_workers", num_workers)
  b0 = _check_count(fn, "base_batch_size", base_batch_size)
  n0 = _check_count(fn, "base_num_workers", base_num_workers)
  return lr * (n / n0) * math.sqrt(b / b0)
