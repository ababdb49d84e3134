"""Benchmarks behind ``biased-compression bench``: they print numbers, they assert nothing.

* `bench_compressors`: encode / decode time of each compressor against a memory-bound
  reference on the same array.
* `bench_topk`: the Top-k selection methods against ``lax.top_k`` (and PyTorch if present).
* `bench_coco`: one COCO-EF step of n simulated workers against a Python loop over the
  workers (PyTorch if present, and NumPy); `check_loops` runs the three on the same stragglers.
* The collectives benchmark (``bench collectives``): traffic read from the compiled
  programs and a network model of a step, in `biased_compression.bench._collectives`.
"""

from biased_compression.bench._coco import bench_coco
from biased_compression.bench._coco import check_loops
from biased_compression.bench._timing import bench_compressors
from biased_compression.bench._timing import bench_topk
from biased_compression.bench._timing import write_record

__all__ = ["bench_coco", "bench_compressors", "bench_topk", "check_loops", "write_record"]
