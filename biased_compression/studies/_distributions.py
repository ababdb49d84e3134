r"""Claim 4: at equal bits, biased compressors have a smaller error than unbiased ones.

Beznosikov et al. explain why biased compressors beat their unbiased counterparts on the
gradients met in practice by the relative error ``E||C(x) - x||^2 / ||x||^2`` on vectors
with i.i.d. coordinates of several distributions and on real gradients: Top-k keeps the
largest entries, so its error is smallest exactly where a few coordinates carry most of the
energy (heavy tails), while the unbiased operators must be scaled down by ``1/(1 + omega)``
before they are contractive and then lose energy on every vector. This module measures that
comparison by Monte Carlo for five biased/unbiased pairs at (nearly) equal bits, on
Gaussian, Laplace, uniform, Student-t and sparse vectors and on gradients of an MLP trained
on digits, and gives the closed forms the estimates are tested against.

References:
  Beznosikov, Horvath, Richtarik, Safaryan, On Biased Compression for Distributed Learning,
  2023, https://arxiv.org/abs/2002.12410
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

import biased_compression as bc
from biased_compression.experiments import _output
from biased_compression.experiments import _tasks
from biased_compression.studies import _claims

__all__ = [
  "CLAIM",
  "pairs",
  "Pair",
  "error_moments",
  "gradient_distributions",
  "mlp_gradients",
  "rand_k_unscaled",
  "relative_error",
  "sample_vectors",
  "scaled_sign_error",
  "top_k_equal_magnitudes",
]

_PAPER = (
  "Beznosikov, Horváth, Richtárik, Safaryan, On Biased Compression for Distributed Learning, "
  "2023, https://arxiv.org/abs/2002.12410"
)
_LEVELS = 7  # the natural dithering levels of the paper's Top-k + natural dithering
# floats per lax.map chunk of compressor draws (keeps the full size within a few 100 MB)
_CHUNK_FLOATS = 1 << 23


# -- closed forms ---------------------------------------------------------------------------


def _check_dk(fn: str, d: Any, k: Any) -> tuple[int, int]:
  for name, value in (("d", d), ("k", k)):
    _tasks._check_int(fn, name, value, 1)
  if k > d:
    raise ValueError(f"{fn}: k must be at most d = {d}, got {k!r}")
  return int(d), int(k)


def top_k_equal_magnitudes(d: int, k: int) -> float:
  r"""Top-k's relative error on a vector whose d entries have equal magnitudes: 1 - k/d.

  Top-k keeps k of the d equal energies, so ``||C(x) - x||^2 / ||x||^2 = (d - k)/d``: the
  worst case of its class B3(d/k), met with equality.

  Args:
    d: the dimension, >= 1.
    k: the number of kept entries, 1 <= k <= d.

  Example:
    >>> top_k_equal_magnitudes(100, 10)
    0.9
  """
  d, k = _check_dk("top_k_equal_magnitudes", d, k)
  return 1.0 - k / d


def rand_k_unscaled(d: int, k: int) -> float:
  r"""Unbiased rand-k's expected relative error: d/k - 1, for every non-zero x.

  With S a uniform k-subset, C(x) = (d/k) sum_{i in S} x_i e_i and P(i in S) = k/d:

  .. math::
    E||C(x) - x||^2 = \sum_i \big[\tfrac{k}{d}(\tfrac{d}{k} - 1)^2 + (1 - \tfrac{k}{d})\big]
    x_i^2 = (\tfrac{d}{k} - 1)||x||^2,

  so rand-k is in U(d/k - 1) with equality on every vector.

  Args:
    d: the dimension, >= 1.
    k: the number of kept entries, 1 <= k <= d.

  Example:
    >>> rand_k_unscaled(100, 10)
    9.0
  """
  d, k = _check_dk("rand_k_unscaled", d, k)
  return d / k - 1.0


def scaled_sign_error(x: Any) -> float:
  r"""Scaled sign's relative error on x: 1 - ||x||_1^2 / (d ||x||_2^2).

  C(x) = (||x||_1 / d) sign(x) gives ``<C(x), x> = ||C(x)||^2 = ||x||_1^2 / d``, hence
  ``||C(x) - x||^2 = ||x||^2 - ||x||_1^2 / d``. The ratio ``||x||_1^2 / (d ||x||^2)`` (the
  vector's "density": 1 for equal magnitudes, about k/d for a k-sparse vector, 2/pi for
  Gaussian entries) is also this study's measure of how heavy-tailed a vector is.
  Computed in float64 after scaling x by its largest magnitude (no overflow).

  Args:
    x: a non-zero array (any shape, seen as a vector of d = x.size entries).

  Raises:
    ValueError: for an all-zero, empty or non-finite x.

  Example:
    >>> scaled_sign_error([1.0, -1.0, 1.0, -1.0])
    0.0
  """
  v = np.asarray(x, np.float64).reshape(-1)
  if v.size == 0 or not np.all(np.isfinite(v)) or not np.any(v):
    raise ValueError(f"scaled_sign_error: x must be finite, non-empty and non-zero, got {x!r}")
  v = v / np.max(np.abs(v))
  return float(1.0 - np.sum(np.abs(v)) ** 2 / (v.size * np.dot(v, v)))


# -- Monte-Carlo estimates ------------------------------------------------------------------


def _normalise(xs: jax.Array) -> jax.Array:
  """Each row divided by the power of two at its largest magnitude.

  Every operator here commutes with an exact power-of-two scaling (exponential rounding only
  with those), so the errors are unchanged while ``||x||^2 <= d`` cannot overflow float32.
  """
  top = jnp.max(jnp.abs(xs), axis=-1, keepdims=True)
  _, e = jnp.frexp(jnp.where(top > 0, top, 1.0))
  return jnp.ldexp(xs, -e)


@functools.partial(jax.jit, static_argnames=("compressor", "draws"))
def _moments(compressor: bc.Compressor, xs: jax.Array, key: jax.Array, scale: jax.Array, draws):
  """Per draw and row: ||C - x||^2, ||sC - x||^2, ||C||^2, <sC - x, C>, all over ||x||^2."""
  xs = _normalise(xs.astype(jnp.float32))
  norm2 = jnp.sum(xs * xs, axis=-1)
  safe = jnp.where(norm2 > 0, norm2, 1.0)  # an all-zero row reports zeros, never NaN

  def one_draw(k):
    keys = jax.random.split(k, xs.shape[0])
    if compressor.needs_key:
      ys = jax.vmap(lambda x, kk: compressor.compress(x, key=kk))(xs, keys)
    else:
      ys = jax.vmap(compressor.compress)(xs)
    ys = ys.astype(jnp.float32)
    r = ys - xs
    rs = scale * ys - xs
    out = jnp.stack(
      [
        jnp.sum(r * r, -1),
        jnp.sum(rs * rs, -1),
        jnp.sum(ys * ys, -1),
        jnp.sum(ys * rs, -1),
      ],
      axis=-1,
    )
    return out / safe[:, None]

  chunk = max(1, min(draws, _CHUNK_FLOATS // max(1, xs.size)))
  return jax.lax.map(one_draw, jax.random.split(key, draws), batch_size=chunk)


def _check_positive_int(fn: str, name: str, value: Any) -> int:
  return _tasks._check_int(fn, name, value, 1)


def _check_vectors(fn: str, x: Any) -> jax.Array:
  xs = jnp.asarray(x, jnp.float32)
  if xs.ndim not in (1, 2) or xs.shape[-1] == 0:
    raise ValueError(f"{fn}: x must be a non-empty vector or a (n, d) batch, got shape {xs.shape}")
  arr = np.asarray(xs)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{fn}: x must be finite")
  if not np.all(np.any(arr.reshape(-1, arr.shape[-1]) != 0, axis=-1)):
    raise ValueError(f"{fn}: x must be non-zero (every row), the relative error is 0/0")
  return xs


def error_moments(
  compressor: bc.Compressor,
  x: Any,
  *,
  draws: int = 64,
  key: jax.Array | None = None,
  scale: float = 1.0,
) -> dict[str, np.ndarray]:
  r"""Per-draw Monte-Carlo moments of a compressor on x, relative to ||x||^2.

  For ``draws`` independent keys (one draw for a deterministic operator), the compressor is
  applied to every row of x (jitted once per compressor and shape, vmapped over rows, mapped
  over draws in chunks) and the four quantities below are returned, each divided by
  ``||x||^2``. The rows are first divided by an exact power of two, which no operator sees.

  Args:
    compressor: a `biased_compression.Compressor`.
    x: a non-zero, finite vector of d entries, or a (n, d) batch of them.
    draws: the number of keys, >= 1.
    key: a JAX PRNG key (default ``jax.random.key(0)``).
    scale: the factor s of ``err_scaled``, a positive float.

  Returns:
    ``{"err": ||C(x) - x||^2, "err_scaled": ||s C(x) - x||^2, "sq": ||C(x)||^2,
    "cross": <s C(x) - x, C(x)>}``, float64 arrays of shape (draws,) for a vector, (draws, n)
    for a batch.

  Raises:
    ValueError: for a bad argument (the message names it).
  """
  fn = "error_moments"
  if not isinstance(compressor, bc.Compressor):
    raise ValueError(f"{fn}: compressor must be a Compressor, got {compressor!r}")
  draws = _check_positive_int(fn, "draws", draws)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
    raise ValueError(f"{fn}: scale must be a positive finite float, got {scale!r}")
  xs = _check_vectors(fn, x)
  key = jax.random.key(0) if key is None else key
  n_draws = draws if compressor.needs_key else 1
  batch = xs if xs.ndim == 2 else xs[None]
  out = np.asarray(_moments(compressor, batch, key, jnp.float32(scale), n_draws), np.float64)
  if xs.ndim == 1:
    out = out[:, 0]
  names = ("err", "err_scaled", "sq", "cross")
  return {n: out[..., i] for i, n in enumerate(names)}


def _optimal(err_scaled: np.ndarray, sq: np.ndarray, cross: np.ndarray) -> np.ndarray:
  r"""min_t E||tC - x||^2 / ||x||^2 from the means (over axis 0) of the per-draw moments.

  With A = E||C||^2 and f(t) = E||tC - x||^2 a quadratic in t, expanding around the scale s
  of the moments, f(t) = f(s) + 2(t - s) E<sC - x, C> + (t - s)^2 A, gives the minimum
  ``f(s) - E<sC - x, C>^2 / A`` (= ||x||^2 - E<C, x>^2 / A). Written around s instead of as
  1 - E<C, x>^2 / A, it keeps the precision of f(s) when s is near the optimum (exactly for
  Top-k at s = 1, whose C is orthogonal to C - x; 1/(1 + omega) for an unbiased C) rather
  than cancelling two numbers near ||x||^2.
  """
  e, a, c = err_scaled.mean(0), sq.mean(0), cross.mean(0)
  safe = np.where(a > 0, a, 1.0)
  return np.where(a > 0, np.clip(e - c * c / safe, 0.0, e), 1.0)


def relative_error(
  compressor: bc.Compressor,
  x: Any,
  *,
  draws: int = 64,
  key: jax.Array | None = None,
  scale: float | str = 1.0,
) -> float:
  r"""Monte-Carlo estimate of the expected relative error E||s C(x) - x||^2 / ||x||^2.

  The mean over ``draws`` keys of the compressor's randomness (exact for a deterministic
  operator), computed by `error_moments`. The scale s is

  * a positive float (1.0: the operator as it is);
  * ``"contractive"``: s = 1/beta with C in B2(gamma, beta), i.e. 1/(1 + omega) for C in
    U(omega): the scaling that makes an unbiased operator contractive (``bc.contractive``);
  * ``"optimal"``: the s minimising the expected error, which gives
    ``1 - (E<C(x), x>)^2 / (||x||^2 E||C(x)||^2)`` (how much of x the best multiple of C(x)
    explains; the scaling of C does not change it).

  Args:
    compressor: a `biased_compression.Compressor`.
    x: a non-zero, finite vector.
    draws: the number of keys, >= 1.
    key: a JAX PRNG key (default ``jax.random.key(0)``).
    scale: a positive float, ``"contractive"`` or ``"optimal"``.

  Returns:
    The estimate, a float >= 0.

  Raises:
    ValueError: for a bad argument (the message names it), or ``"contractive"`` for an
      operator in no class (``sign``).
  """
  fn = "relative_error"
  xs = _check_vectors(fn, x)
  if xs.ndim != 1:
    raise ValueError(f"{fn}: x must be a vector, got shape {xs.shape}")
  constants = bc.b2_constants(compressor, int(xs.size))
  if scale == "contractive":
    if constants is None:
      raise ValueError(
        f"{fn}: scale='contractive' needs a compressor in a class, got {compressor!r}"
      )
    s = 1.0 / constants[1]
  elif scale == "optimal":
    s = 1.0 if constants is None else 1.0 / constants[1]  # a start near the optimum
  elif isinstance(scale, str):
    raise ValueError(f"{fn}: scale must be a float, 'contractive' or 'optimal', got {scale!r}")
  else:
    s = scale
  m = error_moments(compressor, xs, draws=draws, key=key, scale=s)
  if scale == "optimal":
    return float(_optimal(m["err_scaled"], m["sq"], m["cross"]))
  return float(m["err_scaled"].mean())


# -- the vectors ----------------------------------------------------------------------------


def _distribution_names(dofs: Sequence[float], sparsity: float) -> list[str]:
  return [
    "uniform",
    "gaussian",
    "laplace",
    *(f"student_t:{_num(v)}" for v in sorted(dofs, reverse=True)),
    f"sparse:{_num(sparsity)}",
  ]


def _num(v: float) -> str:
  return f"{v:g}"


def _label(name: str) -> str:
  if name.startswith("student_t:"):
    return f"t(ν={name.split(':')[1]})"
  if name.startswith("sparse:"):
    return f"sparse(p={name.split(':')[1]})"
  if name.startswith("mlp:"):
    return f"MLP grad (step {name.split(':')[1]})"
  return name


def sample_vectors(distribution: str, d: int, n: int, key: jax.Array) -> jax.Array:
  r"""n vectors of d i.i.d. coordinates from a named distribution, float32 of shape (n, d).

  ``"gaussian"`` N(0, 1); ``"laplace"`` Laplace(0, 1); ``"uniform"`` U(-1, 1);
  ``"student_t:NU"`` Student-t with NU > 0 degrees of freedom (NU = 1 is Cauchy; the
  variance is infinite for NU <= 2, the kurtosis for NU <= 4); ``"sparse:P"`` Bernoulli(P)
  times N(0, 1), P in (0, 1] (a row with no kept coordinate keeps one at random, so no row
  is zero).

  Args:
    distribution: one of the names above.
    d: the dimension, >= 1.
    n: the number of vectors, >= 1.
    key: a JAX PRNG key.

  Raises:
    ValueError: for a bad argument (the message names it).
  """
  fn = "sample_vectors"
  d = _check_positive_int(fn, "d", d)
  n = _check_positive_int(fn, "n", n)
  name, _, param = str(distribution).partition(":")
  try:
    value = float(param) if param else math.nan
  except ValueError:
    value = math.nan
  ok = (name in ("gaussian", "laplace", "uniform") and not param) or (
    (name == "student_t" and 0 < value < math.inf) or (name == "sparse" and 0 < value <= 1)
  )
  if not ok:
    raise ValueError(
      f"{fn}: distribution must be 'gaussian', 'laplace', 'uniform', 'student_t:NU' (NU > 0) "
      f"or 'sparse:P' (0 < P <= 1), got {distribution!r}"
    )
  return _sample(name, value, d, n, key)


@functools.partial(jax.jit, static_argnames=("name", "value", "d", "n"))
def _sample(name: str, value: float, d: int, n: int, key: jax.Array) -> jax.Array:
  # one compiled program per law (eager jax.random calls would compile op by op)
  shape = (n, d)
  if name == "gaussian":
    return jax.random.normal(key, shape, jnp.float32)
  if name == "laplace":
    return jax.random.laplace(key, shape, jnp.float32)
  if name == "uniform":
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)
  if name == "student_t":
    return jax.random.t(key, value, shape, jnp.float32)
  k_mask, k_val, k_pos = jax.random.split(key, 3)
  mask = jax.random.bernoulli(k_mask, value, shape)
  fallback = jax.nn.one_hot(jax.random.randint(k_pos, (n,), 0, d), d, dtype=bool)
  mask = jnp.where(jnp.any(mask, -1, keepdims=True), mask, fallback)
  return jnp.where(mask, jax.random.normal(k_val, shape, jnp.float32), 0.0)


def mlp_gradients(
  steps: Sequence[int], *, lr: float = 0.3, hidden: Sequence[int] = (64,), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  r"""Full gradients of an MLP on digits at iterates of plain gradient descent, flattened.

  The task is ``experiments.mlp_classification("digits", 1, hidden=hidden,
  heterogeneous=False, seed=seed)`` (softmax cross-entropy, NNX's initialisation); its
  parameters are flattened with ``jax.flatten_util.ravel_pytree`` and GD
  ``x_{t+1} = x_t - lr grad f(x_t)`` runs ``max(steps)`` steps in one jitted ``lax.scan``,
  keeping ``grad f(x_t)`` for t in ``steps`` (t = 0 is the initialisation).

  Args:
    steps: the iterates, ints >= 0 (non-empty).
    lr: the step size, a positive float.
    hidden: the MLP's hidden widths.
    seed: the split and the initialisation.

  Returns:
    ``(gradients, losses)``: float32 (len(steps), d) and the training loss at each iterate.

  Raises:
    ValueError: for a bad argument (the message names it).
    ImportError: without Flax.
  """
  fn = "mlp_gradients"
  steps = _check_steps(fn, steps)
  if not steps:
    raise ValueError(f"{fn}: steps must be non-empty, got {steps!r}")
  if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
    raise ValueError(f"{fn}: lr must be a positive float, got {lr!r}")
  from biased_compression import experiments as ex

  task = ex.mlp_classification("digits", 1, hidden=hidden, heterogeneous=False, seed=seed)
  flat0, unravel = jax.flatten_util.ravel_pytree(task.params)
  data = jax.tree.map(lambda a: a[0], task.train)

  @jax.jit
  def run(x0):
    def step(x, _):
      loss, g = jax.value_and_grad(lambda f: task.loss(unravel(f), data))(x)
      return x - lr * g, (loss, g)

    return jax.lax.scan(step, x0, None, length=max(steps) + 1)[1]

  losses, grads = run(flat0)
  idx = np.asarray(steps)
  return np.asarray(grads)[idx], np.asarray(losses)[idx]


def _check_steps(fn: str, steps: Any, name: str = "steps") -> tuple[int, ...]:
  if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
    raise ValueError(f"{fn}: {name} must be a sequence of ints >= 0, got {steps!r}")
  for s in steps:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
      raise ValueError(f"{fn}: {name} must be ints >= 0, got {steps!r}")
  return tuple(int(s) for s in steps)


# -- the pairs ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
  """A biased compressor and its counterpart at (about) the same bits.

  Attributes:
    name: the row label.
    biased: the biased operator, used as it is (each one here is contractive unscaled).
    counterpart: the unbiased operator (scaled by 1/(1 + omega) before the comparison), or,
      when ``counted`` is False, another biased operator at the same bits.
    counted: whether the pair is biased against unbiased (and enters the verdict).
  """

  name: str
  biased: Any
  counterpart: Any
  counted: bool = True

  def build(self, d: int) -> tuple[bc.Compressor, bc.Compressor]:
    # a member is a compressor, or a function of d giving one (Top-k at another's bits)
    b = self.biased if isinstance(self.biased, bc.Compressor) else self.biased(d)
    c = self.counterpart if isinstance(self.counterpart, bc.Compressor) else self.counterpart(d)
    return b, c


def _top_k_same_bits(target: bc.Compressor):
  """Top-k with the largest k whose bits at d do not exceed ``target``'s."""

  def make(d: int) -> bc.Compressor:
    budget = target.bits(d)
    per = bc.top_k(k=1).bits(d)  # k values and k indices: linear in k
    return bc.top_k(k=max(1, min(d, budget // per)))

  return make


def pairs(ratio: float, tnd_ratio: float) -> list[Pair]:
  r"""The compared pairs, for Top-k's ``ratio`` and Top-k + natural dithering's ``tnd_ratio``.

  1. Top-k vs rand-k, the same k = ratio·d (the same bits: k values and k indices).
  2. Nearest vs random exponential rounding, base 2 (``exponential_rounding(unbiased=False)``
     vs ``natural_compression()``; 9 bits per coordinate each).
  3. Scaled sign (32 + d bits) vs standard dithering with s = 1 (32 + 2d bits: the coarsest
     dithering, so the unbiased member gets twice the bits).
  4. Top-k + natural dithering (s = 7) vs rand-k + natural dithering, the same k.
  5. Top-k + natural dithering vs natural dithering alone (s = 1; at ``tnd_ratio = 0.1`` and
     d <= 65536 the bits are equal: 0.1 d (16 + 4) + 32 = 2d + 32).
  6. (Not counted: both biased.) Top-k + natural dithering vs Top-k at the same bits.
  """
  tnd = bc.top_k_natural_dithering(tnd_ratio, levels=_LEVELS)
  return [
    Pair("Top-k vs rand-k", bc.top_k(ratio), bc.rand_k(ratio)),
    Pair(
      "nearest vs random exp. rounding",
      bc.exponential_rounding(unbiased=False),
      bc.natural_compression(),
    ),
    Pair("scaled sign vs dithering(s=1)", bc.scaled_sign(), bc.standard_dithering(1)),
    Pair(
      "Top-k+ND vs rand-k+ND",
      tnd,
      bc.compose(bc.natural_dithering(_LEVELS), bc.rand_k(tnd_ratio)),
    ),
    Pair("Top-k+ND vs ND(s=1)", tnd, bc.natural_dithering(1)),
    Pair("Top-k+ND vs Top-k (same bits)", tnd, _top_k_same_bits(tnd), counted=False),
  ]


def _evaluate(c: bc.Compressor, xs: np.ndarray, key: jax.Array, draws: int, scale: float):
  """Per row of xs: the means of err, err_scaled and the optimal error (float64)."""
  m = error_moments(c, xs, draws=draws, key=key, scale=scale)
  opt = _optimal(m["err_scaled"], m["sq"], m["cross"])
  return m["err"].mean(0), m["err_scaled"].mean(0), opt


# -- the study ------------------------------------------------------------------------------


def _check_study(dim, vectors, draws, dofs, sparsity, ratio, tnd_ratio, mlp_steps, mlp_lr, seed):
  fn = "gradient_distributions"
  _check_positive_int(fn, "dim", dim)
  _check_positive_int(fn, "vectors", vectors)
  _check_positive_int(fn, "draws", draws)
  if dim < 2:
    raise ValueError(f"{fn}: dim must be at least 2, got {dim!r}")
  if isinstance(dofs, (str, bytes)) or not isinstance(dofs, Sequence):
    raise ValueError(f"{fn}: dofs must be a sequence of positive floats, got {dofs!r}")
  for v in dofs:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
      raise ValueError(f"{fn}: dofs must be positive finite floats, got {dofs!r}")
  if len(set(dofs)) != len(dofs):
    raise ValueError(f"{fn}: dofs must be distinct, got {dofs!r}")
  for name, value in (("sparsity", sparsity), ("ratio", ratio), ("tnd_ratio", tnd_ratio)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
      raise ValueError(f"{fn}: {name} must be a float in (0, 1], got {value!r}")
  _check_steps(fn, mlp_steps, "mlp_steps")
  if isinstance(mlp_lr, bool) or not isinstance(mlp_lr, (int, float)) or not 0 < mlp_lr < math.inf:
    raise ValueError(f"{fn}: mlp_lr must be a positive float, got {mlp_lr!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ValueError(f"{fn}: seed must be an int, got {seed!r}")


def gradient_distributions(
  *,
  dim: int = 4810,
  vectors: int = 4,
  draws: int = 64,
  dofs: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 10.0),
  sparsity: float = 0.1,
  ratio: float = 0.01,
  tnd_ratio: float = 0.1,
  mlp_steps: tuple[int, ...] = (0, 100, 400),
  mlp_lr: float = 0.3,
  seed: int = 0,
  show_progress: bool = True,
) -> _claims.Finding:
  r"""Relative errors of biased compressors and their unbiased counterparts at equal bits.

  **What is computed.** For each distribution (uniform, Gaussian, Laplace, Student-t with
  each ν of ``dofs``, Bernoulli(``sparsity``) × Gaussian; `sample_vectors`), ``vectors``
  vectors of ``dim`` i.i.d. coordinates, and the MLP's full gradients at the GD iterates
  ``mlp_steps`` (`mlp_gradients`, d = 4810), and for each pair of `pairs`, the Monte-Carlo
  mean over ``draws`` keys (`error_moments`) of the relative error

  .. math::
    e(C) = E\|C(x) - x\|^2 / \|x\|^2

  of the biased member C_b as it is, and of the unbiased member C_u ∈ U(ω) made
  contractive, C_u/(1 + ω) (``bc.contractive``; ω = ``C_u.omega(d)``, the worst case of the
  class). Averaged over the vectors of a distribution. The ratio e(C_u/(1+ω)) / e(C_b) is how
  many times smaller the biased error is. Also reported: the unscaled e(C_u) (rand-k's is
  d/k − 1) and, for both members, the optimally scaled error
  min_s e(sC) = 1 − (E⟨C(x), x⟩)² / (‖x‖² E‖C(x)‖²), which no choice of scaling can beat.
  Every distribution's tail heaviness is measured by its mean density
  ‖x‖₁²/(d‖x‖²) (1 − scaled sign's error: 1 for equal magnitudes, 2/π Gaussian, 1/2 Laplace,
  small for a few dominant entries); the figures order the distributions by it.

  Why biased should win (the paper's argument): Top-k's error is the energy outside the k
  largest entries, at most 1 − k/d and much less when a few entries dominate, while
  rand-k/(1+ω) = (k/d)·rand-k has error exactly 1 − k/d on every vector; generally an
  unbiased C_u/(1 + ω) has error 1 − (2 − (1 + ω_x)/(1 + ω))/(1 + ω), ω_x ≤ ω the variance
  on x, which is at least ω_x/(1+ω_x).

  **Verdict.** A comparison (a distribution or an MLP gradient, and one of the five
  biased-vs-unbiased pairs) is won when the biased error is smaller than the contractive
  unbiased one. *reproduced*: every comparison is won and the Top-k vs rand-k ratio is larger
  at the heaviest Student-t (smallest ν) than at the lightest (the "by more when heavy
  tailed" part; not checked with fewer than two ν); *partly*: at least half of the
  comparisons are won (the losers are named in ``measured``), or all are won without the
  trend; *not reproduced* otherwise. The Top-k + ND vs Top-k row (both biased) is reported,
  not counted.

  Args:
    dim: the dimension d of the synthetic vectors, >= 2.
    vectors: vectors per distribution, >= 1.
    draws: Monte-Carlo keys per random compressor, >= 1.
    dofs: the Student-t degrees of freedom, distinct positive floats.
    sparsity: the Bernoulli probability of the sparse distribution, in (0, 1].
    ratio: Top-k's and rand-k's k/d, in (0, 1].
    tnd_ratio: the k/d of Top-k + natural dithering and rand-k + natural dithering, in
      (0, 1]; 0.1 gives the bits of natural dithering with s = 1.
    mlp_steps: the GD iterates whose MLP gradients are compared (empty: no MLP, and the
      verdict then covers the synthetic vectors only).
    mlp_lr: the GD step size of the MLP.
    seed: the seed of the vectors, the keys and the MLP.
    show_progress: a progress bar over the compressors (on a terminal).

  Returns:
    The `Finding`: one row per (distribution, pair) with the bits per coordinate of each
    member, the errors and the ratios; figures ``ratio`` (per pair, against the tail
    heaviness, log y) and ``errors``; ``record`` with every error and the densities.

  Raises:
    ValueError: for a bad argument (the message names it).

  References:
    Beznosikov, Horváth, Richtárik, Safaryan, On Biased Compression for Distributed
    Learning, 2023, https://arxiv.org/abs/2002.12410
  """
  _check_study(dim, vectors, draws, dofs, sparsity, ratio, tnd_ratio, mlp_steps, mlp_lr, seed)
  dofs = tuple(float(v) for v in dofs)
  mlp_steps = tuple(int(s) for s in mlp_steps)
  key = jax.random.key(seed)
  k_vec, k_draw = jax.random.split(key)

  # the inputs: name -> rows, then one batch per dimension, so that each compressor
  # compiles once per dimension (once in all when dim is the MLP's 4810)
  names = _distribution_names(dofs, sparsity)
  inputs = {
    n: np.asarray(sample_vectors(n, dim, vectors, jax.random.fold_in(k_vec, i)))
    for i, n in enumerate(names)
  }
  mlp_loss = []
  if mlp_steps:
    grads, mlp_loss = mlp_gradients(mlp_steps, lr=mlp_lr, seed=seed)
    inputs.update({f"mlp:{s}": g[None] for s, g in zip(mlp_steps, grads, strict=True)})
  all_names = list(inputs)
  density = {n: float(np.mean([1.0 - scaled_sign_error(v) for v in x])) for n, x in inputs.items()}
  groups: dict[int, list[str]] = {}
  for n, x in inputs.items():
    groups.setdefault(x.shape[1], []).append(n)

  compared = pairs(ratio, tnd_ratio)
  results: dict[tuple[str, str], dict[str, Any]] = {}
  total = len(groups) * 2 * len(compared)
  with _output.progress(total=total, desc="compressors", disable=not show_progress) as bar:
    for gi, (d, group_names) in enumerate(groups.items()):
      xs = np.concatenate([inputs[n] for n in group_names])
      ends = np.cumsum([len(inputs[n]) for n in group_names])
      slices = {n: slice(e - len(inputs[n]), e) for n, e in zip(group_names, ends, strict=True)}
      cache: dict[tuple[bc.Compressor, float], tuple] = {}
      for pi, pair in enumerate(compared):
        b, u = pair.build(d)
        # C/(1 + omega), the factor of bc.contractive, for an unbiased counterpart
        scale_u = 1.0 if not u.unbiased else 1.0 / (1.0 + u.omega(d))
        for member, c, s in (("b", b, 1.0), ("u", u, scale_u)):
          if (c, s) not in cache:
            k = jax.random.fold_in(k_draw, 1000 * gi + 2 * pi + (member == "u"))
            cache[(c, s)] = _evaluate(c, xs, k, draws, s)
          bar.update(1)
        eb, _, ob = cache[(b, 1.0)]
        eu, eus, ou = cache[(u, scale_u)]
        for n in group_names:
          sl = slices[n]
          results[(n, pair.name)] = {
            "bits_b": b.bits(d) / d,
            "bits_u": u.bits(d) / d,
            "err_b": float(eb[sl].mean()),
            "err_u": float(eus[sl].mean()),
            "err_u_unscaled": float(eu[sl].mean()),
            "opt_b": float(ob[sl].mean()),
            "opt_u": float(ou[sl].mean()),
            "b_name": b.name,
            "u_name": (f"contractive({u.name})" if u.unbiased else u.name),
            "counted": pair.counted,
          }

  rows = []
  for pair in compared:
    for n in all_names:
      r = results[(n, pair.name)]
      rows.append(
        {
          "distribution": _label(n),
          "density": density[n],
          "pair": pair.name,
          "biased": r["b_name"],
          "counterpart": r["u_name"],
          "bits_b": r["bits_b"],
          "bits_u": r["bits_u"],
          "err_b": r["err_b"],
          "err_u": r["err_u"],
          "ratio": _ratio(r["err_u"], r["err_b"]),
          "err_u_unscaled": r["err_u_unscaled"],
          "opt_b": r["opt_b"],
          "opt_u": r["opt_u"],
          "ratio_opt": _ratio(r["opt_u"], r["opt_b"]),
          "counted": "yes" if pair.counted else "no (both biased)",
        }
      )

  verdict, measured = _judge(rows, compared, dofs, mlp_steps, ratio)
  columns = [
    ("distribution", "distribution", "{}"),
    ("density", "‖x‖₁²/(d‖x‖²)", "{:.3f}"),
    ("pair", "pair (biased vs counterpart)", "{}"),
    ("bits_b", "bits/coord (biased)", "{:.3f}"),
    ("bits_u", "bits/coord (counterpart)", "{:.3f}"),
    ("err_b", "biased error", "{:.4g}"),
    ("err_u", "counterpart error (unbiased: C/(1+ω))", "{:.4g}"),
    ("ratio", "ratio", "{:.3g}"),
    ("opt_b", "biased, opt. scale", "{:.4g}"),
    ("opt_u", "counterpart, opt. scale", "{:.4g}"),
    ("ratio_opt", "ratio, opt. scale", "{:.3g}"),
    ("counted", "in verdict", "{}"),
  ]
  order = sorted(all_names, key=lambda n: -density[n])
  figures = _figures(rows, compared, order, density)
  record = {
    "distributions": all_names,
    "labels": [_label(n) for n in all_names],
    "density": [density[n] for n in all_names],
    "mlp_steps": list(mlp_steps),
    "mlp_loss": [float(v) for v in mlp_loss],
    "mlp_dim": None if not mlp_steps else int(inputs[f"mlp:{mlp_steps[0]}"].shape[1]),
    "pairs": {
      p.name: {
        key: [results[(n, p.name)][key] for n in all_names]
        for key in ("err_b", "err_u", "err_u_unscaled", "opt_b", "opt_u", "bits_b", "bits_u")
      }
      for p in compared
    },
  }
  return _claims.Finding(
    verdict=verdict,
    measured=measured,
    columns=columns,
    rows=rows,
    figures=figures,
    record=record,
  )


def _ratio(num: float, den: float) -> float:
  if den > 0:
    return num / den
  return math.inf if num > 0 else 1.0


def _judge(rows, pairs, dofs, mlp_steps, ratio) -> tuple[str, str]:
  """The verdict by the rule of `gradient_distributions`, and the measured text."""
  counted = [r for r in rows if r["counted"] == "yes"]
  won = [r for r in counted if r["err_b"] < r["err_u"]]
  lost = [r for r in counted if not r["err_b"] < r["err_u"]]
  won_opt = sum(r["opt_b"] < r["opt_u"] for r in counted)
  by = {(r["distribution"], r["pair"]): r for r in rows}
  t_names = sorted(dofs, reverse=True)  # light to heavy
  t_labels = [_label(f"student_t:{_num(v)}") for v in t_names]
  first = pairs[0].name
  trend = None
  if len(t_names) >= 2:
    trend = by[(t_labels[-1], first)]["ratio"] > by[(t_labels[0], first)]["ratio"]
  if not lost and trend is not False:
    verdict = "reproduced"
  elif len(won) >= len(counted) / 2:
    verdict = "partly"
  else:
    verdict = "not reproduced"

  sents = []
  where = "including the MLP gradients" if mlp_steps else "(no MLP gradients in this run)"
  if lost:
    losers = "; ".join(f"{r['pair']} on {r['distribution']} ({r['ratio']:.3g})" for r in lost)
    sents.append(
      f"The biased member has the smaller error in {len(won)} of {len(counted)} "
      f"biased-vs-unbiased comparisons {where}; it loses {losers}."
    )
  else:
    sents.append(
      f"The biased member has the smaller error in all {len(counted)} biased-vs-unbiased "
      f"comparisons, on every distribution {where}."
    )
  if t_names:
    seq = ", ".join(
      f"{by[(lab, first)]['ratio']:.3g} at ν={_num(v)}"
      for lab, v in zip(t_labels, t_names, strict=True)
    )
    gauss = by[("gaussian", first)]["ratio"]
    sents.append(
      f"Top-k vs rand-k (k/d = {_num(ratio)}): the unbiased error is {gauss:.3g}× the biased "
      f"one on Gaussian vectors, and on Student-t {seq}"
      + (
        " (the gap grows with the tail)."
        if trend
        else (" (no growth with the tail)." if trend is False else ".")
      )
    )
    others = []
    for p in pairs[1:]:
      lo = by[(t_labels[0], p.name)]["ratio"]
      hi = by[(t_labels[-1], p.name)]["ratio"]
      word = "grows" if hi > lo else "shrinks"
      others.append(f"{p.name} {lo:.3g} → {hi:.3g} ({word})")
    sents.append(
      f"From ν={_num(t_names[0])} to ν={_num(t_names[-1])} the other ratios go: "
      + "; ".join(others)
      + "."
    )
  if mlp_steps:
    mlp_rows = [r for r in counted if r["distribution"].startswith("MLP")]
    worst = min(mlp_rows, key=lambda r: r["ratio"])
    tk = [by[(_label(f"mlp:{s}"), first)]["ratio"] for s in mlp_steps]
    sents.append(
      f"On the MLP gradients (GD steps {', '.join(map(str, mlp_steps))}; densities "
      + ", ".join(f"{by[(_label(f'mlp:{s}'), first)]['density']:.3f}" for s in mlp_steps)
      + f") Top-k's error is {min(tk):.3g}–{max(tk):.3g}× smaller than rand-k's, and the "
      f"smallest ratio of any pair is {worst['ratio']:.3g} ({worst['pair']}, "
      f"{worst['distribution']})."
    )
  sents.append(
    f"With both members optimally scaled the biased one still wins {won_opt} of {len(counted)}."
  )
  return verdict, " ".join(sents)


def _figures(rows, pairs, order, density) -> dict[str, Any]:
  from matplotlib.figure import Figure

  by = {(r["distribution"], r["pair"]): r for r in rows}
  labels = [_label(n) for n in order]
  xs = np.arange(len(order))
  fig = Figure(figsize=(9, 4.8))
  ax = fig.subplots()
  for p in pairs:
    ys = [by[(lab, p.name)]["ratio"] for lab in labels]
    style = "-o" if p.counted else "--s"
    ax.plot(xs, ys, style, label=p.name + ("" if p.counted else " (both biased)"))
  ax.axhline(1.0, color="k", lw=0.8, ls=":")
  ax.set_yscale("log")
  ax.set_xticks(xs, [f"{lab}\n{density[n]:.2f}" for lab, n in zip(labels, order, strict=True)])
  ax.tick_params(axis="x", labelrotation=45, labelsize=7)
  ax.set_xlabel("distribution, by density ‖x‖₁²/(d‖x‖²) (heavier tails to the right)")
  ax.set_ylabel("counterpart error / biased error")
  ax.set_title("How many times smaller the biased compressor's error is, at equal bits")
  ax.legend(fontsize=7)
  fig.tight_layout()

  fig2 = Figure(figsize=(10, 4.8))
  ax2 = fig2.subplots()
  # each operator once (Top-k + ND is the biased member of three pairs)
  curves: dict[str, tuple[list[float], bool]] = {}
  for p in pairs:
    biased = p.name.split(" vs ")[0]
    counter = p.name.split(" vs ")[1] + (" / (1+ω)" if p.counted else "")
    curves.setdefault(biased, ([by[(lab, p.name)]["err_b"] for lab in labels], True))
    curves.setdefault(counter, ([by[(lab, p.name)]["err_u"] for lab in labels], not p.counted))
  for i, (name, (ys, biased)) in enumerate(curves.items()):
    style = "-o" if biased else ":x"
    ax2.plot(xs, ys, style, color=f"C{i}", ms=4, label=name + (" (biased)" if biased else ""))
  ax2.set_yscale("log")
  ax2.set_xticks(xs, labels)
  ax2.tick_params(axis="x", labelrotation=45, labelsize=7)
  ax2.set_xlabel("distribution (heavier tails to the right)")
  ax2.set_ylabel("relative error E‖C(x) − x‖² / ‖x‖²")
  ax2.set_title("Relative errors: biased (solid) and unbiased, made contractive (dotted)")
  ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig2.tight_layout()
  return {"ratio": fig, "errors": fig2}


_DEFAULTS = dict(
  dim=(4810, 10000, "the dimension of the synthetic vectors (4810: the MLP's)"),
  vectors=(4, 16, "vectors per distribution"),
  draws=(64, 512, "Monte-Carlo draws per random compressor"),
  dofs=((1.0, 2.0, 3.0, 5.0, 10.0), None, "Student-t degrees of freedom"),
  sparsity=(0.1, None, "Bernoulli probability of the sparse distribution"),
  ratio=(0.01, None, "k/d of Top-k and rand-k"),
  tnd_ratio=(0.1, None, "k/d of Top-k + natural dithering (0.1: the bits of ND(s=1))"),
  mlp_steps=((0, 100, 400), (0, 100, 400, 1600), "GD iterates whose MLP gradients are compared"),
  mlp_lr=(0.3, None, "GD step size of the MLP"),
  seed=(0, None, "seed of the vectors, keys and MLP"),
)

CLAIM = _claims.Claim(
  name="gradient_distributions",
  number=4,
  title="Biased compressors have smaller errors on gradient-like vectors",
  paper=_PAPER,
  statement=(
    "At equal bits, biased compressors (Top-k, nearest rounding, scaled sign, Top-k + natural "
    "dithering) have a smaller relative error E‖C(x) − x‖²/‖x‖² than their unbiased "
    "counterparts scaled to be contractive (rand-k, natural compression, dithering, rand-k + "
    "natural dithering), and by more when the coordinates are heavy-tailed, as the gradients "
    "met in practice are."
  ),
  options={
    k: _claims.Option(default, help, full=full) for k, (default, full, help) in _DEFAULTS.items()
  },
  study=gradient_distributions,
)
