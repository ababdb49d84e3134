"""The experiments layer: tasks, a runner, and `compare`, on the library's public API only.

* Tasks (`Task`): `quadratic`, `linear_regression` (known optimum), `logistic_regression`
  (a bundled or LIBSVM data set, sorted-label or i.i.d. split over n workers, optional
  non-convex regulariser), `mlp_classification` and `cnn_classification` (Flax NNX models on
  flat features or images); data loaders `bundled`, `load_libsvm`, `load_idx`, `mnist1d`.
* Methods as data: `RunConfig` (task, n, algorithm, compressor spec, step size, steps, seed)
  round-trips through JSON; `make_transformation` builds its Optax chain.
* `run`: a whole run compiled with ``lax.scan`` in chunks, under ``jax.vmap`` (simulated
  workers) or ``jax.shard_map`` (devices), a grid of step sizes at once; per step the loss,
  optimality gap, accuracy, bits and wall time (`RunResult`).
* `compare`: every method at its best step size; a table, plots and JSON / CSV records
  (`Comparison`). ``biased-compression compare`` is its command line.
* `straggler_study`: COCO-EF against its baselines over straggler probabilities,
  replications and compressors, at equal bits (`StragglerStudy`); ``biased-compression
  stragglers`` is its command line.
"""

from biased_compression.experiments._compare import DEFAULT_LRS
from biased_compression.experiments._compare import Comparison
from biased_compression.experiments._compare import compare
from biased_compression.experiments._compare import default_methods
from biased_compression.experiments._config import ALGORITHMS
from biased_compression.experiments._config import CODES
from biased_compression.experiments._config import RunConfig
from biased_compression.experiments._config import make_code
from biased_compression.experiments._config import make_transformation
from biased_compression.experiments._config import powersgd_rank
from biased_compression.experiments._data import Dataset
from biased_compression.experiments._data import bundled
from biased_compression.experiments._data import load_idx
from biased_compression.experiments._data import load_libsvm
from biased_compression.experiments._data import mnist1d
from biased_compression.experiments._data import split
from biased_compression.experiments._data import worker_split
from biased_compression.experiments._models import cnn_classification
from biased_compression.experiments._models import mlp_classification
from biased_compression.experiments._runner import RunResult
from biased_compression.experiments._runner import run
from biased_compression.experiments._stragglers import DEFAULT_COMPRESSORS as STRAGGLER_COMPRESSORS
from biased_compression.experiments._stragglers import DEFAULT_LRS as STRAGGLER_LRS
from biased_compression.experiments._stragglers import METHODS as STRAGGLER_METHODS
from biased_compression.experiments._stragglers import StragglerStudy
from biased_compression.experiments._stragglers import straggler_study
from biased_compression.experiments._stragglers import unbiased_counterpart
from biased_compression.experiments._tasks import TASKS
from biased_compression.experiments._tasks import Task
from biased_compression.experiments._tasks import linear_regression
from biased_compression.experiments._tasks import logistic_regression
from biased_compression.experiments._tasks import make_task
from biased_compression.experiments._tasks import quadratic

__all__ = [
  "ALGORITHMS",
  "CODES",
  "DEFAULT_LRS",
  "STRAGGLER_COMPRESSORS",
  "STRAGGLER_LRS",
  "STRAGGLER_METHODS",
  "TASKS",
  "Comparison",
  "Dataset",
  "RunConfig",
  "RunResult",
  "StragglerStudy",
  "Task",
  "bundled",
  "cnn_classification",
  "compare",
  "default_methods",
  "linear_regression",
  "load_idx",
  "load_libsvm",
  "logistic_regression",
  "make_code",
  "make_task",
  "make_transformation",
  "powersgd_rank",
  "mlp_classification",
  "mnist1d",
  "quadratic",
  "run",
  "split",
  "straggler_study",
  "unbiased_counterpart",
  "worker_split",
]
