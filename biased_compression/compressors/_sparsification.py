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

from biased_compression.compressors import _base
from biased_compression.ops import _random
from biased_compression.ops import _topk

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
  """A compressor that sends k (value, index) pairs: the base class of a user's sparsifier.

  A subclass (a frozen dataclass) implements `num_values` and `select`, and its constants
  (``omega`` if ``unbiased``, else ``delta``); the wire format (the values in the input
  dtype, the indices in the narrowest unsigned type for d), ``bits``, decoding and
  `for_chunks` come from here. `biased_compression.compose` recognises a `Sparsifier` as
  its inner operator and quantises only the k kept values (Top-k + natural dithering's
  sparse path), so a user's sparsifier gets it too. Optional: `value_scale` (e.g. d/k for
  unbiased rand-k), ``sends_indices = False`` when the receiver regenerates the indices
  from the key (then ``shared_randomness`` must be True), and `with_k` (for two_stage).

  Example:
    >>> import dataclasses, jax.numpy as jnp, biased_compression as bc
    >>> @dataclasses.dataclass(frozen=True)
    ... class FirstK(bc.compressors.Sparsifier):
    ...   k: int = 2
    ...   def num_values(self, d):
    ...     return min(self.k, d)
    ...   def select(self, x, key):
    ...     k = self.num_values(x.shape[0])
    ...     return x[:k], None if k == x.shape[0] else jnp.arange(k, dtype=jnp.int32)
    ...   def delta(self, d):
    ...     return float("inf")  # in no class B3: the tail may hold all the mass
    >>> c = bc.compose(bc.scaled_sign(), FirstK(k=2))  # scaled sign of the kept values
    >>> c.compress(jnp.array([3.0, -5.0, 1.0, 1.0]))
    Array([ 4., -4.,  0.,  0.], dtype=float32)
    >>> c.bits(4) == FirstK(k=2).index_bits(4) + bc.scaled_sign().bits(2)  # the sparse path
    True
  """

  sends_indices: bool = True

  def num_values(self, d: int) -> int:
    """Number of values k sent for a d-element leaf (0 <= k <= d; static)."""
    raise NotImplementedError

  def select(self, x: jax.Array, key) -> tuple[jax.Array, jax.Array | None]:
    """The kept values of a 1-D ``x`` (its dtype, ``num_values`` of them) and their int32
    indices (distinct), or None for the indices when every value is kept."""
    raise NotImplementedError

  def value_scale(self, d: int) -> float:
    """The factor the decoder applies to the kept values (d / k for unbiased rand-k)."""
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
    scale = self.value_scale(d) * factor
    if scale != 1.0:
      values = (values.astype(jnp.float32) * scale).astype(dtype)
    values = values.astype(dtype)
    if indices is None:
      return values
    return jnp.zeros((d,), dtype).at[indices].set(values, unique_indices=True)

  def _encode(self, x, key):
    values, indices = self.select(x, key)
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

  def with_k(self, k: int) -> Sparsifier | None:
    """This sparsifier keeping a fixed k (two_stage's chunks); None if k is no parameter."""
    return None

  def for_chunks(self, d: int, n: int) -> Sparsifier:
    if n == 1:
      return self
    k = self.num_values(d)
    chunked = self.with_k(k // n) if k % n == 0 else None
    if chunked is not None:
      return chunked
    fix = "Use method='all_gather' (the exact algorithm)"
    if self.with_k(1) is not None:
      fix += f", or a k that n divides, e.g. k={max(n, n * round(k / n))}"
    raise ValueError(
      f"{self.name} keeps k = {k} of the d = {d} values of a message, which two_stage "
      f"splits into n = {n} chunks: every chunk must keep k / n values so that the message "
      f"still keeps k in total, so k must be a multiple of n. {fix}"
    )


def _kwargs_repr(fn: str, **kwargs) -> str:
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  return f"{fn}({args})"


@dataclasses.dataclass(frozen=True, repr=False)
class TopK(Sparsifier):
  """Keeps the k entries of largest magnitude. See `top_k`."""

  ratio: float | None = None
  k: int | None = None
  method: str = "auto"
  recall_target: float = 0.95

  def __repr__(self):
    kw = {"ratio": self.ratio} if self.k is None else {"k": self.k}
    if self.method != "auto":
      kw["method"] = self.method
    if self.recall_target != 0.95:
      kw["recall_target"] = self.recall_target
    return _kwargs_repr("top_k", **kw)

  def num_values(self, d):
    return _base.resolve_k(self.ratio, self.k, d)

  def with_k(self, k):
    return dataclasses.replace(self, ratio=None, k=k)

  def select(self, x, key):
    d = x.shape[0]
    k = self.num_values(d)
    if k == d:
      return x, None
    return _topk.abs_top_k(x, k, method=self.method, recall_target=self.recall_target)

  def _kept_energy(self, d: int) -> float:
    """gamma with ||C(x)||^2 >= gamma ||x||^2 (k/d when exact; see `top_k` for approx)."""
    k = self.num_values(d)
    if self.method != "approx" or k == d:
      return k / d
    windows, size = _topk.approx_windows(d, k, self.recall_target)
    return k / (windows * size)

  def native_b2(self, d):
    return (self._kept_energy(d), 1.0)

  def native_b1(self, d):
    # ||T(x)||^2 = <T(x), x> >= gamma ||x||^2, so alpha = gamma, beta = 1.
    return (self._kept_energy(d), 1.0)


def _hash31(seed: jax.Array, counter: jax.Array) -> jax.Array:
  """Distinct pseudo-random keys below 2^31 for distinct counters below 2^31.

  MurmurHash3's finaliser (as `_random.hash_bits`) with every product reduced modulo 2^31:
  multiplying by an odd constant and xor-shifting right are bijections of [0, 2^31), so
  distinct counters give distinct keys and ranking them breaks no ties.
  """
  low = jnp.uint32(0x7FFFFFFF)

  def fmix(z):
    z = ((z ^ (z >> 16)) * jnp.uint32(0x85EBCA6B)) & low
    z = ((z ^ (z >> 13)) * jnp.uint32(0xC2B2AE35)) & low
    return z ^ (z >> 16)

  z = (counter.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + seed[0]) & low
  return fmix(fmix(z) ^ (seed[1] & low))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sample_subset(key: jax.Array, d: int, k: int) -> jax.Array:
  """A uniformly random k-subset of {0, ..., d-1} as int32 indices (k < d).

  ``jax.random.choice(replace=False)`` shuffles all d indices and costs about 900x an
  elementwise multiply at d = 2^24 on CPU. For k < d/32 we instead draw m > k indices with
  replacement, redraw the repeated ones until at least k are distinct, and keep the first k
  distinct draws: O(m log m) work. The result is exactly uniform: the procedure commutes
  with every relabelling of {0, ..., d-1} and draws i.i.d. uniform labels, so the law of the
  chosen set is invariant under permutations. For larger k we rank all d coordinates by
  distinct pseudo-random keys and keep the k largest: with ``jax.lax.top_k`` on 32-bit
  hashes for k > d/4 when d < 2^17, and from d = 2^17 for k >= d/32, where sorting the m
  draws costs more than a few passes over d (28x a multiply at 10% of d = 2^24, against
  4.1x), with the radix selection of `_topk.largest_keys` on `_hash31` keys (no ties).
  """
  if d >= 1 << 17 and 32 * k >= d:
    seed = _random.seeds(key)
    counter = jnp.arange(d, dtype=jnp.uint32)
    return _topk.largest_keys(lambda bits: _hash31(seed, counter) & bits, d, k)
  if 4 * k > d:
    _, indices = jax.lax.top_k(_random.uniform_bits(key, d), k)
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

  @property
  def linear(self):
    return self.shared_indices

  @property
  def shared_randomness(self):
    return self.shared_indices

  def num_values(self, d):
    return _base.resolve_k(self.ratio, self.k, d)

  def with_k(self, k):
    return dataclasses.replace(self, ratio=None, k=k)

  def _subset(self, key, d):
    k = self.num_values(d)
    return None if k == d else _sample_subset(key, d, k)

  def select(self, x, key):
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

  def value_scale(self, d):
    k = self.num_values(d)
    return d / k if self.unbiased and k else 1.0  # k = 0 only for an empty leaf

  def omega(self, d):
    return d / self.num_values(d) - 1.0 if self.unbiased else math.inf

  def native_b2(self, d):
    if self.unbiased:
      return (1.0, d / self.num_values(d))
    # E C(x) = (k/d) x and E||C(x)||^2 = (k/d) ||x||^2.
    return (self._density(d), 1.0)

  def native_b1(self, d):
    return super().native_b1(d) if self.unbiased else (self._density(d), 1.0)


@dataclasses.dataclass(frozen=True, repr=False)
class AdaptiveRandomSparsification(Sparsifier):
  """Keeps one coordinate i, drawn with probability |x_i| / ||x||_1. See the factory."""

  needs_key = True

  def __repr__(self):
    return "adaptive_random_sparsification()"

  def num_values(self, d):
    return min(1, d)

  def select(self, x, key):
    d = x.shape[0]
    if d <= 1:
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

  def native_b2(self, d):
    # E C(x) = sum_i (|x_i| / ||x||_1) x_i e_i, so <E C, x> = E||C||^2 = sum |x_i|^3 / ||x||_1,
    # which is >= ||x||^2 / d by Chebyshev's sum inequality.
    return (1.0 / d, 1.0)

  def native_b1(self, d):
    return (1.0 / d, 1.0)


def top_k(
  ratio: float | None = None,
  *,
  k: int | None = None,
  method: str = "auto",
  recall_target: float = 0.95,
) -> TopK:
  r"""Top-k sparsification: keeps the k entries of largest magnitude.

  .. math::
    C(x)_i = x_i \text{ if } |x_i| \text{ is among the k largest, else } 0,
    \qquad C \in B_3(d/k),\ B_2(k/d, 1),\ B_1(k/d, 1).

  The bound is attained when all magnitudes are equal. The exact methods keep the set of
  ``jax.lax.top_k(|x|, k)``: ties are broken towards the lower index, and NaN counts as
  the largest magnitude (above inf), so a NaN entry is always kept and propagates.

  ``method="approx"`` uses ``jax.lax.approx_max_k``, which is fast on TPU: it keeps the
  maximum of each of L windows of at most w entries and returns the k largest maxima, and
  ``recall_target`` is the expected fraction of the true top k it finds on randomly ordered
  inputs (not a bound). Every kept entry is the largest of its window, so
  ||C(x)||^2 >= (k / L) sum of the squared window maxima >= k / (L w) ||x||^2: C is in
  B2(k/(Lw), 1) and B3(Lw/k), with L w = d rounded up to a multiple of w (L and w from
  `approx_windows`; Lw = d for the power-of-two sizes of most layers, so delta = d/k as for
  the exact methods). On CPU and GPU XLA computes it exactly.

  Args:
    ratio: fraction of entries to keep, in (0, 1]; per leaf ``k = max(1, round(ratio * d))``.
    k: number of entries to keep (exclusive with ``ratio``); capped at the leaf size.
    method: how the k entries are found: "auto" (default: "radix" on CPU for leaves of at
      least 2^17 entries, or 2^15 when keeping 5% or more; ``jax.lax.top_k`` otherwise and
      on GPU and TPU), "exact_sort"
      (``jax.lax.top_k``), "radix" (a threshold search on the bits of |x| and a
      compaction, several times faster on CPU; same result), or "approx" (above).
    recall_target: ``approx_max_k``'s recall target in [0.5, 1]; only with "approx".

  Returns:
    A deterministic `Compressor`; wire: k values in the input dtype and k indices in the
    narrowest unsigned type that holds d - 1 (values only when k >= d). The order of the
    pairs depends on the method (decreasing magnitude, or increasing index for "radix").

  Example:
    >>> import jax.numpy as jnp, biased_compression as bc
    >>> bc.top_k(k=2).compress(jnp.array([0.1, -3.0, 2.0, 0.5]))
    Array([ 0., -3.,  2.,  0.], dtype=float32)

  References:
    Beznosikov et al., On Biased Compression for Distributed Learning, 2023,
    https://arxiv.org/abs/2002.12410

    Chern et al., TPU-KNN: K Nearest Neighbor Search at Peak FLOP/s, 2022,
    https://arxiv.org/abs/2206.14286
  """
  _base.check_ratio_k("top_k", ratio, k)
  _topk.check_method("top_k", method, recall_target)
  if method != "approx" and recall_target != 0.95:
    raise ValueError(
      f"top_k: recall_target applies to method='approx' only, got method={method!r}, "
      f"recall_target={recall_target!r}"
    )
  return TopK(ratio=ratio, k=k, method=method, recall_target=float(recall_target))


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
