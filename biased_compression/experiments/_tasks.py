"""Tasks: n workers' data and a loss, with the optimum where it is known.

A `Task` is plain data for the runner: the initial parameters, a per-worker data pytree
with a leading worker axis of n (equal shard sizes), the loss of parameters on one worker's
data (or on a mini-batch of it), optional test data and accuracy, and the optimal value f*
of the global training loss f(x) = (1/n) sum_i f_i(x) when it is known (quadratics, linear
regression, L2-regularised logistic regression: computed here by Newton's method in float64).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from biased_compression.experiments import _models

__all__ = ["Task", "quadratic", "linear_regression", "logistic_regression", "TASKS", "make_task"]

Params = Any
Data = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """n workers' data and a loss.

  Attributes:
    name: a short description (shown in tables and plots).
    params: the initial parameters (a pytree of float32 arrays).
    loss: ``loss(params, data) -> scalar``: the mean loss on one worker's data (or a
      mini-batch of it: every leaf's leading axis is then the sample axis).
    train: the workers' data, a pytree whose leaves have a leading worker axis of n.
    test: data without a worker axis for the test loss and accuracy, or None.
    accuracy: ``accuracy(params, data) -> scalar`` in [0, 1], or None.
    f_star: min_x (1/n) sum_i f_i(x) when known, else None.
    batchable: whether the second axis of ``train``'s leaves is a sample axis (mini-batch
      gradients draw from it); False for tasks given as matrices (quadratics).
    info: constants for the studies (``mu``, ``L``, ``d``, ...).
  """

  name: str
  params: Params
  loss: Callable[[Params, Data], jax.Array]
  train: Data
  test: Data | None = None
  accuracy: Callable[[Params, Data], jax.Array] | None = None
  f_star: float | None = None
  batchable: bool = True
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def num_workers(self) -> int:
    return int(jax.tree.leaves(self.train)[0].shape[0])

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(self.params))

  def global_loss(self, params: Params) -> jax.Array:
    """f(x) = (1/n) sum_i f_i(x) on the full training data."""
    return jnp.mean(jax.vmap(self.loss, in_axes=(None, 0))(params, self.train))


def _check_int(fn: str, name: str, value, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{fn}: {name} must be an int >= {low}, got {value!r}")
  return int(value)


def _check_float(fn: str, name: str, value, low: float, *, open_low: bool = False) -> float:
  ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
  ok = ok and math.isfinite(value) and (value > low if open_low else value >= low)
  if not ok:
    sign = ">" if open_low else ">="
    raise ValueError(f"{fn}: {name} must be a finite number {sign} {low}, got {value!r}")
  return float(value)


def check_test_fraction(fn: str, test_fraction) -> float:
  """A held-out fraction in [0, 1)."""
  test_fraction = _check_float(fn, "test_fraction", test_fraction, 0.0)
  if test_fraction >= 1.0:
    raise ValueError(f"{fn}: test_fraction must be in [0, 1), got {test_fraction!r}")
  return test_fraction


def shards(fn: str, data, n: int, *, heterogeneous: bool, test_fraction: float, seed: int):
  """(x_w, y_w, test): n equal training shards (`worker_split`) and the held-out `Dataset`
  (a stratified ``test_fraction`` of ``data``), or None for the test part when it is 0."""
  from biased_compression.experiments import _data

  if test_fraction > 0:
    train, test = _data.split(data, fraction=test_fraction, seed=seed)
  else:
    train, test = data, None
  if n > train.y.shape[0]:
    raise ValueError(
      f"{fn}: num_workers={n} but the training part of {data.name!r} has only "
      f"{train.y.shape[0]} samples (one per worker at least)"
    )
  x_w, y_w = _data.worker_split(train.x, train.y, n, heterogeneous=heterogeneous, seed=seed)
  return x_w, y_w, test


def quadratic(
  num_workers: int = 8,
  dim: int = 20,
  *,
  mu: float = 0.1,
  smoothness: float = 1.0,
  heterogeneity: float = 1.0,
  seed: int = 0,
) -> Task:
  """f_i(x) = 1/2 (x - c_i)^T A_i (x - c_i): strongly convex, with f* known exactly.

  Each A_i is a random symmetric matrix with eigenvalues in [mu, L]; the centres c_i are
  drawn with spread ``heterogeneity`` around a common point (0: identical workers). The
  minimiser of the mean is x* = (sum A_i)^-1 sum A_i c_i. ``info`` holds ``mu``, ``L`` (of
  the global f) and ``x_star``.

  Args:
    num_workers: n >= 1.
    dim: d >= 1.
    mu: smallest eigenvalue of each A_i, > 0.
    smoothness: largest eigenvalue L >= mu.
    heterogeneity: standard deviation of the centres c_i, >= 0.
    seed: the draw.
  """
  fn = "quadratic"
  n, d = _check_int(fn, "num_workers", num_workers, 1), _check_int(fn, "dim", dim, 1)
  mu = _check_float(fn, "mu", mu, 0.0, open_low=True)
  big_l = _check_float(fn, "smoothness", smoothness, mu)
  spread = _check_float(fn, "heterogeneity", heterogeneity, 0.0)
  rng = np.random.default_rng(seed)
  mats, centres = [], []
  for _ in range(n):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.linspace(mu, big_l, d) if d > 1 else np.array([big_l])
    mats.append((q * eig) @ q.T)
    centres.append(1.0 + spread * rng.normal(size=d))
  a, c = np.stack(mats), np.stack(centres)
  a_sum = a.sum(0)
  x_star = np.linalg.solve(a_sum, np.einsum("nij,nj->i", a, c))
  diff = x_star[None] - c
  f_star = float(np.mean(0.5 * np.einsum("ni,nij,nj->n", diff, a, diff)))
  eigs = np.linalg.eigvalsh(a_sum / n)

  def loss(x, data):
    a_i, c_i = data
    r = x - c_i
    return 0.5 * r @ (a_i @ r)

  return Task(
    name=f"quadratic(n={n}, d={d})",
    params=jnp.zeros(d, jnp.float32),
    loss=loss,
    train=(jnp.asarray(a, jnp.float32), jnp.asarray(c, jnp.float32)),
    f_star=f_star,
    batchable=False,
    info={"mu": float(eigs[0]), "L": float(eigs[-1]), "d": d, "x_star": x_star},
  )


def linear_regression(
  num_workers: int = 8,
  dim: int = 20,
  *,
  samples_per_worker: int = 50,
  noise: float = 0.1,
  heterogeneity: float = 0.0,
  seed: int = 0,
) -> Task:
  """Least squares, f_i(x) = 1/(2m) ||A_i x - b_i||^2, on synthetic data with f* known.

  Rows of A_i are Gaussian, b_i = A_i (x_true + heterogeneity * z_i) + noise; the optimum of
  the mean is the least-squares solution over all the data (numpy's ``lstsq`` in float64).

  Args:
    num_workers: n >= 1.
    dim: d >= 1.
    samples_per_worker: m >= 1.
    noise: standard deviation of the label noise, >= 0.
    heterogeneity: spread of each worker's own true model around the common one, >= 0.
    seed: the draw.
  """
  fn = "linear_regression"
  n, d = _check_int(fn, "num_workers", num_workers, 1), _check_int(fn, "dim", dim, 1)
  m = _check_int(fn, "samples_per_worker", samples_per_worker, 1)
  noise = _check_float(fn, "noise", noise, 0.0)
  spread = _check_float(fn, "heterogeneity", heterogeneity, 0.0)
  rng = np.random.default_rng(seed)
  x_true = rng.normal(size=d)
  a = rng.normal(size=(n, m, d))
  models = x_true[None] + spread * rng.normal(size=(n, d))
  b = np.einsum("nmd,nd->nm", a, models) + noise * rng.normal(size=(n, m))
  x_star = np.linalg.lstsq(a.reshape(n * m, d), b.reshape(-1), rcond=None)[0]
  f_star = float(0.5 * np.mean((a.reshape(n * m, d) @ x_star - b.reshape(-1)) ** 2))
  eigs = np.linalg.eigvalsh(a.reshape(n * m, d).T @ a.reshape(n * m, d) / (n * m))

  def loss(x, data):
    a_i, b_i = data
    return 0.5 * jnp.mean((a_i @ x - b_i) ** 2)

  return Task(
    name=f"linear regression(n={n}, d={d}, m={m})",
    params=jnp.zeros(d, jnp.float32),
    loss=loss,
    train=(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)),
    f_star=f_star,
    info={"mu": float(eigs[0]), "L": float(eigs[-1]), "d": d, "x_star": x_star},
  )


def _logistic_loss(x, a, y, l2, nonconvex):
  z = (a @ x) * (2.0 * y - 1.0)
  value = jnp.mean(jax.nn.softplus(-z)) + 0.5 * l2 * jnp.sum(x * x)
  if nonconvex:
    value = value + nonconvex * jnp.sum(x * x / (1.0 + x * x))
  return value


def _newton_optimum(a: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> float:
  """min of the L2-regularised logistic loss over all the data, by Newton in float64."""
  s = 2.0 * y - 1.0
  x = np.zeros(a.shape[1])

  def value(x):
    return np.mean(np.logaddexp(0.0, -(a @ x) * s)) + 0.5 * l2 * x @ x

  for _ in range(iters):
    z = (a @ x) * s
    p = 1.0 / (1.0 + np.exp(z))  # sigmoid(-z)
    grad = -(a.T @ (p * s)) / len(y) + l2 * x
    w = p * (1.0 - p)
    hess = (a.T * w) @ a / len(y) + l2 * np.eye(a.shape[1])
    step = np.linalg.solve(hess, grad)
    x = x - step
    if np.linalg.norm(step) < 1e-12 * (1.0 + np.linalg.norm(x)):
      break
  return float(value(x))


def logistic_regression(
  dataset: Any = "breast_cancer",
  num_workers: int = 8,
  *,
  heterogeneous: bool = True,
  l2: float = 1e-3,
  nonconvex: float = 0.0,
  test_fraction: float = 0.2,
  seed: int = 0,
) -> Task:
  """Binary logistic regression split over n workers, as in the EF21 / DIANA experiments.

  f_i(x) = (1/m) sum_j log(1 + exp(-s_j a_j^T x)) + (l2 / 2) ||x||^2
  + nonconvex * sum_k x_k^2 / (1 + x_k^2), with s_j = +-1. The data are split into a test
  part and n equal training shards: ``heterogeneous=True`` sorts the samples by label first
  (each worker sees mostly one class), False splits i.i.d. f* is computed (Newton's method on
  all the training data, float64) when the loss is strongly convex (``l2 > 0`` and no
  non-convex term); the conditioning is controlled by ``l2``.

  Args:
    dataset: a bundled set's name (``"breast_cancer"``, ``"digits_binary"``, ...; see
      `biased_compression.experiments.bundled`), ``"libsvm:PATH"``, or a ``Dataset`` with
      two classes (e.g. from `load_libsvm`).
    num_workers: n >= 1.
    heterogeneous: the split by sorted labels (True) or i.i.d. (False).
    l2: the L2 regularisation, >= 0.
    nonconvex: the weight lambda >= 0 of the non-convex regulariser.
    test_fraction: the held-out part, in [0, 1).
    seed: the split.
  """
  from biased_compression.experiments import _data

  fn = "logistic_regression"
  n = _check_int(fn, "num_workers", num_workers, 1)
  l2 = _check_float(fn, "l2", l2, 0.0)
  nonconvex = _check_float(fn, "nonconvex", nonconvex, 0.0)
  test_fraction = check_test_fraction(fn, test_fraction)
  data = _data.from_spec(dataset)
  if data.num_classes != 2:
    raise ValueError(
      f"{fn}: dataset {data.name!r} has {data.num_classes} classes; logistic regression "
      "needs two (e.g. 'breast_cancer' or 'digits_binary')"
    )
  x_w, y_w, test = shards(
    fn, data, n, heterogeneous=heterogeneous, test_fraction=test_fraction, seed=seed
  )
  a_all = np.asarray(x_w, np.float64).reshape(-1, x_w.shape[-1])
  y_all = np.asarray(y_w, np.float64).reshape(-1)
  f_star = _newton_optimum(a_all, y_all, l2) if l2 > 0 and nonconvex == 0 else None
  smooth = float(np.linalg.eigvalsh(a_all.T @ a_all / len(y_all))[-1] / 4 + l2 + 2 * nonconvex)

  def loss(x, batch):
    a, y = batch
    return _logistic_loss(x, a, y.astype(jnp.float32), l2, nonconvex)

  def accuracy(x, batch):
    a, y = batch
    return jnp.mean(((a @ x) > 0) == (y > 0))

  split = "sorted-label" if heterogeneous else "iid"
  return Task(
    name=f"logistic regression({data.name}, n={n}, {split})",
    params=jnp.zeros(x_w.shape[-1], jnp.float32),
    loss=loss,
    train=(jnp.asarray(x_w, jnp.float32), jnp.asarray(y_w, jnp.int32)),
    test=None if test is None else (jnp.asarray(test.x, jnp.float32), jnp.asarray(test.y)),
    accuracy=accuracy,
    f_star=f_star,
    info={"mu": l2, "L": smooth, "d": int(x_w.shape[-1])},
  )


TASKS = {
  "quadratic": quadratic,
  "linear_regression": linear_regression,
  "logistic": logistic_regression,
  "mlp": _models.mlp_classification,
  "cnn": _models.cnn_classification,
}


def make_task(name: str, num_workers: int, **options) -> Task:
  """The task ``name`` of `TASKS` for n workers, with its options (as a config names it)."""
  if name not in TASKS:
    raise ValueError(f"make_task: unknown task {name!r}; choose from {', '.join(TASKS)}")
  try:
    return TASKS[name](num_workers=num_workers, **options)
  except TypeError as e:
    raise ValueError(f"make_task: task {name!r}: {e}") from None
