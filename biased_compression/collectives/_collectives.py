"""Compressed all-reduce: the mean over a device axis of compressed messages, sending bytes.

`compressed_mean` runs wherever ``axis_name`` is bound: under ``jax.shard_map`` (real devices
and processes), under ``jax.vmap(..., axis_name=...)`` (n workers simulated on one device) and
under ``jax.pmap``. It is the one code path of both: the tests compare them.

Methods (``method=``), for n workers and a payload of B bytes per worker:

* ``"all_gather"``: all_gather the encoded payloads, decode each, average in float32. The
  exact mean (1/n) sum_i C(x_i) of the n compressed messages: the papers' algorithm. Each
  device sends (n - 1) B.
* ``"psum"``: for linear codes (`identity`, `cast`, rand-k with ``shared_indices=True``):
  the payload values are summed by the all-reduce itself, in the wire dtype, and decoded
  once. The same mean as all_gather (exactly so for float32 payloads, up to the order of the
  float32 additions); 2 (n - 1) / n B per device.
* ``"two_stage"``: the design of DeepSpeed 1-bit Adam, Bagua and CGX, and a *different
  algorithm*, chosen explicitly. The message is padded and split into n chunks (a multiple
  of 8 elements each, so chunks are byte-aligned), each chunk compressed with
  ``C.for_chunks(d, n)`` (a sparsifier keeps k(d) / n values per chunk, so the message still
  keeps k(d); norm-based operators take one norm per chunk). all_to_all sends chunk j to
  device j, the server of chunk j, which decodes and averages its n copies in float32 and
  re-compresses the average with the same chunk operator: with a server error fed back
  (error feedback on the server) when that operator is biased and contractive, without one
  when it is unbiased (so the result stays unbiased); a biased operator that is not
  contractive (`sign`) is refused. Each server all_gathers its encoded chunk. Each device
  sends about 2 (n - 1) / n B, independent of n. The result is S(mean_i C(x_i)) with S the
  server's compression, not the mean of the messages. The server error is kept for the d
  coordinates of the message (that of the padding is dropped); where d is small against
  8 n, the last chunks are mostly padding and a sparsifier's budget there keeps zeros.
* ``"majority_vote"``: for `sign`: two_stage whose server sends the sign of the chunk's sum
  of signs (signSGD with majority vote: a 1-bit downlink), without server error.
* ``"auto"`` (the default): the exact mean, i.e. ``"psum"`` for linear codes whose payload is
  float32 and ``"all_gather"`` otherwise (`choose_method`). It never picks two_stage.

Participation: ``mask`` (this worker's bool) and optional ``probability`` (its p_i). Workers
outside S send nothing useful (their payload is zeroed and weighted 0). The mean is
(1/|S|) sum_{i in S} C_i, or with probabilities the unbiased (1/n) sum_{i in S} C_i / p_i,
or with explicit ``weights`` w_i the general sum_{i in S} w_i C_i (a decoding vector of a
gradient code, for example). With no participant the mean is zero and the server error is
kept. `exchange_specs` computes several weightings of the same messages at once (e.g. the
participants' plain (1/n) sum_{i in S} C_i besides an importance-weighted one, for an
estimate that must stay the mean of the workers' own ones, as DIANA's shift): free under
all_gather, another all-reduce under psum, refused by two_stage and majority_vote.

Every exchange records its axis (`recording_axes`), so `biased_compression.simulate` and
`shard` accept any transformation that communicates through these functions.

Traffic: `traffic_bits` gives the bits a worker sends per message (its uplink: the payload,
or its n chunk payloads under two_stage) and, under two_stage and majority_vote, the bits it
sends as the server of its chunk (the downlink, all_gathered to the other workers). These are
the operand sizes of the collectives in the compiled program (`wire_bytes`), which the tests
check; participation weights (one float32 per worker when ``mask`` or ``probability`` is
given) are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from biased_compression.collectives import _participation
from biased_compression.compressors import _base

METHODS = ("auto", "all_gather", "two_stage", "psum", "majority_vote")
_SERVER_SALT = 0x5EED

# the participation rules and the axis record live in _participation; the names stay here
_axis_size = _participation._axis_size
_weights = _participation._weights
_plain_weights = _participation._plain_weights
PLAIN_METHODS = _participation.PLAIN_METHODS
check_plain = _participation.check_plain
_normalise = _participation._normalise
_participated = _participation._participated
WeightSpec = _participation.WeightSpec
weight_spec = _participation.weight_spec
plain_spec = _participation.plain_spec
recording_axes = _participation.recording_axes
record_axis = _participation.record_axis


class MeanResult(NamedTuple):
  """What `compressed_mean` returns.

  Attributes:
    mean: the aggregate (float32, shaped like the input), identical on every worker.
    local: this worker's own decoded message C(x_i) (float32), for error feedback.
    server_error: the new server error (two_stage), else the one given (or None).
  """

  mean: Any
  local: Any
  server_error: Any


def is_linear(compressor: _base.Compressor) -> bool:
  """Whether decode(sum of payloads) = sum of decodes, so an all-reduce can sum payloads."""
  return bool(compressor.linear)


def shares_randomness(compressor: _base.Compressor) -> bool:
  return bool(compressor.shared_randomness)


def check_method(fn: str, method: str, compressor: _base.Compressor) -> None:
  if method not in METHODS:
    raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
  if method == "psum" and not is_linear(compressor):
    raise ValueError(
      f"{fn}: method='psum' needs a linear code (identity, cast, rand_k with "
      f"shared_indices=True), got {compressor.name}; use 'all_gather' or 'two_stage'"
    )
  if method == "two_stage" and shares_randomness(compressor):
    raise ValueError(
      f"{fn}: method='two_stage' re-compresses on each server with its own randomness, which "
      f"the receivers of {compressor.name} (shared indices) cannot regenerate; use 'psum'"
    )
  if method == "majority_vote" and not compressor.sign_valued:
    raise ValueError(
      f"{fn}: method='majority_vote' needs a sign-valued code (bc.sign()), got {compressor.name}"
    )


def chunking(d: int, n: int) -> tuple[int, int]:
  """(chunk size, padded size) of two_stage: n chunks of a multiple of 8 elements."""
  chunk = 8 * max(1, -(-d // (8 * n)))
  return chunk, chunk * n


def choose_method(compressor: _base.Compressor, d: int, n: int, dtype: Any = jnp.float32) -> str:
  """The method ``method="auto"`` runs for a d-element message of ``dtype`` on n workers.

  Always the exact mean of the workers' decoded messages (the algorithm as published):
  ``"psum"`` when the code is linear and its payload is float32 (one all-reduce of the
  payload, 2 (n - 1) / n B per device, and the same float32 sum), otherwise
  ``"all_gather"`` ((n - 1) B per device). ``"two_stage"``, whose traffic does not grow
  with n, computes a different algorithm (server re-compression) and is never chosen
  automatically: pass it explicitly. ``n`` is accepted for cost models that depend on it.
  """
  del n
  _, arrays = _base.payload_arrays(compressor, int(d), jnp.dtype(dtype))
  if is_linear(compressor) and all(t == jnp.float32 for _, t in arrays):
    return "psum"
  return "all_gather"


def resolve_method(compressor, method: str, d: int, n: int, dtype) -> str:
  return choose_method(compressor, d, n, dtype) if method == "auto" else method


def _server_feedback(fn: str, chunk_compressor: _base.Compressor, chunk: int) -> bool:
  """Whether two_stage's server re-compresses with error feedback (else refuses)."""
  if chunk_compressor.unbiased:
    return False
  if math.isfinite(chunk_compressor.delta(chunk)):
    return True
  hint = " use method='majority_vote' or" if chunk_compressor.sign_valued else ""
  raise ValueError(
    f"{fn}: method='two_stage' re-compresses the workers' mean on the server, with error "
    f"feedback for a biased compressor, which needs it to be contractive; "
    f"{chunk_compressor.name} is biased and in no class B3 (delta = inf at {chunk} elements):"
    f"{hint} use method='all_gather' (the exact mean), or bc.contractive(...) of it"
  )


def traffic_bits(
  compressor: _base.Compressor, method: str, d: int, n: int, dtype: Any = jnp.float32
) -> tuple[int, int]:
  """(uplink, downlink) bits one worker sends for a d-element message of ``dtype``.

  uplink: its payload (all_gather, psum), or its n chunk payloads (two_stage,
  majority_vote); downlink: the payload it sends as the server of its chunk (two_stage,
  majority_vote; all_gathered to the others), 0 for the other methods. ``method="auto"``
  is resolved as in `choose_method`.
  """
  dtype = jnp.dtype(dtype)
  method = resolve_method(compressor, method, d, n, dtype)
  if method in ("all_gather", "psum"):
    return compressor.payload_bits(d, dtype), 0
  chunk, _ = chunking(d, n)
  per_chunk = compressor.for_chunks(d, n).payload_bits(chunk, dtype)
  return n * per_chunk, per_chunk


def plain_traffic_bits(
  compressor: _base.Compressor, method: str, d: int, n: int, dtype: Any = jnp.float32
) -> int:
  """The bits one worker sends for the participants' plain mean besides the weighted one
  (a second spec of `exchange_specs`): 0 under all_gather (the same gathered payloads), the
  payload once more under psum (a second all-reduce). two_stage and majority_vote refuse it;
  0 is returned for them."""
  dtype = jnp.dtype(dtype)
  if resolve_method(compressor, method, d, n, dtype) == "psum":
    return compressor.payload_bits(d, dtype)
  return 0


# Decoded values held at once by `_sum_decoded` (float32): 1 MB, so small messages from many
# workers decode in a few vectorised blocks and large ones (d >= 2^18) one at a time.
_DECODE_BLOCK = 1 << 18


def _sum_decoded(compressor, payloads, d, dtype, key, w, axis_name, extra=()):
  """sum_i w_i decode(payload_i) over the gathered axis 0, in blocks of payloads.

  A scan over blocks keeps one float32 accumulator of d elements plus one block of decoded
  values, instead of n decoded copies: for d >= 2^18 a block is one payload (measured on 8
  CPU devices at d = 2^20: several times faster than decoding all n at once with vmap, whose
  n x d temporaries dominate); for small d a block decodes up to 2^18 / d payloads with vmap
  (1000 simulated workers of d = 100: one block instead of a 1000-step loop).

  ``extra``: more per-worker weights (each a scalar, or None for 1); given, the result is the
  tuple of the sums for (w, *extra), every payload decoded once for all of them: the gathered
  payloads are on every worker already, so another weighted sum costs no communication.
  """
  weights = [None if x is None else jax.lax.all_gather(x, axis_name) for x in (w, *extra)]
  n = jax.tree.leaves(payloads)[0].shape[0]
  block = max(1, min(n, _DECODE_BLOCK // max(d, 1)))

  def decode(payload):
    return compressor.decode(payload, (d,), dtype, key=key).astype(jnp.float32)

  def result(acc):
    return acc if extra else acc[0]

  if block == 1:

    def term(payload, i):
      value = decode(payload)
      return tuple(value if ws is None else ws[i] * value for ws in weights)

    def body(acc, item):
      return tuple(a + t for a, t in zip(acc, term(*item), strict=True)), None

    # The first term starts the sum, so the carry has the same (shard_map varying) type as
    # the body's output without JAX-version-specific casts.
    first = term(jax.tree.map(lambda x: x[0], payloads), 0)
    rest = jax.tree.map(lambda x: x[1:], payloads)
    acc, _ = jax.lax.scan(body, first, (rest, jnp.arange(1, n)))
    return result(acc)

  blocks = -(-n // block)
  index = jnp.arange(blocks * block)
  # The last block is filled with copies of payload 0 at weight 0 (decoded values are finite).
  source = jnp.where(index < n, index, 0)
  grouped = jax.tree.map(lambda x: x[source].reshape(blocks, block, *x.shape[1:]), payloads)
  scales = []
  for ws in weights:
    scale = None
    if ws is not None or blocks * block > n:
      base = jnp.ones((n,), jnp.float32) if ws is None else ws.astype(jnp.float32)
      scale = jnp.where(index < n, base[source], 0.0).reshape(blocks, block)
    scales.append(scale)

  def block_sum(group, i):
    values = jax.vmap(decode)(group)
    return tuple(
      jnp.sum(values if scale is None else scale[i][:, None] * values, axis=0) for scale in scales
    )

  first = block_sum(jax.tree.map(lambda x: x[0], grouped), 0)
  if blocks == 1:
    return result(first)

  def body(acc, item):
    return tuple(a + t for a, t in zip(acc, block_sum(*item), strict=True)), None

  rest = jax.tree.map(lambda x: x[1:], grouped)
  acc, _ = jax.lax.scan(body, first, (rest, jnp.arange(1, blocks)))
  return result(acc)


def _moved(collective, payload):
  """Applies a collective that moves (does not add) payload leaves, bfloat16 ones as uint16.

  XLA:CPU converts a bfloat16 all-gather or all-to-all to float32 (twice the bytes); the bits
  of a bfloat16 travel unchanged as a uint16 on every backend.
  """

  def move(x):
    if x.dtype != jnp.bfloat16:
      return collective(x)
    moved = collective(jax.lax.bitcast_convert_type(x, jnp.uint16))
    return jax.lax.bitcast_convert_type(moved, jnp.bfloat16)

  return jax.tree.map(move, payload)


def _decode_each(compressor, payloads, d, dtype, keys=None):
  """Decodes a stack of payloads (leading axis) into float32 rows; ``keys``: one per payload."""

  def decode(payload, key):
    return compressor.decode(payload, (d,), dtype, key=key).astype(jnp.float32)

  if keys is None:
    return jax.vmap(lambda p: decode(p, None))(payloads)
  return jax.vmap(decode)(payloads, keys)


def _all_gather(compressor, v, dtype, key, axis_name, specs):
  payload = compressor.encode(v.astype(dtype), key=key)
  local = compressor.decode(payload, v.shape, dtype, key=key).astype(jnp.float32)
  gathered = _moved(lambda x: jax.lax.all_gather(x, axis_name), payload)
  shared_key = key if shares_randomness(compressor) else None
  d = v.shape[0]
  (w, total), rest = specs[0], specs[1:]
  if not rest:
    summed = _sum_decoded(compressor, gathered, d, dtype, shared_key, w, axis_name)
    return [_normalise(summed, total)], local
  # more weighted sums from the same gathered payloads: no more traffic
  sums = _sum_decoded(
    compressor, gathered, d, dtype, shared_key, w, axis_name, extra=tuple(x for x, _ in rest)
  )
  return [_normalise(s, t) for s, (_, t) in zip(sums, specs, strict=True)], local


def _psum(compressor, v, dtype, key, axis_name, specs):
  payload = compressor.encode(v.astype(dtype), key=key)
  local = compressor.decode(payload, v.shape, dtype, key=key).astype(jnp.float32)

  def weighted_sum(weight, norm):
    sent = payload
    if weight is not None:
      sent = jax.tree.map(lambda x: (x.astype(jnp.float32) * weight).astype(x.dtype), payload)
    summed = jax.lax.psum(sent, axis_name)
    mean = compressor.decode(summed, v.shape, dtype, key=key).astype(jnp.float32)
    return _normalise(mean, norm)

  # the all-reduce sums the weighted payloads, so each further weighting is another
  # all-reduce: the caller counts its bits (`traffic_bits`' uplink once more)
  return [weighted_sum(*spec) for spec in specs], local


def _two_stage(compressor, v, dtype, key, axis_name, w, total, server_error, vote, fn):
  n = _axis_size(axis_name)
  d = v.shape[0]
  chunk, padded = chunking(d, n)
  cc = compressor.for_chunks(d, n)
  feedback = False if vote else _server_feedback(fn, cc, chunk)
  chunks = jnp.pad(v, (0, padded - d)).reshape(n, chunk).astype(dtype)
  keys = None if key is None else jax.random.split(key, n)
  # lax.map rather than vmap: a sequential loop over the chunks, which keeps data-dependent
  # control flow inside an encoder (the radix Top-k's repair loop) unbatched; batching it
  # inside shard_map trips JAX 0.10's varying-axes check.
  if keys is None:
    payloads = jax.lax.map(lambda c: cc.encode(c), chunks)
  else:
    payloads = jax.lax.map(lambda ck: cc.encode(ck[0], key=ck[1]), (chunks, keys))
  local = _decode_each(cc, payloads, chunk, dtype, keys).reshape(-1)[:d]
  received = _moved(lambda x: jax.lax.all_to_all(x, axis_name, 0, 0), payloads)
  summed = _sum_decoded(cc, received, chunk, dtype, None, w, axis_name)
  chunk_mean = _normalise(summed, total)
  anyone = _participated(total)
  index = jax.lax.axis_index(axis_name)
  server_key = None
  if key is not None:
    server_key = jax.random.fold_in(jax.random.fold_in(key, _SERVER_SALT), index)
  new_error = server_error
  if feedback:
    own = jax.lax.dynamic_slice(jnp.pad(server_error, (0, padded - d)), (index * chunk,), (chunk,))
    value = chunk_mean + own
    server_payload = cc.encode(value.astype(dtype), key=server_key)
    sent = cc.decode(server_payload, (chunk,), dtype, key=server_key)
    new_own = value - sent if anyone is None else jnp.where(anyone, value - sent, own)
    # Only this worker's chunk of the full-size error changes (the layout is independent of n).
    new_error = jax.lax.dynamic_update_slice(
      jnp.pad(server_error, (0, padded - d)), new_own.astype(jnp.float32), (index * chunk,)
    )[:d]
  else:
    # majority vote (the sign of the sum), or an unbiased operator: no server error, so
    # E S(mean) = mean and the result stays unbiased
    server_payload = cc.encode(chunk_mean.astype(dtype), key=server_key)
  gathered = _moved(lambda x: jax.lax.all_gather(x, axis_name), server_payload)
  # check_method rules out shared randomness: decoding needs no key
  mean = _decode_each(cc, gathered, chunk, dtype).reshape(-1)[:d]
  if anyone is not None:
    mean = jnp.where(anyone, mean, 0.0)
  return mean, local, new_error


def exchange_specs(
  vectors: Sequence[jax.Array],
  dtypes: Sequence[Any],
  compressor: _base.Compressor,
  axis_name,
  *,
  method: str,
  key: jax.Array | None,
  specs: Sequence[WeightSpec],
  server_errors: Sequence[jax.Array] | None = None,
  fn: str = "compressed_mean",
):
  """The aggregates over ``axis_name`` of the compressed 1-D float32 ``vectors`` (one per group)
  under each weighting of ``specs`` (`weight_spec`, `plain_spec`), from one exchange.

  Returns (means, locals, new server errors): ``means[s][g]`` the aggregate of group g under
  spec s, float32. Under all_gather every further spec is another weighted sum of the gathered
  payloads, without more traffic; under psum another all-reduce of the payload
  (``traffic_bits``' uplink once more); two_stage and majority_vote take one spec only.
  """
  record_axis(axis_name)
  n = _axis_size(axis_name)
  if len(specs) > 1:
    check_plain(fn, method)
  if compressor.needs_key and key is not None and not shares_randomness(compressor):
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  means = [[] for _ in specs]
  locals_, errors = [], []
  for g, (v, dtype) in enumerate(zip(vectors, dtypes, strict=True)):
    gkey = None if key is None else jax.random.fold_in(key, g)
    if not compressor.needs_key:
      gkey = None
    m = resolve_method(compressor, method, v.shape[0], n, dtype)
    if len(specs) > 1:
      check_plain(fn, m)
    if m in ("all_gather", "psum"):
      run = _all_gather if m == "all_gather" else _psum
      group_means, local = run(compressor, v, dtype, gkey, axis_name, specs)
      err = None if server_errors is None else server_errors[g]
    else:
      err = jnp.zeros_like(v) if server_errors is None else server_errors[g]
      w, total = specs[0]
      mean, local, err = _two_stage(
        compressor, v, dtype, gkey, axis_name, w, total, err, m == "majority_vote", fn
      )
      group_means = [mean]
    for s, mean in enumerate(group_means):
      means[s].append(mean)
    locals_.append(local)
    errors.append(err)
  return means, locals_, errors


def compressed_mean(
  tree: Any,
  compressor: _base.Compressor,
  axis_name: Any,
  *,
  key: jax.Array | None = None,
  method: str = "auto",
  mask: jax.Array | bool | None = None,
  probability: jax.Array | float | None = None,
  weights: jax.Array | float | None = None,
  server_error: Any = None,
) -> MeanResult:
  """The mean over ``axis_name`` of the compressed leaves of ``tree``, with real traffic.

  Each leaf is compressed on its own (its own payload; the collectives of all leaves are
  issued together). Decoding and summing are in float32 whatever the leaf dtype.

  Args:
    tree: this worker's pytree of float arrays (float32, bfloat16 or float16).
    compressor: the compressor C.
    axis_name: the bound axis to reduce over (shard_map, vmap with axis_name, pmap).
    key: a PRNG key, the same on every worker (each folds in its axis index, except for
      shared-randomness compressors); required by random compressors.
    method: ``"auto"`` (default: the exact mean of the decoded messages, by psum for
      linear float32 codes and all_gather otherwise), ``"all_gather"``, ``"psum"``, or the
      different algorithms ``"two_stage"`` (server re-compression) and ``"majority_vote"``
      (see the module docstring).
    mask: whether this worker participates (default: all do).
    probability: this worker's participation probability p_i; given, the mean is the
      unbiased (1/n) sum_{i in S} C_i / p_i instead of the mean over S.
    weights: this worker's weight w_i (a float, traced or not); given, the aggregate is
      sum_{i in S} w_i C_i as it is: the general form of which the mean over S
      (w_i = 1/|S|) and the importance weights (w_i = 1/(n p_i)) are cases, e.g. the
      decoding coefficients of a gradient code for the current straggler set. Exclusive
      with ``probability``.
    server_error: two_stage's server error, a float32 pytree shaped like ``tree`` (zeros at
      the start); each worker updates its own chunk of it.

  Returns:
    A `MeanResult` (mean, this worker's decoded message, the new server error).

  Example:
    >>> import jax, jax.numpy as jnp, biased_compression as bc
    >>> grads = jnp.arange(32.0).reshape(4, 8)  # 4 workers
    >>> f = lambda g: bc.compressed_mean(g, bc.top_k(k=2), "w", method="all_gather").mean
    >>> jax.vmap(f, axis_name="w")(grads)[0]
    Array([ 0.,  0.,  0.,  0.,  0.,  0., 18., 19.], dtype=float32)
  """
  if not isinstance(compressor, _base.Compressor):
    raise TypeError(f"compressed_mean: compressor must be a Compressor, got {compressor!r}")
  check_method("compressed_mean", method, compressor)
  if weights is not None and probability is not None:
    raise ValueError("compressed_mean: give weights or probability, not both")
  if compressor.needs_key and key is None:
    raise ValueError(f"compressed_mean: {compressor.name} is random and needs key=")
  leaves, treedef = jax.tree.flatten(tree)
  leaves = [jnp.asarray(x) for x in leaves]
  errors = None
  if server_error is not None:
    errors = [jnp.asarray(e, jnp.float32).reshape(-1) for e in jax.tree.leaves(server_error)]
  means, locals_, errors = exchange_specs(
    [x.reshape(-1).astype(jnp.float32) for x in leaves],
    [x.dtype for x in leaves],
    compressor,
    axis_name,
    method=method,
    key=key,
    specs=[weight_spec(axis_name, mask, probability, weights)],
    server_errors=errors,
  )
  means = means[0]

  def rebuild(values):
    return treedef.unflatten([v.reshape(x.shape) for v, x in zip(values, leaves, strict=True)])

  new_error = server_error
  if server_error is not None:
    new_error = rebuild(errors)
  return MeanResult(rebuild(means), rebuild(locals_), new_error)
