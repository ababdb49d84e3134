"""The options every transformation shares (`Options`), their checks, and shared docs.

The checks run when a factory is called, before anything is traced, and raise errors that
name the argument and its value; values that may be traced (``inject_hyperparams``) are
checked only when they are concrete.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from biased_compression.collectives import _collectives
from biased_compression.compressors import _base

SCOPES = ("leaf", "global")
NONFINITE = ("propagate", "skip")


# -- argument checks (values may be traced when the factory runs under inject_hyperparams) --


def is_concrete(value) -> bool:
  return not isinstance(value, jax.core.Tracer)


def check_bound(fn: str, axis_name) -> None:
  try:
    jax.lax.axis_size(axis_name)
  except NameError:
    raise ValueError(
      f"{fn}: axis_name {axis_name!r} is not bound here: run the workers with "
      f"bc.simulate(tx, n, axis_name={axis_name!r}) (simulated, jax.vmap) or "
      f"bc.shard(tx, mesh, {axis_name!r}) (one per device, jax.shard_map), or call update "
      f"inside your own jax.vmap / jax.shard_map over the axis {axis_name!r}"
    ) from None


def check_compressor(fn: str, compressor) -> None:
  if not isinstance(compressor, _base.Compressor):
    raise TypeError(
      f"{fn}: compressor must be a biased_compression Compressor (e.g. bc.top_k(0.01)), "
      f"got {compressor!r}"
    )


def check_options(fn: str, *, scope, start_step, min_size, seed, axis_name) -> None:
  if scope not in SCOPES:
    raise ValueError(f"{fn}: scope must be 'leaf' or 'global', got {scope!r}")
  if is_concrete(start_step):
    if isinstance(start_step, bool) or not float(np.asarray(start_step)).is_integer():
      raise ValueError(f"{fn}: start_step must be an int >= 0, got {start_step!r}")
    if np.asarray(start_step) < 0:
      raise ValueError(f"{fn}: start_step must be an int >= 0, got {start_step!r}")
  if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
    raise ValueError(
      f"{fn}: min_size must be an int >= 0 (a static argument under inject_hyperparams), "
      f"got {min_size!r}"
    )
  if is_concrete(seed) and (isinstance(seed, bool) or np.ndim(seed) != 0):
    raise ValueError(f"{fn}: seed must be an int, got {seed!r}")
  if axis_name is not None:
    try:
      hash(axis_name)
    except TypeError:
      raise ValueError(
        f"{fn}: axis_name must be None or a hashable name, got {axis_name!r}"
      ) from None


@dataclasses.dataclass(frozen=True)
class Options:
  """The options every transformation shares, as one value.

  Every factory (`compress`, `error_feedback`, ...) takes them as keywords, or all at once
  as ``options=Options(...)`` (e.g. to build several transformations alike).

  Attributes:
    seed: seed of the operator's randomness (an int; a traced int under
      ``inject_hyperparams``).
    axis_name: the worker axis (a ``jax.shard_map`` mesh axis, or the axis of
      ``jax.vmap(..., axis_name=)`` / `biased_compression.simulate`); None for one worker.
    scope: ``"leaf"`` compresses each leaf on its own; ``"global"`` concatenates every
      compressed leaf into one vector (e.g. global Top-k over the whole model).
    start_step: dense (uncompressed) steps before compression starts; may be traced under
      ``inject_hyperparams``.
    min_size: leaves with fewer elements are sent dense (static).
    method: how the mean over ``axis_name`` travels: ``"auto"`` (the exact mean of the
      decoded messages), ``"all_gather"``, ``"psum"``, ``"two_stage"`` or
      ``"majority_vote"`` (see `biased_compression.compressed_mean`).
    dense_axis_name: a fast mesh axis over which the updates are first averaged
      uncompressed in float32 (hierarchical meshes); only ``axis_name`` is compressed.
    nonfinite: what a worker whose update holds a NaN or an infinity does:
      ``"propagate"`` (the default: the algorithm runs on it, so the NaN reaches the
      aggregate every worker applies, and an error or estimate holds it for good; wrap the
      chain in ``optax.apply_if_finite`` to skip such steps on every worker) or ``"skip"``
      (that worker sits the step out as a non-participant: it sends nothing, keeps its
      state, and the others' messages are aggregated with the participation weights
      renormalised; on one worker the update is zero and the state kept). Skipped steps
      are counted per worker in the state's ``nonfinite``.
  """

  seed: Any = 0
  axis_name: Any = None
  scope: str = "leaf"
  start_step: Any = 0
  min_size: int = 0
  method: str = "auto"
  dense_axis_name: Any = None
  nonfinite: str = "propagate"

  def check(self, fn: str, compressor) -> None:
    """Raises a ValueError naming the option and its value (before anything is traced)."""
    check_compressor(fn, compressor)
    check_options(
      fn,
      scope=self.scope,
      start_step=self.start_step,
      min_size=self.min_size,
      seed=self.seed,
      axis_name=self.axis_name,
    )
    _collectives.check_method(fn, self.method, compressor)
    if self.nonfinite not in NONFINITE:
      raise ValueError(f"{fn}: nonfinite must be one of {NONFINITE}, got {self.nonfinite!r}")
    if self.dense_axis_name is not None and self.axis_name is None:
      raise ValueError(
        f"{fn}: dense_axis_name={self.dense_axis_name!r} (the fast axis, reduced uncompressed) "
        "needs axis_name (the slow axis, reduced compressed)"
      )


def check_dtypes(fn: str, updates, leaves) -> None:
  """The updates' dtypes are float32, bfloat16 or float16; the error names the leaf's path."""
  bad = [i for i, x in enumerate(leaves) if jnp.dtype(x.dtype) not in _base.SUPPORTED_DTYPES]
  if not bad:
    return
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]
  i = bad[0]
  dtype = jnp.dtype(leaves[i].dtype)
  hint = ""
  if dtype == jnp.float64:
    hint = " (jax_enable_x64 is on: cast the updates to float32 first)"
  raise TypeError(
    f"{fn}: updates must have dtypes float32, bfloat16 or float16; the leaf at "
    f"{paths[i] or 'the root'} has {dtype} with shape {tuple(leaves[i].shape)}{hint}"
  )


def check_worker_state(fn: str, state, axis_name) -> None:
  """Refuses the state of several workers (from `init_workers`) in a single worker's update."""
  key_shape = jnp.shape(state.rng_key)
  if len(key_shape) <= 1:
    return
  where = (
    "a plain tx.update"
    if axis_name is None
    else f"an update that is not vmapped over the workers of axis {axis_name!r}"
  )
  raise ValueError(
    f"{fn}: the state holds {key_shape[0]} workers (a leading worker axis, from "
    f"bc.init_workers) but was given to {where}. Run the workers with "
    "bc.simulate(tx, n, axis_name=...) or bc.shard(tx, mesh, axis_name) (or, in a loop of "
    "your own, bc.simulated_update / bc.device_update); on one worker use tx.init(params)"
  )


def check_unit_interval(fn: str, name: str, value, *, low_open: bool, high_open: bool) -> None:
  """Checks low < value < high with each end open or closed; skips traced values."""
  if not is_concrete(value):
    return
  try:
    v = float(np.asarray(value))
  except (TypeError, ValueError):
    v = math.nan
  ok = (0.0 < v if low_open else 0.0 <= v) and (v < 1.0 if high_open else v <= 1.0)
  if not ok:
    interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
    raise ValueError(f"{fn}: {name} must be in {interval}, got {value!r}")


def check_contractive(fn: str, compressor: _base.Compressor, d: int) -> None:
  """Error feedback needs C in B3: an unbiased C must be scaled by 1 / (1 + omega) first."""
  if compressor.unbiased and not math.isfinite(compressor.delta(d)):
    raise ValueError(
      f"{fn}: {compressor.name} is unbiased with omega = {compressor.omega(d):.4g} at d = {d}, "
      "so it is not contractive and error feedback would amplify the error; use "
      f"bc.contractive({compressor.name}) (C / (1 + omega), in B3(1 + omega))."
    )


# -- the documentation every transformation shares ----------------------------------------------

_METHODS_DOC = """\
  Distributed methods (``method=``, with ``axis_name``), where mean_i is over the workers:

  * ``"auto"`` (default) and ``"all_gather"``: mean_i {m} is the float32 mean of the workers'
    decoded messages, so the update is the algorithm above exactly. ``"auto"`` takes
    ``"psum"`` for linear codes with float32 payloads (`identity`, ``rand_k(...,
    shared_indices=True)``), the same mean summed by one all-reduce; otherwise it is
    ``"all_gather"`` ((n - 1) payloads per device).
  * ``"psum"``: linear codes only; the payloads are summed by the all-reduce in the wire
    dtype (bfloat16 for ``cast(jnp.bfloat16)``), then decoded.
  * ``"two_stage"``: a different algorithm, the compressed all-reduce of DeepSpeed 1-bit Adam
    and Bagua (about 2 (n - 1) / n payloads per device, independent of n). Each worker
    compresses {m} as n chunks with ``C.for_chunks(d, n)`` (a sparsifier keeps k(d) / n
    values per chunk, so k(d) must be a multiple of n; norm-based operators take one norm
    per chunk), and mean_i {m} is replaced by S(mean_i {m}): the server of each chunk
    re-compresses its chunk of the mean with the same chunk operator, with a server error
    fed back (the state's ``server_error``) when C is biased and contractive, without one
    when C is unbiased (so the result stays unbiased); a biased C in no class B3 (`sign`)
    is refused.
  * ``"majority_vote"``: `sign` only; mean_i {m} is replaced by the sign of the sum of the
    workers' signs (signSGD with majority vote), a 1-bit downlink.

  ``dense_axis_name`` (hierarchical meshes): the updates are first averaged over this fast
  axis uncompressed, in float32; only ``axis_name``, the slow axis, is compressed. `bits_sent`
  counts each worker's uplink (and, with ``server=True``, the two_stage server's downlink).
"""


_OPTIONS_DOC = """\
    seed: seed of the operator's randomness.
    axis_name: the worker axis (a shard_map mesh axis, or a vmap axis name as in
      `biased_compression.simulate`); None for one worker.
    scope: ``"leaf"`` (each leaf compressed on its own) or ``"global"`` (all compressed
      leaves as one vector).
    start_step: dense steps before compression starts.
    min_size: leaves with fewer elements are sent dense.
    method: how the mean over ``axis_name`` travels (above); the default is the exact mean
      of the decoded messages.
    dense_axis_name: a fast mesh axis averaged uncompressed before ``axis_name`` (above).
    nonfinite: ``"propagate"`` (default) or ``"skip"``: a worker whose update is not finite
      sits the step out (sends nothing, keeps its state; counted in ``state.nonfinite``).
    options: all of the above as one `Options` (instead of the keywords).
"""

_UPDATE_DOC = {
  "mean": """\
  Partial participation, given to ``update(updates, state, params, ...)`` per worker (under
  ``axis_name``): ``participating`` (bool: whether this worker sends this step) replaces
  mean_i by the mean over the participants S; with ``probability`` p_i as well, by the
  unbiased (1/n) sum_{{i in S}} {m} / p_i; ``weights`` w_i (e.g. a gradient code's decoding
  coefficients for the current stragglers) give sum_{{i in S}} w_i {m} as they are.
  A worker that does not participate sends nothing and keeps its state.
""",
  "sum_over_n": """\
  Partial participation, given to ``update(updates, state, params, ...)`` per worker (under
  ``axis_name``): ``participating`` (bool: whether this worker sends this step) replaces
  mean_i by (1/n) sum_{{i in S}} {m} over the participants S, so that the server's estimate
  stays the mean of the workers' estimates (a worker that does not participate keeps its
  own); with ``probability`` p_i as well, the output uses (1/n) sum_{{i in S}} {m} / p_i
  (unbiased) while the server's estimate still moves by the plain (1/n) sum_{{i in S}} {m}
  (under all_gather from the same payloads; psum sends a second all-reduce; two_stage and
  majority_vote refuse it); ``weights`` w_i give sum_{{i in S}} w_i {m} as they are, for the
  output and the server's estimate.
""",
}

_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Options))


def factory(message: str, participation: str, methods: bool = True):
  """Gives a transformation factory the shared options and their documentation.

  The decorated ``fn(compressor, *, <own keywords>, options: Options)`` becomes
  ``fn(compressor, *, <own keywords>, seed=0, axis_name=None, ..., options=None)``: the
  keywords build the `Options` (or ``options=`` gives them all at once), so the options
  are declared, checked and documented once. In the docstring, ``DISTRIBUTED_METHODS``
  becomes the methods and participation text for ``message`` (the worker's message, e.g.
  ``"Delta_i"``) and ``OPTIONS`` the options' Args entries; ``methods=False`` leaves out the
  compressed methods (an algorithm whose exchanges are dense all-reduces).
  """

  def wrap(fn):
    name = fn.__name__
    signature = inspect.signature(fn)
    own = [p for p in signature.parameters.values() if p.name != "options"]
    added = [
      inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
      for f in dataclasses.fields(Options)
    ]
    added.append(inspect.Parameter("options", inspect.Parameter.KEYWORD_ONLY, default=None))

    @functools.wraps(fn)
    def wrapper(*args, options: Options | None = None, **kwargs):
      given = {k: kwargs.pop(k) for k in _OPTION_NAMES if k in kwargs}
      if options is None:
        options = Options(**given)
      elif not isinstance(options, Options):
        raise TypeError(f"{name}: options must be a bc.transforms.Options, got {options!r}")
      elif given:
        raise TypeError(f"{name}: give options= or the keyword options {sorted(given)}, not both")
      return fn(*args, options=options, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + added)
    doc = fn.__doc__
    text = _UPDATE_DOC[participation].format(m=message)
    if methods:
      text = _METHODS_DOC.format(m=message) + "\n" + text
    for marker, insert in (("  DISTRIBUTED_METHODS\n", text), ("    OPTIONS\n", _OPTIONS_DOC)):
      if marker not in doc:
        raise ValueError(f"factory: the docstring of {name} has no {marker.strip()} line")
      doc = doc.replace(marker, insert)
    wrapper.__doc__ = doc
    return wrapper

  return wrap
