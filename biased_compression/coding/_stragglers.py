"""Straggler models: which workers finish a step, drawn inside ``jit`` from a key.

A model's ``alive(key, n)`` returns the boolean mask of the non-stragglers of one step. Every
worker calls it with the same key (a key shared by all workers, e.g. the step key before
the worker folds in its index), so all agree on the straggler set and each reads its own
entry; a run is reproducible from its seed. A real system would instead learn the mask from
timing and pass it in (``participating=``).

* `iid`: each worker straggles independently with probability p (or p_i per worker): the
  model of stochastic gradient coding, whose weights `sgc_weights` make the estimate unbiased.
* `fixed`: the same stragglers at every step.
* `adversarial`: the s stragglers that hurt a given decoding most, found by enumeration.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from biased_compression.coding import _codes

__all__ = ["Stragglers", "iid", "fixed", "adversarial"]


@dataclasses.dataclass(frozen=True)
class Stragglers:
  """A straggler model (see the module). Build it with `iid`, `fixed` or `adversarial`.

  Attributes:
    kind: ``"iid"`` or ``"fixed"``.
    probabilities: per-worker straggling probabilities (``iid``), a tuple; or None.
    stragglers: the straggling workers (``fixed``), a sorted tuple; or None.
    num_workers: n, when the model fixes it (per-worker probabilities, a fixed set).
  """

  kind: str
  probabilities: tuple[float, ...] | None = None
  stragglers: tuple[int, ...] | None = None
  num_workers: int | None = None

  def _check_n(self, n: int) -> None:
    if self.num_workers is not None and n != self.num_workers:
      raise ValueError(f"{self.kind}: the model is for {self.num_workers} workers, got n = {n}")

  def straggling_probabilities(self, n: int) -> np.ndarray:
    """p_i for each of the n workers (0 or 1 for a fixed set)."""
    self._check_n(n)
    if self.kind == "iid":
      p = np.asarray(self.probabilities, np.float64)
      return np.full(n, p[0]) if p.size == 1 else p
    out = np.zeros(n)
    out[list(self.stragglers)] = 1.0
    return out

  def alive(self, key: jax.Array, n: int) -> jax.Array:
    """The non-stragglers of one step: a bool array of n, a pure function of ``key``.

    Entry i is `alive_one` ``(key, i, n)``: worker i's draw uses only ``fold_in(key, i)``,
    so a worker can find its own entry without drawing the others' (n simulated workers
    then draw n numbers per step, not n^2).
    """
    self._check_n(n)
    return jax.vmap(lambda i: self.alive_one(key, i, n))(jnp.arange(n))

  def alive_one(self, key: jax.Array, worker: jax.Array | int, n: int) -> jax.Array:
    """Whether worker ``worker`` (an int or a traced index) arrives at the step of ``key``."""
    self._check_n(n)
    p = jnp.asarray(self.straggling_probabilities(n), jnp.float32)[worker]
    if self.kind == "iid":
      return jax.random.uniform(jax.random.fold_in(key, worker), ()) >= p
    return p == 0.0


def iid(p: float | Sequence[float]) -> Stragglers:
  """Each worker straggles independently at every step, with probability p (or p_i).

  Args:
    p: a probability in [0, 1), or one per worker.

  Example:
    >>> import jax
    >>> from biased_compression import coding
    >>> model = coding.iid(0.25)
    >>> alive = jax.jit(lambda k: model.alive(k, 1000))(jax.random.key(0))
    >>> 0.7 < float(alive.mean()) < 0.8
    True
  """
  values = np.atleast_1d(np.asarray(p, dtype=np.float64))
  if values.ndim != 1 or values.size == 0 or not np.all((values >= 0) & (values < 1)):
    raise ValueError(f"iid: p must be a probability in [0, 1) or one per worker, got {p!r}")
  n = None if np.ndim(p) == 0 else int(values.size)
  return Stragglers("iid", probabilities=tuple(float(v) for v in values), num_workers=n)


def fixed(stragglers: Sequence[int], num_workers: int) -> Stragglers:
  """The same workers straggle at every step.

  Args:
    stragglers: the indices of the straggling workers (distinct, in [0, n)).
    num_workers: n.
  """
  if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)):
    raise ValueError(f"fixed: num_workers must be an int >= 1, got {num_workers!r}")
  if num_workers < 1:
    raise ValueError(f"fixed: num_workers must be an int >= 1, got {num_workers!r}")
  try:
    indices = sorted(int(i) for i in stragglers)
  except (TypeError, ValueError):
    raise ValueError(f"fixed: stragglers must be worker indices, got {stragglers!r}") from None
  if len(set(indices)) != len(indices) or any(not 0 <= i < num_workers for i in indices):
    raise ValueError(
      f"fixed: stragglers must be distinct indices in [0, {num_workers}), got {stragglers!r}"
    )
  return Stragglers("fixed", stragglers=tuple(indices), num_workers=int(num_workers))


def _decoding_error(code: _codes.GradientCode, alive: np.ndarray, weights: str, p) -> float:
  """||a^T B - 1|| for the weights a that the decoding uses on this straggler set."""
  if weights == "exact":
    return _codes.residual(code, alive)
  w = np.where(alive, _codes.sgc_weights(code, p), 0.0)
  return float(np.linalg.norm(w @ code.B - 1.0))


_MAX_SUBSETS = 200_000


def adversarial(
  code: _codes.GradientCode, s: int, *, weights: str = "exact", p: float = 0.0
) -> Stragglers:
  """The s stragglers that make the decoding worst, as a `fixed` model.

  Every set of s workers is tried (on the host, once), and the one maximising the decoding
  error ||a^T B - 1|| (the distance of the decoded combination from the sum of all parts)
  is kept: with ``weights="exact"`` a is the least-squares decoding vector of the
  non-stragglers (zero error whenever the code tolerates s stragglers), with ``"sgc"`` it is
  the SGC weights 1 / (d (1 - p)). Ties go to the first set in lexicographic order.

  Args:
    code: the gradient code.
    s: the number of stragglers, 0 <= s < n.
    weights: ``"exact"`` or ``"sgc"``.
    p: the straggling probability the SGC weights assume.

  Raises:
    ValueError: s outside [0, n), an unknown ``weights``, or more than 200000 sets to try.

  Example:
    >>> from biased_compression import coding
    >>> code = coding.sgc_cyclic(6, 2)
    >>> coding.adversarial(code, 2, weights="sgc").stragglers  # two neighbours: a part lost
    (0, 1)
  """
  n = code.num_workers
  if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < n:
    raise ValueError(f"adversarial: s must be an int in [0, {n}), got {s!r}")
  if weights not in ("exact", "sgc"):
    raise ValueError(f"adversarial: weights must be 'exact' or 'sgc', got {weights!r}")
  if math.comb(n, s) > _MAX_SUBSETS:
    raise ValueError(
      f"adversarial: {math.comb(n, s)} sets of {s} stragglers among {n} workers are too many "
      f"to enumerate (at most {_MAX_SUBSETS}); use fixed(...) with a set of your choice"
    )
  best, worst = (), -1.0
  for subset in itertools.combinations(range(n), s):
    alive = np.ones(n, bool)
    alive[list(subset)] = False
    error = _decoding_error(code, alive, weights, p)
    if error > worst + 1e-12:
      best, worst = subset, error
  return fixed(best, n)
