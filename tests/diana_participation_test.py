"""DIANA under partial participation with importance weights (probability=): the server's
shift stays the mean of the workers' shifts (explicit weights= move it as the output), DIANA
converges to the
exact optimum of heterogeneous quadratics, the output stays unbiased, shard_map equals the vmap
simulation, and the bits sent are those of the compiled program (the participants' plain mean
is free under all_gather, a second all-reduce under psum, refused under two_stage)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import biased_compression as bc

N = 8
D = 32
P_I = jnp.linspace(0.2, 0.9, N)  # non-uniform participation probabilities


def _targets(seed=0):
  """Heterogeneous quadratics f_i = |x - b_i|^2 / 2: x* = mean_i b_i."""
  return 3.0 * jax.random.normal(jax.random.key(seed), (N, D))


def _masks(key, steps):
  return jax.random.uniform(key, (steps, N)) < P_I


def _run_gd(compressor, steps, *, lr=0.1, seed=0):
  """DIANA + SGD on the quadratics, every step's participants drawn with p_i (jitted scan).

  Returns the final x (of worker 0) and, per step, max |h - mean_i h_i| and max |h_i|.
  """
  b = _targets()
  tx = optax.chain(bc.diana(compressor, axis_name="w", seed=seed), optax.sgd(lr))
  workers = bc.simulate(tx, N, axis_name="w")

  @jax.jit
  def go(key):
    def body(carry, k):
      x, state = carry
      mask = jax.random.uniform(k, (N,)) < P_I
      out, state = workers.update(x - b, state, x, participating=mask, probability=P_I)
      diana = state[0]
      gap = jnp.max(jnp.abs(diana.mean_shift[0] - jnp.mean(diana.shift, 0)))
      return (x + out, state), (gap, jnp.max(jnp.abs(diana.shift)))

    init = (jnp.zeros((N, D)), workers.init(jnp.zeros(D)))
    (x, _), (gaps, sizes) = jax.lax.scan(body, init, jax.random.split(key, steps))
    return x[0], gaps, sizes

  return go(jax.random.key(seed + 1))


def test_mean_shift_stays_the_mean_of_the_shifts():
  """h == (1/n) sum_i h_i after every one of 200 steps with importance weights (the old code
  moved h by the weighted aggregate: it drifted by O(1) within a few steps)."""
  _, gaps, sizes = _run_gd(bc.rand_k(k=8), 200)
  gaps, sizes = np.asarray(gaps), np.asarray(sizes)
  assert sizes.max() > 1.0  # the shifts are far from zero: the check is not vacuous
  assert (gaps <= 1e-5 * np.maximum(sizes, 1.0)).all(), gaps.max()


@pytest.mark.parametrize(
  "compressor",
  [
    pytest.param(bc.rand_k(k=8), marks=pytest.mark.slow),
    bc.induced(bc.top_k(k=4), bc.rand_k(k=4)),
  ],
  ids=["rand_k", "induced"],
)
def test_converges_to_the_exact_optimum_with_importance_weights(compressor):
  """With p_i in [0.2, 0.9] and the unbiased 1/(n p_i) weights, DIANA reaches x* = mean b_i
  (the old code stalled at a distance of 3.5 of a start at 17)."""
  x, _, _ = _run_gd(compressor, 1500)
  start = float(jnp.linalg.norm(_targets().mean(0)))
  dist = float(jnp.linalg.norm(x - _targets().mean(0)))
  assert dist < 1e-3 * start, (dist, start)


@pytest.mark.slow
def test_output_is_unbiased_over_masks_and_compression():
  """From a state whose shifts differ per worker (built under importance weights), one step's
  output averaged over participation masks and compressor keys is mean_i u_i."""
  b = _targets(3)
  tx = bc.diana(bc.rand_k(k=8), axis_name="w")
  workers = bc.simulate(tx, N, axis_name="w")
  u = b + jax.random.normal(jax.random.key(4), (N, D))

  @jax.jit
  def draws(key):
    def warm(state, k):
      mask = jax.random.uniform(k, (N,)) < P_I
      _, state = workers.update(b, state, participating=mask, probability=P_I)
      return state, None

    state, _ = jax.lax.scan(warm, workers.init(jnp.zeros(D)), jax.random.split(key, 30))

    def once(k):
      km, kc = jax.random.split(k)
      mask = jax.random.uniform(km, (N,)) < P_I
      s = state._replace(rng_key=jnp.broadcast_to(jax.random.key_data(kc), state.rng_key.shape))
      return workers.update(u, s, participating=mask, probability=P_I)[0]

    return jax.vmap(once)(jax.random.split(jax.random.fold_in(key, 1), 4000)), state

  outs, state = draws(jax.random.key(5))
  outs = np.asarray(outs)
  assert float(jnp.std(state.shift, 0).max()) > 1.0  # heterogeneous shifts
  err = np.abs(outs.mean(0) - np.asarray(u.mean(0)))
  sem = outs.std(0) / np.sqrt(outs.shape[0])
  assert (err <= 5 * sem + 1e-5).all(), (err / sem).max()


def _mesh():
  return jax.make_mesh((N,), ("w",), axis_types=(jax.sharding.AxisType.Explicit,))


PARAMS = {"a": jnp.zeros((D,)), "b": jnp.zeros((6,))}  # "b" goes dense (min_size)


@pytest.mark.slow  # 8 devices and a compile per backend: ~5 s
def test_shard_map_equals_vmap_simulation_with_importance_weights():
  tx = bc.diana(bc.rand_k(k=8), axis_name="w", min_size=16, start_step=1, seed=2)
  steps = 3
  keys = jax.random.split(jax.random.key(6), steps)
  grads = [jax.tree.map(lambda x, k=k: jax.random.normal(k, (N, *x.shape)), PARAMS) for k in keys]
  masks = np.array(_masks(jax.random.key(7), steps))
  masks[:, 0] = True  # someone participates

  simulated = bc.simulate(tx, N, axis_name="w")
  sharded = bc.shard(tx, _mesh(), "w")
  v_update, s_update = jax.jit(simulated.update), jax.jit(sharded.update)
  v_state, s_state = simulated.init(PARAMS), sharded.init(PARAMS)
  for t in range(steps):
    kw = {"participating": jnp.asarray(masks[t]), "probability": P_I}
    v_out, v_state = v_update(grads[t], v_state, **kw)
    s_out, s_state = s_update(grads[t], s_state, **kw)
    v_leaves, s_leaves = jax.tree.leaves((v_out, v_state)), jax.tree.leaves((s_out, s_state))
    for a, b in zip(v_leaves, s_leaves, strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(v_state.mean_shift["a"][0]), np.asarray(v_state.shift["a"].mean(0)), atol=1e-5
  )


def _wire(tx, params):
  """(bits_sent of one sharded step with probability=, the compiled collectives' bits)."""
  mesh = _mesh()
  workers = bc.shard(tx, mesh, "w")
  grads = jax.tree.map(lambda x: jnp.ones((N, *x.shape), x.dtype), params)
  state = workers.init(params)
  mask = jnp.arange(N) % 2 == 0
  ops = bc.wire_bytes(workers.update, grads, state, participating=mask, probability=P_I)["ops"]
  _, state = jax.jit(workers.update)(grads, state, participating=mask, probability=P_I)
  # The participation weights (one float32 scalar per worker, all_gathered) are not counted.
  ops = [o for o in ops if not (o["op"] == "all_gather" and o["operand_bytes"] == 4)]
  return np.asarray(bc.bits_sent(state, last_step=True)), 8 * sum(o["operand_bytes"] for o in ops)


@pytest.mark.slow
def test_bits_sent_equals_the_compiled_collectives_with_importance_weights():
  """all_gather: the plain mean is free for the compressed leaf, a dense leaf's all-reduce is
  sent twice; psum: the payload is all-reduced twice. bits_sent counts exactly that."""
  c = bc.rand_k(k=8)
  up, wire = _wire(bc.diana(c, axis_name="w", method="all_gather", min_size=16), PARAMS)
  assert int(up[0]) == c.payload_bits(D) + 2 * 32 * 6 == wire
  shared = bc.rand_k(k=8, shared_indices=True)
  up, wire = _wire(bc.diana(shared, axis_name="w", method="psum", min_size=16), PARAMS)
  assert int(up[0]) == 2 * (shared.payload_bits(D) + 32 * 6) == wire


@pytest.mark.slow  # three compiled updates and the two_stage refusals: ~6 s
def test_bits_sent_unchanged_under_all_gather_and_two_stage_refused():
  """Under all_gather the participants' plain mean costs no bits: with probability= each
  participant sends its payload once, as without it; two_stage refuses probability/weights."""
  c = bc.rand_k(k=8)
  b = _targets()
  mask = jnp.arange(N) % 2 == 0
  workers = bc.simulate(bc.diana(c, axis_name="w", method="all_gather"), N, axis_name="w")

  @jax.jit
  def bits():
    runs = ({}, {"participating": mask}, {"participating": mask, "probability": P_I})
    return [workers.update(b, workers.init(jnp.zeros(D)), **kw)[1].bits for kw in runs]

  full, masked, weighted = (np.asarray(bc.bits_sent(s)) for s in bits())
  assert (full == c.payload_bits(D)).all()
  np.testing.assert_array_equal(masked, np.where(mask, c.payload_bits(D), 0))
  np.testing.assert_array_equal(weighted, masked)
  two = bc.simulate(bc.diana(c, axis_name="w", method="two_stage"), N, axis_name="w")
  with pytest.raises(ValueError, match="method='two_stage'.*method='all_gather'"):
    two.update(b, two.init(jnp.zeros(D)), participating=mask, probability=P_I)
  two.update(b, two.init(jnp.zeros(D)), weights=jnp.full((N,), 1.0 / N))  # no plain mean


def test_explicit_weights_move_the_shift_by_the_weighted_aggregate():
  """With weights= (a decoding vector) the server's shift moves as the output does:
  h <- h + alpha sum_{i in S} w_i m_i (documented: only the caller knows E w_i)."""
  c = bc.identity()
  b = _targets()
  w = jnp.linspace(-0.5, 1.5, N) / N
  mask = jnp.arange(N) % 3 != 0
  workers = bc.simulate(bc.diana(c, alpha=0.5, axis_name="w"), N, axis_name="w")
  out, state = jax.jit(
    lambda: workers.update(b, workers.init(jnp.zeros(D)), weights=w, participating=mask)
  )()
  want = np.einsum("i,id->d", np.where(mask, w, 0.0), np.asarray(b))
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    np.reshape(state.mean_shift, (-1, D)),
    np.broadcast_to(0.5 * want, (np.size(state.mean_shift) // D, D)),
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_allclose(state.shift, 0.5 * np.where(mask[:, None], b, 0.0), rtol=1e-6)


@pytest.mark.parametrize(
  "make",
  [
    lambda: bc.ef21(bc.top_k(k=8), axis_name="w"),
    lambda: bc.ef21_sgdm(bc.top_k(k=8), momentum=0.5, axis_name="w"),
    lambda: bc.econtrol(bc.top_k(k=8), 0.1, axis_name="w"),
  ],
  ids=["ef21", "ef21_sgdm", "econtrol"],
)
def test_server_estimates_stay_the_mean_of_the_workers_under_importance_weights(make):
  """EF21, EF21-SGDM and EControl keep their server estimate the mean of the workers' own
  estimates under importance weights too (the output is the weighted, unbiased one)."""
  b = _targets()
  workers = bc.simulate(make(), N, axis_name="w")

  @jax.jit
  def go(key):
    def body(state, k):
      mask = jax.random.uniform(k, (N,)) < P_I
      g = b + jax.random.normal(k, b.shape)
      _, state = workers.update(g, state, participating=mask, probability=P_I)
      gap = jnp.max(jnp.abs(state.mean_estimate[0] - jnp.mean(state.estimate, 0)))
      return state, (gap, jnp.max(jnp.abs(state.estimate)))

    return jax.lax.scan(body, workers.init(jnp.zeros(D)), jax.random.split(key, 100))[1]

  gaps, sizes = (np.asarray(v) for v in go(jax.random.key(3)))
  assert sizes.max() > 1.0
  assert (gaps <= 1e-5 * np.maximum(sizes, 1.0)).all(), gaps.max()
