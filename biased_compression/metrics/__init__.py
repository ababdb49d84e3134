"""Measurements of what the library does: bytes on the wire, relative errors, test vectors.

* `wire_bytes`: the bytes of every collective in a compiled program (independent of the
  library's own bit model).
* `relative_errors`: E ||C(x) - x||^2 / ||x||^2 of a compressor on given vectors.
* `test_vectors`: the standard vectors (Gaussian, heavy-tailed, sparse, an MLP gradient).
"""

from biased_compression.metrics._errors import relative_errors
from biased_compression.metrics._vectors import test_vectors
from biased_compression.metrics._wire import wire_bytes

__all__ = ["relative_errors", "test_vectors", "wire_bytes"]
