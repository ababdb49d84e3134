"""The compressed collectives on 8 CPU devices: shard_map equals the vmap simulation and pmap,
traffic read from the compiled program equals the analytic bits, float32 sums, masks,
hierarchical meshes, Orbax restore of per-device state, and clear errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import biased_compression as bc

N = 8
SHAPES = {"a": (6, 7), "b": (25,)}


def _mesh(shape=(N,), names=("w",)):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Explicit,) * len(shape))


def _put(tree, mesh, spec):
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec)), tree)


def _grads(key, steps, n=N):
  return _draw_grads(jax.random.key(key), steps, n)


@functools.partial(jax.jit, static_argnums=(1, 2))  # one compilation per (steps, n)
def _draw_grads(key, steps, n):
  keys = jax.random.split(key, (steps, n, 2))
  return {
    "a": jax.vmap(jax.vmap(lambda k: jax.random.normal(k[0], SHAPES["a"])))(keys),
    "b": jax.vmap(jax.vmap(lambda k: jax.random.normal(k[1], SHAPES["b"])))(keys),
  }


def _jit_compress(c):
  """``c.compress`` under jit, for the per-worker references (one compilation per shape)."""
  return jax.jit(lambda x, key=None: c.compress(x, key=key))


def _params():
  return {name: jnp.zeros(shape) for name, shape in SHAPES.items()}


def _step(grads, t):
  return jax.tree.map(lambda x: x[t], grads)


def _run_vmap(tx, grads, steps):
  params = _params()
  update = jax.jit(jax.vmap(tx.update, in_axes=(0, 0, None), axis_name="w"))
  state = bc.init_workers(tx, params, N)
  outs = []
  for t in range(steps):
    out, state = update(_step(grads, t), state, params)
    outs.append(out)
  return outs, state


def _run_shard_map(tx, grads, steps):
  mesh = _mesh()
  params = _params()
  update = bc.device_update(tx, "w")

  def body(g, s, p):
    out, s = update(jax.tree.map(lambda x: x[0], g), s, p)
    return jax.tree.map(lambda x: x[None], out), s

  step = jax.jit(
    jax.shard_map(body, mesh=mesh, in_specs=(P("w"), P("w"), P()), out_specs=(P("w"), P("w")))
  )
  state = _put(bc.init_workers(tx, params, N), mesh, P("w"))
  params = _put(params, mesh, P())
  outs = []
  for t in range(steps):
    out, state = step(_put(_step(grads, t), mesh, P("w")), state, params)
    outs.append(out)
  return outs, state


def _run_pmap(tx, grads, steps):
  params = _params()
  update = jax.pmap(tx.update, axis_name="w", in_axes=(0, 0, None))
  state = bc.init_workers(tx, params, N)
  outs = []
  for t in range(steps):
    out, state = update(_step(grads, t), state, params)
    outs.append(out)
  return outs, state


def _close(a, b, rtol=1e-6, atol=1e-6):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


CASES = [
  ("compress", lambda **kw: bc.compress(bc.top_k(k=8), **kw), ("all_gather", "two_stage")),
  ("compress_sign", lambda **kw: bc.compress(bc.sign(), **kw), ("majority_vote",)),
  (
    "compress_shared",
    lambda **kw: bc.compress(bc.rand_k(0.25, shared_indices=True), **kw),
    ("psum", "all_gather"),
  ),
  (
    "error_feedback",
    lambda **kw: bc.error_feedback(bc.top_k(k=8), **kw),
    ("all_gather", "two_stage"),
  ),
  ("ef21", lambda **kw: bc.ef21(bc.scaled_sign(), **kw), ("all_gather", "two_stage")),
  ("ef21_sgdm", lambda **kw: bc.ef21_sgdm(bc.top_k(k=8), 0.8, **kw), ("all_gather",)),
  ("econtrol", lambda **kw: bc.econtrol(bc.top_k(k=8), 0.5, **kw), ("two_stage",)),
  (
    "diana",
    lambda **kw: bc.diana(bc.natural_dithering(4), **kw),
    ("all_gather", "two_stage"),
  ),
]
PARAMS = [(name, make, m) for name, make, methods in CASES for m in methods]
# by default all_gather, two_stage and psum once each (two compilations on 8 devices a case;
# majority vote has its own test below); the full run has every case
FAST = {
  ("compress", "all_gather"),
  ("error_feedback", "two_stage"),
  ("compress_shared", "psum"),
}


@pytest.mark.parametrize(
  "name, make, method",
  [
    pytest.param(n, make, m, marks=() if (n, m) in FAST else pytest.mark.slow)
    for n, make, m in PARAMS
  ],
  ids=[f"{n}-{m}" for n, _, m in PARAMS],
)
def test_shard_map_equals_vmap_simulation(name, make, method):
  steps = 3
  grads = _grads(1, steps)
  tx = make(axis_name="w", method=method, seed=2)
  v_outs, v_state = _run_vmap(tx, grads, steps)
  s_outs, s_state = _run_shard_map(tx, grads, steps)
  for v, s in zip(v_outs, s_outs, strict=True):
    _close(v, s)
  _close(v_state, s_state)
  # every worker holds the same aggregate
  for leaf in jax.tree.leaves(v_outs[-1]):
    np.testing.assert_array_equal(
      np.asarray(leaf), np.broadcast_to(np.asarray(leaf)[:1], leaf.shape)
    )


@pytest.mark.slow  # pmap, the older API: shard_map is the one the default run checks
@pytest.mark.parametrize("method", ["all_gather", "two_stage"])
def test_pmap_agrees(method):
  steps = 2
  grads = _grads(2, steps)
  tx = bc.error_feedback(bc.top_k(k=8), axis_name="w", method=method)
  v_outs, v_state = _run_vmap(tx, grads, steps)
  p_outs, p_state = _run_pmap(tx, grads, steps)
  _close(v_outs, p_outs)
  _close(v_state, p_state)


def test_all_gather_is_the_exact_mean_of_the_messages():
  x = jax.random.normal(jax.random.key(3), (N, 300))
  c = bc.natural_dithering(3)
  key = jax.random.key(4)
  got = jax.jit(
    jax.vmap(
      lambda v: bc.compressed_mean(v, c, "w", key=key, method="all_gather").mean, axis_name="w"
    )
  )(x)[0]
  # each worker's key is the shared key with its axis index folded in (then the leaf index)
  compress = _jit_compress(c)
  ref = np.mean(
    [
      np.asarray(compress(x[i], key=jax.random.fold_in(jax.random.fold_in(key, i), 0)))
      for i in range(N)
    ],
    0,
  )
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_majority_vote_is_the_sign_of_the_sum_of_signs():
  x = jax.random.normal(jax.random.key(5), (N, 1000))
  got = jax.jit(
    jax.vmap(
      lambda v: bc.compressed_mean(v, bc.sign(), "w", method="majority_vote").mean,
      axis_name="w",
    )
  )(x)[0]
  votes = np.sign(np.asarray(x)).sum(0)
  np.testing.assert_array_equal(got, np.where(votes >= 0, 1.0, -1.0))


class _BytePerSign(bc.Compressor):
  """A user's sign operator (one byte per sign): the collectives see only its flags."""

  sign_valued = True

  def __hash__(self):
    return 0

  def __eq__(self, other):
    return isinstance(other, _BytePerSign)

  def _encode(self, x, key):
    return {"signs": (x < 0).astype(jnp.uint8)}

  def _decode(self, payload, d, dtype, key):
    return (1.0 - 2.0 * payload["signs"].astype(jnp.float32)).astype(dtype)

  def bits(self, d):
    return 8 * d

  def omega(self, d):
    return float("inf")

  def delta(self, d):
    return float("inf")


def test_majority_vote_takes_any_sign_valued_code():
  x = jax.random.normal(jax.random.key(6), (N, 64))
  vote = jax.jit(
    jax.vmap(
      lambda v: bc.compressed_mean(v, _BytePerSign(), "w", method="majority_vote").mean,
      axis_name="w",
    )
  )(x)[0]
  votes = np.sign(np.asarray(x)).sum(0)
  np.testing.assert_array_equal(vote, np.where(votes >= 0, 1.0, -1.0))
  with pytest.raises(ValueError, match="needs a sign-valued code"):
    bc.compressed_mean(x[0], bc.scaled_sign(), "w", method="majority_vote")


# -- traffic ------------------------------------------------------------------------------------


def _traffic(fn, x, mesh):
  f = jax.shard_map(fn, mesh=mesh, in_specs=P("w"), out_specs=P("w"))
  return bc.wire_bytes(f, _put(x, mesh, P("w")))


@pytest.mark.slow  # a large size (d = 2^20): its small-size counterparts run by default
def test_two_stage_scaled_sign_sends_one_bit_per_coordinate():
  d = 2**20
  mesh = _mesh()
  x = jnp.zeros((N, d))

  def two_stage(v):
    err = jnp.zeros((d,))
    r = bc.compressed_mean(v[0], bc.scaled_sign(), "w", method="two_stage", server_error=err)
    return r.mean[None]

  def dense(v):
    return jax.lax.pmean(v, "w")

  sent = _traffic(two_stage, x, mesh)["sent"]
  analytic = 2 * (N - 1) / N * d / 8  # bytes: 1 bit per coordinate up and down
  assert abs(sent - analytic) <= 0.05 * analytic, (sent, analytic)
  dense_sent = _traffic(dense, x, mesh)["sent"]
  assert dense_sent == 2 * (N - 1) * 4 * d // N
  assert 30 <= dense_sent / sent <= 32.5


@pytest.mark.parametrize("d", [1000, pytest.param(2**16, marks=pytest.mark.slow)])
def test_all_gather_top_k_traffic_is_n_minus_1_payloads(d):
  c = bc.top_k(0.01)
  mesh = _mesh()

  def fn(v):
    return bc.compressed_mean(v[0], c, "w", method="all_gather").mean[None]

  assert _traffic(fn, jnp.zeros((N, d)), mesh)["sent"] == (N - 1) * c.payload_bits(d) // 8


def test_transformation_traffic_matches_bits_sent():
  """A whole EF step under shard_map sends (n - 1) x the bits that bits_sent counts."""
  mesh = _mesh()
  tx = bc.error_feedback(bc.top_k(0.05), axis_name="w", method="all_gather")
  params = {"w": jnp.zeros((256, 64)), "b": jnp.zeros((64,))}
  workers = bc.shard(tx, mesh, "w")
  grads = jax.tree.map(lambda x: jnp.zeros((N, *x.shape)), params)
  state = workers.init(params)
  sent = bc.wire_bytes(workers.update, grads, state)["sent"]
  _, state = jax.jit(workers.update)(grads, state)
  assert sent == (N - 1) * int(bc.bits_sent(state)[0]) // 8


# -- float32 sums -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["all_gather", "two_stage"])
@pytest.mark.parametrize("c", [bc.identity(), bc.cast(jnp.float16), bc.top_k(0.5)], ids=str)
def test_half_precision_is_summed_in_float32(method, c):
  x = jnp.full((N, 64), 30000.0, jnp.float16)  # the sum, 240000, overflows float16
  got = jax.jit(
    jax.vmap(
      lambda v: (
        bc.compressed_mean(
          v, c, "w", method=method, server_error=jnp.zeros(64) if method == "two_stage" else None
        ).mean
      ),
      axis_name="w",
    )
  )(x)
  assert got.dtype == jnp.float32  # the aggregate is float32 whatever the wire dtype
  kept = np.asarray(got[0])
  assert np.all(np.isfinite(kept))
  assert np.all((kept == 30000.0) | (kept == 0.0))
  assert np.sum(kept == 30000.0) >= 32


# -- participation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "method", ["all_gather", pytest.param("two_stage", marks=pytest.mark.slow)]
)  # by default the method whose aggregate the test also checks
def test_masked_workers_keep_their_error(method):
  tx = bc.error_feedback(bc.top_k(k=8), axis_name="w", method=method)
  grads = _grads(6, 2)
  params = _params()
  workers = bc.simulate(tx, N, axis_name="w")
  update = jax.jit(workers.update)
  _, state = update(_step(grads, 0), workers.init(params), params)
  mask = jnp.arange(N) < 3
  out, new = update(_step(grads, 1), state, params, participating=mask)
  for leaf in SHAPES:
    np.testing.assert_array_equal(new.error[leaf][3:], state.error[leaf][3:])
    assert not np.array_equal(new.error[leaf][:3], state.error[leaf][:3])
  np.testing.assert_array_equal(
    bc.bits_sent(new) - bc.bits_sent(state), np.where(mask, bc.bits_sent(state), 0)
  )
  if method == "all_gather":
    # the mean over the three participants of their compressed messages
    p = jax.tree.map(lambda g, e: g + e, _step(grads, 1), state.error)
    compress = _jit_compress(bc.top_k(k=8))
    for leaf in SHAPES:
      msgs = [compress(p[leaf][i]) for i in range(3)]
      np.testing.assert_allclose(out[leaf], np.mean(msgs, 0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
  "method", ["all_gather", pytest.param("two_stage", marks=pytest.mark.slow), "psum"]
)
def test_all_masked_gives_zero_and_no_nan(method):
  c = bc.cast(jnp.bfloat16) if method == "psum" else bc.top_k(k=8)
  tx = bc.error_feedback(c, axis_name="w", method=method)
  params = _params()
  state = bc.init_workers(tx, params, N)
  step = jax.jit(
    jax.vmap(lambda g, s, m: tx.update(g, s, participating=m), in_axes=(0, 0, 0), axis_name="w")
  )
  out, new = step(_step(_grads(7, 1), 0), state, jnp.zeros(N, bool))
  for leaf in jax.tree.leaves(out):
    np.testing.assert_array_equal(leaf, 0.0)
  for leaf in jax.tree.leaves(new):
    assert not np.any(np.isnan(np.asarray(leaf, np.float64)))
  _close(new.error, state.error)


def test_importance_weights():
  """With probabilities p_i the aggregate is (1/n) sum_{i in S} C_i / p_i."""
  x = jax.random.normal(jax.random.key(8), (N, 100))
  mask = jnp.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
  prob = jnp.linspace(0.2, 0.9, N)
  c = bc.top_k(0.2)
  got = jax.jit(
    jax.vmap(
      lambda v, m, p: (
        bc.compressed_mean(v, c, "w", method="all_gather", mask=m, probability=p).mean
      ),
      axis_name="w",
    )
  )(x, mask, prob)[0]
  compress = _jit_compress(c)
  ref = sum(np.asarray(compress(x[i])) / float(prob[i]) for i in range(N) if mask[i]) / N
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


# -- hierarchical meshes -------------------------------------------------------------------------


def test_hierarchical_compresses_only_the_slow_axis():
  hosts, devices = 2, 4
  mesh = _mesh((hosts, devices), ("host", "device"))
  c = bc.top_k(0.1)
  tx = bc.error_feedback(c, axis_name="host", dense_axis_name="device", method="all_gather")
  params = _params()
  grads = jax.tree.map(lambda x: x.reshape(hosts, devices, *x.shape[1:]), _step(_grads(9, 1), 0))
  update = bc.device_update(tx, "host")

  def body(g, s):
    out, s = update(jax.tree.map(lambda x: x[0, 0], g), s)
    return jax.tree.map(lambda x: x[None, None], out), s

  f = jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(P("host", "device"), P("host")),
    out_specs=(P("host", "device"), P("host")),
  )
  g = _put(grads, mesh, P("host", "device"))
  state = _put(bc.init_workers(tx, params, hosts), mesh, P("host"))
  out, new = jax.jit(f)(g, state)
  out = jax.tree.map(np.asarray, out)
  # reference: two workers whose updates are their host's mean gradient
  host_means = jax.tree.map(lambda x: x.mean(1), grads)
  flat = bc.simulate(bc.error_feedback(c, axis_name="w", method="all_gather"), hosts, axis_name="w")
  ref, _ = jax.jit(flat.update)(host_means, flat.init(params))
  for leaf in SHAPES:
    for h in range(hosts):
      for dv in range(devices):
        np.testing.assert_allclose(out[leaf][h, dv], ref[leaf], rtol=1e-6, atol=1e-6)
  ops = bc.wire_bytes(f, g, state)["ops"]
  assert {o["op"] for o in ops if o["group"] == devices} == {"all_reduce"}
  assert {o["op"] for o in ops if o["group"] == hosts} == {"all_gather"}


# -- checkpoints of per-device state ---------------------------------------------------------


@pytest.mark.slow  # an Orbax save and restore (its threads and files): an integration test
def test_orbax_saves_every_device_state(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  steps = 4
  grads = _grads(10, 2 * steps)
  mesh = _mesh()
  tx = bc.error_feedback(bc.contractive(bc.rand_k(k=8)), axis_name="w", method="two_stage")
  workers = bc.shard(tx, mesh, "w")
  step = jax.jit(workers.update)
  state = workers.init(_params())
  for t in range(steps):
    _, state = step(_step(grads, t), state)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "state", state)
  ckpt.wait_until_finished()
  cont = state
  for t in range(steps, 2 * steps):
    out, cont = step(_step(grads, t), cont)
  restored = ckpt.restore(tmp_path / "state", jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
  assert restored.error["a"].sharding.spec[0] == "w"  # one worker per device, as saved
  for t in range(steps, 2 * steps):
    out2, restored = step(_step(grads, t), restored)
  for a, b in zip(jax.tree.leaves((out, cont)), jax.tree.leaves((out2, restored)), strict=True):
    # every device's block: its worker's state, its copy of the (replicated) aggregate
    for sa, sb in zip(a.addressable_shards, b.addressable_shards, strict=True):
      assert sa.device == sb.device
      np.testing.assert_array_equal(np.asarray(sa.data), np.asarray(sb.data))


# -- errors and the cost model ---------------------------------------------------------------


def test_method_not_valid_for_the_compressor():
  with pytest.raises(ValueError, match="method='psum' needs a linear code"):
    bc.error_feedback(bc.top_k(0.1), axis_name="w", method="psum")
  with pytest.raises(ValueError, match="method='majority_vote' needs a sign-valued code"):
    bc.compress(bc.scaled_sign(), axis_name="w", method="majority_vote")
  with pytest.raises(ValueError, match="shared indices"):
    bc.compress(bc.rand_k(0.1, shared_indices=True), axis_name="w", method="two_stage")
  with pytest.raises(ValueError, match="method must be one of"):
    bc.compress(bc.sign(), axis_name="w", method="ring")
  with pytest.raises(ValueError, match="dense_axis_name='d' .* needs axis_name"):
    bc.compress(bc.sign(), dense_axis_name="d")


def test_mesh_size_must_match_the_worker_axis():
  mesh = _mesh()
  tx = bc.error_feedback(bc.top_k(0.1), axis_name="w")
  update = bc.device_update(tx, "w")
  state = _put(bc.init_workers(tx, _params(), 2 * N), mesh, P("w"))  # 16 workers, 8 devices
  f = jax.shard_map(
    lambda g, s: update(jax.tree.map(lambda x: x[0], g), s)[1],
    mesh=mesh,
    in_specs=(P("w"), P("w")),
    out_specs=P("w"),
  )
  g = _put(jax.tree.map(lambda x: x[0], _grads(11, 1)), mesh, P("w"))
  with pytest.raises(ValueError, match="exactly one worker.*2 workers per device on the 8"):
    jax.jit(f)(g, state)


def test_participation_needs_an_axis():
  tx = bc.compress(bc.sign())
  with pytest.raises(ValueError, match="participating / probability / weights need an axis_name"):
    tx.update(jnp.ones(4), tx.init(jnp.ones(4)), participating=True)


def test_auto_is_the_exact_mean():
  """auto never picks two_stage (a different algorithm): psum for linear float32 codes only."""
  assert bc.choose_method(bc.identity(), 10**6, 8) == "psum"
  assert bc.choose_method(bc.rand_k(0.01, shared_indices=True), 10**6, 8) == "psum"
  # a bfloat16 wire would be summed in bfloat16 by the all-reduce: gather and sum in float32
  assert bc.choose_method(bc.cast(jnp.bfloat16), 10**6, 8) == "all_gather"
  assert bc.choose_method(bc.identity(), 10**6, 8, jnp.bfloat16) == "all_gather"
  for n in (2, 4, 8, 256):
    assert bc.choose_method(bc.top_k(0.01), 10**6, n) == "all_gather"
    assert bc.choose_method(bc.scaled_sign(), 10**6, n) == "all_gather"
  assert bc.choose_method(bc.sign(), 100, 8) == "all_gather"


def _two_stage_conservation(keep: float):
  """(sum_t mean_t + server error_T, sum_t (1/n) sum_i C(x_i,t), error_T) for a server that
  carries ``keep`` times its error to the next step (1: the library's)."""
  d, steps = 200, 20
  c = bc.top_k(k=24)
  xs = jax.random.normal(jax.random.key(12), (steps, N, d))

  def run(xs):
    def body(err, x):
      r = jax.vmap(
        lambda v, e: bc.compressed_mean(v, c, "w", method="two_stage", server_error=e),
        axis_name="w",
      )(x, err)
      return keep * r.server_error, (r.mean[0], r.local.mean(0))

    return jax.lax.scan(body, jnp.zeros((N, d)), xs)

  err, (means, local_means) = jax.jit(run)(xs)
  err = np.asarray(err, np.float64) / keep  # the error the last step produced
  lhs = np.asarray(means, np.float64).sum(0) + err.sum(0)
  rhs = np.asarray(local_means, np.float64).sum(0)
  return lhs, rhs, err


def test_two_stage_server_error_conserves_the_mean():
  """sum_t mean_t + server error_T = sum_t (1/n) sum_i C(x_i,t): the server's error feedback
  loses nothing (each worker owns one chunk of the server error)."""
  lhs, rhs, err = _two_stage_conservation(1.0)
  np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-5)
  # and the server error is not trivially zero: Top-k of the chunk sums drops mass
  assert np.abs(err).sum() > 1.0
  # the check catches a server that keeps only half of its error
  lhs, rhs, _ = _two_stage_conservation(0.5)
  assert np.abs(lhs - rhs).max() > 0.1


def test_device_update_rejects_gradients_already_summed_by_jax_grad():
  """Under check_vma, grad w.r.t. replicated params is the all-reduced sum: refuse it, and
  accept the per-device gradient of pcast(params, to='varying')."""
  mesh = _mesh()
  tx = bc.error_feedback(bc.top_k(0.1), axis_name="w")
  params = jnp.zeros(16)
  state = bc.init_workers(tx, params, N, sharding=NamedSharding(mesh, P("w")))
  assert state.error.sharding.spec[0] == "w"
  update = bc.device_update(tx, "w")
  x = _put(jnp.ones((N, 16)), mesh, P("w"))
  p = _put(params, mesh, P())

  def make(varying):
    def body(x, s, p):
      q = jax.lax.pcast(p, "w", to="varying") if varying else p
      g = jax.grad(lambda q: jnp.sum(q * x[0]))(q)
      out, s = update(g, s, p)
      return out[None], s

    return jax.jit(
      jax.shard_map(body, mesh=mesh, in_specs=(P("w"), P("w"), P()), out_specs=(P("w"), P("w")))
    )

  with pytest.raises(ValueError, match="already summed over the devices"):
    make(False)(x, state, p)
  out, _ = make(True)(x, state, p)
  np.testing.assert_allclose(np.asarray(out)[0], bc.top_k(0.1).compress(jnp.ones(16)))
