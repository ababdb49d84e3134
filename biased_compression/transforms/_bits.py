"""Exact bit accounting: the `BitCount` in every state, and reading it on the host or in jit.

Each worker's state has a `BitCount` with the bits of the last step and the running total,
stored exactly as two int32 words (high, low) in base 2^30 so that totals up to 2^61 bits
neither overflow int32 nor lose precision in float32. `bits_sent` reads them on the host;
`bit_words` inside ``jit`` / ``scan`` and `words_to_bits` after.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

_WORD = 30  # bits per word of the exact counters
_BASE = 1 << _WORD


class BitCount(NamedTuple):
  """Bits one worker sent: the last step and the running total.

  Each field is an int32 array of shape ``(2,)`` (``(n, 2)`` for the state of n simulated
  workers) holding (high, low) words of the exact count ``high * 2**30 + low``. ``step`` and
  ``total`` count the worker's messages (its uplink); ``server_step`` and ``server_total``,
  present only with ``method="two_stage"`` or ``"majority_vote"`` (else empty), count what
  it sent as the server of its chunk (the downlink). Use `bits_sent` to read them.
  """

  step: jax.Array
  total: jax.Array
  server_step: Any = ()
  server_total: Any = ()


def _words(n: int) -> np.ndarray:
  if not 0 <= n < 1 << (2 * _WORD + 1):
    raise ValueError(f"bit count out of range: {n}")
  return np.array([n >> _WORD, n & (_BASE - 1)], np.int32)


def bits_init(server: bool = False) -> BitCount:
  zero = jnp.zeros((2,), jnp.int32)
  if server:
    return BitCount(step=zero, total=zero, server_step=zero, server_total=zero)
  return BitCount(step=zero, total=zero)


def _words_add(total: jax.Array, step: jax.Array) -> jax.Array:
  """total + step for int32 (high, low) words with low words < 2^30."""
  low = total[..., 1] + step[..., 1]
  carry = (low >= _BASE).astype(jnp.int32)
  high = total[..., 0] + step[..., 0] + carry
  return jnp.stack([high, low - carry * _BASE], axis=-1)


def bits_add(bits: BitCount, step: jax.Array, server_step: jax.Array | None = None) -> BitCount:
  """Adds one step's counts (int32 words) to the running totals."""
  if server_step is None:
    return bits._replace(step=step, total=_words_add(bits.total, step))
  return BitCount(
    step=step,
    total=_words_add(bits.total, step),
    server_step=server_step,
    server_total=_words_add(bits.server_total, server_step),
  )


def _value(x):
  # Flax NNX wraps optimizer state leaves in variables.
  if hasattr(x, "get_value"):
    x = x.get_value()
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    # state spread over processes: every process must call bits_sent (a collective)
    from jax.experimental import multihost_utils

    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def bits_sent(state: Any, *, last_step: bool = False, server: bool = False) -> int | np.ndarray:
  """Exact number of bits sent, read from any optimizer state that holds our transformations.

  Sums every `BitCount` found in ``state`` (an ``optax.chain`` of several of our
  transformations counts each). Call it outside ``jit``. For state sharded over several
  processes it gathers the counters, so every process must call it.

  By default it counts each worker's messages (its uplink), in every step it took part in:
  for each compressed vector, the encoded payload (``method="all_gather"``, ``"psum"``) or
  its n chunk payloads (``"two_stage"``, ``"majority_vote"``); for each leaf sent dense
  (``min_size``, warm-up steps), its values as they travel: float32 in the all-reduce of
  distributed workers, the leaf dtype on one worker. These are the operand sizes of the
  collectives of the compiled program (`wire_bytes` reads them; how often a ring collective
  forwards them is the transport's cost, not counted here). ``server=True`` counts instead
  what the worker sent as the server of its chunk under two_stage and majority_vote (its
  re-compressed chunk, all_gathered to the others; zero for the other methods). Neither
  counts the uncompressed fast-axis all-reduce of ``dense_axis_name``, nor the one float32
  participation weight per worker that ``participating`` / ``probability`` add. XLA:CPU
  promotes a bfloat16 all-reduce to float32, so there ``method="psum"`` of a bfloat16 payload
  (``cast(jnp.bfloat16)``) moves 32 bits per value where this counts 16 (GPUs and TPUs reduce
  bfloat16 natively); gathered bfloat16 payloads travel as uint16, exact everywhere.

  Args:
    state: an optimizer state (any pytree containing `BitCount` nodes).
    last_step: return the bits of the last step instead of the running total.
    server: count the server's downlink instead of the worker's uplink.

  Returns:
    A Python int, or an int64 array with one entry per worker when the state has a leading
    worker axis (from `init_workers`).

  Example:
    >>> import jax.numpy as jnp, optax, biased_compression as bc
    >>> tx = bc.compress(bc.sign())
    >>> params = {"w": jnp.zeros(1000)}
    >>> state = tx.init(params)
    >>> _, state = tx.update({"w": jnp.ones(1000)}, state)
    >>> bc.bits_sent(state)
    1000
  """
  total = 0
  for field in _bit_fields("bits_sent", state, last_step, server):
    words = _value(field).astype(np.int64)
    total = total + (words[..., 0] << _WORD) + words[..., 1]
  return int(total) if np.ndim(total) == 0 else total


def _bit_fields(fn: str, state: Any, last_step: bool, server: bool) -> list:
  """The word arrays of every `BitCount` in ``state`` (uplink or server, step or total)."""
  counts = [
    node
    for _, node in optax.tree.get_all_with_path(state, "BitCount")
    if isinstance(node, BitCount)
  ]
  if not counts:
    raise ValueError(f"{fn}: state holds no biased_compression transformation state")
  fields = []
  for node in counts:
    if server:
      field = node.server_step if last_step else node.server_total
    else:
      field = node.step if last_step else node.total
    if not isinstance(field, tuple):  # a tuple: no server in this transformation's method
      fields.append(field)
  return fields


def bit_words(state: Any, *, last_step: bool = False, server: bool = False) -> jax.Array:
  """`bits_sent` as exact int32 words, computable inside ``jit`` and ``lax.scan``.

  The sum of every `BitCount` of ``state`` as an int32 array of shape ``(..., 2)``: (high,
  low) words of ``high * 2**30 + low`` (one pair per worker for worker-stacked state). Log it
  from a jitted training loop and convert on the host with `words_to_bits`; the options are
  those of `bits_sent`.

  Example:
    >>> import jax, jax.numpy as jnp, biased_compression as bc
    >>> tx = bc.compress(bc.sign())
    >>> state = tx.init(jnp.zeros(1000))
    >>> step = jax.jit(lambda s: tx.update(jnp.ones(1000), s)[1])
    >>> words = jax.jit(bc.bit_words)(step(step(state)))
    >>> bc.words_to_bits(words)
    2000
  """
  fields = _bit_fields("bit_words", state, last_step, server)
  if not fields:  # server=True for methods without a server
    return jnp.zeros_like(_bit_fields("bit_words", state, last_step, False)[0])
  total = fields[0]
  for field in fields[1:]:
    total = _words_add(total, field)
  return total


def words_to_bits(words: Any) -> int | np.ndarray:
  """The exact bit count of `bit_words`'s int32 words (an int, or int64 per worker)."""
  words = np.asarray(words).astype(np.int64)
  total = (words[..., 0] << _WORD) + words[..., 1]
  return int(total) if np.ndim(total) == 0 else total
