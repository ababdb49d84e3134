"""`parse_compressor`: every registry operator round-trips through its repr, the short forms
give the operators they name, and bad specs get errors that name them."""

import inspect
import math

import jax.numpy as jnp
import pytest

import biased_compression as bc
from biased_compression.compressors import _registry


@pytest.mark.parametrize("name", sorted(bc.standard_compressors()))
def test_repr_round_trips(name):
  c = bc.standard_compressors()[name]
  assert bc.parse_compressor(repr(c)) == c
  assert bc.parse_compressor(name) == c


@pytest.mark.parametrize(
  "spec, expected",
  [
    ("top_k:0.01", bc.top_k(0.01)),
    ("top_k:k=5", bc.top_k(k=5)),
    (" rand_k : k=10, unbiased=False ", bc.rand_k(k=10, unbiased=False)),
    ("natural_dithering:4,norm=inf", bc.natural_dithering(4, norm=math.inf)),
    ("cast:bfloat16", bc.cast(jnp.bfloat16)),
    ("sign", bc.sign()),
    ("exponential_rounding", bc.exponential_rounding()),
    ("contractive(rand_k(0.1))", bc.contractive(bc.rand_k(0.1))),
    ("induced(top_k(k=5), rand_k(0.1))", bc.induced(bc.top_k(k=5), bc.rand_k(0.1))),
    ("scaled:top_k(0.25),0.5", bc.scaled(bc.top_k(0.25), 0.5)),
    ("top_k_natural_dithering:0.1,levels=7", bc.top_k_natural_dithering(0.1, levels=7)),
  ],
)
def test_short_forms(spec, expected):
  assert bc.parse_compressor(spec) == expected


def test_every_factory_is_parseable():
  names = {n for n in bc.compressors.__all__ if n in _registry.FACTORIES}
  # the public functions returning a Compressor (the factories), by their annotations
  factories = {
    n
    for n in bc.compressors.__all__
    if inspect.isfunction(getattr(bc, n))
    and "Compressor" not in n
    and n not in ("parse_compressor", "standard_compressors", "class_constants")
    and not n.endswith("_constants")
  }
  missing = factories - names
  assert not missing, f"factories parse_compressor cannot build: {sorted(missing)}"


@pytest.mark.parametrize(
  "spec, match",
  [
    ("foo:1", "unknown compressor 'foo'.*Operators: .*top_k"),
    ("top_k:1", "'top_k:1': top_k: ratio must be a float"),
    ("top_k:abc", "'abc' is not a number, a dtype or a compressor"),
    ("top_k(0.1", "cannot read 'top_k\\(0.1'"),
    ("__import__('os')", "unknown compressor '__import__'"),
    ("top_k(ratio=().__class__)", "is not a number"),
    ("0.1", "'0.1' is not a compressor"),
  ],
)
def test_bad_specs(spec, match):
  with pytest.raises(ValueError, match=match):
    bc.parse_compressor(spec)


def test_not_a_string():
  with pytest.raises(TypeError, match="spec must be a str or a Compressor, got 3"):
    bc.parse_compressor(3)
  c = bc.top_k(0.1)
  assert bc.parse_compressor(c) is c
