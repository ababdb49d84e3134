"""Tests of the Optax transformations: the algorithms against independent references, their
theory (EF conservation, EF21 tracking, the CGD rate, Top-1 divergence without EF, DIANA's
exact convergence), bits accounting, and the options (scope, start_step, min_size)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import CORE
from conftest import registry_params

import biased_compression as bc

REGISTRY = bc.standard_compressors()
NAMES = sorted(REGISTRY)
EPS32 = float(np.finfo(np.float32).eps)
TREE_SHAPES = {"a": (6, 7), "b": (25,)}


def _tree(key, scale=1.0):
  ka, kb = jax.random.split(key)
  return {
    "a": scale * jax.random.normal(ka, TREE_SHAPES["a"]),
    "b": scale * jax.random.normal(kb, TREE_SHAPES["b"]),
  }


# _tree over a batch (a grid) of keys, compiled once per batch shape for the whole module
_trees = jax.jit(jax.vmap(_tree))
_tree_grid = jax.jit(jax.vmap(jax.vmap(_tree)))


def _leaf_sizes():
  return [math.prod(s) for s in TREE_SHAPES.values()]


def _contractive_version(c):
  """C itself when contractive at every leaf size, else C / (1 + omega) (as the paper does)."""
  if c.unbiased and not all(math.isfinite(c.delta(d)) for d in _leaf_sizes()):
    return bc.contractive(c)
  return c


def _run(tx, inputs, params=None):
  """Runs tx.update over a stacked pytree of inputs (leading time axis) in one lax.scan."""
  first = jax.tree.map(lambda x: x[0], inputs)
  state = tx.init(first if params is None else params)

  @jax.jit
  def go(state, inputs):
    def body(state, u):
      out, state = tx.update(u, state, params)
      return state, out

    return jax.lax.scan(body, state, inputs)

  return go(state, inputs)


# -- error feedback: conservation --------------------------------------------------------------


@pytest.mark.parametrize("name", registry_params(NAMES, fast=CORE))
def test_error_feedback_conserves_the_sum_of_inputs(name):
  """sum_t out_t + e_T = sum_t u_t, to float32 rounding, for every compressor.

  Each step rounds twice (p = u + e, e' = p - C(p)), so the identity holds up to
  eps * sum_t (|u_t| + |e_t| + |e_{t+1}|) per coordinate; the host sums in float64.
  """
  c = _contractive_version(REGISTRY[name])
  steps = 1000
  inputs = _trees(jax.random.split(jax.random.key(1), steps))
  tx = bc.error_feedback(c, seed=3)

  state = tx.init(jax.tree.map(lambda x: x[0], inputs))

  @jax.jit
  def go(state, inputs):
    def body(state, u):
      out, state = tx.update(u, state)
      return state, (out, state.error)

    return jax.lax.scan(body, state, inputs)

  final, (outs, errors) = go(state, inputs)
  for leaf in TREE_SHAPES:
    u = np.asarray(inputs[leaf], np.float64)
    out = np.asarray(outs[leaf], np.float64)
    e = np.asarray(errors[leaf], np.float64)  # e_1 .. e_T
    assert np.all(np.isfinite(e)), name
    gap = u.sum(0) - out.sum(0) - e[-1]
    e_prev = np.concatenate([np.zeros_like(e[:1]), e[:-1]])
    bound = EPS32 * (np.abs(u) + np.abs(e_prev) + np.abs(e)).sum(0) + 1e-30
    assert np.all(np.abs(gap) <= bound), (name, leaf, np.max(np.abs(gap) / bound))
    np.testing.assert_array_equal(e[-1], np.asarray(final.error[leaf]))


def test_conservation_check_catches_a_leaky_error():
  """The bound above is tight enough to catch an error kept at 99.99 % of its value."""
  steps = 1000
  c = bc.top_k(0.1)
  u = jax.random.normal(jax.random.key(1), (steps, 50))

  def leaky(u):
    def body(e, x):
      p = x + e
      out = c.compress(p)
      return 0.9999 * (p - out), (out, 0.9999 * (p - out))

    return jax.lax.scan(body, jnp.zeros(50), u)[1]

  outs, errors = jax.jit(leaky)(u)
  u, outs, errors = (np.asarray(a, np.float64) for a in (u, outs, errors))
  gap = u.sum(0) - outs.sum(0) - errors[-1]
  e_prev = np.concatenate([np.zeros_like(errors[:1]), errors[:-1]])
  bound = EPS32 * (np.abs(u) + np.abs(e_prev) + np.abs(errors)).sum(0)
  assert np.any(np.abs(gap) > bound)


# -- EF21: tracking ------------------------------------------------------------------------------


def _tracking_names():
  names = []
  for name in NAMES:
    c = _contractive_version(REGISTRY[name])
    if all(math.isfinite(c.delta(d)) for d in _leaf_sizes()):
      names.append(name)
  return names


@pytest.mark.parametrize("name", registry_params(_tracking_names(), fast=CORE))
def test_ef21_tracks_a_constant_input(name):
  """For constant u and C in B3(delta), E||g_t - u||^2 <= (1 - 1/delta)^t ||u||^2."""
  c = _contractive_version(REGISTRY[name])
  delta = max(c.delta(d) for d in _leaf_sizes())
  steps = int(min(4000, math.ceil(delta * math.log(1e14))))
  u = _tree(jax.random.key(2))
  inputs = jax.tree.map(lambda x: jnp.broadcast_to(x, (steps, *x.shape)), u)
  _, outs = _run(bc.ef21(c, seed=5), inputs)
  for leaf in TREE_SHAPES:
    g = np.asarray(outs[leaf][-1])
    ref = np.asarray(u[leaf])
    assert np.linalg.norm(g - ref) <= 1e-3 * np.linalg.norm(ref), name
  # and the tracking error decreased along the way (not a lucky last step)
  first = np.linalg.norm(np.asarray(outs["a"][0]) - np.asarray(u["a"]))
  mid = np.linalg.norm(np.asarray(outs["a"][steps // 2]) - np.asarray(u["a"]))
  assert mid <= first


def test_ef21_inits():
  u = _tree(jax.random.key(3))
  inputs = _trees(jax.random.split(jax.random.key(4), 6))
  c = bc.top_k(0.2)
  _, zero = _run(bc.ef21(c, init="zero"), inputs)
  _, comp = _run(bc.ef21(c, init="compressed"), inputs)
  _, dense = _run(bc.ef21(c, init="dense"), inputs)
  _, start1 = _run(bc.ef21(c, start_step=1), inputs)
  chex_equal(zero, comp)
  chex_equal(dense, start1)
  first = jax.tree.map(lambda x: x[0], dense)
  chex_equal(first, jax.tree.map(lambda x: x[0], inputs))
  # zero init sends C(u_0) first
  np.testing.assert_array_equal(zero["b"][0], jax.jit(c.compress)(inputs["b"][0]))
  del u


def chex_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- compressed GD: the rate of Beznosikov et al. --------------------------------------------------

QUAD_D = 40
QUAD_MU, QUAD_L = 1.0, 10.0


def _quadratic():
  eig = np.linspace(QUAD_MU, QUAD_L, QUAD_D)
  q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((QUAD_D, QUAD_D)))
  return jnp.asarray((q * eig) @ q.T, jnp.float32)


def _cgd_values(c, steps, seed):
  """f(x_t) - f* for CGD x <- x - (1/L) C(grad f(x)) on f = x^T A x / 2 (f* = 0)."""
  a = _quadratic()
  tx = optax.chain(bc.compress(c, seed=seed), optax.sgd(1.0 / QUAD_L))
  x0 = jnp.ones(QUAD_D)

  def body(carry, _):
    x, state = carry
    updates, state = tx.update(a @ x, state, x)
    x = x + updates
    return (x, state), 0.5 * x @ a @ x

  _, f = jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)
  return jnp.concatenate([jnp.array([0.5 * x0 @ a @ x0]), f])


@pytest.mark.parametrize(
  "name", ["top_k", "scaled_sign", "exponential_rounding_nearest", "cast_bf16"]
)
def test_cgd_rate_deterministic(name):
  """Deterministic C in B3(delta): f(x+) - f* <= (1 - mu/(delta L)) (f(x) - f*) at every step."""
  c = REGISTRY[name]
  rho = 1.0 - QUAD_MU / (c.delta(QUAD_D) * QUAD_L)
  f = np.asarray(jax.jit(_cgd_values, static_argnums=(0, 1))(c, 200, 0), np.float64)
  f = f[f > 1e-30]
  assert np.all(f[1:] <= rho * f[:-1] * (1 + 1e-5) + 1e-37), name


@pytest.mark.parametrize(
  "name",
  [
    "rand_k_biased",  # by default one random operator: each case runs 256 runs under vmap
    pytest.param("contractive_rand_k", marks=pytest.mark.slow),
    pytest.param("adaptive_random_sparsification", marks=pytest.mark.slow),
  ],
)
def test_cgd_rate_in_expectation(name):
  """Random C in B3(delta): E f(x_T) - f* <= (1 - mu/(delta L))^T (f(x_0) - f*).

  The mean over 256 independent runs, plus three standard errors, must be below the bound.
  """
  c = REGISTRY[name]
  rho = 1.0 - QUAD_MU / (c.delta(QUAD_D) * QUAD_L)
  steps = 60
  f = jax.jit(jax.vmap(lambda s: _cgd_values(c, steps, s)))(jnp.arange(256))
  ratio = np.asarray(f[:, -1] / f[:, 0], np.float64)
  mean, se = ratio.mean(), ratio.std(ddof=1) / math.sqrt(ratio.size)
  assert mean - 3 * se <= rho**steps, (name, mean, se, rho**steps)
  # the rate is not vacuous: compression slows the method down against dense GD
  dense = np.asarray(
    jax.jit(_cgd_values, static_argnums=(0, 1))(bc.identity(), steps, 0), np.float64
  )
  assert dense[-1] / dense[0] < mean


# -- distributed GD with Top-1: divergence without error feedback -------------------------------

# Worker i has f_i(x) = <a_i, x>^2 + |x|^2 / 2, so grad f_i(x) = (2 a_i a_i^T + I) x. The mean
# Hessian is positive definite (eigenvalues 11/3, 101/3, 101/3), and x* = 0. At x = t(1, 1, 1)
# worker i's gradient is t(13, 13, 13) with -15 in coordinate i: Top-1 keeps the -15 alone, the
# mean of the three messages is -5t(1, 1, 1), and x <- (1 + 5 lr) x for every lr > 0. The
# construction is ours, in the spirit of the paper's 3-worker example (Beznosikov et al.).
DIV_A = np.array([[-4.0, 3, 3], [3, -4, 3], [3, 3, -4]])
DIV_H = 2 * np.einsum("ij,ik->ijk", DIV_A, DIV_A) + np.eye(3)
DIV_L = float(np.linalg.eigvalsh(DIV_H.mean(0)).max())


def _distributed_run(transform, lr, steps, x0=None, hessians=DIV_H, n=3):
  h = jnp.asarray(hessians, jnp.float32)
  x0 = jnp.ones(h.shape[-1]) if x0 is None else x0
  workers = bc.simulate(optax.chain(optax.sgd(lr), transform), n, axis_name="workers")

  @jax.jit
  def go(x0):
    def body(carry, _):
      x, state = carry
      updates, state = workers.update(h @ x, state, x)  # worker i's gradient is h[i] @ x
      x = x + updates
      return (x, state), jnp.linalg.norm(x)

    return jax.lax.scan(body, (x0, workers.init(x0)), None, length=steps)

  (x, state), norms = go(x0)
  return np.asarray(norms), state


def test_distributed_top1_diverges_without_error_feedback():
  lr = 0.1 / DIV_L
  norms, _ = _distributed_run(bc.compress(bc.top_k(k=1), axis_name="workers"), lr, 300)
  growth = norms[1:] / norms[:-1]
  np.testing.assert_allclose(growth, 1 + 5 * lr, rtol=1e-5)
  assert norms[-1] > 50.0 * math.sqrt(3)
  dense, _ = _distributed_run(bc.compress(bc.identity(), axis_name="workers"), lr, 100)
  assert dense[-1] < 0.5 * math.sqrt(3)


@pytest.mark.parametrize("method", ["error_feedback", "ef21", "econtrol"])
def test_distributed_top1_converges_with_error_feedback(method):
  lr = 0.1 / DIV_L
  c = bc.top_k(k=1)
  transform = {
    "error_feedback": lambda: bc.error_feedback(c, axis_name="workers"),
    "ef21": lambda: bc.ef21(c, axis_name="workers"),
    "econtrol": lambda: bc.econtrol(c, 0.5, axis_name="workers"),
  }[method]()
  norms, _ = _distributed_run(transform, lr, 3000)
  assert norms[-1] < 1e-4 * math.sqrt(3), (method, norms[-1])


def test_diana_converges_exactly_where_dcsgd_stalls():
  """Heterogeneous quadratics f_i = |x - b_i|^2 / 2 with sum_i b_i = 0 (x* = 0): DCSGD with
  rand-k has variance ~ omega * mean |b_i|^2 at x*, DIANA's shifts learn b_i and remove it."""
  n, d = 4, 20
  b = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
  b -= b.mean(0)
  b = jnp.asarray(b)
  c = bc.rand_k(0.25)  # omega = 3

  def run(transform, lr, steps):
    workers = bc.simulate(optax.chain(transform, optax.sgd(lr)), n, axis_name="workers")

    @jax.jit
    def go(x0):
      def body(carry, _):
        x, state = carry
        updates, state = workers.update(x[None] - b, state, x)
        return (x + updates, state), jnp.linalg.norm(x)

      return jax.lax.scan(body, (x0, workers.init(x0)), None, length=steps)

    return np.asarray(go(jnp.ones(d))[1])

  # DIANA's step-size bound 1 / ((1 + 2 omega / n) L) with L = 1
  lr = 1.0 / (1 + 2 * 3 / n)
  dcsgd = run(bc.compress(c, axis_name="workers", seed=1), lr, 2000)
  diana = run(bc.diana(c, axis_name="workers", seed=1), lr, 2000)
  assert diana[-1] < 1e-5
  assert dcsgd[-500:].mean() > 100 * max(diana[-1], 1e-7)


# -- the algorithms against independent numpy references ---------------------------------------


def _np_top_k(v, k):
  out = np.zeros_like(v)
  idx = np.argsort(-np.abs(v), kind="stable")[:k]
  out[idx] = v[idx]
  return out


def _reference(method, grads, k):
  """Straightforward numpy loops over steps and workers, leaves flattened and concatenated
  (used with scope="global"). grads: (steps, n, d)."""
  steps, n, d = grads.shape
  e = np.zeros((n, d), np.float32)
  g_i = np.zeros((n, d), np.float32)
  g = np.zeros(d, np.float32)
  v = np.zeros((n, d), np.float32)
  h_i = np.zeros((n, d), np.float32)
  h = np.zeros(d, np.float32)
  outs = []
  for t in range(steps):
    u = grads[t]
    if method == "compress":
      out = np.mean([_np_top_k(u[i], k) for i in range(n)], 0)
    elif method == "error_feedback":
      p = u + e
      c = np.stack([_np_top_k(p[i], k) for i in range(n)])
      e = p - c
      out = c.mean(0)
    elif method in ("ef21", "ef21_sgdm"):
      if method == "ef21_sgdm":
        v = u.copy() if t == 0 else np.float32(0.9) * v + np.float32(0.1) * u
        target = v
      else:
        target = u
      c = np.stack([_np_top_k(target[i] - g_i[i], k) for i in range(n)])
      g_i = g_i + c
      g = g + c.mean(0)
      out = g
    elif method == "econtrol":
      eta = np.float32(0.5)
      delta = np.stack([_np_top_k(eta * e[i] + u[i] - h_i[i], k) for i in range(n)])
      e = e + u - h_i - delta
      h_i = h_i + delta
      h = h + delta.mean(0)
      out = h
    outs.append(out)
  return np.stack(outs)


TRANSFORMS = {
  "compress": lambda c, **kw: bc.compress(c, **kw),
  "error_feedback": lambda c, **kw: bc.error_feedback(c, **kw),
  "ef21": lambda c, **kw: bc.ef21(c, **kw),
  "ef21_sgdm": lambda c, **kw: bc.ef21_sgdm(c, 0.9, **kw),
  "econtrol": lambda c, **kw: bc.econtrol(c, 0.5, **kw),
}


FAST_METHODS = {"error_feedback", "ef21", "econtrol"}


def _vmap_run(tx, grads, n):
  """grads: pytree with leaves (steps, n, ...). Returns every worker's copy of the aggregated
  outputs (steps, n, ...): the hand-written vmap, not `bc.simulate` (which returns one copy),
  so that the test below checks that each worker sees the same aggregate."""
  params = jax.tree.map(lambda x: x[0, 0], grads)
  update = jax.vmap(tx.update, in_axes=(0, 0, None), axis_name="workers")

  @jax.jit
  def go(grads):
    def body(state, u):
      out, state = update(u, state, params)
      return state, out

    return jax.lax.scan(body, bc.init_workers(tx, params, n), grads)

  state, outs = go(grads)
  return state, outs


def _simulate_run(tx, grads, n):
  """As `_vmap_run` through `bc.simulate`: the outputs (steps, ...) are the one aggregate."""
  params = jax.tree.map(lambda x: x[0, 0], grads)
  workers = bc.simulate(tx, n, axis_name="workers")

  @jax.jit
  def go(grads):
    def body(state, u):
      out, state = workers.update(u, state, params)
      return state, out

    return jax.lax.scan(body, workers.init(params), grads)

  return go(grads)


@pytest.mark.parametrize(
  "method",
  # by default the three error-feedback schemes (compress is their mean, ef21_sgdm ef21's)
  [pytest.param(m, marks=() if m in FAST_METHODS else pytest.mark.slow) for m in TRANSFORMS],
)
def test_vmap_workers_match_numpy_reference(method):
  n, steps, k = 3, 8, 5
  grads = _tree_grid(jax.random.split(jax.random.key(7), (steps, n)))
  tx = TRANSFORMS[method](bc.top_k(k=k), axis_name="workers", scope="global")
  _, outs = _vmap_run(tx, grads, n)
  flat = np.concatenate(
    [np.asarray(grads[leaf]).reshape(steps, n, -1) for leaf in sorted(TREE_SHAPES)], -1
  )
  ref = _reference(method, flat, k)
  got = np.concatenate(
    [np.asarray(outs[leaf]).reshape(steps, n, -1) for leaf in sorted(TREE_SHAPES)], -1
  )
  for i in range(n):  # every worker sees the same aggregate
    np.testing.assert_allclose(got[:, i], ref, rtol=1e-5, atol=1e-6)


def test_diana_matches_numpy_reference():
  n, steps, d = 3, 6, 30
  grads = jax.random.normal(jax.random.key(8), (steps, n, d))
  c = bc.rand_k(k=10, shared_indices=True)  # all workers draw the same indices
  tx = bc.diana(c, axis_name="workers", seed=4)
  _, outs = _simulate_run(tx, grads, n)
  # rebuild the indices from the transformation's key schedule
  key = jax.random.PRNGKey(4)
  h_i = np.zeros((n, d), np.float32)
  h = np.zeros(d, np.float32)
  alpha = 1.0 / (1.0 + c.omega(d))
  g = np.asarray(grads)
  compress = jax.jit(lambda x, key: c.compress(x, key=key))
  for t in range(steps):
    key, step_key = jax.random.split(key)
    gkey = jax.random.fold_in(step_key, 0)
    m = np.stack([np.asarray(compress(jnp.asarray(g[t, i] - h_i[i]), gkey)) for i in range(n)])
    out = h + m.mean(0)
    h_i = h_i + alpha * m
    h = h + alpha * m.mean(0)
    np.testing.assert_allclose(np.asarray(outs[t]), out, rtol=1e-5, atol=1e-6)


# -- clear errors for the mistakes users make -------------------------------------------------


def test_worker_state_in_a_plain_update_is_refused():
  tx = bc.error_feedback(bc.top_k(k=1), axis_name="w")
  params = jnp.zeros(4)
  with pytest.raises(ValueError, match="holds 3 workers .* bc.simulate\\(tx, n"):
    tx.update(jnp.ones(4), bc.init_workers(tx, params, 3), params)
  single = bc.compress(bc.sign())
  with pytest.raises(ValueError, match="holds 2 workers .* a plain tx.update"):
    single.update(jnp.ones(4), bc.init_workers(single, params, 2))


def test_simulated_update_checks_the_worker_axis():
  tx = bc.error_feedback(bc.top_k(k=1), axis_name="w")
  params = jnp.zeros(4)
  update = bc.simulated_update(tx, "w")
  with pytest.raises(ValueError, match="state of one worker .tx.init.*bc.init_workers"):
    update(jnp.ones((3, 4)), tx.init(params), params)
  with pytest.raises(ValueError, match="holds 3 workers, so the updates need a leading axis of 3"):
    update(jnp.ones((2, 4)), bc.init_workers(tx, params, 3), params)
  # and it is the vmap of tx.update, extra arguments mapped over the workers
  grads = jnp.eye(3, 4)
  mask = jnp.array([True, False, True])
  got, _ = jax.jit(update)(grads, bc.init_workers(tx, params, 3), params, participating=mask)
  want, _ = jax.jit(
    jax.vmap(
      lambda g, s, m: tx.update(g, s, params, participating=m), in_axes=(0, 0, 0), axis_name="w"
    )
  )(grads, bc.init_workers(tx, params, 3), mask)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(got[0], [0.5, 0.0, 0.5, 0.0])


def test_dtype_error_names_the_leaf_path():
  tx = bc.compress(bc.top_k(k=1))
  params = {"layer": {"w": jnp.zeros(3), "b": jnp.zeros(2)}}
  updates = {"layer": {"w": jnp.zeros(3), "b": jnp.zeros(2, jnp.int32)}}
  with pytest.raises(TypeError, match=r"leaf at \['layer'\]\['b'\] has int32 with shape \(2,\)"):
    tx.update(updates, tx.init(params))
  with jax.enable_x64(True):
    with pytest.raises(TypeError, match="float64 .*jax_enable_x64 is on: cast the updates"):
      tx.update(jax.tree.map(lambda x: x.astype(jnp.float64), params), tx.init(params))
