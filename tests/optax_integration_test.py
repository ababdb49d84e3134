"""The transformations inside the Optax / Flax / Orbax ecosystem, their options, bits
accounting, randomness, dtypes and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import biased_compression as bc
from biased_compression.transforms import _bits

SHAPES = {"w": (12, 5), "b": (5,)}


def _params(key=0, scale=1.0):
  kw, kb = jax.random.split(jax.random.key(key))
  return {
    "w": scale * jax.random.normal(kw, SHAPES["w"]),
    "b": scale * jax.random.normal(kb, SHAPES["b"]),
  }


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _regression(n=64, d=12, out=5, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32)
  w_true = rng.standard_normal((d, out)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(x @ w_true)


def _loss(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _train(tx, steps, params=None):
  x, y = _regression()
  params = _params(1, 0.1) if params is None else params
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, state, np.array(losses)


# -- Optax wrappers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "make",
  [
    lambda: optax.chain(optax.adam(0.05), bc.error_feedback(bc.top_k(0.2))),
    lambda: optax.chain(bc.compress(bc.scaled_sign()), optax.adam(0.05)),
    lambda: optax.chain(bc.ef21_sgdm(bc.top_k(0.2), 0.5), optax.adam(0.05)),
  ],
  ids=["adam_then_ef", "sign_then_adam", "ef21_sgdm_then_adam"],
)
def test_trains_with_adam(make):
  _, _, losses = _train(make(), 300)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.05 * losses[0]


def test_inject_hyperparams_momentum_is_a_live_hyperparameter():
  """Changing the injected momentum mid-run equals switching to a transformation built with
  the new value, from the same state."""
  factory = optax.inject_hyperparams(bc.ef21_sgdm, static_args=("compressor", "min_size"))
  c = bc.top_k(0.2)
  tx = factory(c, momentum=0.5)
  grads = [_params(k) for k in range(10, 16)]
  state = tx.init(grads[0])
  update = jax.jit(tx.update)
  outs = []
  for t, g in enumerate(grads):
    if t == 3:
      state.hyperparams["momentum"] = jnp.asarray(0.9)
    out, state = update(g, state)
    outs.append(out)

  ref_a, ref_b = bc.ef21_sgdm(c, 0.5), bc.ef21_sgdm(c, 0.9)
  ref_state = ref_a.init(grads[0])
  for t, g in enumerate(grads):
    out, ref_state = jax.jit((ref_a if t < 3 else ref_b).update)(g, ref_state)
    _assert_trees_equal(out, outs[t])
  _assert_trees_equal(ref_state, state.inner_state)


def test_inject_hyperparams_start_step():
  factory = optax.inject_hyperparams(bc.compress, static_args=("compressor", "min_size"))
  tx = factory(bc.top_k(k=1), start_step=2)
  state = tx.init(_params())
  update = jax.jit(tx.update)
  g = _params(3)
  for t in range(4):
    out, state = update(g, state)
    nonzero = int(jnp.count_nonzero(out["w"]))
    assert nonzero == (60 if t < 2 else 1)


def test_multi_steps_equals_averaging_the_micro_batches():
  every = 3
  inner = optax.chain(optax.sgd(0.1), bc.error_feedback(bc.top_k(0.2)))
  tx = optax.MultiSteps(inner, every_k_schedule=every)
  grads = [_params(k) for k in range(20, 26)]
  state = tx.init(grads[0])
  ref_state = inner.init(grads[0])
  update, inner_update = jax.jit(tx.update), jax.jit(inner.update)
  for t, g in enumerate(grads):
    out, state = update(g, state)
    if (t + 1) % every:
      _assert_trees_equal(out, jax.tree.map(jnp.zeros_like, g))
    else:
      mean = jax.tree.map(lambda *xs: sum(xs) / every, *grads[t + 1 - every : t + 1])
      ref, ref_state = inner_update(mean, ref_state)
      for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert bc.bits_sent(state) == bc.bits_sent(ref_state)


def test_apply_if_finite_keeps_the_error_through_a_nan_step():
  tx = optax.apply_if_finite(
    optax.chain(optax.sgd(0.1), bc.error_feedback(bc.top_k(0.2), seed=1)),
    max_consecutive_errors=3,
  )
  state = tx.init(_params())
  update = jax.jit(tx.update)
  _, state = update(_params(4), state)
  before = state.inner_state[1]
  bad = _params(5)
  bad["w"] = bad["w"].at[3, 2].set(jnp.nan)
  out, state = update(bad, state)
  _assert_trees_equal(out, jax.tree.map(jnp.zeros_like, bad))
  _assert_trees_equal(before, state.inner_state[1])
  assert int(state.total_notfinite) == 1
  out, state = update(_params(6), state)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((out, state)))


def test_flax_nnx_optimizer_trains_a_small_model():
  nnx = pytest.importorskip("flax.nnx")
  x, y = _regression(n=128, d=12, out=5, seed=2)

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(12, 32, rngs=rngs)
      self.l2 = nnx.Linear(32, 5, rngs=rngs)

    def __call__(self, x):
      return self.l2(jax.nn.relu(self.l1(x)))

  model = MLP(nnx.Rngs(0))
  tx = optax.chain(optax.sgd(0.05), bc.error_feedback(bc.top_k(0.1), min_size=64))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(200)]
  assert losses[-1] < 0.2 * losses[0]
  # the biases (32 and 5 elements) go dense, the kernels send 10 % as (value, index) pairs
  c = bc.top_k(0.1)
  per_step = c.payload_bits(12 * 32) + c.payload_bits(32 * 5) + 32 * (32 + 5)
  assert bc.bits_sent(optimizer.opt_state) == 200 * per_step


@pytest.mark.slow  # an Orbax save and restore (its threads and files): an integration test
def test_orbax_restore_continues_bit_for_bit(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  n = 4
  tx = optax.chain(
    optax.sgd(0.05),
    bc.error_feedback(bc.contractive(bc.rand_k(0.2)), axis_name="workers", seed=7),
  )
  workers = bc.simulate(tx, n, axis_name="workers")
  x, y = _regression()
  xs, ys = x.reshape(n, -1, x.shape[-1]), y.reshape(n, -1, y.shape[-1])

  @jax.jit
  def step(params, state):
    grads = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(params, xs, ys)  # one per worker
    updates, state = workers.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = _params(1, 0.1)
  state = workers.init(params)
  for _ in range(10):
    params, state = step(params, state)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "mid", {"params": params, "opt_state": state})
  ckpt.wait_until_finished()
  for _ in range(10):
    params, state = step(params, state)

  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": state})
  restored = ckpt.restore(tmp_path / "mid", abstract)
  p2, s2 = restored["params"], restored["opt_state"]
  assert jax.tree.structure(s2) == jax.tree.structure(state)
  assert s2[1].error["w"].shape == (n, *SHAPES["w"])  # every worker's error was saved
  for _ in range(10):
    p2, s2 = step(p2, s2)
  _assert_trees_equal(params, p2)
  _assert_trees_equal(state, s2)


# -- options ----------------------------------------------------------------------------------


FACTORIES = [bc.compress, bc.diana, bc.error_feedback, bc.ef21, bc.ef21_sgdm, bc.econtrol]


def _build(factory, **kwargs):
  """factory with a compressor it accepts (and EControl's eta)."""
  if factory is bc.diana:
    return factory(bc.rand_k(k=2), **kwargs)
  if factory is bc.econtrol:
    return factory(bc.contractive(bc.rand_k(k=2)), 0.1, **kwargs)
  return factory(bc.contractive(bc.rand_k(k=2)), **kwargs)


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_options_value_equals_the_keywords(factory):
  g = _params(1)
  kwargs = dict(seed=3, scope="global", start_step=1, min_size=5)
  a = _build(factory, **kwargs)
  b = _build(factory, options=bc.transforms.Options(**kwargs))
  sa, sb = a.init(g), b.init(g)
  for _ in range(3):
    ua, sa = jax.jit(a.update)(g, sa)
    ub, sb = jax.jit(b.update)(g, sb)
    _assert_trees_equal(ua, ub)
  _assert_trees_equal(sa, sb)
  assert bc.bits_sent(sa) == bc.bits_sent(sb) > 0


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_options_errors_and_signature(factory):
  import inspect

  with pytest.raises(TypeError, match=r"options= or the keyword options \['seed'\]"):
    _build(factory, seed=1, options=bc.transforms.Options())
  with pytest.raises(TypeError, match="options must be a bc.transforms.Options"):
    _build(factory, options={"seed": 1})
  with pytest.raises(ValueError, match="scope must be 'leaf' or 'global'"):
    _build(factory, options=bc.transforms.Options(scope="model"))
  params = inspect.signature(factory).parameters
  for name in ("seed", "axis_name", "scope", "start_step", "min_size", "method", "options"):
    assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert f"    {name}: " in factory.__doc__, name
  for word in ("participating", "probability", "weights", "dense_axis_name"):
    assert f"``{word}``" in factory.__doc__, word


def test_scope_leaf_and_global():
  g = _params(2)
  leaf = bc.compress(bc.top_k(k=3))
  out, _ = leaf.update(g, leaf.init(g))
  for name in SHAPES:
    np.testing.assert_array_equal(out[name], bc.top_k(k=3).compress(g[name]))
  glob = bc.compress(bc.top_k(k=3), scope="global")
  out, _ = glob.update(g, glob.init(g))
  leaves, treedef = jax.tree.flatten(g)
  flat = bc.top_k(k=3).compress(jnp.concatenate([x.reshape(-1) for x in leaves]))
  sizes = np.cumsum([x.size for x in leaves])[:-1]
  expected = treedef.unflatten(
    [p.reshape(x.shape) for p, x in zip(jnp.split(flat, sizes), leaves, strict=True)]
  )
  _assert_trees_equal(out, expected)
  assert sum(int(jnp.count_nonzero(x)) for x in jax.tree.leaves(out)) == 3


def test_min_size_sends_small_leaves_dense():
  g = _params(3)
  tx = bc.compress(bc.sign(), min_size=6)
  out, state = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(out["b"], g["b"])
  np.testing.assert_array_equal(out["w"], bc.sign().compress(g["w"]))
  assert bc.bits_sent(state) == bc.sign().payload_bits(60) + 32 * 5


@pytest.mark.parametrize(
  "make",
  [
    lambda **kw: bc.compress(bc.top_k(k=2), **kw),
    lambda **kw: bc.error_feedback(bc.top_k(k=2), **kw),
    lambda **kw: bc.ef21(bc.top_k(k=2), **kw),
    lambda **kw: bc.econtrol(bc.top_k(k=2), 0.3, **kw),
    lambda **kw: bc.diana(bc.rand_k(k=2), **kw),
  ],
  ids=["compress", "error_feedback", "ef21", "econtrol", "diana"],
)
def test_start_step_sends_dense_updates_first(make):
  """Before start_step the output is the dense update; afterwards it is compressed."""
  tx = make(start_step=3)
  grads = [_params(k) for k in range(30, 36)]
  state = tx.init(grads[0])
  update = jax.jit(tx.update)
  for t, g in enumerate(grads):
    out, state = update(g, state)
    if t < 3:
      for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
      assert bc.bits_sent(state, last_step=True) == 32 * 65
    else:
      c = bc.top_k(k=2)
      assert bc.bits_sent(state, last_step=True) == c.payload_bits(60) + c.payload_bits(5)
  assert bc.bits_sent(state) == 3 * 32 * 65 + 3 * (c.payload_bits(60) + c.payload_bits(5))


# -- bits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "dtype", [jnp.float32, jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)]
)
def test_bits_sent_equals_the_payload_size(dtype):
  c = bc.top_k_natural_dithering(0.2)
  g = jax.tree.map(lambda x: x.astype(dtype), _params(4))
  for scope in ("leaf", "global"):
    tx = bc.error_feedback(c, scope=scope)
    state = tx.init(g)
    update = jax.jit(tx.update)
    for _ in range(5):
      out, state = update(g, state)
    if scope == "leaf":
      per_step = c.payload_bits(60, dtype) + c.payload_bits(5, dtype)
    else:
      per_step = c.payload_bits(65, dtype)
    assert bc.bits_sent(state) == 5 * per_step
    assert bc.bits_sent(state, last_step=True) == per_step
    assert all(x.dtype == dtype for x in jax.tree.leaves(out))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.error))


def test_bit_counter_is_exact_past_int32():
  step = 3 * 2**29 + 12345  # 1.6e9 bits a step (a 50M-parameter dense float32 update)
  words = bc.BitCount(*(jnp.zeros(2, jnp.int32),) * 2)
  add = jax.jit(_bits.bits_add)
  for _ in range(1000):
    words = add(words, jnp.asarray(_bits._words(step)))
  assert bc.bits_sent(words) == 1000 * step
  assert bc.bits_sent(words, last_step=True) == step


def test_bits_per_worker_under_vmap():
  n = 3
  tx = bc.compress(bc.top_k(k=4), axis_name="workers")
  g = jax.tree.map(lambda x: jnp.stack([x] * n), _params(5))
  workers = bc.simulate(tx, n, axis_name="workers")
  _, state = jax.jit(workers.update)(g, workers.init(_params(5)))
  np.testing.assert_array_equal(
    bc.bits_sent(state), [bc.top_k(k=4).payload_bits(60) + bc.top_k(k=4).payload_bits(5)] * n
  )


# -- randomness and dtypes ------------------------------------------------------------------------


def _worker_messages(c):
  n, d = 4, 40
  tx = bc.compress(c, axis_name="workers", seed=2)
  u = jnp.ones((n, d))
  workers = bc.simulate(tx, n, axis_name="workers")
  out, state = jax.jit(workers.update)(u, workers.init(u[0]))
  return np.asarray(out), state


def test_workers_draw_independent_indices_unless_shared():
  independent, state = _worker_messages(bc.rand_k(k=4, unbiased=False))
  assert np.count_nonzero(independent) > 4  # the workers chose different coordinates
  shared, _ = _worker_messages(bc.rand_k(k=4, unbiased=False, shared_indices=True))
  assert np.count_nonzero(shared) == 4
  np.testing.assert_array_equal(shared[shared != 0], 1.0)


def test_key_advances_every_step():
  c = bc.rand_k(k=3, unbiased=False)
  tx = bc.compress(c)
  u = jnp.ones(30)
  state = tx.init(u)
  update = jax.jit(tx.update)
  a, state = update(u, state)
  b, state = update(u, state)
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  tx2 = bc.compress(c)
  a2, _ = jax.jit(tx2.update)(u, tx2.init(u))
  np.testing.assert_array_equal(a, a2)  # same seed, same draws


# -- argument errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: bc.compress(bc.top_k(0.1), scope="tensor"), "scope must be 'leaf' or 'global'"),
    (lambda: bc.error_feedback(bc.top_k(0.1), start_step=-1), "start_step must be an int >= 0"),
    (lambda: bc.ef21(bc.top_k(0.1), start_step=1.5), "start_step must be an int >= 0"),
    (lambda: bc.ef21_sgdm(bc.top_k(0.1), momentum=1.0), r"momentum must be in \[0, 1\)"),
    (lambda: bc.ef21_sgdm(bc.top_k(0.1), momentum=-0.1), r"momentum must be in \[0, 1\)"),
    (lambda: bc.diana(bc.top_k(0.1)), "diana: compressor must be unbiased"),
    (lambda: bc.diana(bc.rand_k(0.1), alpha=1.5), r"alpha must be in \(0, 1\]"),
    (lambda: bc.econtrol(bc.top_k(0.1), eta=0.0), r"eta must be in \(0, 1\]"),
    (lambda: bc.ef21(bc.top_k(0.1), init="first"), "init must be one of"),
    (lambda: bc.compress(bc.top_k(0.1), min_size=-3), "min_size must be an int >= 0"),
    (lambda: bc.compress(bc.top_k(0.1), axis_name=["a"]), "axis_name must be None or"),
    (lambda: bc.init_workers(bc.compress(bc.sign()), jnp.ones(3), 0), "num_workers must be"),
  ],
)
def test_bad_arguments_raise_value_error(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_error_feedback_rejects_an_unbiased_non_contractive_compressor():
  tx = bc.error_feedback(bc.rand_k(0.1))
  g = jnp.ones(100)
  with pytest.raises(ValueError, match=r"bc.contractive\(rand_k"):
    tx.update(g, tx.init(g))


def test_not_a_compressor_is_a_type_error():
  with pytest.raises(TypeError, match="compressor must be a biased_compression Compressor"):
    bc.error_feedback(lambda x: x)


def test_axis_name_must_be_bound():
  tx = bc.compress(bc.sign(), axis_name="workers")
  g = jnp.ones(8)
  with pytest.raises(
    ValueError, match="axis_name .workers. is not bound here: run the workers with bc.simulate"
  ):
    tx.update(g, tx.init(g))


def test_bits_sent_without_our_state():
  with pytest.raises(ValueError, match="holds no biased_compression"):
    bc.bits_sent(optax.sgd(0.1).init(jnp.ones(3)))


def test_integer_updates_are_rejected():
  tx = bc.compress(bc.sign())
  with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
    tx.update(jnp.ones(3, jnp.int32), tx.init(jnp.ones(3)))


def test_no_nan_from_finite_extremes():
  big = jnp.full((50,), 3e38, jnp.float32).at[::2].set(-3e38)
  for tx in (
    bc.error_feedback(bc.top_k(0.1)),
    bc.ef21(bc.scaled_sign()),
    bc.diana(bc.natural_compression()),
  ):
    state = tx.init(big)
    out, state = jax.jit(tx.update)(big, state)
    assert not any(bool(jnp.any(jnp.isnan(x))) for x in jax.tree.leaves((out, state)))
