"""Gradient codes (Tandon et al., 2017) and stochastic gradient coding (Bitar et al., 2020).

The data are split into m parts with gradients g_1, ..., g_m; worker i holds some of them and
sends one message, the combination ``sum_j B[i, j] g_j`` with the n x m encoding matrix B
(``B[i, j] != 0`` only where worker i holds part j). With the non-stragglers S, the server
wants the full gradient ``sum_j g_j``:

* exactly, from any S with ``|S| >= n - s`` (`fractional_repetition`, `cyclic_repetition`):
  it needs a decoding vector a, zero off S, with ``a^T B = 1^T``; then
  ``sum_i a_i (B g)_i = sum_j g_j`` (`decoding_weights`);
* without bias, from whatever arrives (`sgc_cyclic`, SGC): each part is held by d workers
  with coefficient 1 and worker i straggles independently with probability p_i; the weights
  ``w_i = 1 / (d (1 - p_i))`` on the workers that arrive give
  ``E[sum_i w_i 1[i in S] (B g)_i] = sum_j g_j`` (`sgc_weights`).

References: R. Tandon, Q. Lei, A. G. Dimakis, N. Karampatziakis, "Gradient Coding: Avoiding
Stragglers in Distributed Learning", ICML 2017 (arXiv:1612.03301); R. Bitar, M. Wootters,
S. El Rouayheb, "Stochastic Gradient Coding for Straggler Mitigation in Distributed
Learning", IEEE JSAIT 2020.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class GradientCode:
  """A gradient code: who holds which part, and what each worker sends.

  Worker i sends ``(B g)_i = sum_j B[i, j] g_j``, a combination of the gradients of the parts
  it holds. The code is immutable (``B`` is a read-only copy) and hashed by identity, so it
  can be closed over or passed as a static argument of ``jax.jit``.

  Attributes:
    num_workers: n, the number of workers (rows of ``B``).
    num_parts: m, the number of parts of the data (columns of ``B``).
    B: the n x m encoding matrix, float64; ``B[i, j] != 0`` only where worker i holds part j.
    replication: how many workers hold each part.
    name: a short description, e.g. ``"cyclic_repetition(n=4, s=1)"``.

  Example:
    >>> from biased_compression import coding
    >>> code = coding.sgc_cyclic(4, 2)
    >>> code.B
    array([[1., 1., 0., 0.],
           [0., 1., 1., 0.],
           [0., 0., 1., 1.],
           [1., 0., 0., 1.]])
    >>> code.parts_of(3), code.replication
    ((0, 3), 2)
  """

  num_workers: int
  num_parts: int
  B: np.ndarray
  replication: int
  name: str = "gradient_code"

  def __post_init__(self):
    b = np.array(self.B, dtype=np.float64)
    if b.shape != (self.num_workers, self.num_parts):
      raise ValueError(
        f"B must have shape (num_workers, num_parts) = ({self.num_workers}, {self.num_parts}),"
        f" got {b.shape}"
      )
    if not np.all(np.isfinite(b)):
      raise ValueError("B must be finite")
    b.setflags(write=False)
    object.__setattr__(self, "B", b)
    # the rows as (part, coefficient) lists padded to the longest: encoding gathers the parts
    # a worker holds instead of multiplying by the whole (mostly zero) B
    width = max(1, int((b != 0).sum(axis=1).max(initial=0)))
    parts = np.zeros((self.num_workers, width), np.int32)
    coefs = np.zeros((self.num_workers, width))
    for i, row in enumerate(b):
      (held,) = np.nonzero(row)
      parts[i, : held.size], coefs[i, : held.size] = held, row[held]
    object.__setattr__(self, "_parts", parts)
    object.__setattr__(self, "_coefs", coefs)

  def parts_of(self, worker: int) -> tuple[int, ...]:
    """The parts worker ``worker`` holds: the columns where its row of ``B`` is nonzero."""
    if not 0 <= worker < self.num_workers:
      raise ValueError(f"worker must be in [0, {self.num_workers}), got {worker}")
    return tuple(int(j) for j in np.flatnonzero(self.B[worker]))

  def __repr__(self) -> str:
    return f"GradientCode({self.name})"


def _count(value: Any, name: str, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if value < low:
    raise ValueError(f"{name} must be >= {low}, got {value}")
  return int(value)


def _stragglers(n: Any, s: Any) -> tuple[int, int]:
  n = _count(n, "n", 1)
  s = _count(s, "s", 0)
  if s >= n:
    raise ValueError(f"s (the stragglers tolerated) must be < n = {n}, got {s}")
  return n, s


def fractional_repetition(n: int, s: int) -> GradientCode:
  """The fractional repetition code: n workers, n parts, any n - s workers decode.

  The workers form n / (s + 1) groups of s + 1; the workers of group k all hold parts
  ``k (s + 1), ..., k (s + 1) + s`` and send their sum (coefficients 1). Any n - s workers
  include one of every group, and the sum of one message per group is ``sum_j g_j``.

  Args:
    n: the number of workers (and of parts), >= 1.
    s: the number of stragglers tolerated, 0 <= s < n, with s + 1 dividing n.

  Returns:
    The code, with ``replication = s + 1``.

  Raises:
    ValueError: n < 1, s < 0, s >= n, or s + 1 not dividing n.

  Example:
    >>> from biased_compression import coding
    >>> coding.fractional_repetition(4, 1).B
    array([[1., 1., 0., 0.],
           [1., 1., 0., 0.],
           [0., 0., 1., 1.],
           [0., 0., 1., 1.]])
  """
  n, s = _stragglers(n, s)
  if n % (s + 1):
    raise ValueError(f"s + 1 must divide n: s + 1 = {s + 1}, n = {n}")
  groups = np.arange(n) // (s + 1)
  b = (groups[:, None] == groups[None, :]).astype(np.float64)
  return GradientCode(n, n, b, s + 1, f"fractional_repetition(n={n}, s={s})")


def cyclic_repetition(n: int, s: int, seed: int = 0) -> GradientCode:
  """The cyclic MDS code of Tandon et al. (Algorithm 2): any n - s workers decode.

  Worker i holds parts ``i, i + 1, ..., i + s (mod n)``. With a random s x n matrix H whose
  rows sum to zero (``H 1 = 0``), each row b_i of B is the null vector of H restricted to its
  support (s equations, s + 1 unknowns), scaled to unit norm and ``B[i, i] > 0``. Then every
  row lies in ``null(H)``, a space of dimension n - s containing 1, and with probability one
  any n - s rows are independent, so they span it and some a gives ``a^T B_S = 1^T``.

  Args:
    n: the number of workers (and of parts), >= 1.
    s: the number of stragglers tolerated, 0 <= s < n.
    seed: the seed of the random H.

  Returns:
    The code, with ``replication = s + 1``.

  Raises:
    ValueError: n < 1, s < 0 or s >= n.

  Example:
    >>> import numpy as np
    >>> from biased_compression import coding
    >>> code = coding.cyclic_repetition(5, 2)
    >>> code.parts_of(4)
    (0, 1, 4)
    >>> a = coding.decoding_weights(code, np.array([True, False, True, False, True]))
    >>> np.allclose(a @ code.B, 1.0)
    True
  """
  n, s = _stragglers(n, s)
  rng = np.random.default_rng(seed)
  supports = (np.arange(n)[:, None] + np.arange(s + 1)) % n
  for _ in range(100):
    h = rng.standard_normal((s, n))
    h[:, -1] = -h[:, :-1].sum(axis=1)
    b = np.zeros((n, n))
    for i, support in enumerate(supports):
      # the last right singular vector spans the null space of the s x (s + 1) block
      v = np.linalg.svd(h[:, support])[2][-1] if s else np.ones(1)
      b[i, support] = v * np.sign(v[0]) / np.linalg.norm(v)
    if np.all(np.abs(np.take_along_axis(b, supports, axis=1)) > 1e-6):
      break
  else:  # pragma: no cover - probability zero
    raise RuntimeError("no cyclic code with a full support found")
  return GradientCode(n, n, b, s + 1, f"cyclic_repetition(n={n}, s={s}, seed={seed})")


def sgc_cyclic(n: int, d: int) -> GradientCode:
  """The balanced cyclic allocation of stochastic gradient coding (SGC).

  Worker i holds parts ``i, i + 1, ..., i + d - 1 (mod n)`` and sends their sum
  (coefficients 1), so every part is held by exactly d workers. Decode with `sgc_weights`.

  Args:
    n: the number of workers (and of parts), >= 1.
    d: the replication, 1 <= d <= n.

  Returns:
    The code, with ``replication = d``.

  Raises:
    ValueError: n < 1, d < 1 or d > n.

  Example:
    >>> from biased_compression import coding
    >>> coding.sgc_cyclic(3, 2).B.sum(axis=0)
    array([2., 2., 2.])
  """
  n = _count(n, "n", 1)
  d = _count(d, "d", 1)
  if d > n:
    raise ValueError(f"d (the replication) must be <= n = {n}, got {d}")
  b = np.zeros((n, n))
  for i in range(n):
    b[i, (i + np.arange(d)) % n] = 1.0
  return GradientCode(n, n, b, d, f"sgc_cyclic(n={n}, d={d})")


def _check_parts(code: GradientCode, part_grads: Any) -> None:
  for leaf in jax.tree.leaves(part_grads):
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != code.num_parts:
      raise ValueError(
        f"part_grads must have a leading part axis of size num_parts = {code.num_parts}, got"
        f" a leaf of shape {jnp.shape(leaf)}"
      )


def encode(code: GradientCode, part_grads: Any, worker: Any) -> Any:
  """What one worker sends: ``sum_j B[worker, j] g_j``.

  Works under ``jit`` and ``vmap`` with ``worker`` a traced integer.

  Args:
    code: the gradient code.
    part_grads: a pytree of part gradients, each leaf with a leading part axis of size m.
    worker: the worker index, an int or a traced integer scalar.

  Returns:
    A pytree like ``part_grads`` without the part axis.

  Raises:
    ValueError: a leaf without a leading axis of size m.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from biased_compression import coding
    >>> code = coding.sgc_cyclic(3, 2)
    >>> g = jnp.array([1.0, 10.0, 100.0])
    >>> coding.encode(code, g, 2)
    Array(101., dtype=float32)
    >>> jax.jit(jax.vmap(lambda i: coding.encode(code, g, i)))(jnp.arange(3))
    Array([ 11., 110., 101.], dtype=float32)
  """
  _check_parts(code, part_grads)
  if _dense(code):
    row = jnp.asarray(code.B)[worker]
    return jax.tree.map(lambda g: jnp.tensordot(row.astype(g.dtype), g, axes=1), part_grads)
  parts, coefs = jnp.asarray(code._parts)[worker], jnp.asarray(code._coefs)[worker]
  return jax.tree.map(lambda g: jnp.tensordot(coefs.astype(g.dtype), g[parts], axes=1), part_grads)


def encode_all(code: GradientCode, part_grads: Any) -> Any:
  """What every worker sends, ``B g``: each leaf gets a leading worker axis of size n.

  A sparse B (each worker holding under a quarter of the parts) is applied by gathering the
  parts each worker holds (n x d part gradients read) instead of a dense n x m product.

  Example:
    >>> import jax.numpy as jnp
    >>> from biased_compression import coding
    >>> coding.encode_all(coding.fractional_repetition(2, 1), {"w": jnp.ones((2, 3))})["w"]
    Array([[2., 2., 2.],
           [2., 2., 2.]], dtype=float32)
  """
  _check_parts(code, part_grads)
  if _dense(code):
    b = jnp.asarray(code.B)
    return jax.tree.map(lambda g: jnp.tensordot(b.astype(g.dtype), g, axes=1), part_grads)
  parts, coefs = jnp.asarray(code._parts), jnp.asarray(code._coefs)

  def gather(g):
    # sum_r coefs[i, r] g[parts[i, r]]: n x (parts held) x ..., then summed over the parts
    return jnp.einsum("ir,ir...->i...", coefs.astype(g.dtype), g[parts])

  return jax.tree.map(gather, part_grads)


def _dense(code: GradientCode) -> bool:
  """Whether B is dense enough that a matrix product beats gathering the held parts."""
  return 4 * code._parts.shape[1] >= code.num_parts


def combine(weights: Any, messages: Any) -> Any:
  """The server's estimate ``sum_i w_i (B g)_i`` from messages with a leading worker axis.

  With `decoding_weights` it is the exact ``sum_j g_j``; with `sgc_weights` times the mask
  (`masked_sgc_weights`), an unbiased estimate of it. Works under ``jit``.

  Example:
    >>> import numpy as np, jax.numpy as jnp
    >>> from biased_compression import coding
    >>> code = coding.fractional_repetition(4, 1)
    >>> messages = coding.encode_all(code, jnp.array([1.0, 2.0, 3.0, 4.0]))
    >>> a = coding.decoding_weights(code, np.array([False, True, True, False]))
    >>> coding.combine(a, messages)
    Array(10., dtype=float32)
  """
  w = jnp.asarray(weights)
  return jax.tree.map(lambda m: jnp.tensordot(w.astype(m.dtype), m, axes=1), messages)


def _alive(code: GradientCode, alive: Any) -> np.ndarray:
  mask = np.asarray(alive)
  if mask.shape != (code.num_workers,):
    raise ValueError(f"alive must have shape ({code.num_workers},), got {mask.shape}")
  return mask.astype(bool)


def _solve(code: GradientCode, alive: Any) -> tuple[np.ndarray, float]:
  mask = _alive(code, alive)
  a = np.zeros(code.num_workers)
  if not mask.any():
    return a, float(np.sqrt(code.num_parts))
  b_s = code.B[mask]
  ones = np.ones(code.num_parts)
  a_s = np.linalg.lstsq(b_s.T, ones, rcond=None)[0]
  a[mask] = a_s
  return a, float(np.linalg.norm(a_s @ b_s - ones))


def residual(code: GradientCode, alive: Any) -> float:
  """The least-squares residual ``min_a ||a^T B_S - 1^T||_2`` over the alive workers S.

  Zero (to rounding) exactly when the alive workers can decode ``sum_j g_j``; with no alive
  worker it is ``sqrt(m)``.

  Example:
    >>> import numpy as np
    >>> from biased_compression import coding
    >>> code = coding.fractional_repetition(4, 1)
    >>> round(coding.residual(code, np.array([True, True, False, False])), 6)
    1.414214
  """
  return _solve(code, alive)[1]


def decoding_weights(code: GradientCode, alive: Any, tol: float = 1e-8) -> np.ndarray | None:
  """The exact decoding vector of the alive workers, or None when there is none.

  Solves ``a^T B_S = 1^T`` (B_S the rows of the alive workers S) by least squares
  (``np.linalg.lstsq``, the minimum-norm solution) and accepts it when the residual
  ``||a^T B_S - 1^T||_2 <= tol * sqrt(m) * max(1, ||a||_1 max|B|)``. Then
  ``sum_i a_i (B g)_i = sum_j g_j`` exactly. Runs on the host (numpy).

  Args:
    code: the gradient code.
    alive: a boolean mask of shape (n,), True for the workers that arrived.
    tol: the relative tolerance of the residual check.

  Returns:
    A float64 vector of length n, zero at the stragglers; or None when the alive workers
    cannot decode the full gradient (see `residual`).

  Raises:
    ValueError: ``alive`` not of shape (n,).

  Example:
    >>> import numpy as np
    >>> from biased_compression import coding
    >>> code = coding.fractional_repetition(4, 1)
    >>> coding.decoding_weights(code, np.array([True, False, False, True]))
    array([1., 0., 0., 1.])
    >>> coding.decoding_weights(code, np.array([True, True, False, False])) is None
    True
  """
  a, res = _solve(code, alive)
  scale = max(1.0, float(np.abs(a).sum() * np.abs(code.B).max(initial=0.0)))
  if res > tol * np.sqrt(code.num_parts) * scale:
    return None
  return a


def sgc_weights(code: GradientCode, p: Any) -> np.ndarray:
  """The unbiased SGC weights ``w_i = 1 / (d (1 - p_i))``, d = ``code.replication``.

  If worker i arrives independently with probability ``1 - p_i`` (mask m_i), every part is
  held by exactly d workers and B is 0/1 (`sgc_cyclic`, `fractional_repetition`), then
  ``E[sum_i w_i m_i (B g)_i] = sum_i (1/d) sum_{j held by i} g_j = sum_j g_j``: the estimate
  is unbiased for the sum over parts of the part gradients (divide by m for their mean).

  Args:
    code: a 0/1 code with every part held by exactly ``code.replication`` workers.
    p: the straggling probabilities in [0, 1), a scalar or an array of shape (n,).

  Returns:
    The float64 weights, shape (n,); multiply by the mask of arrivals (`masked_sgc_weights`
    inside ``jit``) and `combine`.

  Raises:
    ValueError: p outside [0, 1) or of the wrong shape; a code that is not 0/1 with every
      part held ``replication`` times (e.g. `cyclic_repetition` with s > 0).

  Example:
    >>> from biased_compression import coding
    >>> coding.sgc_weights(coding.sgc_cyclic(4, 2), 0.5)
    array([1., 1., 1., 1.])
  """
  b = code.B
  if not (np.all((b == 0) | (b == 1)) and np.all(b.sum(axis=0) == code.replication)):
    raise ValueError(
      f"code must be 0/1 with every part held by replication = {code.replication} workers for"
      f" the SGC weights, got {code.name}"
    )
  p_arr = np.asarray(p, dtype=np.float64)
  if p_arr.ndim == 0:
    p_arr = np.full(code.num_workers, float(p_arr))
  if p_arr.shape != (code.num_workers,):
    raise ValueError(f"p must be a scalar or of shape ({code.num_workers},), got {p_arr.shape}")
  if not np.all((p_arr >= 0) & (p_arr < 1)):
    raise ValueError(f"p (straggling probabilities) must lie in [0, 1), got {p!r}")
  return 1.0 / (code.replication * (1.0 - p_arr))


def masked_sgc_weights(code: GradientCode, p: Any, mask: Any) -> jax.Array:
  """The SGC weights with zeros at the stragglers, for a mask traced inside ``jit``.

  ``jnp.where(mask, w, 0)`` with w = `sgc_weights` (computed on the host from the static p).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from biased_compression import coding
    >>> code = coding.sgc_cyclic(4, 2)
    >>> jax.jit(lambda m: coding.masked_sgc_weights(code, 0.5, m))(
    ...     jnp.array([True, False, True, True]))
    Array([1., 0., 1., 1.], dtype=float32)
  """
  w = jnp.asarray(sgc_weights(code, p), dtype=jnp.result_type(float))
  return jnp.where(jnp.asarray(mask, dtype=bool), w, jnp.zeros_like(w))
