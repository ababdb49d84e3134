"""Benchmarks behind ``biased-compression bench``: they print numbers, they assert nothing.

* `bench_compressors`: encode / decode time of each compressor against a memory-bound
  reference on the same array.
* `bench_topk`: the Top-k selection methods against ``lax.top_k`` (and PyTorch if present).
* The collectives benchmark (``bench collectives``): traffic read from the compiled
  programs and a network model of a step, in `biased_compression.bench._collectives`.
"""

from biased_compression.bench._timing import bench_compressors
from biased_compression.bench._timing import bench_topk
from biased_compression.bench._timing import write_record

__all__ = ["bench_compressors", "bench_topk", "write_record"]
