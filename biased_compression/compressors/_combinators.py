"""Combinators that build compressors from compressors: compose, induced, scaled, contractive.

Their constants follow from the parts' (proofs in the docstrings), so every composite knows
its omega, B2 and B3 constants and its exact wire size.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from biased_compression.compressors import _base
from biased_compression.compressors import _quantization
from biased_compression.compressors import _sparsification

__all__ = [
  "Compose",
  "Induced",
  "Scaled",
  "Contractive",
  "compose",
  "induced",
  "scaled",
  "contractive",
  "top_k_natural_dithering",
]


def _split(key, first: _base.Compressor, second: _base.Compressor):
  """Keys for two parts: split only when both are random."""
  if first.needs_key and second.needs_key:
    k1, k2 = jax.random.split(key)
    return k1, k2
  return (key if first.needs_key else None), (key if second.needs_key else None)


def _check_compressor(fn: str, arg: str, value) -> None:
  if not isinstance(value, _base.Compressor):
    raise TypeError(f"{fn}: {arg} must be a Compressor, got {value!r}")


@dataclasses.dataclass(frozen=True, repr=False)
class Compose(_base.Compressor):
  """outer(inner(x)). See `compose`."""

  outer: _base.Compressor
  inner: _base.Compressor

  def __repr__(self):
    return f"compose({self.outer!r}, {self.inner!r})"

  @property
  def unbiased(self):
    return self.outer.unbiased and self.inner.unbiased

  @property
  def needs_key(self):
    return self.outer.needs_key or self.inner.needs_key

  @property
  def shared_randomness(self):
    return self.outer.shared_randomness or self.inner.shared_randomness

  @property
  def _sparse(self) -> bool:
    return isinstance(self.inner, _sparsification.Sparsifier)

  def _outer_dim(self, d: int) -> int:
    return self.inner.num_values(d) if self._sparse else d

  def _encode(self, x, key):
    k_in, k_out = _split(key, self.inner, self.outer)
    if not self._sparse:
      return self.outer._encode(
        self.inner._decode(self.inner._encode(x, k_in), x.shape[0], x.dtype, k_in), k_out
      )
    values, indices = self.inner.select(x, k_in)
    payload = self.inner._index_payload(indices, x.shape[0])
    return {**payload, "values": self.outer._encode(values, k_out)}

  def _decode(self, payload, d, dtype, key):
    k_in, k_out = _split(key, self.inner, self.outer)
    if not self._sparse:
      return self.outer._decode(payload, d, dtype, k_out)
    values = self.outer._decode(payload["values"], self.inner.num_values(d), dtype, k_out)
    return self.inner._place(values, self.inner._indices_from(payload, d, k_in), d, dtype)

  def for_chunks(self, d, n):
    if self._sparse:  # the outer operator sees the kept values, whatever their number
      return Compose(self.outer, self.inner.for_chunks(d, n))
    return Compose(self.outer.for_chunks(d, n), self.inner.for_chunks(d, n))

  def bits(self, d):
    if not self._sparse:
      return self.outer.bits(d)
    k = self.inner.num_values(d)
    return self.inner.index_bits(d) + self.outer.bits(k)

  def omega(self, d):
    if not self.unbiased:
      return math.inf
    w1, w2 = self.inner.omega(d), self.outer.omega(self._outer_dim(d))
    return w1 * w2 + w1 + w2

  def native_b2(self, d):
    if self.unbiased:
      return super().native_b2(d)
    inner = _base.b2_constants(self.inner, d)
    if not self.outer.unbiased or inner is None:
      return None
    # E outer(y) = y given y = inner(x), and E||outer(y)||^2 <= (1 + w) ||y||^2.
    gamma, beta = inner
    return (gamma, (1.0 + self.outer.omega(self._outer_dim(d))) * beta)


@dataclasses.dataclass(frozen=True, repr=False)
class Induced(_base.Compressor):
  """C1(x) + C2(x - C1(x)). See `induced`."""

  biased: _base.Compressor
  unbiased_part: _base.Compressor
  unbiased = True

  def __repr__(self):
    return f"induced({self.biased!r}, {self.unbiased_part!r})"

  @property
  def needs_key(self):
    return self.biased.needs_key or self.unbiased_part.needs_key

  @property
  def shared_randomness(self):
    return self.biased.shared_randomness or self.unbiased_part.shared_randomness

  def _encode(self, x, key):
    k1, k2 = _split(key, self.biased, self.unbiased_part)
    p1 = self.biased._encode(x, k1)
    # The residual is formed in float32 so that E C(x) = x holds in float32 arithmetic.
    c1 = self.biased._decode(p1, x.shape[0], jnp.dtype(jnp.float32), k1)
    p2 = self.unbiased_part._encode(x.astype(jnp.float32) - c1, k2)
    return {"biased": p1, "unbiased": p2}

  def _decode(self, payload, d, dtype, key):
    k1, k2 = _split(key, self.biased, self.unbiased_part)
    f32 = jnp.dtype(jnp.float32)
    c1 = self.biased._decode(payload["biased"], d, f32, k1)
    c2 = self.unbiased_part._decode(payload["unbiased"], d, f32, k2)
    return (c1 + c2).astype(dtype)

  def bits(self, d):
    return self.biased.bits(d) + self.unbiased_part.bits(d)

  def for_chunks(self, d, n):
    return Induced(self.biased.for_chunks(d, n), self.unbiased_part.for_chunks(d, n))

  def omega(self, d):
    # E||C2(r) - r||^2 <= w ||r||^2 and ||r||^2 <= (1 - 1/delta) ||x||^2 in expectation.
    return self.unbiased_part.omega(d) * (1.0 - 1.0 / self.biased.delta(d))


class _Rescaled(_base.Compressor):
  """A compressor followed by a multiplication by a positive factor (per leaf size)."""

  compressor: _base.Compressor

  def factor(self, d: int) -> float:
    raise NotImplementedError

  @property
  def needs_key(self):
    return self.compressor.needs_key

  @property
  def linear(self):  # a constant factor keeps decode(sum) = sum of decodes
    return self.compressor.linear

  @property
  def shared_randomness(self):
    return self.compressor.shared_randomness

  def _encode(self, x, key):
    return self.compressor._encode(x, key)

  def _decode(self, payload, d, dtype, key):
    inner = self.compressor
    factor = self.factor(d) if d else 1.0  # an empty leaf has no constants to scale by
    if isinstance(inner, _sparsification.Sparsifier):
      indices = inner._indices_from(payload, d, key)
      return inner._place(payload["values"], indices, d, dtype, factor)
    y = inner._decode(payload, d, jnp.dtype(jnp.float32), key)
    return (y * factor).astype(dtype)

  def bits(self, d):
    return self.compressor.bits(d)

  def for_chunks(self, d, n):
    return dataclasses.replace(self, compressor=self.compressor.for_chunks(d, n))

  def native_b2(self, d):
    inner = _base.b2_constants(self.compressor, d)
    if inner is None:
      return None
    lam = self.factor(d)
    return (lam * inner[0], lam * inner[1])


@dataclasses.dataclass(frozen=True, repr=False)
class Scaled(_Rescaled):
  """factor * C(x). See `scaled`."""

  compressor: _base.Compressor
  scale: float = 1.0

  def __repr__(self):
    return f"scaled({self.compressor!r}, {self.scale!r})"

  def factor(self, d):
    return self.scale


@dataclasses.dataclass(frozen=True, repr=False)
class Contractive(_Rescaled):
  """C(x) / beta(d). See `contractive`."""

  compressor: _base.Compressor

  def __repr__(self):
    return f"contractive({self.compressor!r})"

  def factor(self, d):
    return 1.0 / _base.b2_constants(self.compressor, d)[1]


def compose(outer: _base.Compressor, inner: _base.Compressor) -> Compose:
  r"""Composition C(x) = outer(inner(x)).

  If ``inner`` is a sparsifier (Top-k, rand-k, ...), ``outer`` compresses only the k kept
  values and the wire carries the inner's indices plus the outer's payload of k values.
  Otherwise ``inner`` is applied locally and only the outer's payload travels.

  Constants: two unbiased parts give U(w1 w2 + w1 + w2). With inner in B2(gamma, beta) and
  outer in U(w) (w computed at the dimension the outer sees, k for a sparsifier),
  C is in B2(gamma, (1 + w) beta), hence C / ((1 + w) beta) is in B3((1 + w) beta / gamma),
  and, when (1 + w) beta < 2, C itself is in B3(1 / ((2 - (1 + w) beta) gamma)).

  References:
    Beznosikov et al., On Biased Compression for Distributed Learning, 2023,
    https://arxiv.org/abs/2002.12410
  """
  _check_compressor("compose", "outer", outer)
  _check_compressor("compose", "inner", inner)
  return Compose(outer, inner)


def top_k_natural_dithering(
  ratio: float | None = None,
  *,
  k: int | None = None,
  levels: int = 7,
  method: str = "auto",
  recall_target: float = 0.95,
) -> Compose:
  r"""Top-k followed by natural dithering of the k kept values (the paper's new compressor).

  Equal to ``compose(natural_dithering(levels), top_k(ratio, k=k, method=method))``. With w
  the natural dithering omega at dimension k, C is in B2(k/d, 1 + w), so ``contractive(C)``
  = C/(1 + w) is in B3((1 + w) d / k); C itself is in B3(d / ((1 - w) k)) when w < 1.
  (With ``method="approx"``, k/d becomes `top_k`'s k/(Lw).)
  Wire: k indices, a float32 norm, and k (1 + ceil(log2(levels + 1))) bits.

  Args:
    ratio: fraction of entries kept, in (0, 1].
    k: number of entries kept (exclusive with ratio).
    levels: natural dithering levels s; the default 7 gives 4 bits per kept value.
    method: `top_k`'s selection method ("auto", "exact_sort", "radix" or "approx").
    recall_target: `top_k`'s recall target, with ``method="approx"`` only.

  References:
    Beznosikov et al., On Biased Compression for Distributed Learning, 2023,
    https://arxiv.org/abs/2002.12410
  """
  sparsifier = _sparsification.top_k(ratio, k=k, method=method, recall_target=recall_target)
  return compose(_quantization.natural_dithering(levels), sparsifier)


def induced(biased: _base.Compressor, unbiased: _base.Compressor) -> Induced:
  r"""Induced compressor C(x) = C1(x) + C2(x - C1(x)): unbiased, built from a biased C1.

  With C1 in B3(delta) and C2 in U(w), C is in U(w (1 - 1/delta)): E C(x) = x and
  E||C(x) - x||^2 = E||C2(r) - r||^2 <= w E||r||^2 <= w (1 - 1/delta) ||x||^2, r = x - C1(x).
  Both payloads travel; bits = bits(C1) + bits(C2). The residual is compressed in float32.

  Args:
    biased: a contractive compressor C1 (finite ``delta``), e.g. ``top_k(0.01)``.
    unbiased: an unbiased compressor C2, e.g. ``rand_k(0.01)``.

  References:
    Horvath and Richtarik, A Better Alternative to Error Feedback for
    Communication-Efficient Distributed Learning, 2021, https://arxiv.org/abs/2006.11077
  """
  _check_compressor("induced", "biased", biased)
  _check_compressor("induced", "unbiased", unbiased)
  if not math.isfinite(biased.delta(1024)):
    raise ValueError(f"induced: biased must be contractive (finite delta), got {biased!r}")
  if not unbiased.unbiased:
    raise ValueError(f"induced: unbiased must be an unbiased compressor, got {unbiased!r}")
  return Induced(biased, unbiased)


def scaled(compressor: _base.Compressor, factor: float) -> Scaled:
  r"""factor * C(x), with the same wire format as C.

  Constants: C in B2(gamma, beta) gives factor * C in B2(factor gamma, factor beta), hence
  B3(1 / ((2 - factor beta) factor gamma)) when factor * beta < 2.
  """
  _check_compressor("scaled", "compressor", compressor)
  if isinstance(factor, bool) or not isinstance(factor, (int, float)):
    raise TypeError(f"scaled: factor must be a positive float, got {factor!r}")
  if not 0.0 < factor < math.inf:
    raise ValueError(f"scaled: factor must be positive and finite, got {factor!r}")
  return Scaled(compressor, float(factor))


def contractive(compressor: _base.Compressor) -> Contractive:
  r"""Scales a compressor into B3: C / (1 + omega) for unbiased C.

  For C in U(omega), C / (1 + omega) is in B3(1 + omega): the scaling that error feedback
  needs before it can use an unbiased compressor. More generally, for C in B2(gamma, beta)
  the result is C / beta in B3(beta / gamma) (e.g. Top-k + natural dithering). The factor is
  computed per leaf, since omega depends on the leaf size.

  Raises:
    ValueError: if C is in no class (e.g. `sign`).
  """
  _check_compressor("contractive", "compressor", compressor)
  if _base.b2_constants(compressor, 1024) is None:
    raise ValueError(
      f"contractive: compressor must be unbiased or in B2/B3 (so that it can be scaled "
      f"into B3), got {compressor!r}"
    )
  return Contractive(compressor)
