"""The registry of compressors: example operators by short name, and a parser of specs.

`standard_compressors` holds every operator and combinator with typical parameters (the
tests are parametrised over it and the CLI tabulates it); `parse_compressor` turns a short
spec (``"top_k:0.01"``, ``"contractive(rand_k(0.1))"``) into a compressor, for the CLI and
the experiments' configs.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

import jax.numpy as jnp

from biased_compression.compressors import _base
from biased_compression.compressors import _combinators as comb
from biased_compression.compressors import _quantization as quant
from biased_compression.compressors import _sparsification as sparse

__all__ = ["FACTORIES", "parse_compressor", "standard_compressors"]


def standard_compressors() -> dict[str, _base.Compressor]:
  """Every operator of the library with typical parameters, keyed by a short name.

  Example:
    >>> import biased_compression as bc
    >>> sorted(bc.standard_compressors())[:3]
    ['adaptive_random_sparsification', 'cast_bf16', 'cast_fp16']
  """
  return {
    "identity": quant.identity(),
    "cast_bf16": quant.cast(jnp.bfloat16),
    "cast_fp16": quant.cast(jnp.float16),
    "top_k": sparse.top_k(0.1),
    "rand_k": sparse.rand_k(0.1),
    "rand_k_biased": sparse.rand_k(0.1, unbiased=False),
    "rand_k_shared": sparse.rand_k(0.1, shared_indices=True),
    "adaptive_random_sparsification": sparse.adaptive_random_sparsification(),
    "natural_compression": quant.natural_compression(),
    "exponential_rounding_b4": quant.exponential_rounding(4.0),
    "exponential_rounding_nearest": quant.exponential_rounding(2.0, unbiased=False),
    "exponential_rounding_nearest_b3": quant.exponential_rounding(3.0, unbiased=False),
    "standard_dithering": quant.standard_dithering(4),
    "standard_dithering_inf": quant.standard_dithering(8, norm=float("inf")),
    "natural_dithering": quant.natural_dithering(4),
    "natural_dithering_l1": quant.natural_dithering(6, norm=1),
    "sign": quant.sign(),
    "scaled_sign": quant.scaled_sign(),
    "grouped_sign": quant.grouped_sign(64),
    "top_k_natural_dithering": comb.top_k_natural_dithering(0.1, levels=7),
    "induced": comb.induced(sparse.top_k(0.1), sparse.rand_k(0.1)),
    "compose_unbiased": comb.compose(quant.natural_compression(), sparse.rand_k(0.25)),
    "compose_dense": comb.compose(quant.natural_compression(), quant.standard_dithering(16)),
    "scaled": comb.scaled(sparse.top_k(0.25), 0.5),
    "contractive_rand_k": comb.contractive(sparse.rand_k(0.1)),
    "contractive_top_k_nd": comb.contractive(comb.top_k_natural_dithering(0.1, levels=3)),
  }


# name -> factory, for `parse_compressor` (every public operator and combinator)
FACTORIES: dict[str, Callable[..., _base.Compressor]] = {
  "identity": quant.identity,
  "cast": quant.cast,
  "sign": quant.sign,
  "scaled_sign": quant.scaled_sign,
  "grouped_sign": quant.grouped_sign,
  "natural_compression": quant.natural_compression,
  "exponential_rounding": quant.exponential_rounding,
  "standard_dithering": quant.standard_dithering,
  "natural_dithering": quant.natural_dithering,
  "top_k": sparse.top_k,
  "rand_k": sparse.rand_k,
  "adaptive_random_sparsification": sparse.adaptive_random_sparsification,
  "compose": comb.compose,
  "induced": comb.induced,
  "scaled": comb.scaled,
  "contractive": comb.contractive,
  "top_k_natural_dithering": comb.top_k_natural_dithering,
}

# the names a spec may use for values (as the operators' reprs print them)
_CONSTANTS = {
  "inf": math.inf,
  "math.inf": math.inf,
  "bfloat16": jnp.bfloat16,
  "jnp.bfloat16": jnp.bfloat16,
  "float16": jnp.float16,
  "jnp.float16": jnp.float16,
  "float32": jnp.float32,
  "jnp.float32": jnp.float32,
  "True": True,
  "False": False,
  "None": None,
}


class _SpecError(ValueError):
  pass


def _value(node: ast.AST, spec: str):
  if isinstance(node, ast.Call):
    return _call(node, spec)
  if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
    return node.value
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
    return -_value(node.operand, spec)
  if isinstance(node, (ast.Name, ast.Attribute)):
    text = ast.unparse(node)
    if text in _CONSTANTS:
      return _CONSTANTS[text]
    if text in FACTORIES or text in standard_compressors():
      return parse_compressor(text)
  raise _SpecError(f"{ast.unparse(node)!r} is not a number, a dtype or a compressor")


def _call(node: ast.Call, spec: str) -> _base.Compressor:
  name = ast.unparse(node.func)
  if name not in FACTORIES:
    raise _SpecError(f"unknown compressor {name!r}")
  args = [_value(a, spec) for a in node.args]
  kwargs = {k.arg: _value(k.value, spec) for k in node.keywords}
  try:
    return FACTORIES[name](*args, **kwargs)
  except (TypeError, ValueError) as e:
    message = str(e)
    raise _SpecError(message if message.startswith(name) else f"{name}: {message}") from None


def parse_compressor(spec: str | _base.Compressor) -> _base.Compressor:
  """The compressor a short spec names, as the CLI and the experiments' configs write it.

  Three forms, all case-sensitive:

  * a name of `standard_compressors` (``"natural_dithering_l1"``) or of an operator with no
    argument (``"sign"``); ``"top_k"`` alone is the registry's ``top_k(0.1)``;
  * ``name:arg,arg,key=value`` (``"top_k:0.01"``, ``"rand_k:k=10,unbiased=False"``,
    ``"natural_dithering:4,norm=inf"``, ``"cast:bfloat16"``), for the outermost operator
    (its arguments nest as calls: ``"scaled:top_k(0.25),0.5"``);
  * a call as the operators print themselves (``repr(c)``), nested for the combinators:
    ``"contractive(rand_k(0.1))"``, ``"induced(top_k(0.01), rand_k(0.01))"``; so
    ``parse_compressor(repr(c)) == c``.

  Values are numbers, ``True`` / ``False`` / ``None``, ``inf``, the dtypes ``bfloat16`` /
  ``float16`` (or ``jnp.bfloat16``), and compressors. Nothing else is evaluated.

  Args:
    spec: the spec (a `Compressor` is returned as it is).

  Returns:
    The compressor.

  Raises:
    ValueError: for an unknown name or bad arguments, naming the spec and the known names.

  Example:
    >>> import biased_compression as bc
    >>> bc.parse_compressor("top_k:0.01")
    top_k(ratio=0.01)
    >>> bc.parse_compressor("induced(top_k(k=5), rand_k:0.1)")
    Traceback (most recent call last):
    ...
    ValueError: parse_compressor: cannot read 'induced(top_k(k=5), rand_k:0.1)': write ...
    >>> bc.parse_compressor("induced(top_k(k=5), rand_k(0.1))")
    induced(top_k(k=5), rand_k(ratio=0.1))
  """
  if isinstance(spec, _base.Compressor):
    return spec
  if not isinstance(spec, str):
    raise TypeError(f"parse_compressor: spec must be a str or a Compressor, got {spec!r}")
  text = spec.strip()
  registry = standard_compressors()
  if text in registry:
    return registry[text]
  name, sep, rest = text.partition(":")
  if sep and "(" not in name:
    text = f"{name.strip()}({rest})"
  elif "(" not in text and text in FACTORIES:
    text = f"{text}()"
  known = ", ".join(sorted(FACTORIES))
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError:
    raise ValueError(
      f"parse_compressor: cannot read {spec!r}: write name:arg,... (e.g. 'top_k:0.01') or a "
      f"call (e.g. 'contractive(rand_k(0.1))'); names: {known}"
    ) from None
  try:
    if not isinstance(node, ast.Call):
      raise _SpecError(f"{ast.unparse(node)!r} is not a compressor")
    return _call(node, spec)
  except _SpecError as e:
    raise ValueError(
      f"parse_compressor: {spec!r}: {e}. Operators: {known}; registry: "
      f"{', '.join(sorted(registry))}"
    ) from None
