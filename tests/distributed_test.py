"""The one distributed interface: `simulate` (vmap) and `shard` (shard_map over 8 CPU devices)
give the same results as each other and as the hand-written vmap step; they refuse a
transformation that does not communicate and a state without a worker axis; the bit count
works inside jit and scan; `worker_key` is the key schedule of the collectives."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import biased_compression as bc

N = 8
AXIS = "w"
PARAMS = {"w": jnp.zeros((6, 7)), "b": jnp.zeros((25,))}


def _grads(seed, steps):
  def one(k, p):
    return jax.random.normal(k, (steps, N, *p.shape))

  keys = jax.random.split(jax.random.key(seed), len(PARAMS))
  return {name: one(k, p) for k, (name, p) in zip(keys, PARAMS.items(), strict=True)}


def _mesh():
  return jax.make_mesh((N,), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))


def _run(workers, grads, steps, **extra):
  update = jax.jit(workers.update)
  state = workers.init(PARAMS)
  outs = []
  for t in range(steps):
    out, state = update(jax.tree.map(lambda g, t=t: g[t], grads), state, PARAMS, **extra)
    outs.append(out)
  return outs, state


TXS = {
  "error_feedback": lambda: optax.chain(
    optax.sgd(0.1), bc.error_feedback(bc.top_k(k=8), axis_name=AXIS)
  ),
  "diana": lambda: bc.diana(bc.natural_dithering(3), axis_name=AXIS, seed=1),
  "ef21_two_stage": lambda: bc.ef21(bc.scaled_sign(), axis_name=AXIS, method="two_stage"),
}


@pytest.mark.parametrize("name", sorted(TXS))
def test_simulate_equals_shard_and_the_vmap_step(name):
  steps = 3
  grads = _grads(1, steps)
  sim_outs, sim_state = _run(bc.simulate(TXS[name](), N, axis_name=AXIS), grads, steps)
  sh_outs, sh_state = _run(bc.shard(TXS[name](), _mesh(), AXIS), grads, steps)
  # the hand-written simulation that the README used to show
  tx = TXS[name]()
  step = jax.jit(jax.vmap(tx.update, in_axes=(0, 0, None), axis_name=AXIS))
  state = bc.init_workers(tx, PARAMS, N)
  for t in range(steps):
    out, state = step(jax.tree.map(lambda g, t=t: g[t], grads), state, PARAMS)
    for leaf in jax.tree.leaves(jax.tree.map(lambda a, b: a[0] - b, out, sim_outs[t])):
      np.testing.assert_array_equal(leaf, 0.0)
  sim, sh = jax.tree.leaves((sim_outs, sim_state)), jax.tree.leaves((sh_outs, sh_state))
  for a, b in zip(sim, sh, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_extra_arguments_are_per_worker():
  grads = _grads(2, 1)
  mask = jnp.arange(N) < 3
  tx = bc.error_feedback(bc.top_k(k=8), axis_name=AXIS)
  outs = {}
  for name, workers in {
    "simulate": bc.simulate(tx, N, axis_name=AXIS),
    "shard": bc.shard(tx, _mesh(), AXIS),
  }.items():
    (out,), state = _run(workers, grads, 1, participating=mask)
    np.testing.assert_array_equal(bc.bits_sent(state) > 0, np.asarray(mask))
    outs[name] = out
  # the mean over the three participants of their messages
  for leaf in PARAMS:
    ref = np.mean([bc.top_k(k=8).compress(grads[leaf][0, i]) for i in range(3)], 0)
    for out in outs.values():
      np.testing.assert_allclose(out[leaf], ref, rtol=1e-6, atol=1e-7)


def test_a_transformation_that_does_not_communicate_is_refused():
  grads = jax.tree.map(lambda g: g[0], _grads(3, 1))
  for tx in (optax.sgd(0.1), bc.error_feedback(bc.top_k(k=1))):  # no library part; no axis
    for workers in (bc.simulate(tx, N, axis_name=AXIS), bc.shard(tx, _mesh(), AXIS)):
      with pytest.raises(ValueError, match="no transformation of the library in tx communicates"):
        workers.update(grads, workers.init(PARAMS), PARAMS)


def test_state_and_gradients_need_the_worker_axis():
  tx = bc.error_feedback(bc.top_k(k=1), axis_name=AXIS)
  workers = bc.simulate(tx, N, axis_name=AXIS)
  grads = jax.tree.map(lambda g: g[0], _grads(4, 1))
  with pytest.raises(ValueError, match="state needs a leading worker axis of 8.*Workers.init"):
    workers.update(grads, tx.init(PARAMS), PARAMS)
  with pytest.raises(ValueError, match="gradients needs a leading worker axis of 8"):
    workers.update(jax.tree.map(lambda g: g[:4], grads), workers.init(PARAMS), PARAMS)
  with pytest.raises(ValueError, match="num_workers must be an int >= 1"):
    bc.simulate(tx, 0)
  with pytest.raises(ValueError, match="not axis_name 'data'"):
    bc.shard(tx, _mesh(), "data")


def test_bit_words_inside_scan_equal_bits_sent():
  tx = bc.compress(bc.top_k(k=5), axis_name=AXIS)
  workers = bc.simulate(tx, N, axis_name=AXIS)
  grads = jax.tree.map(lambda g: g[0], _grads(5, 1))

  def body(state, _):
    _, state = workers.update(grads, state, PARAMS)
    return state, bc.bit_words(state, last_step=True)

  state, per_step = jax.jit(functools.partial(jax.lax.scan, body, length=4))(workers.init(PARAMS))
  per_step = bc.words_to_bits(per_step)  # (steps, workers)
  np.testing.assert_array_equal(per_step.sum(0), bc.bits_sent(state))
  assert (per_step == bc.bits_sent(state, last_step=True)).all()
  np.testing.assert_array_equal(bc.words_to_bits(bc.bit_words(state)), bc.bits_sent(state))
  # the server's count is zero without a server
  np.testing.assert_array_equal(bc.words_to_bits(bc.bit_words(state, server=True)), 0)


def test_bit_words_are_exact_past_int32():
  big = bc.BitCount(step=jnp.array([3, 5], jnp.int32), total=jnp.array([7, (1 << 30) - 1]))
  words = jax.jit(bc.bit_words)({"a": big, "b": big})
  assert bc.words_to_bits(words) == 2 * (7 * 2**30 + 2**30 - 1) == 16 * 2**30 - 2


def test_worker_key_is_the_key_schedule_of_compressed_mean():
  x = jax.random.normal(jax.random.key(6), (N, 2, 50))
  c = bc.natural_dithering(2)
  key = jax.random.key(7)
  got = jax.jit(
    jax.vmap(lambda v: bc.compressed_mean(list(v), c, AXIS, key=key).local, axis_name=AXIS)
  )(x)
  for i in range(N):
    for leaf in range(2):
      want = c.compress(x[i, leaf], key=bc.worker_key(key, i, leaf))
      np.testing.assert_array_equal(got[leaf][i], want)
