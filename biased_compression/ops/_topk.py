"""Selection of the k entries of largest magnitude: exact (sort or radix) and approximate.

``jax.lax.top_k`` sorts: on XLA's CPU backend it costs about 20x an elementwise multiply
over the same array at d = 2^24 when keeping 1%, and 200x at 10%. Top-k sparsification only
needs the *set* of the k largest magnitudes, which a threshold and a compaction give in a
few passes over x. `abs_top_k` offers four methods:

* ``"exact_sort"``: ``jax.lax.top_k(|x|, k)``.
* ``"radix"``: the same set of indices, found by a threshold search on the bits of |x|
  (see `abs_top_k` for the algorithm) and a compaction of the kept entries.
* ``"approx"``: ``jax.lax.approx_max_k(|x|, k, recall_target)``, fast on TPU and computed
  exactly elsewhere (XLA falls back to sort and slice on CPU and GPU).
* ``"auto"``: the fastest exact method measured on the backend (see `auto_method`).

Every XLA:CPU measurement quoted below is from the 2-core CI machine with JAX 0.10.2
(d = 2^24 float32; a multiply ``x * 1.0001`` takes about 18 ms there, a ``jnp.sum`` 2 ms).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from biased_compression.ops import _random

__all__ = ["METHODS", "abs_top_k", "auto_method", "approx_windows", "largest_keys"]

METHODS = ("auto", "exact_sort", "radix", "approx")


# Sample size of the threshold estimate: sorting it costs about 3 ms, and the band of
# candidates it leaves around the threshold (about 10 sqrt(k m / d) d / m entries) is
# compacted and sorted as well.
_SAMPLE = 1 << 16
_EXHAUSTIVE = 1 << 12
_Z = 5.0  # standard deviations of margin around the sampled quantile

_ABOVE_ALL = 0x80000000  # exceeds every key (keys have the sign bit cleared)
_SHIFTS = np.arange(32, dtype=np.uint32)
_SAMPLE_SEED = (0x2545F491, 0x9E3779B9)


# -- keys and bit masks ---------------------------------------------------------------------


def _keys(x: jax.Array, magnitude_bits) -> jax.Array:
  """uint32 keys ordered as |x| is by ``jax.lax.top_k``: the bit pattern without the sign.

  For floats of one sign the bit pattern is monotone in the value; NaN patterns lie above
  infinity, ordered by payload, exactly as lax.top_k orders them. ``magnitude_bits`` is
  0x7FFFFFFF (a traced value inside loops, so that XLA does not hoist a d-element key
  array out of them).
  """
  if x.dtype.itemsize == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32) & magnitude_bits
  bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  return bits & (magnitude_bits >> 16)


def _pack(mask: jax.Array) -> jax.Array:
  """Packs a boolean vector into uint32 words, element 32 w + b at bit b of word w.

  Written as a row sum of shifted bits, which XLA:CPU emits as one vectorised pass (2 ms
  at d = 2^24 with the comparison that makes the mask); an OR of 32 column slices is 10x
  slower. Every count below is a popcount of these words, so that no reduction ever runs
  over d elements (an XLA:CPU reduction fused with its producer runs at about 20 ms per
  2^24 elements).
  """
  d = mask.shape[0]
  n = d // 32
  parts = []
  if n:
    rows = mask[: 32 * n].reshape(n, 32).astype(jnp.uint32) << _SHIFTS
    parts.append(jnp.sum(rows, axis=1, dtype=jnp.uint32))
  if d % 32:
    tail = mask[32 * n :].astype(jnp.uint32) << _SHIFTS[: d % 32]
    parts.append(jnp.sum(tail, dtype=jnp.uint32)[None])
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _popcount(words: jax.Array) -> jax.Array:
  return jax.lax.population_count(words).astype(jnp.int32)


def _select_bit(words: jax.Array, rank: jax.Array) -> jax.Array:
  """Position of the set bit of rank ``rank`` (0-based, from bit 0) in each word."""
  pos = jnp.zeros(words.shape, jnp.int32)
  for width in (16, 8, 4, 2, 1):
    low = _popcount(words & jnp.uint32((1 << width) - 1))
    up = rank >= low
    rank = jnp.where(up, rank - low, rank)
    words = jnp.where(up, words >> width, words)
    pos = jnp.where(up, pos + width, pos)
  return pos


def _cumsum(v: jax.Array) -> jax.Array:
  # An associative scan: 1.0 ms for 2^19 int32 on the CPU, against 5.2 ms for jnp.cumsum
  # (lowered there as a chain of reduce-windows).
  return jax.lax.associative_scan(jnp.add, v)


def _compact(words: jax.Array, slots: int):
  """Indices of the first ``slots`` set bits of a packed mask, in increasing order.

  Output slot j belongs to the word whose popcount range holds j: each non-empty word
  writes its number at the slot of its first set bit (a scatter of one entry per word) and
  a running maximum fills the slots in between. This costs 2.2 ms at 1% of 2^24 set bits
  and 6.9 ms at 10%, against 6.3 and 120 ms for ``jnp.searchsorted`` of every slot. The
  bit of the right rank in the word is then found by a 5-step binary search.
  Slots past the number of set bits hold unspecified indices in [0, 32 len(words)).

  Returns:
    (indices int32[slots], inclusive prefix counts of the words, their popcounts).
  """
  counts = _popcount(words)
  ends = _cumsum(counts)
  starts = ends - counts
  word = jnp.arange(words.shape[0], dtype=jnp.int32)
  first = jnp.zeros((slots,), jnp.int32).at[jnp.where(counts > 0, starts, slots)]
  word = jax.lax.associative_scan(jnp.maximum, first.max(word, mode="drop"))
  rank = jnp.arange(slots, dtype=jnp.int32) - starts[word]
  return 32 * word + _select_bit(words[word], rank), ends, counts


def _nth_set_bit(words, ends, counts, n):
  """Index of the set bit of rank n (0-based) of a packed mask, given its prefix counts."""
  word = jnp.minimum(jnp.searchsorted(ends, n, side="right"), words.shape[0] - 1)
  return 32 * word + _select_bit(words[word], n - (ends[word] - counts[word]))


# -- the radix method -----------------------------------------------------------------------


def _sample_size(d: int) -> int:
  """Sample size m: d itself up to 2^12 (all keys are sorted), else d/16 up to 2^16."""
  return d if d <= _EXHAUSTIVE else min(_SAMPLE, d // 16)


def _plan(d: int, k: int) -> tuple[int, float, int]:
  """Static sample size, rank margin and band capacity for d and k."""
  m = _sample_size(d)
  if m == d:
    return d, 0.0, d
  stride = d // m
  rho = k * m / d  # expected rank of the threshold in the sample
  margin = _Z * math.sqrt(rho * (1.0 - k / d)) + 2.0
  capacity = min(d, max(1024, int(2 * (2 * margin + 2) * stride)))
  return m, margin, capacity


def _sample_bracket(keys: jax.Array, k: int, m: int, margin: float):
  """Keys lo < hi that bracket the k-th largest key with high probability.

  One key per stratum of ``d // m`` entries, at a hashed offset; sorted, the ranks
  rho -/+ margin (rho = k m / d) give hi and lo.
  """
  d = keys.shape[0]
  stride = d // m
  i = jnp.arange(m, dtype=jnp.uint32)
  seed = jnp.asarray(_SAMPLE_SEED, jnp.uint32)
  pos = i * stride + _random.hash_bits(seed, i) % stride
  sample = jnp.sort(keys[pos])[::-1]
  rho = k * m / d
  r_hi = math.floor(rho - margin)
  r_lo = math.ceil(rho + margin)
  hi = sample[r_hi] + 1 if r_hi >= 0 else jnp.uint32(_ABOVE_ALL)
  lo = sample[r_lo] if r_lo < m else jnp.uint32(0)
  return lo, hi


def _bracket(key_fn, d: int, k: int, lo, hi, capacity: int, trusted: bool):
  """Packs ``above = keys >= hi`` and ``band = lo <= keys < hi`` for a valid bracket.

  A bracket is valid when count(above) < k <= count(above) + count(band) (the k-th largest
  key lies in [lo, hi)) and the band fits in ``capacity`` or holds a single key value.
  An untrusted first guess is checked; while it fails, a bisection on the key range (one
  pass over x per step, at most 33 steps) replaces it, keeping the tightest bounds seen.
  """

  def evaluate(lo, hi, magnitude_bits):
    keys = key_fn(magnitude_bits)
    above = _pack(keys >= hi)
    band = _pack((keys >= lo) & (keys < hi))
    return above, band, jnp.sum(_popcount(above)), jnp.sum(_popcount(band))

  bits = jnp.uint32(0x7FFFFFFF)
  above, band, n_above, n_band = evaluate(lo, hi, bits)
  if trusted:
    return lo, hi, above, band, n_above, n_band

  def valid(lo, hi, n_above, n_band):
    fits = (n_band <= capacity) | (hi - lo <= 1)
    return (n_above < k) & (n_above + n_band >= k) & fits

  def learn(state):
    # Tightest known bounds low <= T < high from every evaluated threshold.
    low, c_low, high, c_high, lo, hi, n_above, n_band = state[:8]
    n_lo = n_above + n_band
    low2 = jnp.where((n_lo >= k) & (lo > low), lo, low)
    c_low2 = jnp.where((n_lo >= k) & (lo > low), n_lo, c_low)
    low3 = jnp.where((n_above >= k) & (hi > low2), hi, low2)
    c_low3 = jnp.where((n_above >= k) & (hi > low2), n_above, c_low2)
    high2 = jnp.where((n_above < k) & (hi < high), hi, high)
    c_high2 = jnp.where((n_above < k) & (hi < high), n_above, c_high)
    high3 = jnp.where((n_lo < k) & (lo < high2), lo, high2)
    c_high3 = jnp.where((n_lo < k) & (lo < high2), n_lo, c_high2)
    return low3, c_low3, high3, c_high3

  def cond(state):
    lo, hi, n_above, n_band = state[4:8]
    return ~valid(lo, hi, n_above, n_band)

  def body(state):
    low, c_low, high, c_high = learn(state)
    narrow = (c_low - c_high <= capacity) | (high - low <= 1)
    lo = jnp.where(narrow, low, low + (high - low) // 2)
    hi = high
    above, band, n_above, n_band = evaluate(lo, hi, state[-1])
    # Counts are below 2^31, so this leaves the bits unchanged; XLA cannot prove it and
    # keeps the keys inside the loop instead of hoisting a d-element array out of it.
    bits = state[-1] | (n_band.astype(jnp.uint32) >> 31)
    return (low, c_low, high, c_high, lo, hi, n_above, n_band, above, band, bits)

  def repair(lo, hi, above, band, n_above, n_band):
    # Constants derived from the data, so that inside shard_map they vary over the mesh
    # axes as the loop's results do (shard_map requires the carry types to match).
    zero, count_zero = lo ^ lo, n_band - n_band
    state = (zero, count_zero + d, zero + jnp.uint32(_ABOVE_ALL), count_zero)
    state += (lo, hi, n_above, n_band, above, band, bits | zero)
    state = jax.lax.while_loop(cond, body, state)
    lo, hi, n_above, n_band, above, band = state[4:10]
    return lo, hi, above, band, n_above, n_band

  # The loop runs inside a cond: a while loop over x costs a copy of x even when it runs
  # no step (XLA hoists the loop-invariant view of x out of it).
  ok = valid(lo, hi, n_above, n_band)
  state = (lo, hi, above, band, n_above, n_band)
  return jax.lax.cond(ok, lambda *state: state, repair, *state)


def largest_keys(key_fn, d: int, k: int) -> jax.Array:
  """Indices of the k largest of d uint32 keys below 2^31, ties to the lower index.

  The radix method of `abs_top_k` on any keys: ``key_fn(bits)`` returns the d keys, ANDed
  with ``bits`` (0x7FFFFFFF, traced). It is called once per pass, so that the keys are
  recomputed inside each pass instead of stored. 1 <= k < d.

  Returns:
    int32[k] indices in increasing order.
  """
  keys = key_fn(jnp.uint32(0x7FFFFFFF))
  m, margin, capacity = _plan(d, k)
  exhaustive = m == d
  if exhaustive:
    t = jnp.sort(keys)[d - k]  # the k-th largest key
    lo, hi = t, t + 1
  else:
    lo, hi = _sample_bracket(keys, k, m, margin)
  lo, hi, above, band, n_above, n_band = _bracket(key_fn, d, k, lo, hi, capacity, exhaustive)

  # The k-th largest key T lies in the band: the need-th largest band key.
  need = k - n_above
  slots = jnp.arange(capacity, dtype=jnp.int32)
  band_index, ends, counts = _compact(band, capacity)
  valid = slots < n_band
  band_keys = jnp.where(valid, keys[band_index], 0)
  overflow = n_band > capacity  # only when the band is one key value (hi = lo + 1)
  if exhaustive:
    t = lo
  else:
    ordered = jnp.sort(band_keys)
    t = jnp.where(overflow, lo, ordered[capacity - jnp.clip(need, 1, capacity)])

  # Ties at T: keep those of lowest index, up to index `cut` (exclusive), as lax.top_k.
  n_greater = jnp.sum(valid & (band_keys > t))
  need_ties = need - n_greater
  ties = _cumsum((valid & (band_keys == t)).astype(jnp.int32))
  p = jnp.searchsorted(ties, need_ties - 1, side="right")
  in_buffer = band_index[jnp.minimum(p, capacity - 1)]
  # Past the buffer the band holds only ties, so the tie of rank need - 1 is the band's.
  cut = 1 + jnp.where(p < capacity, in_buffer, _nth_set_bit(band, ends, counts, need - 1))

  position = jnp.arange(d, dtype=jnp.int32)
  keep = (keys > t) | ((keys == t) & (position < cut))
  index, _, _ = _compact(_pack(keep), k)
  return index


def _radix_top_k(x: jax.Array, k: int) -> jax.Array:
  return largest_keys(lambda bits: _keys(x, bits), x.shape[0], k)


# -- the approximate method -----------------------------------------------------------------


def approx_windows(d: int, k: int, recall_target: float) -> tuple[int, int]:
  """Number L and size w of the windows of ``jax.lax.approx_max_k`` on a d-vector.

  XLA's ApproxTopK (Chern et al., 2022) keeps the maximum of each of L windows of at most
  w = 2^s entries (L w >= d) and returns the k largest of these maxima. This restates XLA's
  ``ApproxTopKReductionOutputSize`` for a rank-1 input (chunks of 1024 entries): with
  M = min(max(int((1 - k) / log(recall_target)), 1024), d) windows wanted,
  s = min(floor(log2(d // M)), ceil(log2(d // 1024))) and L = 1024 ceil(ceil(d / 1024) / 2^s).
  ``(d, 1)`` means the result is exact: d <= 1024, recall_target = 1, s = 0, or k = 1 (the
  largest window maximum is the maximum).

  Returns:
    (L, w).
  """
  tiling = 1024
  if d <= tiling or recall_target >= 1.0 or k == 1:
    return d, 1
  wanted = min(max(int((1.0 - k) / math.log(recall_target)), tiling), d)
  s = (d // wanted).bit_length() - 1
  if s <= 0:
    return d, 1
  s = min(s, (d // tiling - 1).bit_length())
  chunks = -(-d // tiling)
  windows = -(-chunks // (1 << s)) * tiling
  return windows, 1 << s


# -- dispatch -------------------------------------------------------------------------------


def auto_method(d: int, k: int) -> str:
  """The exact method that ``"auto"`` uses on CPU for k of d entries.

  "radix" for d >= 2^17, and for d >= 2^15 when k >= d / 20; "exact_sort" below, where
  ``jax.lax.top_k`` takes well under a millisecond. Measured crossovers on the 2-core CPU:
  radix takes 0.78 ms against 0.40 ms for lax.top_k at d = 2^16 and 1%, 0.54 against
  0.89 ms at 2^17 and 1%, 0.55 against 2.3 ms at 2^16 and 10%, and is at par at 2^14 and
  10%. Other backends use "exact_sort" (see `abs_top_k`).
  """
  return "radix" if d >= 1 << 17 or (d >= 1 << 15 and 20 * k >= d) else "exact_sort"


def check_method(fn: str, method: str, recall_target: float) -> None:
  """Validates the ``method`` and ``recall_target`` arguments of a Top-k factory."""
  if method not in METHODS:
    raise ValueError(f"{fn}: method must be one of {', '.join(METHODS)}, got {method!r}")
  # Below 1/2, XLA may keep fewer windows than k (see `approx_windows`).
  if isinstance(recall_target, bool) or not isinstance(recall_target, (int, float)):
    raise ValueError(f"{fn}: recall_target must be a float in [0.5, 1], got {recall_target!r}")
  if not 0.5 <= recall_target <= 1.0:
    raise ValueError(f"{fn}: recall_target must be in [0.5, 1], got {recall_target!r}")


def abs_top_k(
  x: jax.Array, k: int, *, method: str = "auto", recall_target: float = 0.95
) -> tuple[jax.Array, jax.Array]:
  r"""The k entries of largest magnitude of a vector: their values and int32 indices.

  With keys :math:`u_i` = the bit pattern of :math:`|x_i|` (sign bit cleared), which order
  the magnitudes as ``jax.lax.top_k`` does (NaN above infinity, then by payload), the
  exact methods return the set

  .. math::
    S = \{i : u_i > T\} \cup \{\text{the } k - |\{u > T\}| \text{ lowest indices with }
    u_i = T\},

  where T is the k-th largest key: the indices of ``jax.lax.top_k(jnp.abs(x), k)``, ties
  included (lax.top_k also breaks them towards the lower index). NaN entries are kept first,
  as by lax.top_k. The order of the returned indices depends on the method: by decreasing
  magnitude for "exact_sort" and "approx", increasing index for "radix".

  The radix method finds T in a few passes over x:

  1. Sort a stratified sample of m = min(d / 16, 2^16) keys (one at a hashed offset in each
     block of d / m entries) and take the sample keys at ranks rho -/+ 5 sqrt(rho)
     (rho = k m / d) as a bracket [lo, hi) that holds T with overwhelming probability.
  2. One pass packs two bit masks, keys >= hi and lo <= keys < hi, into 32-bit words and
     counts them by popcount. If the counts show the bracket misses T (or its band is too
     large to sort), a bisection on the key range repairs it, one pass per step. The result
     is exact in every case; only the time depends on the sample.
  3. The band (about 10 sqrt(rho) d / m entries) is compacted and sorted: T is its
     (k - count(keys >= hi))-th largest key. The tie cut is read from the band, or from the
     packed band mask when the band holds only ties.
  4. One pass packs the final mask, and a compaction turns it into k indices: a prefix
     sum of the word popcounts places each word's first output slot, a running maximum
     assigns every slot its word, and a 5-step search finds the set bit of the slot's rank.

  No reduction or scan ever runs over d elements, only elementwise passes that write
  d / 32 words: XLA:CPU runs a reduction fused with the comparison that feeds it at about
  20 ms per 2^24 elements, jnp.cumsum at about 200 ms, and ``jnp.nonzero(size=k)`` at
  about 180 ms, while a pass that packs a comparison into words takes about 2 ms.

  For d <= 2^12 step 1 sorts all keys and T is exact at once. Measured on the 2-core CPU
  (d = 2^24 float32, k = 1%): see README "Performance" and ``biased-compression bench
  topk``.

  Args:
    x: a 1-D float32, bfloat16 or float16 array of size d.
    k: number of entries, 1 <= k <= d (a Python int).
    method: "auto" (default): on CPU "radix" for large d (`auto_method`), else
      "exact_sort"; on GPU and TPU "exact_sort", since no measurement there has chosen
      otherwise yet (``biased-compression bench topk`` measures it).
      "exact_sort": ``jax.lax.top_k``. "radix": the algorithm above (same set).
      "approx": ``jax.lax.approx_max_k`` with ``recall_target`` (see below).
    recall_target: for "approx" only: XLA keeps the maximum of each of L windows of
      2^s entries and returns the k largest maxima, choosing L so that the expected
      fraction of the true top k that is returned, for randomly ordered inputs, is about
      ``recall_target`` (the fraction of top-k entries alone in their window). This is an
      average over orderings, not a bound; but every returned entry is the maximum of its
      window, which gives the worst-case energy bound of `approx_windows`. On CPU and GPU
      XLA computes approx_max_k exactly (sort and slice).

  Returns:
    (values in x's dtype, int32 indices), each of shape (k,).

  References:
    Chern et al., TPU-KNN: K Nearest Neighbor Search at Peak FLOP/s, 2022,
    https://arxiv.org/abs/2206.14286
  """
  d = x.shape[0]
  if not 1 <= k <= d:
    raise ValueError(f"abs_top_k: k must be in [1, d={d}], got {k!r}")
  check_method("abs_top_k", method, recall_target)
  if k == d:
    index = jnp.arange(d, dtype=jnp.int32)
    return x, index
  if method == "auto":
    if auto_method(d, k) == "radix":
      index = jax.lax.platform_dependent(
        x,
        cpu=lambda x: _radix_top_k(x, k),
        default=lambda x: jax.lax.top_k(jnp.abs(x), k)[1],
      )
    else:
      index = jax.lax.top_k(jnp.abs(x), k)[1]
  elif method == "exact_sort":
    index = jax.lax.top_k(jnp.abs(x), k)[1]
  elif method == "radix":
    index = _radix_top_k(x, k)
  else:
    index = jax.lax.approx_max_k(jnp.abs(x), k, recall_target=recall_target)[1]
  return x[index], index
