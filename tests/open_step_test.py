"""The open step: an algorithm of one's own (any state shapes, several exchanges, dense or
compressed, several weightings), the axis recorded by the collectives, nonfinite="skip",
the shape checks against the state, and coded's expected weights."""

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import biased_compression as bc
from biased_compression import coding
from biased_compression.transforms import Options
from biased_compression.transforms import from_algorithm

N = 4


class SketchState(NamedTuple):
  count: jax.Array
  rng_key: jax.Array
  error: Any
  basis: Any
  bits: bc.BitCount


class Sketch:
  """Two exchanges of different shapes: a dense (3,) summary of each leaf, and the
  compressed update plus error; a random (3,) basis shared by every worker."""

  def init(self, params, key):
    return {
      "error": optax.tree.zeros_like(params, dtype=jnp.float32),
      "basis": jax.random.normal(key, (3,)),
    }

  def step(self, step, u, fields):
    p = optax.tree.add(u, fields["error"])
    summary = jax.tree.map(lambda x: fields["basis"] * jnp.sum(x), p)
    _, mean_summary = step.mean(summary, compressor=None)
    delta, mean = step.mean(p)
    out = jax.tree.map(lambda m, s: m + 0.0 * s[0], mean, mean_summary)
    return out, {"error": optax.tree.sub(p, delta), "basis": fields["basis"]}


def test_an_algorithm_of_ones_own_with_two_exchanges_of_different_shapes():
  c = bc.top_k(k=2)
  tx = from_algorithm("sketch", SketchState, Sketch(), c, Options(axis_name="w"), shared=("basis",))
  workers = bc.simulate(tx, N, axis_name="w")
  params = {"a": jnp.zeros(10), "b": jnp.zeros((2, 5))}
  state = workers.init(params)
  assert state.basis.shape == (N, 3) and (state.basis == state.basis[0]).all()
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.PRNGKey(1), (N, *x.shape)), params)
  out, state = jax.jit(workers.update)(grads, state)
  want = np.mean([np.asarray(c.compress(g)) for g in grads["a"]], axis=0)
  np.testing.assert_allclose(out["a"], want, rtol=1e-6)
  # dense summary: 2 leaves x 3 float32; compressed: each leaf's Top-2 payload
  bits = 2 * 3 * 32 + c.payload_bits(10) + c.payload_bits(10)
  assert (bc.bits_sent(state) == bits).all()


def test_several_weightings_of_one_exchange_equal_separate_means():
  grads = jax.random.normal(jax.random.PRNGKey(2), (N, 16))
  w = jnp.array([0.1, 0.2, 0.3, 0.4])
  seen = {}

  class Two:
    def init(self, params, key):
      return {}

    def step(self, step, u, fields):
      _, (plain, weighted) = step.mean(u, weights=(None, step.count * 0.0 + w_i()))
      seen["k"] = step.exchanges
      return plain + weighted, {}

  def w_i():
    return w[jax.lax.axis_index("w")]

  class NoFields(NamedTuple):
    count: jax.Array
    rng_key: jax.Array
    bits: bc.BitCount

  for method, extra_bits in (("all_gather", 0), ("psum", 1)):
    c = bc.top_k(k=4) if method == "all_gather" else bc.rand_k(k=4, shared_indices=True)
    tx = from_algorithm("two", NoFields, Two(), c, Options(axis_name="w", method=method, seed=3))
    workers = bc.simulate(tx, N, axis_name="w")
    out, state = jax.jit(workers.update)(grads, workers.init(jnp.zeros(16)))
    key = jax.random.split(jax.random.PRNGKey(3))[1]
    msgs = np.stack(
      [
        np.asarray(
          c.compress(
            g, key=bc.worker_key(key, i) if not c.shared_randomness else jax.random.fold_in(key, 0)
          )
        )
        for i, g in enumerate(grads)
      ]
    )
    np.testing.assert_allclose(
      out, msgs.mean(0) + np.einsum("i,id->d", w, msgs), rtol=1e-5, atol=1e-6
    )
    assert seen["k"] == 1
    assert (bc.bits_sent(state) == (1 + extra_bits) * c.payload_bits(16)).all()


def test_a_transformation_on_compressed_mean_runs_under_simulate():
  c = bc.top_k(k=1)

  def update(u, state, params=None):
    return bc.compressed_mean(u, c, "w").mean, state

  tx = optax.GradientTransformation(lambda p: optax.EmptyState(), update)
  workers = bc.simulate(tx, N, axis_name="w")
  grads = jnp.eye(N, 6)
  out, _ = jax.jit(workers.update)(grads, workers.init(jnp.zeros(6)))
  np.testing.assert_allclose(out, grads.mean(0))
  # still refused when nothing communicates
  quiet = optax.GradientTransformation(lambda p: optax.EmptyState(), lambda u, s, p=None: (u, s))
  workers = bc.simulate(quiet, N, axis_name="w")
  with pytest.raises(ValueError, match="communicates over the worker axis"):
    workers.update(grads, workers.init(jnp.zeros(6)))


def _nan_grads():
  grads = jax.random.normal(jax.random.PRNGKey(4), (N, 12))
  return grads.at[0, 3].set(jnp.nan)


@pytest.mark.parametrize("backend", ["simulate", "shard"])
def test_nonfinite_skip_treats_the_worker_as_absent(backend):
  c = bc.top_k(k=3)
  tx = bc.error_feedback(c, axis_name="w", nonfinite="skip")
  if backend == "simulate":
    workers = bc.simulate(tx, N, axis_name="w")
  else:
    mesh = jax.make_mesh(
      (N,), ("w",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:N]
    )
    workers = bc.shard(tx, mesh, "w")
  state = workers.init(jnp.zeros(12))
  good = jax.random.normal(jax.random.PRNGKey(5), (N, 12))
  _, state = jax.jit(workers.update)(good, state)
  grads = _nan_grads()
  out, new = jax.jit(workers.update)(grads, state)
  p = np.asarray(grads) + np.asarray(state.error)
  want = np.mean([np.asarray(c.compress(jnp.asarray(p[i]))) for i in (1, 2, 3)], axis=0)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(new.error)[0], np.asarray(state.error)[0])
  assert np.asarray(new.nonfinite).tolist() == [1, 0, 0, 0]
  bits = bc.bits_sent(new, last_step=True)
  assert bits[0] == 0 and (bits[1:] == c.payload_bits(12)).all()


def test_nonfinite_default_propagates_and_skip_works_for_powersgd_and_one_worker():
  grads = _nan_grads()
  workers = bc.simulate(bc.error_feedback(bc.top_k(k=3), axis_name="w"), N, axis_name="w")
  out, state = jax.jit(workers.update)(grads, workers.init(jnp.zeros(12)))
  assert np.isnan(np.asarray(out)).any()  # the documented default
  g = jax.random.normal(jax.random.PRNGKey(6), (N, 8, 6)).at[2, 1, 1].set(jnp.inf)
  tx = bc.powersgd(6, axis_name="w", nonfinite="skip", min_compression_rate=0.1)
  workers = bc.simulate(tx, N, axis_name="w")
  out, state = jax.jit(workers.update)(g, workers.init(jnp.zeros((8, 6))))
  np.testing.assert_allclose(out, np.asarray(g)[[0, 1, 3]].mean(0), rtol=1e-4, atol=1e-4)
  assert np.asarray(state.nonfinite).tolist() == [0, 0, 1, 0]
  np.testing.assert_array_equal(state.error[2], 0.0)
  one = bc.error_feedback(bc.top_k(k=1), nonfinite="skip")
  s = one.init(jnp.zeros(3))
  u, s = jax.jit(one.update)(jnp.array([1.0, jnp.nan, 2.0]), s)
  assert float(jnp.abs(u).max()) == 0.0 and int(s.nonfinite) == 1 and int(bc.bits_sent(s)) == 0
  with pytest.raises(ValueError, match="nonfinite must be one of"):
    bc.compress(bc.sign(), nonfinite="drop")


def test_updates_are_checked_against_the_state_shapes():
  tx = bc.error_feedback(bc.top_k(k=2), axis_name="w")
  workers = bc.simulate(tx, 8, axis_name="w")
  state = workers.init({"w": jnp.zeros((8, 8))})
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(8,\).*initialised for shape \(8, 8\)"):
    workers.update({"w": jnp.ones((8, 8))}, state)  # the worker axis forgotten
  one = bc.compress(bc.top_k(k=2))
  state = one.init({"layer": {"kernel": jnp.zeros(100)}})
  with pytest.raises(ValueError, match=r"\['layer'\]\['kernel'\] has shape \(50,\).*\(100,\)"):
    one.update({"layer": {"kernel": jnp.ones(50)}}, state)
  with pytest.raises(
    ValueError, match="the updates have 2 leaves but the state was initialised for 1"
  ):
    one.update({"layer": {"kernel": jnp.ones(100), "bias": jnp.ones(2)}}, state)


@pytest.mark.parametrize("decoding", ["sgc", "exact"])
def test_coded_diana_keeps_the_server_shift_the_expected_weighted_mean(decoding):
  n = 6
  code = coding.sgc_cyclic(n, 2) if decoding == "sgc" else coding.fractional_repetition(n, 1)
  model = coding.iid(0.3)
  tx = coding.coded(
    bc.diana(bc.rand_k(0.5), axis_name="w"), code, model, axis_name="w", decoding=decoding
  )
  workers = bc.simulate(tx, n, axis_name="w")
  state = workers.init(jnp.zeros(8))
  c = coding.Decoder.make(code, decoding, np.full(n, 0.3)).expected(model)
  update = jax.jit(workers.update)
  for t in range(20):
    parts = jax.random.normal(jax.random.PRNGKey(t), (code.num_parts, 8))
    _, state = update(coding.encode_all(code, parts), state)
  np.testing.assert_allclose(state.mean_shift[0], c @ np.asarray(state.shift), atol=1e-5)
  assert float(jnp.abs(state.mean_shift[0]).max()) > 0.1


def test_algorithm_protocol_errors_name_the_fields():
  class Bad:
    def init(self, params, key):
      return {"wrong": jnp.zeros(())}

    def step(self, step, u, fields):
      return u, fields

  with pytest.raises(TypeError, match="lacks the skeleton's fields"):
    from_algorithm("bad", NamedTuple("S", [("count", Any)]), Bad(), bc.sign(), Options())
  tx = from_algorithm("bad", SketchState, Bad(), bc.sign(), Options(), shared=("basis",))
  with pytest.raises(ValueError, match=r"returned fields \['wrong'\]"):
    tx.init(jnp.zeros(3))
