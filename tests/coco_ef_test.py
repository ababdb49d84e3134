"""COCO-EF and `coding.coded`: gradient-coded training with stragglers (issue 12)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import biased_compression as bc
from biased_compression import coding

AXIS = "w"


def _workers(tx, n):
  return bc.simulate(tx, n, axis_name=AXIS)


def _parts(m, dim, seed=0):
  return jax.random.normal(jax.random.key(seed), (m, dim))


def _run(workers, grads_fn, params, steps, extra=None):
  """``steps`` jitted updates; grads_fn(step) -> per-worker gradients. Returns outs, states."""
  update = jax.jit(workers.update)
  state = workers.init(params)
  outs, states = [], [state]
  for t in range(steps):
    kw = {} if extra is None else extra(t)
    out, state = update(grads_fn(t), state, params, **kw)
    outs.append(out)
    states.append(state)
  return outs, states


# -- the identity case: plain distributed gradient descent ---------------------------------


def test_p0_d1_identity_is_distributed_gradient_descent():
  n, dim, lr = 5, 3, 0.3
  a = jax.random.normal(jax.random.key(1), (n, dim, dim)) / 2 + 2 * jnp.eye(dim)
  b = jax.random.normal(jax.random.key(2), (n, dim))

  def grads(x):  # part j: f_j(x) = |A_j x - b_j|^2 / 2
    return jax.vmap(lambda aj, bj: aj.T @ (aj @ x - bj))(a, b)

  code = coding.sgc_cyclic(n, 1)
  coco = optax.chain(
    optax.sgd(lr), bc.coco_ef(bc.identity(), code, coding.iid(0.0), axis_name=AXIS)
  )
  dgd = optax.chain(optax.sgd(lr), bc.compress(bc.identity(), axis_name=AXIS))

  def train(tx, steps=20):
    workers = _workers(tx, n)
    x = jnp.zeros(dim)
    state = workers.init(x)

    @jax.jit
    def step(x, state):
      out, state = workers.update(coding.encode_all(code, grads(x)), state, x)
      return optax.apply_updates(x, out), state

    xs = []
    for _ in range(steps):
      x, state = step(x, state)
      xs.append(x)
    return jnp.stack(xs)

  np.testing.assert_allclose(train(coco), train(dgd), rtol=1e-5, atol=1e-6)  # rounding
  # and the mean over parts of the gradients is what both follow
  x1 = train(dgd, 1)[0]
  np.testing.assert_allclose(x1, -lr * grads(jnp.zeros(dim)).mean(0), rtol=1e-6)


# -- exact decoding with every straggler set ------------------------------------------------


@pytest.mark.parametrize(
  "code, s",
  [
    (coding.fractional_repetition(6, 2), 2),
    pytest.param(coding.cyclic_repetition(5, 2, seed=3), 2, marks=pytest.mark.slow),
    (coding.cyclic_repetition(6, 1, seed=0), 1),
  ],
  ids=["fractional_repetition", "cyclic_5_2", "cyclic_6_1"],
)
def test_exact_decoding_recovers_the_full_gradient_for_every_straggler_set(code, s):
  n = code.num_workers
  parts = _parts(code.num_parts, 4)
  tx = coding.coded(
    bc.compress(bc.identity(), axis_name=AXIS), code, None, axis_name=AXIS, decoding="exact"
  )
  workers = _workers(tx, n)
  state = workers.init(jnp.zeros(4))
  update = jax.jit(workers.update)
  messages = coding.encode_all(code, parts)
  want = np.asarray(parts.mean(0))
  sets = [c for r in range(s + 1) for c in itertools.combinations(range(n), r)]
  for stragglers in sets:
    alive = np.ones(n, bool)
    alive[list(stragglers)] = False
    out, _ = update(messages, state, participating=jnp.asarray(alive))
    np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-5, err_msg=str(stragglers))
  # one more straggler than the code tolerates: some set cannot decode (and none gives NaN)
  worst = 0.0
  for stragglers in itertools.combinations(range(n), s + 1):
    alive = np.ones(n, bool)
    alive[list(stragglers)] = False
    out, _ = update(messages, state, participating=jnp.asarray(alive))
    assert np.all(np.isfinite(out))
    worst = max(worst, float(np.abs(np.asarray(out) - want).max()))
  assert worst > 1e-2


@pytest.mark.slow
def test_exact_decoding_closed_form_equals_the_least_squares_solution():
  code = coding.fractional_repetition(6, 1)
  decoder = coding.Decoder.make(code, "exact", 0.0)
  rng = np.random.default_rng(0)
  for _ in range(20):
    alive = rng.random(6) < 0.6
    got = np.asarray(decoder.weights(jnp.asarray(alive)))
    a = np.zeros(6)
    if alive.any():
      a[alive] = np.linalg.lstsq(code.B[alive].T, np.ones(6), rcond=None)[0]
    np.testing.assert_allclose(got, a / 6, atol=1e-6)


# -- SGC: unbiased over the straggler draws ------------------------------------------------


def _sgc_mean_estimate(weight_fix, steps=4000):
  """The mean of `steps` SGC estimates of a fixed gradient, and the exact std of the mean."""
  n, d, p = 6, 2, 0.3
  code = coding.sgc_cyclic(n, d)
  parts = _parts(n, 3, seed=5)
  messages = coding.encode_all(code, parts)
  tx = coding.coded(bc.compress(bc.identity(), axis_name=AXIS), code, coding.iid(p), axis_name=AXIS)
  workers = _workers(tx, n)

  def body(state, _):
    out, state = workers.update(messages, state)
    return state, out

  _, outs = jax.jit(lambda s: jax.lax.scan(body, s, None, length=steps))(workers.init(jnp.zeros(3)))
  est = np.asarray(outs).mean(0) * weight_fix
  w = 1.0 / (n * d * (1 - p))
  std = np.sqrt(np.sum((w * np.asarray(messages)) ** 2 * p * (1 - p), axis=0) / steps)
  return est, np.asarray(parts.mean(0)), std


def test_sgc_estimate_is_unbiased_over_the_straggler_draws():
  est, want, std = _sgc_mean_estimate(1.0)
  assert np.all(np.abs(est - want) <= 5 * std + 1e-6), (est, want, std)
  # the weights 1/d (no 1/(1 - p)) are biased by the factor 1 - p = 0.7, far outside
  est, want, std = _sgc_mean_estimate(0.7)
  assert np.any(np.abs(est - want) > 5 * std + 1e-6)


@pytest.mark.slow
def test_drawn_straggler_frequency_and_alive_workers():
  n, p, steps = 100, 0.3, 50
  tx = bc.coco_ef(bc.top_k(k=1), coding.sgc_cyclic(n, 2), coding.iid(p), axis_name=AXIS)
  workers = _workers(tx, n)
  grads = jnp.ones((n, 4))
  outs, states = _run(workers, lambda t: grads, jnp.zeros(4), steps)
  arrived = []
  for before, after in zip(states[:-1], states[1:], strict=True):
    alive = np.asarray(coding.alive_workers(coding.iid(p), before, n))
    arrived.append(alive.mean())
    changed = np.any(np.asarray(before.error) != np.asarray(after.error), axis=1)
    # an arrival's error changes (top-1 of a constant vector leaves an error), a straggler's
    # is kept bit for bit
    np.testing.assert_array_equal(changed, alive)
    np.testing.assert_array_equal(np.asarray(after.error)[~alive], np.asarray(before.error)[~alive])
  assert abs(np.mean(arrived) - (1 - p)) < 4 * np.sqrt(p * (1 - p) / (n * steps))


# -- error feedback: conservation, stragglers kept, all straggling ---------------------------


def test_error_conservation_per_worker_and_the_aggregate():
  n, dim, steps = 6, 8, 12
  code = coding.sgc_cyclic(n, 2)
  p = 0.4
  tx = bc.coco_ef(bc.top_k(k=2), code, None, p=p, axis_name=AXIS)
  workers = _workers(tx, n)
  rng = np.random.default_rng(1)
  masks = rng.random((steps, n)) >= p
  grads = jax.random.normal(jax.random.key(3), (steps, n, dim))
  outs, states = _run(
    workers,
    lambda t: grads[t],
    jnp.zeros(dim),
    steps,
    extra=lambda t: {"participating": jnp.asarray(masks[t])},
  )
  w = 1.0 / (n * 2 * (1 - p))
  sent_total = np.zeros((n, dim))
  for t in range(steps):
    e0, e1 = np.asarray(states[t].error), np.asarray(states[t + 1].error)
    alive = masks[t]
    np.testing.assert_array_equal(e1[~alive], e0[~alive])  # a straggler keeps its error
    delta = np.asarray(grads[t]) + e0 - e1  # what each arrival sent
    delta[~alive] = 0.0
    np.testing.assert_allclose(outs[t], w * delta.sum(0), rtol=1e-5, atol=1e-6)
    # each message is a top-2 vector
    assert np.all((delta != 0).sum(1) <= 2)
    sent_total += delta
  # per worker: what it was given on its steps = what it sent + its final error
  given = (np.asarray(grads) * masks[:, :, None]).sum(0)
  np.testing.assert_allclose(given, sent_total + np.asarray(states[-1].error), atol=1e-4)
  # bits: only the arrivals' payloads
  bits = np.asarray(bc.bits_sent(states[-1]))
  np.testing.assert_array_equal(bits, masks.sum(0) * bc.top_k(k=2).payload_bits(dim))


@pytest.mark.parametrize(
  "decoding",
  [pytest.param(d, marks=() if d == "sgc" else pytest.mark.slow) for d in coding.DECODINGS],
)
def test_every_worker_straggling_gives_a_zero_update_and_keeps_the_state(decoding):
  n = 4
  code = coding.fractional_repetition(n, 1)
  tx = bc.coco_ef(bc.top_k(k=1), code, coding.fixed(range(n), n), decoding=decoding, axis_name=AXIS)
  workers = _workers(tx, n)
  grads = jnp.full((n, 3), 2.0)
  outs, states = _run(workers, lambda t: grads, jnp.zeros(3), 2)
  for out in outs:
    np.testing.assert_array_equal(out, np.zeros(3))
  np.testing.assert_array_equal(states[-1].error, np.zeros((n, 3)))
  assert int(np.asarray(bc.bits_sent(states[-1])).sum()) == 0


@pytest.mark.slow
def test_coco_ef_without_error_feedback_is_coded_compress():
  n = 6
  code = coding.sgc_cyclic(n, 3)
  model = coding.iid(0.3)
  c = bc.top_k(k=2)
  a = bc.coco_ef(c, code, model, error_feedback=False, axis_name=AXIS)
  b = coding.coded(bc.compress(c, axis_name=AXIS), code, model, axis_name=AXIS)
  grads = jax.random.normal(jax.random.key(0), (n, 5))
  for tx_a, tx_b in [(a, b)]:
    oa, sa = _run(_workers(tx_a, n), lambda t: grads * (t + 1), jnp.zeros(5), 4)
    ob, sb = _run(_workers(tx_b, n), lambda t: grads * (t + 1), jnp.zeros(5), 4)
    for x, y in zip(oa, ob, strict=True):
      np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(bc.bits_sent(sa[-1]), bc.bits_sent(sb[-1]))


@pytest.mark.slow
def test_mean_decoding_is_the_mean_over_the_arrivals():
  n = 5
  tx = coding.coded(
    bc.compress(bc.identity(), axis_name=AXIS),
    coding.sgc_cyclic(n, 1),
    coding.fixed([1, 3], n),
    axis_name=AXIS,
    decoding="mean",
  )
  grads = jnp.arange(n * 2, dtype=jnp.float32).reshape(n, 2)
  outs, _ = _run(_workers(tx, n), lambda t: grads, jnp.zeros(2), 1)
  np.testing.assert_allclose(outs[0], np.asarray(grads)[[0, 2, 4]].mean(0))


@pytest.mark.slow
def test_diana_baseline_runs_coded_and_keeps_the_stragglers_shifts():
  n = 6
  code = coding.sgc_cyclic(n, 2)
  tx = coding.coded(
    bc.diana(bc.rand_k(k=2), axis_name=AXIS), code, coding.fixed([0, 4], n), axis_name=AXIS
  )
  grads = jax.random.normal(jax.random.key(0), (n, 6))
  outs, states = _run(_workers(tx, n), lambda t: grads, jnp.zeros(6), 3)
  shift = np.asarray(states[-1].shift)
  np.testing.assert_array_equal(shift[[0, 4]], 0.0)
  assert np.all(np.any(shift[[1, 2, 3, 5]] != 0, axis=1))
  assert all(np.all(np.isfinite(o)) for o in outs)


# -- the devices: shard_map equals vmap ------------------------------------------------------


@pytest.mark.slow
def test_shard_map_on_8_devices_equals_the_vmap_simulation():
  n = 8
  if len(jax.devices()) < n:
    pytest.skip("needs 8 devices")
  code = coding.sgc_cyclic(n, 2)
  tx = bc.coco_ef(bc.top_k(0.25), code, coding.iid(0.3), axis_name=AXIS, seed=4)
  mesh = jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))
  grads = jax.random.normal(jax.random.key(2), (5, n, 16))
  results = []
  for workers in (_workers(tx, n), bc.shard(tx, mesh, AXIS)):
    outs, states = _run(workers, lambda t: grads[t], jnp.zeros(16), 5)
    jax.block_until_ready(outs)
    results.append((outs, states[-1]))
  (oa, sa), (ob, sb) = results
  for x, y in zip(oa, ob, strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(sa.error, sb.error, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(bc.bits_sent(sa), bc.bits_sent(sb))


# -- errors --------------------------------------------------------------------------------


def test_invalid_arguments_give_clear_errors():
  code = coding.sgc_cyclic(4, 2)
  c = bc.top_k(k=1)
  with pytest.raises(ValueError, match="axis_name"):
    bc.coco_ef(c, code, coding.iid(0.1))
  with pytest.raises(ValueError, match="decoding must be one of"):
    bc.coco_ef(c, code, coding.iid(0.1), decoding="median", axis_name=AXIS)
  with pytest.raises(ValueError, match=r"p \(the straggling probabilities assumed\)"):
    bc.coco_ef(c, code, None, p=1.0, axis_name=AXIS)
  with pytest.raises(ValueError, match="shape"):
    bc.coco_ef(c, code, None, p=[0.1, 0.2], axis_name=AXIS)
  with pytest.raises(ValueError, match="model for 3 workers"):
    bc.coco_ef(c, code, coding.iid([0.1, 0.1, 0.1]), axis_name=AXIS)
  with pytest.raises(ValueError, match="0/1"):
    bc.coco_ef(c, coding.cyclic_repetition(4, 1), coding.iid(0.1), axis_name=AXIS)
  with pytest.raises(TypeError, match="code must be a coding.GradientCode"):
    bc.coco_ef(c, "cyclic", coding.iid(0.1), axis_name=AXIS)
  with pytest.raises(TypeError, match="stragglers must be"):
    bc.coco_ef(c, code, 0.1, axis_name=AXIS)
  with pytest.raises(ValueError, match="error_feedback must be True or False"):
    bc.coco_ef(c, code, None, error_feedback=0, axis_name=AXIS)
  with pytest.raises(ValueError, match="axis_name must name"):
    coding.coded(bc.compress(c, axis_name=AXIS), code, None, axis_name=None)
  with pytest.raises(TypeError, match="tx must be"):
    coding.coded(c, code, None, axis_name=AXIS)


def test_errors_at_the_update():
  code = coding.sgc_cyclic(4, 2)
  tx = bc.coco_ef(bc.top_k(k=1), code, None, axis_name=AXIS)
  grads = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="no straggler model"):
    jax.jit(_workers(tx, 4).update)(grads, _workers(tx, 4).init(jnp.zeros(3)))
  with pytest.raises(ValueError, match="has 5 workers but the code has n = 4"):
    w5 = _workers(tx, 5)
    jax.jit(w5.update)(jnp.ones((5, 3)), w5.init(jnp.zeros(3)))
  with pytest.raises(ValueError, match="do not pass weights"):
    w = _workers(tx, 4)
    w.update(grads, w.init(jnp.zeros(3)), weights=jnp.ones(4))
  with pytest.raises(ValueError, match="not bound"):
    tx.update(jnp.ones(3), tx.init(jnp.zeros(3)))
  chained = coding.coded(
    optax.chain(bc.compress(bc.top_k(k=1), axis_name=AXIS)), code, coding.iid(0.1), axis_name=AXIS
  )
  with pytest.raises(TypeError, match="holds no state with an rng_key"):
    coding.alive_workers(coding.iid(0.1), (optax.EmptyState(),), 4)
  with pytest.raises(TypeError, match="no rng_key"):
    w = _workers(chained, 4)
    jax.jit(w.update)(grads, w.init(jnp.zeros(3)))
  unbiased = bc.coco_ef(bc.rand_k(k=1), code, coding.iid(0.1), axis_name=AXIS)
  with pytest.raises(ValueError, match="contractive"):
    w = _workers(unbiased, 4)
    jax.jit(w.update)(grads, w.init(jnp.zeros(3)))


@pytest.mark.slow
def test_one_thousand_simulated_workers_count_the_arrivals_bits():
  n, dim, p = 1000, 16, 0.3
  model = coding.iid(p)
  tx = bc.coco_ef(bc.top_k(k=2), coding.sgc_cyclic(n, 3), model, axis_name=AXIS)
  workers = _workers(tx, n)
  state = workers.init(jnp.zeros(dim))
  alive = np.asarray(coding.alive_workers(model, state, n))
  out, state = jax.jit(workers.update)(jax.random.normal(jax.random.key(0), (n, dim)), state)
  assert np.all(np.isfinite(out))
  bits = np.asarray(bc.bits_sent(state))
  np.testing.assert_array_equal(bits, alive * bc.top_k(k=2).payload_bits(dim))
  assert abs(alive.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)
