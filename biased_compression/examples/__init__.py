"""Runnable examples of biased_compression.

* `biased_compression.examples.multihost`: data-parallel training with compressed error
  feedback over a mesh spanning several processes (``jax.distributed.initialize``, gloo
  collectives on CPU). Run it with ``python -m biased_compression.examples.multihost``.
"""
