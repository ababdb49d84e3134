"""Gradient codes: structure, exact decoding from every large enough subset, SGC unbiasedness."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biased_compression import coding

SMALL = [(n, s) for n in range(1, 8) for s in range(n)]


def masks(n, k):
  """Every boolean mask of n workers with exactly k alive."""
  for alive in itertools.combinations(range(n), k):
    mask = np.zeros(n, bool)
    mask[list(alive)] = True
    yield mask


def test_fractional_repetition_structure():
  code = coding.fractional_repetition(6, 2)
  assert (code.num_workers, code.num_parts, code.replication) == (6, 6, 3)
  assert code.B.dtype == np.float64
  assert [code.parts_of(i) for i in range(6)] == [(0, 1, 2)] * 3 + [(3, 4, 5)] * 3
  np.testing.assert_array_equal(code.B.sum(axis=0), 3)
  assert set(np.unique(code.B)) == {0.0, 1.0}
  assert "fractional_repetition" in code.name


@pytest.mark.parametrize("n,s", [(5, 2), (4, 0), (6, 5), (7, 3)])
def test_cyclic_repetition_structure(n, s):
  code = coding.cyclic_repetition(n, s)
  assert code.replication == s + 1
  for i in range(n):
    assert code.parts_of(i) == tuple(sorted((i + k) % n for k in range(s + 1)))
  np.testing.assert_array_equal((code.B != 0).sum(axis=0), s + 1)
  np.testing.assert_array_equal((code.B != 0).sum(axis=1), s + 1)


def test_sgc_cyclic_structure():
  code = coding.sgc_cyclic(5, 3)
  assert code.replication == 3
  assert code.parts_of(0) == (0, 1, 2)
  assert code.parts_of(4) == (0, 1, 4)
  np.testing.assert_array_equal(code.B.sum(axis=0), 3)
  np.testing.assert_array_equal(code.B.sum(axis=1), 3)
  assert set(np.unique(code.B)) == {0.0, 1.0}


def test_code_is_immutable_and_hashable():
  code = coding.sgc_cyclic(3, 2)
  with pytest.raises(ValueError):
    code.B[0, 0] = 5.0
  with pytest.raises(AttributeError):
    code.num_workers = 4
  hash(code)
  with pytest.raises(ValueError, match="worker"):
    code.parts_of(3)


def _check_decodes(code, s):
  n = code.num_workers
  g = np.random.default_rng(1).standard_normal((code.num_parts, 3))
  for k in range(n - s, n + 1):
    for mask in masks(n, k):
      a = coding.decoding_weights(code, mask)
      assert a is not None, mask
      assert a.dtype == np.float64 and a.shape == (n,)
      np.testing.assert_array_equal(a[~mask], 0.0)
      np.testing.assert_allclose(a @ code.B, 1.0, atol=1e-9)
      np.testing.assert_allclose(a @ (code.B @ g), g.sum(axis=0), atol=1e-8)
      assert coding.residual(code, mask) < 1e-9


@pytest.mark.parametrize("n,s", [(n, s) for n, s in SMALL if n % (s + 1) == 0])
def test_fractional_repetition_decodes_every_subset(n, s):
  _check_decodes(coding.fractional_repetition(n, s), s)


@pytest.mark.parametrize("n,s", SMALL)
@pytest.mark.parametrize("seed", [0, 1])
def test_cyclic_repetition_decodes_every_subset(n, s, seed):
  _check_decodes(coding.cyclic_repetition(n, s, seed=seed), s)


@pytest.mark.parametrize(
  "make", [lambda n, s: coding.fractional_repetition(n, s), coding.cyclic_repetition]
)
@pytest.mark.parametrize("n,s", [(4, 1), (6, 2), (6, 1)])
def test_too_few_workers_cannot_decode(make, n, s):
  code = make(n, s)
  # fewer than n - s workers: some subset cannot decode (the rank is too small for cyclic;
  # a whole group missing for fractional); find one
  failing = [m for m in masks(n, n - s - 1) if coding.decoding_weights(code, m) is None]
  assert failing
  assert coding.residual(code, failing[0]) > 1e-3
  assert coding.decoding_weights(code, np.zeros(n, bool)) is None


def test_cyclic_below_threshold_never_decodes():
  # the rows lie in null(H) of dimension n - s, and n - s - 1 of them cannot span 1
  code = coding.cyclic_repetition(6, 2)
  assert all(coding.decoding_weights(code, m) is None for m in masks(6, 3))


def _parts(m):
  rng = np.random.default_rng(2)
  return {"a": rng.standard_normal((m, 3)).astype(np.float32), "b": rng.standard_normal(m)}


@pytest.mark.parametrize(
  "code",
  [coding.fractional_repetition(4, 1), coding.cyclic_repetition(5, 2), coding.sgc_cyclic(5, 3)],
  ids=lambda c: c.name,
)
def test_encode_matches_numpy(code):
  parts = _parts(code.num_parts)
  ref = {k: np.tensordot(code.B, v, axes=1) for k, v in parts.items()}
  tree = jax.tree.map(jnp.asarray, parts)
  for i in range(code.num_workers):
    out = coding.encode(code, tree, i)
    for k in parts:
      np.testing.assert_allclose(out[k], ref[k][i], rtol=1e-5, atol=1e-5)
  jitted = jax.jit(lambda i: coding.encode(code, tree, i))
  vmapped = jax.jit(jax.vmap(lambda i: coding.encode(code, tree, i)))(jnp.arange(code.num_workers))
  every = coding.encode_all(code, tree)
  every_jit = jax.jit(lambda t: coding.encode_all(code, t))(tree)
  for k in parts:
    np.testing.assert_allclose(jitted(jnp.int32(1))[k], ref[k][1], rtol=1e-5, atol=1e-5)
    for got in (vmapped, every, every_jit):
      assert got[k].shape == ref[k].shape
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


def test_encode_rejects_wrong_part_axis():
  code = coding.sgc_cyclic(4, 2)
  with pytest.raises(ValueError, match="part_grads"):
    coding.encode(code, jnp.ones((3, 2)), 0)
  with pytest.raises(ValueError, match="part_grads"):
    coding.encode_all(code, {"x": jnp.ones(())})


def test_combine_decodes_the_full_gradient():
  code = coding.cyclic_repetition(6, 2)
  parts = _parts(6)
  messages = coding.encode_all(code, jax.tree.map(jnp.asarray, parts))
  a = coding.decoding_weights(code, np.array([1, 0, 1, 1, 0, 1], bool))
  out = jax.jit(coding.combine)(a, messages)
  for k in parts:
    np.testing.assert_allclose(out[k], parts[k].sum(axis=0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "code,p",
  [
    (coding.sgc_cyclic(5, 2), 0.3),
    (coding.sgc_cyclic(4, 3), np.array([0.0, 0.5, 0.9, 0.2])),
    (coding.sgc_cyclic(3, 1), 0.6),
    (coding.fractional_repetition(6, 1), np.linspace(0.1, 0.6, 6)),
  ],
  ids=lambda x: getattr(x, "name", None),
)
def test_sgc_is_unbiased_exactly(code, p):
  # the exact expectation over all 2^n masks, each worker straggling independently
  n = code.num_workers
  w = coding.sgc_weights(code, p)
  q = 1.0 - np.broadcast_to(p, (n,))
  g = np.random.default_rng(3).standard_normal((code.num_parts, 2))
  messages = code.B @ g
  mean = np.zeros(2)
  for bits in itertools.product([False, True], repeat=n):
    mask = np.array(bits)
    prob = np.prod(np.where(mask, q, 1 - q))
    mean += prob * ((w * mask) @ messages)
  np.testing.assert_allclose(mean, g.sum(axis=0), atol=1e-12)


def test_sgc_is_unbiased_sampled_in_jit():
  code = coding.sgc_cyclic(6, 2)
  p = 0.4
  g = jnp.asarray(np.random.default_rng(4).standard_normal((6, 3)), jnp.float32)
  messages = coding.encode_all(code, g)

  @jax.jit
  def estimate(key):
    mask = jax.random.uniform(key, (6,)) >= p
    return coding.combine(coding.masked_sgc_weights(code, p, mask), messages)

  draws = jax.vmap(estimate)(jax.random.split(jax.random.key(0), 20000))
  se = draws.std(axis=0) / np.sqrt(draws.shape[0])
  np.testing.assert_array_less(np.abs(draws.mean(axis=0) - g.sum(axis=0)), 5 * se)


def test_masked_sgc_weights():
  code = coding.sgc_cyclic(4, 2)
  p = np.array([0.0, 0.5, 0.75, 0.2])
  mask = jnp.array([True, False, True, True])
  out = jax.jit(lambda m: coding.masked_sgc_weights(code, p, m))(mask)
  np.testing.assert_allclose(out, [0.5, 0.0, 2.0, 0.625], rtol=1e-6)
  np.testing.assert_allclose(coding.sgc_weights(code, p), [0.5, 1.0, 2.0, 0.625])


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda: coding.fractional_repetition(4, 4), "s"),
    (lambda: coding.fractional_repetition(4, 5), "s"),
    (lambda: coding.fractional_repetition(4, -1), "s"),
    (lambda: coding.fractional_repetition(6, 3), "divide"),
    (lambda: coding.fractional_repetition(0, 0), "n"),
    (lambda: coding.cyclic_repetition(3, 3), "s"),
    (lambda: coding.cyclic_repetition(3, -1), "s"),
    (lambda: coding.cyclic_repetition(0, 0), "n"),
    (lambda: coding.cyclic_repetition(2.5, 0), "n"),
    (lambda: coding.sgc_cyclic(3, 4), "d"),
    (lambda: coding.sgc_cyclic(3, 0), "d"),
    (lambda: coding.sgc_cyclic(0, 1), "n"),
    (lambda: coding.sgc_weights(coding.sgc_cyclic(3, 2), 1.0), "p"),
    (lambda: coding.sgc_weights(coding.sgc_cyclic(3, 2), -0.1), "p"),
    (lambda: coding.sgc_weights(coding.sgc_cyclic(3, 2), np.array([0.1, 1.2, 0.0])), "p"),
    (lambda: coding.sgc_weights(coding.sgc_cyclic(3, 2), np.array([0.1, 0.2])), "p"),
    (lambda: coding.sgc_weights(coding.sgc_cyclic(3, 2), np.nan), "p"),
    (lambda: coding.sgc_weights(coding.cyclic_repetition(4, 1), 0.1), "code"),
    (lambda: coding.decoding_weights(coding.sgc_cyclic(3, 2), np.ones(2, bool)), "alive"),
    (lambda: coding.GradientCode(2, 3, np.ones((2, 2)), 1), "shape"),
  ],
)
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize(
  "code",
  [coding.sgc_cyclic(40, 3), coding.cyclic_repetition(20, 2), coding.fractional_repetition(24, 1)],
  ids=lambda c: c.name,
)
def test_sparse_encoding_gathers_the_held_parts_like_the_dense_product(code):
  from biased_compression.coding import _codes

  assert not _codes._dense(code)  # these take the gather path
  g = {
    "w": jax.random.normal(jax.random.key(1), (code.num_parts, 3, 2)),
    "b": jnp.arange(code.num_parts, dtype=jnp.float32),
  }
  want = jax.tree.map(lambda x: np.einsum("ij,j...->i...", code.B, np.asarray(x, np.float64)), g)
  got = jax.jit(lambda g: coding.encode_all(code, g))(g)
  one = jax.jit(jax.vmap(lambda i: coding.encode(code, g, i)))(jnp.arange(code.num_workers))
  for out in (got, one):
    for k in g:
      np.testing.assert_allclose(out[k], want[k], rtol=1e-5, atol=1e-5)
