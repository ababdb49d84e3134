"""The scaling rules of DCSGD and DSignSGD: the invariants they keep, identity, composition,
monotonicity, and the errors (what they do to training is `studies_noise_test.py`'s)."""

import itertools
import math

import numpy as np
import pytest

import biased_compression as bc

LRS = (1e-3, 0.05, 0.7)
OMEGAS = (0.0, 0.125, 3.0, 63.0)
COUNTS = (1, 2, 7, 64)


@pytest.mark.parametrize(
  "lr,omega,b,n,omega0,b0,n0",
  list(itertools.product(LRS, OMEGAS, COUNTS, (1, 8), (0.0, 2.0), (1, 4), (3,))),
)
def test_dcsgd_rule_keeps_the_sde_noise_scale(lr, omega, b, n, omega0, b0, n0):
  new = bc.dcsgd_scaled_lr(
    lr,
    omega=omega,
    batch_size=b,
    num_workers=n,
    base_omega=omega0,
    base_batch_size=b0,
    base_num_workers=n0,
  )
  assert new > 0
  # the invariant, written out, and through its own function
  np.testing.assert_allclose(new * (1 + omega) / (b * n), lr * (1 + omega0) / (b0 * n0), rtol=1e-12)
  np.testing.assert_allclose(
    bc.dcsgd_noise_scale(new, omega=omega, batch_size=b, num_workers=n),
    bc.dcsgd_noise_scale(lr, omega=omega0, batch_size=b0, num_workers=n0),
    rtol=1e-12,
  )


@pytest.mark.parametrize("lr,b,n,b0,n0", list(itertools.product(LRS, COUNTS, (1, 8), (1, 4), (3,))))
def test_sign_rule_keeps_the_sde_noise_scale(lr, b, n, b0, n0):
  new = bc.sign_scaled_lr(lr, batch_size=b, num_workers=n, base_batch_size=b0, base_num_workers=n0)
  np.testing.assert_allclose(new / (n * math.sqrt(b)), lr / (n0 * math.sqrt(b0)), rtol=1e-12)
  np.testing.assert_allclose(
    bc.sign_noise_scale(new, batch_size=b, num_workers=n),
    bc.sign_noise_scale(lr, batch_size=b0, num_workers=n0),
    rtol=1e-12,
  )


def test_the_rules_named_in_the_paper():
  # rand-k at d = 64, k = 16: omega = 3, so DCSGD needs a quarter of DSGD's rate
  omega = bc.rand_k(0.25).omega(64)
  assert bc.dcsgd_scaled_lr(0.1, omega=omega) == pytest.approx(0.025)
  # the linear rule in B for DCSGD, the square-root rule in B for DSignSGD
  assert bc.dcsgd_scaled_lr(0.1, omega=0.0, batch_size=4) == pytest.approx(0.4)
  assert bc.sign_scaled_lr(0.1, batch_size=4) == pytest.approx(0.2)
  assert bc.sign_scaled_lr(0.1, batch_size=9, base_batch_size=1) == pytest.approx(0.3)
  # linear in the number of workers for both
  assert bc.sign_scaled_lr(0.1, num_workers=4) == pytest.approx(0.4)
  assert bc.dcsgd_scaled_lr(0.1, omega=0.0, num_workers=4) == pytest.approx(0.4)


@pytest.mark.parametrize("lr", LRS)
def test_identity_when_nothing_changes(lr):
  assert bc.dcsgd_scaled_lr(lr, omega=0.0) == lr
  assert bc.dcsgd_scaled_lr(
    lr,
    omega=2.5,
    batch_size=3,
    num_workers=5,
    base_omega=2.5,
    base_batch_size=3,
    base_num_workers=5,
  ) == pytest.approx(lr, rel=1e-15)
  assert bc.sign_scaled_lr(lr) == lr
  assert bc.sign_scaled_lr(
    lr, batch_size=6, num_workers=2, base_batch_size=6, base_num_workers=2
  ) == pytest.approx(lr, rel=1e-15)


def test_composition():
  rng = np.random.default_rng(0)
  for _ in range(200):
    lr = float(rng.uniform(1e-4, 1.0))
    (oa, ob, oc) = rng.uniform(0, 50, 3)
    (ba, bb, bc_), (na, nb, nc) = rng.integers(1, 200, 3), rng.integers(1, 64, 3)
    a_to_b = bc.dcsgd_scaled_lr(
      lr, omega=ob, batch_size=bb, num_workers=nb, base_omega=oa, base_batch_size=ba,
      base_num_workers=na,
    )  # fmt: skip
    b_to_c = bc.dcsgd_scaled_lr(
      a_to_b, omega=oc, batch_size=bc_, num_workers=nc, base_omega=ob, base_batch_size=bb,
      base_num_workers=nb,
    )  # fmt: skip
    a_to_c = bc.dcsgd_scaled_lr(
      lr, omega=oc, batch_size=bc_, num_workers=nc, base_omega=oa, base_batch_size=ba,
      base_num_workers=na,
    )  # fmt: skip
    assert b_to_c == pytest.approx(a_to_c, rel=1e-12)
    s_ab = bc.sign_scaled_lr(
      lr, batch_size=bb, num_workers=nb, base_batch_size=ba, base_num_workers=na
    )
    s_bc = bc.sign_scaled_lr(
      s_ab, batch_size=bc_, num_workers=nc, base_batch_size=bb, base_num_workers=nb
    )
    s_ac = bc.sign_scaled_lr(
      lr, batch_size=bc_, num_workers=nc, base_batch_size=ba, base_num_workers=na
    )
    assert s_bc == pytest.approx(s_ac, rel=1e-12)
    # and back: a -> b -> a is the identity
    back = bc.sign_scaled_lr(
      s_ab, batch_size=ba, num_workers=na, base_batch_size=bb, base_num_workers=nb
    )
    assert back == pytest.approx(lr, rel=1e-12)


def test_monotonicity():
  omegas = [0.0, 0.1, 1.0, 3.0, 10.0, 1e3]
  lrs = [bc.dcsgd_scaled_lr(0.1, omega=w, batch_size=2, num_workers=3) for w in omegas]
  assert all(a > b for a, b in itertools.pairwise(lrs))  # more compression noise: smaller rate
  for rule in (
    lambda b: bc.dcsgd_scaled_lr(0.1, omega=1.0, batch_size=b),
    lambda b: bc.sign_scaled_lr(0.1, batch_size=b),
  ):
    rates = [rule(b) for b in (1, 2, 3, 8, 100)]
    assert all(a < b for a, b in itertools.pairwise(rates))  # larger batches: larger rates
  for rule in (
    lambda n: bc.dcsgd_scaled_lr(0.1, omega=1.0, num_workers=n),
    lambda n: bc.sign_scaled_lr(0.1, num_workers=n),
  ):
    rates = [rule(n) for n in (1, 2, 5, 64)]
    assert all(a < b for a, b in itertools.pairwise(rates))
  # the sign rule grows slower than the linear one in B (the square root), from B = 2 on
  for b in (2, 4, 16, 1024):
    assert bc.sign_scaled_lr(0.1, batch_size=b) < bc.dcsgd_scaled_lr(0.1, omega=0.0, batch_size=b)


@pytest.mark.parametrize("lr", [0.0, -0.1, math.inf, math.nan, True, "0.1", None])
def test_bad_lr(lr):
  for call in (
    lambda: bc.dcsgd_scaled_lr(lr, omega=1.0),
    lambda: bc.sign_scaled_lr(lr),
    lambda: bc.dcsgd_noise_scale(lr, omega=1.0, batch_size=1, num_workers=1),
    lambda: bc.sign_noise_scale(lr, batch_size=1, num_workers=1),
  ):
    with pytest.raises(ValueError, match="lr"):
      call()


@pytest.mark.parametrize("omega", [-0.5, math.inf, math.nan, False, "1"])
def test_bad_omega(omega):
  with pytest.raises(ValueError, match="omega must"):
    bc.dcsgd_scaled_lr(0.1, omega=omega)
  with pytest.raises(ValueError, match="base_omega must"):
    bc.dcsgd_scaled_lr(0.1, omega=1.0, base_omega=omega)
  with pytest.raises(ValueError, match="omega must"):
    bc.dcsgd_noise_scale(0.1, omega=omega, batch_size=1, num_workers=1)


@pytest.mark.parametrize("bad", [0, -3, 2.0, 1.5, True, "4", None])
@pytest.mark.parametrize(
  "name", ["batch_size", "num_workers", "base_batch_size", "base_num_workers"]
)
def test_bad_counts(bad, name):
  with pytest.raises(ValueError, match=f"{name} must be an int >= 1, got {bad!r}"):
    bc.dcsgd_scaled_lr(0.1, omega=1.0, **{name: bad})
  with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
    bc.sign_scaled_lr(0.1, **{name: bad})


def test_numpy_scalars_are_accepted():
  assert bc.dcsgd_scaled_lr(np.float32(0.5), omega=np.float64(1.0), batch_size=np.int64(2)) == (
    pytest.approx(0.5)
  )
  assert bc.sign_scaled_lr(0.5, batch_size=np.int32(4)) == pytest.approx(1.0)
