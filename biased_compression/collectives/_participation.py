"""Participation weights of an exchange, and the record of the axes communicated over.

An aggregation rule is a `WeightSpec`, (this worker's weight w_i or None, the normaliser or
None): the aggregate of an exchange is (sum_i w_i C_i) / normaliser. `weight_spec` builds the
rule of a participation mask, importance probabilities or explicit weights; `plain_spec` the
participants' plain (1/n) sum that keeps a server estimate the mean of the workers'.
`recording_axes` / `record_axis` let `biased_compression.simulate` and `shard` check that a
transformation communicates over their axis.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp


def _axis_size(axis_name) -> int:
  return int(jax.lax.axis_size(axis_name))


def _weights(axis_name, mask, probability, weights=None):
  """(this worker's weight, the normaliser or None) for the participation rule.

  With every worker participating the weights are constants and no collective is issued.
  Explicit ``weights`` w_i give the aggregate sum_i w_i C_i as they are (zero where masked).
  """
  n = _axis_size(axis_name)
  if weights is not None:
    w = jnp.asarray(weights, jnp.float32)
    if mask is not None:
      w = jnp.where(jnp.asarray(mask, jnp.bool_), w, 0.0)
    return w, None
  if mask is None and probability is None:
    return None, float(n)
  m = jnp.asarray(True if mask is None else mask, jnp.bool_)
  if probability is not None:
    p = jnp.asarray(probability, jnp.float32)
    w = jnp.where(m, 1.0 / (n * jnp.where(m, p, 1.0)), 0.0)
    return w, None
  w = m.astype(jnp.float32)
  return w, jax.lax.psum(w, axis_name)


def _plain_weights(axis_name, mask):
  """(weight, normaliser) of the participants' plain mean (1/n) sum_{i in S} C_i."""
  if mask is None:
    return None, float(_axis_size(axis_name))
  n = _axis_size(axis_name)
  return jnp.where(jnp.asarray(mask, jnp.bool_), 1.0 / n, 0.0), None


PLAIN_METHODS = ("all_gather", "psum")


def check_plain(fn: str, method: str) -> None:
  """The participants' plain mean besides a weighted one needs all_gather (free) or psum."""
  if method not in PLAIN_METHODS and method != "auto":
    raise ValueError(
      f"{fn}: method={method!r} re-compresses the weighted aggregate on the servers, so it "
      "cannot also give the participants' plain mean (1/n) sum_{i in S} C_i that this "
      "algorithm needs with probability= or weights=; use method='all_gather' (the plain "
      "mean then comes from the same gathered payloads, without more traffic)"
    )


def _normalise(summed, total):
  if total is None:
    return summed
  if isinstance(total, float):
    return summed / total
  return jnp.where(total > 0, summed / jnp.maximum(total, 1.0), 0.0)


def _participated(total):
  """Whether anyone participated (traced), or None when everyone did (static)."""
  return None if isinstance(total, float) or total is None else total > 0


WeightSpec = tuple  # (this worker's weight or None, the normaliser or None): see `weight_spec`


def weight_spec(axis_name, mask=None, probability=None, weights=None) -> WeightSpec:
  """One aggregation rule as (this worker's weight w_i or None, the normaliser or None).

  The aggregate is (sum_i w_i C_i) / normaliser: ``(None, n)`` is the plain mean,
  ``(1{i in S}, |S|)`` the mean over the participants ``mask`` (|S| by one psum of the
  mask), ``(1{i in S} / (n p_i), None)`` the importance-weighted sum with ``probability``,
  and ``(w_i 1{i in S}, None)`` explicit ``weights`` as they are.
  """
  return _weights(axis_name, mask, probability, weights)


def plain_spec(axis_name, mask=None) -> WeightSpec:
  """The participants' plain (1/n) sum_{i in S} C_i (the rule of an estimate kept as the mean
  of the workers' own estimates)."""
  return _plain_weights(axis_name, mask)


_AXES_IN_USE: contextvars.ContextVar[list | None] = contextvars.ContextVar("axes", default=None)


@contextlib.contextmanager
def recording_axes():
  """Collects the ``axis_name`` of every exchange traced in the block (`compressed_mean`, the
  transformations' exchanges): `biased_compression.simulate` and `shard` use it to refuse a
  transformation that never communicates over the worker axis."""
  seen: list = []
  token = _AXES_IN_USE.set(seen)
  try:
    yield seen
  finally:
    _AXES_IN_USE.reset(token)


def record_axis(axis_name) -> None:
  """Notes that the code being traced communicates over ``axis_name`` (see `recording_axes`)."""
  seen = _AXES_IN_USE.get()
  if seen is not None:
    seen.append(axis_name)
