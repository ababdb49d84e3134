"""Sparsifiers: Top-k, rand-k and adaptive random sparsification.

A sparsifier keeps k coordinates and sends them as (values, indices): values in the input
dtype, indices in the narrowest unsigned integer type that holds ``d - 1``. When k reaches d
only the values travel. Sparsifiers expose the selection (`_select`) and the placement
(`_place`) separately so that `compose` can quantise the k kept values instead of a dense
vector (this is how Top-k + natural dithering is built).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from biased_compression import _base
from biased_compression import _random

__all__ = [
  "Sparsifier",
  "TopK",
  "RandK",
  "AdaptiveRandomSparsification",
  "top_k",
  "rand_k",
  "adaptive_random_sparsification",
]


class Sparsifier(_base.Compressor):
  """A compressor that sends k (value, index) pairs."""

  sends_indices: bool = True

  def num_values(self, d: int) -> int:
    """Number of values sent for a d-element leaf."""
    raise NotImplementedError

  def _select(self, x: jax.Array, key) -> tuple[jax.Array, jax.Array | None]:
    """Returns the kept values (input dtype) and their int32 indices (None if k == d)."""
    raise NotImplementedError

  def _value_scale(self, d: int) -> float:
    return 1.0

  def _index_payload(self, indices: jax.Array | None, d: int) -> dict:
    if indices is None or not self.sends_indices:
      return {}
    return {"indices": indices.astype(_base.index_dtype(d))}

  def _indices_from(self, payload: dict, d: int, key) -> jax.Array | None:
    if self.num_values(d) == d:
      return None
    return payload["indices"].astype(jnp.int32)

  def _place(self, values: jax.Array, indices, d: int, dtype, factor: float = 1.0):
    # One multiplication by the combined factor, so that contractive(rand_k) = (k/d)(d/k) x
    # never overflows in between.
    scale = self._value_scale(d) * factor
    if scale != 1.0:
      values = (values.astype(jnp.float32) * scale).astype(dtype)
    values = values.astype(dtype)
    if indices is None:
      return values
    return jnp.zeros((d,), dtype).at[indices].set(values, unique_indices=True)

  def _encode(self, x, key):
    values, indices = self._select(x, key)
    return {"values": values, **self._index_payload(indices, x.shape[0])}

  def _decode(self, payload, d, dtype, key):
    indices = self._indices_from(payload, d, key)
    return self._place(payload["values"], indices, d, dtype)

  def index_bits(self, d: int) -> int:
    """Bits of the indices on the wire (0 when shared or when k == d)."""
    k = self.num_values(d)
    return k * _base.index_bits(d) if (self.sends_indices and k < d) else 0

  def bits(self, d: int) -> int:
    return 32 * self.num_values(d) + self.index_bits(d)

  def _density(self, d: int) -> float:
    return self.num_values(d) / d


def _kwargs_repr(fn: str, **kwargs) -> str:
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  return f"{fn}({args})"


@dataclasses.dataclass(frozen=True, repr=False)
class TopK(Sparsifier):
  """Keeps the k entries of largest magnitude. See `top_k`."""

  ratio: float | None = None
  k: int | None = None

  def __repr__(self):
    return _kwargs_repr("top_k", **({"ratio": self.ratio} if self.k is None else {"k": self.k}))

  def num_values(self, d):
    return _base.resolve_k(self.ratio, self.k, d)

  def _select(self, x, key):
    d = x.shape[0]
    k = self.num_values(d)
    if k == d:
      return x, None
    _, indices = jax.lax.top_k(jnp.abs(x), k)
    return x[indices], indices

  def b2(self, d):
    return (self._density(d), 1.0)

  def b1(self, d):
    # ||T(x)||^2 = <T(x), x> >= (k/d) ||x||^2, so alpha = k/d, beta = 1.
    return (self._density(d), 1.0)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sample_subset(key: jax.Array, d: int, k: int) -> jax.Array:
  """A uniformly random k-subset of {0, ..., d-1} as int32 indices (k < d).

  ``jax.random.choice(replace=False)`` shuffles all d indices and costs about 900x an
  elementwise multiply at d = 2^24 on CPU. For k <= d/4 we instead draw m > k indices with
  replacement, redraw the repeated ones until at least k are distinct, and keep the first k
  distinct draws: O(m log m) work. The result is exactly uniform: the procedure commutes
  with every relabelling of {0, ..., d-1} and draws i.i.d. uniform labels, so the law of the
  chosen set is invariant under permutations. For larger k we rank all d coordinates by
  distinct pseudo-random keys and take the k smallest.
  """
  if 4 * k > d:
    ranks = _random.uniform_bits(key, d)
    _, indices = jax.lax.top_k(ranks, k)
    return indices
  mu = k * k / (2.0 * d)  # expected number of repeats among ~k draws
  m = min(d, k + math.ceil(1.2 * mu + 6.0 * math.sqrt(mu) + 8))
  positions = jnp.arange(m, dtype=jnp.int32)

  def repeated(draws):
    sorted_draws, order = jax.lax.sort((draws, positions), num_keys=2)
    again = jnp.concatenate([jnp.zeros((1,), bool), sorted_draws[1:] == sorted_draws[:-1]])
    return jnp.zeros((m,), bool).at[order].set(again, unique_indices=True)

  def cond(state):
    _, rep, _ = state
    return m - jnp.sum(rep) < k

  def body(state):
    draws, rep, it = state
    fresh = jax.random.randint(jax.random.fold_in(key, it), (m,), 0, d, dtype=jnp.int32)
    draws = jnp.where(rep, fresh, draws)
    return draws, repeated(draws), it + 1

  draws = jax.random.randint(key, (m,), 0, d, dtype=jnp.int32)
  draws, rep, _ = jax.lax.while_loop(cond, body, (draws, repeated(draws), jnp.int32(1)))
  (first,) = jnp.nonzero(~rep, size=k)
  return draws[first]


@dataclasses.dataclass(frozen=True, repr=False)
class RandK(Sparsifier):
  """Keeps a uniformly random k-subset of coordinates. See `rand_k`."""

  ratio: float | None = None
  k: int | None = None
  unbiased: bool = True
  shared_indices: bool = False
  needs_key = True

  def __repr__(self):
    kw = {"ratio": self.ratio} if self.k is None else {"k": self.k}
    if not self.unbiased:
      kw["unbiased"] = False
    if self.shared_indices:
      kw["shared_indices"] = True
    return _kwargs_repr("rand_k", **kw)

  @property
  def sends_indices(self):
    return not self.shared_indices

  def num_values(self, d):
    return _base.resolve_k(self.ratio, self.k, d)

  def _subset(self, key, d):
    k = self.num_values(d)
    return None if k == d else _sample_subset(key, d, k)

  def _select(self, x, key):
    indices = self._subset(key, x.shape[0])
    return (x, None) if indices is None else (x[indices], indices)

  def _indices_from(self, payload, d, key):
    if not self.shared_indices:
      return super()._indices_from(payload, d, key)
    if key is None:
      raise ValueError(
        f"{self.name}: decode needs the key given to encode, because shared indices are "
        "regenerated by the receiver instead of being sent"
      )
    return self._subset(key, d)

  def _value_scale(self, d):
    return d / self.num_values(d) if self.unbiased else 1.0

  def omega(self, d):
    return d / self.num_values(d) - 1.0 if self.unbiased else math.inf

  def b2(self, d):
    if self.unbiased:
      return (1.0, d / self.num_values(d))
    # E C(x) = (k/d) x and E||C(x)||^2 = (k/d) ||x||^2.
    return (self._density(d), 1.0)

  def b1(self, d):
    return super().b1(d) if self.unbiased else (self._density(d), 1.0)


@dataclasses.dataclass(frozen=True, repr=False)
class AdaptiveRandomSparsification(Sparsifier):
  """Keeps one coordinate i, drawn with probability |x_i| / ||x||_1. See the factory."""

  needs_key = True

  def __repr__(self):
    return "adaptive_random_sparsification()"

  def num_values(self, d):
    return 1

  def _select(self, x, key):
    d = x.shape[0]
    if d == 1:
      return x, None
    # Exact two-stage draw: a block of B entries with probability (its |x| sum) / ||x||_1,
    # then an entry of that block with probability |x_i| / (block sum). One reduction pass
    # over x (1.2x a multiply at d = 2^24 in the benchmark; XLA CPU's partial reductions are
    # slower than a full sum) instead of d Gumbel variables from jax.random.categorical
    # (24x). Zero entries, padding included, have logit -inf.
    block = 1 << (d.bit_length() // 2)
    rows = -(-d // block)
    # |x| is taken inside the reduction and on the chosen block only, so that no d-element
    # temporary is materialised; x is padded only when d is not a multiple of the block.
    xp = x.astype(jnp.float32)
    if rows * block != d:
      xp = jnp.pad(xp, (0, rows * block - d))
    k_row, k_col = jax.random.split(key)
    row = jax.random.categorical(k_row, jnp.log(jnp.sum(jnp.abs(xp.reshape(rows, block)), 1)))
    segment = jax.lax.dynamic_slice(xp, (row * block,), (block,))
    col = jax.random.categorical(k_col, jnp.log(jnp.abs(segment)))
    index = (row * block + col)[None].astype(jnp.int32)
    return x[index], index

  def b2(self, d):
    # E C(x) = sum_i (|x_i| / ||x||_1) x_i e_i, so <E C, x> = E||C||^2 = sum |x_i|^3 / ||x||_1,
    # which is >= ||x||^2 / d by Chebyshev's sum inequality.
    return (1.0 / d, 1.0)

  def b1(self, d):
    return (1.0 / d, 1.0)


def top_k(ratio: float | None = None, *, k: int | None = None) -> TopK:
  r"""Top-k sparsification: keeps the k entries of largest magnitude.

  .. math::
    C(x)_i = x_i \text{ if } |x_i| \text{ is among the k largest, else } 0,
    \qquad C \in B_3(d/k),\ B_2(k/d, 1),\ B_1(k/d, 1).

  The bound is attained when all magnitudes are equal. Ties are broken towards the lower
  index (``jax.lax.top_k``'s order). NaN counts as the largest magnitude, so a NaN entry is
  always kept and propagates.

  Args:
    ratio: fraction of entries to keep, in (0, 1]; per leaf ``k = max(1, round(ratio * d))``.
    k: number of entries to keep (exclusive with ``ratio``); capped at the leaf size.

  Returns:
    A deterministic `Compressor`; wire: k values in the input dtype and k indices in the
    narrowest unsigned type that holds d - 1 (values only when k >= d).

  Example:
    >>> import jax.numpy as jnp, biased_compression as bc
    >>> bc.top_k(k=2).compress(jnp.array([0.1, -3.0, 2.0, 0.5]))
    Array([ 0., -3.,  2.,  0.], dtype=float32)

  References:
    Beznosikov et al., On Biased Compression for Distributed Learning, 2023,
    https://arxiv.org/abs/2002.12410
  """
  _base.check_ratio_k("top_k", ratio, k)
  return TopK(ratio=ratio, k=k)


def rand_k(
  ratio: float | None = None,
  *,
  k: int | None = None,
  unbiased: bool = True,
  shared_indices: bool = False,
) -> RandK:
  r"""Random-k sparsification: keeps a uniformly random k-subset S of the coordinates.

  .. math::
    C(x) = \tfrac{d}{k} \sum_{i \in S} x_i e_i \in U(d/k - 1) \quad (\text{unbiased}),
    \qquad C(x) = \sum_{i \in S} x_i e_i \in B_3(d/k) \quad (\text{biased}).

  Args:
    ratio: fraction of entries to keep, in (0, 1]; per leaf ``k = max(1, round(ratio * d))``.
    k: number of entries to keep (exclusive with ``ratio``).
    unbiased: scale the kept entries by d/k.
    shared_indices: the receiver regenerates S from the key instead of receiving it, so
      only the values travel. Pass the same key to ``decode`` (``decode(p, shape, dtype,
      key=key)``). With one key shared by all workers the operator is linear in x, which is
      what a plain ``psum`` of the values needs.

  Returns:
    A random `Compressor` (``compress`` and ``encode`` need a key).

  References:
    Stich et al., Sparsified SGD with Memory, 2018, https://arxiv.org/abs/1809.07599
  """
  _base.check_ratio_k("rand_k", ratio, k)
  return RandK(ratio=ratio, k=k, unbiased=bool(unbiased), shared_indices=bool(shared_indices))


def adaptive_random_sparsification() -> AdaptiveRandomSparsification:
  r"""Adaptive random sparsification: C(x) = x_i e_i with i drawn w.p. |x_i| / ||x||_1.

  One coordinate is sent. It is biased and in B3(d): E||C(x) - x||^2 = ||x||^2 -
  sum |x_i|^3 / ||x||_1 <= (1 - 1/d) ||x||^2 by Chebyshev's sum inequality. An all-zero
  input gives zeros; a NaN entry is always chosen (it has the largest logit).

  References:
    Beznosikov et al., On Biased Compression for Distributed Learning, 2023,
    https://arxiv.org/abs/2002.12410
  """
  return AdaptiveRandomSparsification()
