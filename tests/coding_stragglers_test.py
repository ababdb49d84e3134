"""Straggler models: frequencies, reproducibility, fixed sets, the adversary, the errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biased_compression import coding


def _draws(model, n, count, seed=0):
  keys = jax.random.split(jax.random.key(seed), count)
  return np.asarray(jax.jit(jax.vmap(lambda k: model.alive(k, n)))(keys))


@pytest.mark.parametrize("p", [0.0, 0.3, (0.1, 0.5, 0.9, 0.0)])
def test_iid_stragglers_have_their_probabilities(p):
  n, count = 4, 20_000
  alive = _draws(coding.iid(p), n, count)
  expected = 1.0 - np.broadcast_to(np.asarray(p, float), (n,))
  sigma = np.sqrt(expected * (1 - expected) / count)
  assert np.all(np.abs(alive.mean(0) - expected) <= 5 * sigma + 1e-12)
  # independent workers: the joint frequency of two alive workers is the product
  both = (alive[:, 0] & alive[:, 1]).mean()
  assert abs(both - expected[0] * expected[1]) < 5 * np.sqrt(0.25 / count)


def test_the_same_key_gives_the_same_stragglers():
  model = coding.iid(0.5)
  a, b = _draws(model, 16, 50), _draws(model, 16, 50)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, _draws(model, 16, 50, seed=1))


def test_fixed_stragglers():
  model = coding.fixed([3, 1], 5)
  assert model.stragglers == (1, 3)
  np.testing.assert_array_equal(_draws(model, 5, 3), [[True, False, True, False, True]] * 3)
  np.testing.assert_array_equal(model.straggling_probabilities(5), [0, 1, 0, 1, 0])


@pytest.mark.parametrize("weights", ["exact", "sgc"])
def test_adversary_maximises_the_decoding_error(weights):
  code = coding.sgc_cyclic(6, 2) if weights == "sgc" else coding.fractional_repetition(6, 1)
  model = coding.adversarial(code, 2, weights=weights)

  def error(subset):
    alive = np.ones(6, bool)
    alive[list(subset)] = False
    if weights == "exact":
      return coding.residual(code, alive)
    w = np.where(alive, coding.sgc_weights(code, 0.0), 0.0)
    return np.linalg.norm(w @ code.B - 1.0)

  errors = {s: error(s) for s in itertools.combinations(range(6), 2)}
  assert error(model.stragglers) == pytest.approx(max(errors.values()))
  if weights == "exact":
    # a fractional repetition group of 2 lost entirely: its parts cannot be decoded
    assert model.stragglers in {(0, 1), (2, 3), (4, 5)} and errors[model.stragglers] > 0.5
    assert coding.decoding_weights(code, np.asarray([True] * 6)) is not None
  else:
    assert model.stragglers == (0, 1)  # two neighbours hold part 1 alone


def test_adversary_is_the_brute_force_maximum_on_an_asymmetric_code():
  code = coding.cyclic_repetition(6, 1)  # random coefficients: no ties, and not the first set
  model = coding.adversarial(code, 2)

  def error(subset):
    return coding.residual(code, np.asarray([i not in subset for i in range(6)]))

  best = max(itertools.combinations(range(6), 2), key=error)
  assert model.stragglers == best != (0, 1)


def test_adversary_finds_nothing_worse_than_zero_where_the_code_tolerates_s():
  code = coding.cyclic_repetition(5, 2)
  model = coding.adversarial(code, 2)  # any 3 of 5 decode exactly
  alive = np.asarray(model.alive(jax.random.key(0), 5))
  assert alive.sum() == 3 and coding.residual(code, alive) < 1e-8


def test_errors():
  with pytest.raises(ValueError, match="p must be a probability in \\[0, 1\\)"):
    coding.iid(1.0)
  with pytest.raises(ValueError, match="p must be a probability"):
    coding.iid([0.1, -0.1])
  with pytest.raises(ValueError, match="the model is for 4 workers, got n = 5"):
    coding.iid((0.1, 0.2, 0.3, 0.4)).alive(jax.random.key(0), 5)
  with pytest.raises(ValueError, match="distinct indices in \\[0, 4\\)"):
    coding.fixed([1, 4], 4)
  with pytest.raises(ValueError, match="distinct indices"):
    coding.fixed([1, 1], 4)
  with pytest.raises(ValueError, match="num_workers must be an int >= 1"):
    coding.fixed([], 0)
  code = coding.sgc_cyclic(4, 2)
  with pytest.raises(ValueError, match="s must be an int in \\[0, 4\\)"):
    coding.adversarial(code, 4)
  with pytest.raises(ValueError, match="weights must be 'exact' or 'sgc'"):
    coding.adversarial(code, 1, weights="mean")
  with pytest.raises(ValueError, match="too many to enumerate"):
    coding.adversarial(coding.sgc_cyclic(40, 2), 20)


def test_alive_is_traceable_with_a_shared_key_per_step():
  model = coding.iid(0.5)

  @jax.jit
  def worker_views(key):
    # every simulated worker draws the mask from the same key and reads its own entry
    return jax.vmap(lambda i: model.alive(key, 8)[i])(jnp.arange(8))

  key = jax.random.key(3)
  np.testing.assert_array_equal(worker_views(key), model.alive(key, 8))
