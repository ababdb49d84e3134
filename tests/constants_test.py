"""The constants: the closed forms of the papers and the conversions between the classes."""

import math

import jax.numpy as jnp
import pytest

import biased_compression as bc

REGISTRY = bc.standard_compressors()


@pytest.mark.parametrize("d,k", [(1000, 10), (1000, 1), (64, 64), (7, 3)])
def test_sparsifier_constants(d, k):
  assert bc.top_k(k=k).delta(d) == pytest.approx(d / k)
  assert bc.b2_constants(bc.top_k(k=k), d) == pytest.approx((k / d, 1.0))
  assert bc.b1_constants(bc.top_k(k=k), d) == pytest.approx((k / d, 1.0))
  assert bc.rand_k(k=k).omega(d) == pytest.approx(d / k - 1)
  assert bc.rand_k(k=k, unbiased=False).delta(d) == pytest.approx(d / k)
  assert bc.adaptive_random_sparsification().delta(d) == pytest.approx(d)
  assert bc.scaled_sign().delta(d) == pytest.approx(d)


def test_quantiser_constants():
  assert bc.natural_compression().omega(10) == 1 / 8
  assert bc.natural_compression().delta(10) == pytest.approx(8 / 7)  # U(w), w < 1: 1/(1-w)
  assert bc.exponential_rounding(2.0, unbiased=False).delta(10) == pytest.approx(9 / 8)
  b = 3.0
  assert bc.exponential_rounding(b).omega(10) == pytest.approx((b + 1) ** 2 / (4 * b) - 1)
  assert bc.sign().delta(10) == math.inf and bc.sign().omega(10) == math.inf
  assert bc.b2_constants(bc.sign(), 10) is None
  assert bc.identity().omega(5) == 0 and bc.identity().delta(5) == 1
  assert bc.cast(jnp.bfloat16).delta(5) == pytest.approx(1 / (1 - 2.0**-16))


@pytest.mark.parametrize("d,s", [(100, 4), (10_000, 2), (10_000, 100), (3, 1)])
def test_standard_dithering_omega_is_qsgd_for_p2(d, s):
  assert bc.standard_dithering(s).omega(d) == pytest.approx(min(d / s**2, math.sqrt(d) / s))
  assert bc.standard_dithering(s, norm=1).omega(d) == pytest.approx(min(d**2 / s**2, d / s))


@pytest.mark.parametrize("p", [1, 1.5, 2, math.inf])
@pytest.mark.parametrize("d,s", [(100, 4), (10_000, 8), (10, 30)])
def test_natural_dithering_omega(p, d, s):
  r = min(p, 2)
  t = d ** (1 / r) * 2 ** (1 - s)
  assert bc.natural_dithering(s, norm=p).omega(d) == pytest.approx(1 / 8 + t * min(1, t))


def test_natural_dithering_tends_to_natural_compression():
  assert bc.natural_dithering(60).omega(10**6) == pytest.approx(1 / 8, rel=1e-9)


def test_top_k_natural_dithering_constants():
  d, k, s = 10_000, 100, 7
  c = bc.top_k_natural_dithering(k=k, levels=s)
  w = bc.natural_dithering(s).omega(k)  # omega with k in place of d
  assert bc.b2_constants(c, d) == pytest.approx((k / d, 1 + w))
  # The paper's statement: C / (1 + w) is in B3((1 + w) d / k).
  assert bc.contractive(c).delta(d) == pytest.approx((1 + w) * d / k)
  # And C itself, since w < 1: B3(d / ((1 - w) k)).
  assert w < 1 and c.delta(d) == pytest.approx(d / ((1 - w) * k))


def test_composition_and_induced_constants():
  d = 1000
  c1, c2 = bc.rand_k(0.5), bc.natural_compression()
  w1, w2 = c1.omega(d), c2.omega(500)
  assert bc.compose(c2, c1).omega(d) == pytest.approx(w1 * w2 + w1 + w2)
  ind = bc.induced(bc.top_k(k=10), bc.rand_k(k=100))
  assert ind.unbiased
  assert ind.omega(d) == pytest.approx((d / 100 - 1) * (1 - 10 / d))


def test_contractive_scales_unbiased_into_b3():
  for c in [bc.rand_k(0.1), bc.natural_dithering(3), bc.standard_dithering(2)]:
    for d in [10, 1000]:
      w = c.omega(d)
      assert bc.contractive(c).delta(d) == pytest.approx(1 + w)
      assert not bc.contractive(c).unbiased


def test_scaled_constants():
  d, k, lam = 100, 10, 0.5
  c = bc.scaled(bc.top_k(k=k), lam)
  assert bc.b2_constants(c, d) == pytest.approx((lam * k / d, lam))
  assert c.delta(d) == pytest.approx(1 / ((2 - lam) * lam * k / d))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_conversions_are_consistent(name):
  c = REGISTRY[name]
  for d in [1, 17, 1000]:
    k = bc.class_constants(c, d)
    if c.unbiased:
      assert k.b2 == pytest.approx((1.0, 1.0 + k.omega))
      assert k.b1 == pytest.approx((1.0, 1.0 + k.omega))
    if k.b2 is not None:
      gamma, beta = k.b2
      assert 0 < gamma <= 1 <= beta or c.unbiased is False
      assert k.b1 is not None and k.b1[1] == beta
      if beta < 2:
        assert k.b3 <= 1 / ((2 - beta) * gamma) * (1 + 1e-12)
    if math.isfinite(k.b3):
      assert k.b3 >= 1
      assert k.b2 is not None


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_one_path_to_the_constants(name):
  # c.b1 / c.b2 / c.b3 are the converted constants, never None where a class inclusion gives
  # them: B2 whenever delta is finite, B1 whenever B2 exists
  c = REGISTRY[name]
  for d in (1, 10, 1000):
    b1, b2, b3 = c.b1(d), c.b2(d), c.b3(d)
    assert (b1, b2, b3) == (bc.b1_constants(c, d), bc.b2_constants(c, d), bc.b3_constants(c, d))
    if math.isfinite(b3):
      assert b2 is not None and b2[0] > 0 and 0 < b2[1] <= 2 + 1e-12
    if b2 is not None:
      assert b1 is not None and b1[0] <= b1[1] + 1e-12
