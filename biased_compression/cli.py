"""The ``biased-compression`` command line.

Subcommands:

* ``compare [--task ...] [--methods ...] [--workers N] [--steps T] [--lrs ...] [--out DIR]``
  (the default, the main job): trains a task with uncompressed GD and the library's methods
  at their best step sizes and writes a table, plots and JSON (see
  `biased_compression.experiments.compare`).
* ``reproduce NAME [--full] [--out DIR] [options]`` and ``reproduce all [--only ...]``: reruns
  a claim of the seed papers (or all of them, with ``REPORT.md``); see
  `biased_compression.studies`.
* ``compressors [--dim D] [--draws N] [--seed S]``: tabulates every compressor of
  `standard_compressors` with its constants, its wire size and its measured relative error
  ``||C(x) - x||^2 / ||x||^2`` on three test vectors (`biased_compression.metrics`).
* ``bench compressors [--sizes 2^16,2^18,...] [--repeats R] [--only NAME,...] [--json PATH]``:
  times encode and decode of every compressor against a memory-bound reference.
* ``bench topk [--sizes 2^24] [--ratios 0.01,0.1] [--repeats R] [--methods ...] [--json PATH]``:
  times the Top-k selection methods (and ``torch.topk`` when PyTorch is importable).
* ``bench runner [--workers 10,100,1000] [--dim 100] [--steps 200] [--json PATH]``: the
  experiments runner against the bare compiled step and per-worker Python loops.
* ``bench coco [--workers 100,1000] [--dim 100] [--p 0.3] [--d 2] [--compressor top_k:0.05]
  ... [--json PATH]``: one COCO-EF step of the library against per-worker Python loops.
* ``bench powersgd [--sizes 2^20,2^22,2^24] [--ranks 1,2,4] [--workers 8] [--gbits 10] ...
  [--json PATH]``: PowerSGD's compute per step against a memory pass and a dense all-reduce.
* ``bench collectives [--dim 2^20] [--workers 2,4,...] [--model-params 1e8] ... [--json PATH]``:
  bytes and time of the compressed all-reduce, and a modelled step on a slow network.

Sizes (``--dim``, ``--sizes``, ``--model-params``) are element counts, written ``2^N``,
``2**N``, ``1e8`` or plainly. Tables go to stdout, progress bars to stderr (only on a
terminal); a bench writes a JSON record only when given ``--json PATH``. Usage errors exit
with status 2.
"""

from __future__ import annotations

import argparse
import decimal
import math
import pathlib
import re
import sys
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
from tqdm import tqdm

from biased_compression import experiments
from biased_compression import studies
from biased_compression.bench import _timing
from biased_compression.compressors import _registry
from biased_compression.compressors import _sparsification
from biased_compression.metrics import _errors
from biased_compression.metrics import _vectors

__all__ = ["main", "build_parser", "parse_size"]

_DEFAULT_SIZES = tuple(1 << s for s in (16, 18, 20, 22, 24))
# The benchmarks allocate float32 vectors of this many elements (4 GiB), some of them n at a
# time: a larger size is a typo, not a measurement.
_MAX_SIZE = 1 << 30
# A plain count below this in --sizes is refused: before sizes were element counts --sizes
# took log2 values, and an old command line would otherwise time vectors of 16 .. 24 elements.
_MIN_PLAIN_SIZE = 64


# -- argument types -------------------------------------------------------------------------


def _int_at_least(minimum: int, what: str):
  """An argparse type: an int >= minimum, with a message that names what was expected."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      value = None
    if value is None or value < minimum:
      raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
    return value

  return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


_POWER_OF_TWO = re.compile(r"2\s*(?:\^|\*\*)\s*(\d+)")
_PLAIN_COUNT = re.compile(r"\d+")
_SCIENTIFIC = re.compile(r"\d+(?:\.\d*)?[eE]\+?\d+")
_SIZE_LIMIT = 1 << 62
_SIZE_SYNTAX = "2^N, 2**N or an element count (e.g. 2^20, 1048576, 1e6)"
_SIZES_SYNTAX = (
  "2^N, 2**N or an element count; plain counts below 64 are refused (they were log2 sizes before)"
)


def parse_size(text: str, maximum: int | None = None) -> int:
  """Parses a size: ``2^N``, ``2**N``, an integral ``1e8`` or a plain element count.

  The one parser of every size option (``--dim``, ``--sizes``, ``--model-params``), so that
  they all take the same syntax.

  >>> parse_size("2^20"), parse_size("2**4"), parse_size("1e8"), parse_size("4096")
  (1048576, 16, 100000000, 4096)

  Args:
    text: the option's value.
    maximum: the largest size allowed; None for 2^62 (far beyond any model, and still an
      exact integer everywhere).

  Returns:
    The element count, >= 1.

  Raises:
    argparse.ArgumentTypeError: ``text`` is not a size, not positive or above ``maximum``.
  """
  limit = _SIZE_LIMIT if maximum is None else maximum
  text = text.strip()
  value: int | None = None
  if m := _POWER_OF_TWO.fullmatch(text):
    # Compared before shifting: 2^100000 is a slow way to say "too large".
    exponent = int(m.group(1))
    value = 1 << exponent if exponent <= limit.bit_length() else limit + 1
  elif _PLAIN_COUNT.fullmatch(text):
    value = int(text)
  elif _SCIENTIFIC.fullmatch(text):
    # Decimal, not float: exact, so 1.5e0 is refused as no count rather than rounded.
    exact = decimal.Decimal(text)
    if exact > limit:
      value = limit + 1
    elif exact == exact.to_integral_value():
      value = int(exact)
  if value is None or value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive size as {_SIZE_SYNTAX}, got {text!r}")
  if value > limit:
    raise argparse.ArgumentTypeError(
      f"{text} is above the largest size allowed, {_timing.format_size(limit)}"
    )
  return value


def _size_type(maximum: int | None) -> Callable[[str], int]:
  """An argparse type: `parse_size` with a maximum."""
  return lambda text: parse_size(text, maximum)


def _sizes(text: str) -> tuple[int, ...]:
  """Parses ``2^16,2^18,100000``: a comma list of `parse_size` sizes, each <= 2^30.

  Plain counts below 64 are refused, naming the size the user probably meant: ``--sizes``
  used to take log2 values, and timing a 22-element vector is never the intent.
  """
  sizes = []
  for part in text.split(","):
    part = part.strip()
    if _PLAIN_COUNT.fullmatch(part) and int(part) < _MIN_PLAIN_SIZE:
      n = int(part)
      hint = f"did you mean 2^{n}?" if (1 << n) <= _MAX_SIZE else "write sizes as 2^N"
      raise argparse.ArgumentTypeError(f"{n} elements is too small to time; {hint}")
    sizes.append(parse_size(part, _MAX_SIZE))
  return tuple(sizes)


def _format_sizes(sizes: Sequence[int]) -> str:
  return ",".join(_timing.format_size(d) for d in sizes)


def _ratios(text: str) -> tuple[float, ...]:
  """Parses ``0.01,0.1``: fractions of the entries to keep, each in (0, 1]."""
  try:
    ratios = tuple(float(p) for p in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"expected comma-separated fractions (e.g. 0.01,0.1), got {text!r}"
    ) from None
  bad = [r for r in ratios if not 0.0 < r <= 1.0]
  if bad:
    raise argparse.ArgumentTypeError(f"ratios must be in (0, 1], got {bad}")
  return ratios


def _ratio(text: str) -> float:
  (value,) = _ratios(text) if "," not in text else (None,)
  if value is None:
    raise argparse.ArgumentTypeError(f"expected one fraction in (0, 1], got {text!r}")
  return value


def _positive_floats(text: str) -> tuple[float, ...]:
  """Parses ``0.1,0.3``: positive finite numbers (step sizes)."""
  try:
    values = tuple(float(p) for p in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"expected comma-separated numbers (e.g. 0.1,0.3), got {text!r}"
    ) from None
  bad = [v for v in values if not (math.isfinite(v) and v > 0)]
  if bad:
    raise argparse.ArgumentTypeError(f"step sizes must be finite and > 0, got {bad}")
  return values


def _topk_methods(text: str) -> tuple[str, ...]:
  methods = tuple(p.strip() for p in text.split(",") if p.strip())
  bad = [m for m in methods if m not in _timing.TOPK_METHODS]
  if not methods or bad:
    raise argparse.ArgumentTypeError(
      f"expected methods among {', '.join(_timing.TOPK_METHODS)}, got {text!r}"
    )
  return methods


def _names(text: str) -> tuple[str, ...]:
  names = tuple(p.strip() for p in text.split(",") if p.strip())
  if not names:
    raise argparse.ArgumentTypeError("expected comma-separated compressor names")
  return names


# -- compressors ----------------------------------------------------------------------------


def _cmd_compressors(args: argparse.Namespace, argv: Sequence[str]) -> int:
  del argv
  vectors = _vectors.test_vectors(args.dim, seed=args.seed)
  d = next(iter(vectors.values())).shape[0]
  sizes = ", ".join(f"{k} ({v.shape[0]})" for k, v in vectors.items())
  compressors = _registry.standard_compressors()
  rows = []
  for name, c in _timing.progress(iterable=compressors.items(), desc="compressors"):
    errors = _errors.relative_errors(c, vectors, args.draws, seed=args.seed)
    rows.append(
      [
        name,
        c.name,
        "yes" if c.unbiased else "no",
        _timing.format_sig(c.omega(d)),
        _timing.format_sig(c.delta(d)),
        f"{c.bits(d) / d:.2f}",
        *(_timing.format_sig(errors[k], 4) for k in vectors),
      ]
    )
  headers = ["name", "operator", "unbiased", "omega", "delta", "bits/coord", *vectors]
  print(
    f"d = {d}; omega, delta and bits/coord at d; relative error ||C(x) - x||^2 / ||x||^2 "
    f"on {sizes}, mean over {args.draws} key(s) for random operators (seed {args.seed})"
  )
  print(_timing.format_table(headers, rows, align="<<<"))
  return 0


# -- bench ----------------------------------------------------------------------------------


def _write_json(args: argparse.Namespace, rows, argv: Sequence[str]) -> None:
  """The bench's JSON record (machine, date, command, rows), when given ``--json PATH``."""
  if args.json is not None:
    _timing.write_record(args.json, rows, argv)
    print(f"wrote {args.json}")


def _bench_compressors_set() -> dict:
  """The registry plus Top-k and rand-k at 1%, the density the performance targets use."""
  return {
    **_registry.standard_compressors(),
    "top_k_1pct": _sparsification.top_k(0.01),
    "rand_k_1pct": _sparsification.rand_k(0.01),
  }


def _cmd_bench_compressors(args: argparse.Namespace, argv: Sequence[str]) -> int:
  compressors = _bench_compressors_set()
  if args.only is not None:
    unknown = [n for n in args.only if n not in compressors]
    if unknown:
      args.parser.error(
        f"unknown compressor(s) {', '.join(unknown)}; choose from {', '.join(compressors)}"
      )
    compressors = {n: compressors[n] for n in args.only}

  def print_size(d: int, rows: list[dict[str, Any]]) -> None:
    tqdm.write(_timing.compressor_bench_tables(rows) + "\n", file=sys.stdout)

  results = _timing.bench_compressors(
    compressors, args.sizes, repeats=args.repeats, seed=args.seed, on_size_done=print_size
  )
  _write_json(args, results, argv)
  return 0


def _cmd_bench_topk(args: argparse.Namespace, argv: Sequence[str]) -> int:
  def print_size(d: int, rows: list[dict[str, Any]]) -> None:
    tqdm.write(_timing.topk_bench_tables(rows) + "\n", file=sys.stdout)

  results = _timing.bench_topk(
    args.sizes,
    args.ratios,
    repeats=args.repeats,
    seed=args.seed,
    methods=args.methods,
    on_size_done=print_size,
  )
  _write_json(args, results, argv)
  return 0


def _workers_list(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(p) for p in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}") from None
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"worker counts must be >= 1, got {text!r}")
  return values


def _cmd_bench_runner(args: argparse.Namespace, argv: Sequence[str]) -> int:
  from biased_compression.bench import _runner

  rows = _runner.bench_runner(args.workers, dim=args.dim, steps=args.steps, seed=args.seed)
  print(_runner.runner_tables(rows))
  _write_json(args, rows, argv)
  return 0


def _cmd_bench_powersgd(args: argparse.Namespace, argv: Sequence[str]) -> int:
  from biased_compression.bench import _powersgd

  rows = _powersgd.bench_powersgd(
    args.sizes,
    args.ranks,
    workers=args.workers,
    gbits=args.gbits,
    latency_us=args.latency_us,
    repeats=args.repeats,
  )
  print(_powersgd.powersgd_table(rows))
  _write_json(args, rows, argv)
  return 0


def _cmd_bench_coco(args: argparse.Namespace, argv: Sequence[str]) -> int:
  from biased_compression.bench import _coco

  if args.d > min(args.workers):
    args.parser.error(f"--d {args.d}: the replication must be <= every worker count")
  try:
    compressor = _coco.parse_coco_compressor(args.compressor, args.dim)
  except ValueError as e:
    args.parser.error(f"--compressor: {e}")
  if not _coco.loops_support(compressor):
    print(
      f"note: the loops implement an exact Top-k only: {compressor.name} is timed in the "
      "library alone",
      file=sys.stderr,
    )
  rows = _coco.bench_coco(
    args.workers,
    dim=args.dim,
    p=args.p,
    d=args.d,
    compressor=compressor,
    steps=args.steps,
    repeats=args.repeats,
    seed=args.seed,
  )
  print(_coco.coco_tables(rows))
  _write_json(args, rows, argv)
  return 0


def _straggling_probability(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not 0.0 <= value < 1.0:
    raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
  return value


def _cmd_bench_collectives(args: argparse.Namespace, argv: Sequence[str]) -> int:
  if jax.default_backend() == "cpu" and jax.device_count() < args.devices:
    args.parser.error(
      f"only {jax.device_count()} CPU devices: the JAX backend started before --devices "
      f"{args.devices} could be applied"
    )
  from biased_compression.bench import _collectives as _bench_collectives

  cost_d = min(args.dim, _bench_collectives.COST_MAX_D)
  warning = _bench_collectives.cost_warning(cost_d)
  if warning is not None:
    # Before the run, so that it is seen before the numbers it qualifies (the table repeats it).
    print(
      f"warning: --dim {_timing.format_size(args.dim)}: the modelled step's compression cost "
      f"is measured at d = {_timing.format_size(cost_d)} and extrapolated linearly to "
      f"--model-params {args.model_params}; {warning}",
      file=sys.stderr,
    )
  with _timing.progress(total=3, desc="bench collectives") as bar:
    rows = _bench_collectives.traffic(args.dim, args.workers)
    bar.update()
    rows += _bench_collectives.step_times(
      args.dim, min(jax.device_count(), max(args.workers)), args.repeats
    )
    bar.update()
    cost = _bench_collectives.sign_cost_ms_per_million(cost_d, args.repeats, args.model_workers)
    model = _bench_collectives.network_model(
      args.model_params, args.model_workers, args.gbits, args.compute_ms, args.alpha_us, cost
    )
    rows += [{**r, **_bench_collectives.cost_fields(cost_d, cost)} for r in model]
    bar.update()
  print(_bench_collectives.tables(rows))
  _write_json(args, rows, argv)
  return 0


def _comma_list(text: str, convert, ok, kind: str, expected: str) -> tuple:
  """``text`` as comma-separated values of ``convert``, each satisfying ``ok``."""
  try:
    values = tuple(convert(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got {text!r}") from None
  if not values or not all(ok(v) for v in values):
    raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
  return values


def _floats(text: str) -> tuple[float, ...]:
  return _comma_list(text, float, lambda v: v > 0, "numbers", "positive numbers")


def _ints(text: str) -> tuple[int, ...]:
  return _comma_list(text, int, lambda v: v >= 2, "ints", "worker counts >= 2")


# -- parser ---------------------------------------------------------------------------------


_JSON_HELP = (
  "also write the results as a JSON record (machine, date, command, results) to PATH; "
  "without --json nothing is written"
)
_REPEATS_HELP = "timed calls after a warm-up call; the min is kept (default: 5)"


# -- compare ----------------------------------------------------------------------------------

_COMPARE_EXAMPLE = """\
examples:
  biased-compression                 # the default comparison (about a minute on 2 cores)
  biased-compression compare --workers 16 --steps 500 --out results/
  biased-compression compare --methods 'gd;ef:top_k(0.05);ef21:top_k(0.05);dcgd:sign()'
  biased-compression compare --libsvm a9a.txt --lrs 0.1,0.3,1
  biased-compression compare --task mlp --methods 'gd;powersgd:2;ef:top_k(0.01)'
"""


def _methods(text: str) -> tuple[tuple[str, str | None], ...]:
  out = []
  for part in (p.strip() for p in text.split(";")):
    if not part:
      continue
    algorithm, sep, spec = part.partition(":")
    algorithm = algorithm.strip()
    if algorithm not in experiments.ALGORITHMS:
      raise argparse.ArgumentTypeError(
        f"unknown algorithm {algorithm!r} in {part!r}; choose from "
        f"{', '.join(experiments.ALGORITHMS)}"
      )
    spec = spec.strip() or None
    if spec is None and algorithm != "gd":
      raise argparse.ArgumentTypeError(f"{part!r}: {algorithm} needs ':COMPRESSOR'")
    if spec is not None:
      try:
        if algorithm == "powersgd":
          experiments.powersgd_rank(spec)
        else:
          _registry.parse_compressor(spec)
      except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    out.append((algorithm, spec))
  if not out:
    raise argparse.ArgumentTypeError("expected ALGORITHM[:COMPRESSOR];... e.g. 'gd;ef:top_k(0.1)'")
  return tuple(out)


_DATA_TASKS = {"logistic": "breast_cancer", "mlp": "digits", "cnn": "digits"}


def _cmd_compare(args: argparse.Namespace, argv: Sequence[str]) -> int:
  del argv
  options: dict[str, Any] = {}
  given = [a for a in ("dataset", "libsvm", "idx") if getattr(args, a) is not None]
  if len(given) > 1:
    args.parser.error(f"give one of --dataset, --libsvm, --idx, not {' and '.join(given)}")
  if args.task in _DATA_TASKS:
    options["heterogeneous"] = not args.iid
    if args.libsvm is not None:
      options["dataset"] = f"libsvm:{args.libsvm}"
    elif args.idx is not None:
      options["dataset"] = f"idx:{args.idx[0]},{args.idx[1]}"
    else:
      options["dataset"] = args.dataset or _DATA_TASKS[args.task]
  elif given or args.iid:
    args.parser.error(
      f"--dataset, --libsvm, --idx and --iid apply to --task {', '.join(_DATA_TASKS)}, "
      f"not {args.task}"
    )
  try:
    task = experiments.make_task(args.task, args.workers, **options)
  except (OSError, ValueError, ImportError) as e:
    args.parser.error(str(e))
  if args.methods is None:
    methods = experiments.default_methods(args.ratio)
  else:
    methods = [
      experiments.RunConfig(algorithm=a, compressor=c, label=None) for a, c in args.methods
    ]
  methods = [
    m.replace(
      task=args.task,
      task_options=options,
      num_workers=args.workers,
      steps=args.steps,
      seed=args.seed,
      batch_size=args.batch_size,
    )
    for m in methods
  ]
  if args.batch_size is not None and not task.batchable:
    args.parser.error(f"--batch-size: task {args.task} has no samples to draw")
  result = experiments.compare(methods, task=task, lrs=args.lrs)
  print(result.table())
  paths = result.write(args.out, plot=not args.no_plot)
  print(f"wrote {', '.join(str(p) for p in paths.values())}")
  return 0


# -- stragglers -------------------------------------------------------------------------------

_STRAGGLERS_EXAMPLE = """\
examples:
  biased-compression stragglers                      # linear regression, 100 workers
  biased-compression stragglers --task mlp --steps 200
  biased-compression stragglers --workers 10 --ps 0.3 --ds 2 --steps 50 --out quick/
  biased-compression stragglers --compressors 'top_k(0.01);grouped_sign(16)'
"""


def _probabilities(text: str) -> tuple[float, ...]:
  return _comma_list(text, float, lambda v: 0 <= v < 1, "numbers", "probabilities in [0, 1)")


def _replications(text: str) -> tuple[int, ...]:
  return _comma_list(text, int, lambda v: v >= 1, "ints", "replications >= 1")


def _compressor_specs(text: str) -> tuple[str, ...]:
  specs = tuple(p.strip() for p in text.split(";") if p.strip())
  if not specs:
    raise argparse.ArgumentTypeError("expected compressor specs separated by ';'")
  for spec in specs:
    try:
      _registry.parse_compressor(spec)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
  return specs


def _straggler_methods(text: str) -> tuple[str, ...]:
  names = tuple(p.strip() for p in text.split(",") if p.strip())
  known = tuple(experiments.STRAGGLER_METHODS)
  bad = [n for n in names if n not in known]
  if not names or bad:
    raise argparse.ArgumentTypeError(f"methods must be among {', '.join(known)}, got {text!r}")
  return names


def _cmd_stragglers(args: argparse.Namespace, argv: Sequence[str]) -> int:
  del argv
  if max(args.ds) > args.workers:
    args.parser.error(f"--ds: every d must be <= --workers {args.workers}, got {max(args.ds)}")
  options: dict[str, Any] = {}
  if args.task == "linear_regression":
    options = {"dim": args.dim, "heterogeneity": args.heterogeneity}
  elif args.dataset is not None:
    options = {"dataset": args.dataset}
  try:
    study = experiments.straggler_study(
      task=args.task,
      task_options=options,
      num_workers=args.workers,
      ps=args.ps,
      ds=args.ds,
      compressors=args.compressors,
      methods=args.methods,
      steps=args.steps,
      lrs=args.lrs,
      batch_size=args.batch_size,
      seed=args.seed,
    )
  except (OSError, ValueError, ImportError) as e:
    args.parser.error(str(e))
  print(study.table())
  print("lowest loss at equal bits:")
  for w in study.winners():
    print(f"  p = {w['p']:g}, d = {w['d']}, {w['compressor']}: {w['best']}")
  paths = study.write(args.out, plot=not args.no_plot)
  print(f"wrote {', '.join(str(p) for p in paths.values())}")
  return 0


# -- reproduce --------------------------------------------------------------------------------


def _option_type(option: studies.Option) -> Callable[[str], Any]:
  """The argparse type of a claim's option: comma lists for tuples of numbers, ';' lists for
  tuples of strings (compressor specs hold commas), true/false for booleans."""
  kind = option.element_type()
  value = option.default if option.default is not None else option.full

  def scalar(text: str) -> Any:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
      return text.lower() in ("true", "1", "yes")
    try:
      return kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

  if isinstance(value, tuple):
    sep = ";" if kind is str else ","

    def many(text: str) -> tuple:
      values = tuple(scalar(v.strip()) for v in text.split(sep) if v.strip())
      if not values:
        raise argparse.ArgumentTypeError(f"expected values separated by {sep!r}, got {text!r}")
      return values

    return many
  return scalar


def _show(value: Any) -> str:
  if isinstance(value, tuple):
    sep = ";" if value and isinstance(value[0], str) else ","
    return sep.join(str(v) for v in value)
  return str(value)


def _add_reproduce_parser(commands) -> None:
  rep = commands.add_parser(
    "reproduce",
    help="rerun a claim of the seed papers (or all, with a report)",
    description="Reruns a claim of the seed papers at a small size (--full: the papers' "
    "size) and writes its table, figures and result.json to OUT/NAME; 'all' runs every "
    "claim and writes OUT/REPORT.md (each claim's statement, what was measured, a verdict).",
  )
  names = rep.add_subparsers(dest="claim", metavar="NAME", required=True)

  def common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
      "--out", default="reproduce-results", help="output folder (default: reproduce-results)"
    )
    p.add_argument("--full", action="store_true", help="the full size instead of the small one")
    p.add_argument("--no-plot", action="store_true", help="write no figures")

  for claim in studies.CLAIMS.values():
    p = names.add_parser(
      claim.name,
      help=f"claim {claim.number}: {claim.title}",
      description=f"Claim {claim.number}, {claim.title} ({claim.paper}). The paper: "
      f"{claim.statement}",
    )
    common(p)
    for key, option in claim.options.items():
      full = "" if option.full is None else f"; with --full: {_show(option.full)}"
      p.add_argument(
        "--" + key.replace("_", "-"),
        dest=key,
        type=_option_type(option),
        default=None,
        help=f"{option.help} (small: {_show(option.default)}{full})".replace("%", "%%"),
      )
    p.set_defaults(func=_cmd_reproduce, parser=p)
  p = names.add_parser(
    "all",
    help="every claim, and OUT/REPORT.md",
    description="Runs every claim's study (each at its small size, or --full) and writes "
    "OUT/REPORT.md: per claim the paper's statement, the measured table and figures, and a "
    "verdict (reproduced, partly, not reproduced).",
  )
  common(p)
  p.add_argument(
    "--only",
    type=lambda text: tuple(v.strip() for v in text.split(",") if v.strip()),
    default=None,
    help=f"the claims to run, comma-separated (default: all of {', '.join(studies.CLAIMS)})",
  )
  p.set_defaults(func=_cmd_reproduce, parser=p)


def _cmd_reproduce(args: argparse.Namespace, argv: Sequence[str]) -> int:
  del argv
  plot = not args.no_plot
  try:
    if args.claim == "all":
      findings, path = studies.reproduce_all(args.out, names=args.only, full=args.full, plot=plot)
      for f in findings:
        print(f"{f.claim}: {f.verdict} ({f.seconds:.0f} s)")
      print(f"wrote {path}")
      return 0
    claim = studies.CLAIMS[args.claim]
    options = {k: getattr(args, k) for k in claim.options if getattr(args, k) is not None}
    finding = studies.reproduce(args.claim, args.out, full=args.full, plot=plot, **options)
  except (OSError, ValueError, ImportError) as e:
    args.parser.error(str(e))
  print(f"claim {claim.number}, {claim.title}: {finding.verdict} ({finding.seconds:.0f} s)")
  print(finding.measured)
  print(finding.table())
  print(f"wrote {pathlib.Path(args.out) / args.claim}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  """The argument parser of ``biased-compression``."""
  # Option help strings are %-formatted by argparse (a literal percent sign is written %%);
  # descriptions are not (a literal one is written %). tests/cli_test.py checks every --help.
  parser = argparse.ArgumentParser(
    prog="biased-compression",
    description="Compare, tabulate and benchmark the compressors and methods of "
    "biased_compression. Without a command: compare with its defaults. Sizes are element "
    "counts, written 2^N, 2**N or plainly (1048576, 1e6).",
  )
  commands = parser.add_subparsers(dest="command", metavar="COMMAND")

  cmp = commands.add_parser(
    "compare",
    help="train a task with every method and compare loss against bits (default)",
    description="Trains a task (default: logistic regression on scikit-learn's breast "
    "cancer set, 8 workers with a sorted-label split) with uncompressed GD and the "
    "library's methods, each at its best step size from --lrs (by final training loss); "
    "prints a table (final loss, bits per step, bits to a target loss, saving against GD) "
    "and writes results.json, curves.csv, table.txt and loss.png / loss.pdf to --out.",
    epilog=_COMPARE_EXAMPLE,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  cmp.add_argument(
    "--task",
    choices=tuple(experiments.TASKS),
    default="logistic",
    help="the task: logistic regression, an MLP or a small CNN (Flax) on a data set, or a "
    "synthetic quadratic / linear regression with a known optimum (default: logistic)",
  )
  cmp.add_argument(
    "--dataset",
    default=None,
    help="a bundled set (breast_cancer, digits_binary, ... for logistic; digits, mnist1d, "
    "... for mlp / cnn); by default breast_cancer for logistic, digits for mlp and cnn",
  )
  cmp.add_argument("--libsvm", default=None, metavar="PATH", help="a LIBSVM file instead")
  cmp.add_argument(
    "--idx",
    nargs=2,
    default=None,
    metavar=("IMAGES", "LABELS"),
    help="MNIST-style IDX files instead (for mlp / cnn)",
  )
  cmp.add_argument("--iid", action="store_true", help="an i.i.d. split (not sorted labels)")
  cmp.add_argument("--workers", type=_positive_int, default=8, help="n (default: 8)")
  cmp.add_argument("--steps", type=_positive_int, default=300, help="steps (default: 300)")
  cmp.add_argument(
    "--lrs",
    type=_positive_floats,
    default=experiments.DEFAULT_LRS,
    metavar="LR,LR,...",
    help="the step sizes tried for every method (default: "
    f"{','.join(f'{x:g}' for x in experiments.DEFAULT_LRS)})",
  )
  cmp.add_argument(
    "--methods",
    type=_methods,
    default=None,
    metavar="ALG[:C];...",
    help="methods as ALGORITHM[:COMPRESSOR] separated by ';' (algorithms: gd, dcgd, ef, "
    "ef21, ef21_sgdm, econtrol, diana, powersgd (its rank as the compressor: powersgd:2); "
    "compressors as bc.parse_compressor reads them); "
    "default: GD, every compressor family without and with error feedback, EF21, the "
    "induced compressor with and without DIANA, DSignSGD",
  )
  cmp.add_argument(
    "--ratio",
    type=_ratio,
    default=0.1,
    help="fraction kept by the default methods' sparsifiers (default: 0.1)",
  )
  cmp.add_argument(
    "--batch-size", type=_positive_int, default=None, help="samples per worker per step"
  )
  cmp.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  cmp.add_argument(
    "--out",
    default="compare-results",
    metavar="DIR",
    help="output folder (default: compare-results)",
  )
  cmp.add_argument("--no-plot", action="store_true", help="no plot (no matplotlib needed)")
  cmp.set_defaults(func=_cmd_compare, parser=cmp)

  st = commands.add_parser(
    "stragglers",
    help="gradient coding with stragglers: COCO-EF against its baselines at equal bits",
    description="Trains a task with n workers whose shards are the parts of a gradient code, "
    "for every straggler probability (--ps), replication (--ds) and biased compressor "
    "(--compressors): COCO-EF, COCO-EF without error feedback, coded unbiased rand-k and "
    "DIANA at no more bits, uncoded error feedback and exact uncompressed gradient coding, "
    "each at its best step size from --lrs. Prints the table at equal bits and writes "
    "results.json, table.txt and the figures (loss against bits and steps) to --out.",
    epilog=_STRAGGLERS_EXAMPLE,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  st.add_argument(
    "--task",
    choices=("linear_regression", "mlp", "logistic"),
    default="linear_regression",
    help="synthetic linear regression (f* known), an MLP on digits, or logistic regression "
    "(default: linear_regression)",
  )
  st.add_argument("--dataset", default=None, help="the data set of mlp / logistic")
  st.add_argument(
    "--dim", type=_positive_int, default=100, help="linear regression: d (default: 100)"
  )
  st.add_argument(
    "--heterogeneity",
    type=float,
    default=1.0,
    help="linear regression: spread of the parts' own models (default: 1.0)",
  )
  st.add_argument("--workers", type=_positive_int, default=100, help="n (default: 100)")
  st.add_argument(
    "--ps",
    type=_probabilities,
    default=(0.1, 0.3, 0.5),
    help="straggling probabilities (default: 0.1,0.3,0.5)",
  )
  st.add_argument(
    "--ds", type=_replications, default=(1, 2, 3), help="replications d (default: 1,2,3)"
  )
  st.add_argument(
    "--compressors",
    type=_compressor_specs,
    default=("top_k:0.05", "grouped_sign:32"),
    help="biased compressors, ';'-separated (default: top_k:0.05;grouped_sign:32)",
  )
  st.add_argument(
    "--methods",
    type=_straggler_methods,
    default=tuple(experiments.STRAGGLER_METHODS),
    help="a comma-separated subset of the methods (default: "
    + ",".join(experiments.STRAGGLER_METHODS)
    + ")",
  )
  st.add_argument("--steps", type=_positive_int, default=300, help="steps (default: 300)")
  st.add_argument(
    "--lrs",
    type=_positive_floats,
    default=experiments.STRAGGLER_LRS,
    help="step sizes tried for every method (default: 0.03,0.1,0.3,1)",
  )
  st.add_argument(
    "--batch-size",
    type=_positive_int,
    default=None,
    help="samples per part per step (stochastic gradients; default: full gradients)",
  )
  st.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  st.add_argument(
    "--out", default="stragglers-results", help="output folder (default: stragglers-results)"
  )
  st.add_argument("--no-plot", action="store_true", help="no figures")
  st.set_defaults(func=_cmd_stragglers, parser=st)

  _add_reproduce_parser(commands)

  comp = commands.add_parser(
    "compressors",
    help="constants, wire size and relative error of every standard compressor",
    description="For every compressor of standard_compressors(): omega, delta, bits per "
    "coordinate and the relative error ||C(x) - x||^2 / ||x||^2 on three test vectors.",
  )
  _add_compressors_args(comp)

  bench = commands.add_parser(
    "bench",
    help="timing benchmarks",
    description="Timing benchmarks. Each prints tables to stdout and writes a JSON record "
    "only with --json PATH.",
  )
  bench_commands = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
  bc = bench_commands.add_parser(
    "compressors",
    help="encode / decode time of every compressor against a memory-bound reference",
    description="Times jitted encode and decode of every compressor on float32 Gaussian "
    "vectors of each size in --sizes, next to the reference jax.jit(lambda x: x * 1.0001) "
    "on the same array; reports the min over the repeats in ms and the ratios to the "
    "reference.",
  )
  bc.add_argument(
    "--sizes",
    type=_sizes,
    default=_DEFAULT_SIZES,
    metavar="D,D,...",
    help=f"vector sizes, each {_SIZES_SYNTAX} (default: {_format_sizes(_DEFAULT_SIZES)})",
  )
  bc.add_argument("--repeats", type=_positive_int, default=5, help=_REPEATS_HELP)
  bc.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  bc.add_argument(
    "--only", type=_names, default=None, metavar="NAME,...", help="only these compressors"
  )
  bc.add_argument("--json", default=None, metavar="PATH", help=_JSON_HELP)
  bc.set_defaults(func=_cmd_bench_compressors, parser=bc)

  bt = bench_commands.add_parser(
    "topk",
    help="Top-k selection: lax.top_k, radix, approx_max_k (and torch.topk if installed)",
    description="Times jitted Top-k selection of the k largest |x_i| of float32 Gaussian "
    "vectors of each size in --sizes with each method of abs_top_k (exact_sort = "
    "jax.lax.top_k, radix, approx = jax.lax.approx_max_k), and torch.topk when PyTorch is "
    "importable, next to the references x * 1.0001 and sum(x); reports the min over the "
    "repeats in ms, the ratios, the speed-up over lax.top_k and the recall of lax.top_k's set.",
  )
  bt.add_argument(
    "--sizes",
    type=_sizes,
    default=(1 << 24,),
    metavar="D,D,...",
    help=f"vector sizes, each {_SIZES_SYNTAX} (default: 2^24)",
  )
  bt.add_argument(
    "--ratios",
    type=_ratios,
    default=(0.01, 0.1),
    metavar="R,R,...",
    help="fractions of the entries kept (default: 0.01,0.1)",
  )
  bt.add_argument(
    "--methods",
    type=_topk_methods,
    default=_timing.TOPK_METHODS,
    metavar="M,M,...",
    help=f"methods to time; exact_sort is always timed (default: {','.join(_timing.TOPK_METHODS)})",
  )
  bt.add_argument("--repeats", type=_positive_int, default=5, help=_REPEATS_HELP)
  bt.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  bt.add_argument("--json", default=None, metavar="PATH", help=_JSON_HELP)
  bt.set_defaults(func=_cmd_bench_topk, parser=bt)

  br = bench_commands.add_parser(
    "runner",
    help="steps per second of the experiments runner against a per-worker Python loop",
    description="Logistic regression (synthetic, --dim features, 10 samples per worker) "
    "with EF-Top-k(10%) on n simulated workers: ms per step of the experiments runner "
    "(logging and progress on), of the bare jitted scan, and of a Python loop over the "
    "workers (PyTorch when importable, else NumPy), and the ratios.",
  )
  br.add_argument(
    "--workers",
    type=_workers_list,
    default=(10, 100, 1000),
    metavar="N,N,...",
    help="worker counts (default: 10,100,1000)",
  )
  br.add_argument("--dim", type=_positive_int, default=100, help="features d (default: 100)")
  br.add_argument("--steps", type=_positive_int, default=200, help="steps timed (default: 200)")
  br.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  br.add_argument("--json", default=None, metavar="PATH", help=_JSON_HELP)
  br.set_defaults(func=_cmd_bench_runner, parser=br)

  bp = bench_commands.add_parser(
    "powersgd",
    help="PowerSGD's compute per step against a dense all-reduce, and the bits",
    description="For one matrix of each --sizes and each --ranks: one worker's PowerSGD "
    "step without its communication (the factors, two Gram-Schmidt orthogonalisations, "
    "the error), one memory pass over the matrix, the dense float32 all-reduce over the "
    "local devices (with 2 or more), the bits against dense, and the modelled ring "
    "all-reduce time of both on n workers at --gbits.",
  )
  bp.add_argument(
    "--sizes",
    type=_sizes,
    default=(1 << 20, 1 << 22, 1 << 24),
    metavar="D,D,...",
    help=f"parameters per matrix, each {_SIZES_SYNTAX} (default: 2^20,2^22,2^24)",
  )
  bp.add_argument(
    "--ranks",
    type=_workers_list,
    default=(1, 2, 4),
    metavar="R,R,...",
    help="ranks (default: 1,2,4)",
  )
  bp.add_argument("--workers", type=_positive_int, default=8, help="modelled n (default: 8)")
  bp.add_argument("--gbits", type=float, default=10.0, help="modelled link, Gbit/s (default: 10)")
  bp.add_argument(
    "--latency-us", type=float, default=10.0, help="modelled latency per message, us (default: 10)"
  )
  bp.add_argument("--repeats", type=_positive_int, default=5, help=_REPEATS_HELP)
  bp.add_argument("--json", default=None, metavar="PATH", help=_JSON_HELP)
  bp.set_defaults(func=_cmd_bench_powersgd, parser=bp)

  bo = bench_commands.add_parser(
    "coco",
    help="one COCO-EF step of n simulated workers against a per-worker Python loop",
    description="Linear regression (synthetic, --dim features, 50 samples per worker, the n "
    "shards as the parts) with COCO-EF (the code sgc_cyclic(n, d), i.i.d. stragglers with "
    "probability p, error feedback): ms per step of the library (a jitted scan of --steps "
    "steps of part gradients, encode_all, the simulated workers' update and the SGD step; "
    "compilation excluded), of the same with the straggler mask passed in, and of a Python "
    "loop over the workers (PyTorch autograd when importable, one thread; NumPy with "
    "hand-written gradients), and the speed-ups. The loops implement Top-k only.",
  )
  bo.add_argument(
    "--workers",
    type=_workers_list,
    default=(100, 1000),
    metavar="N,N,...",
    help="worker counts n, each also the number of parts (default: 100,1000)",
  )
  bo.add_argument("--dim", type=_positive_int, default=100, help="features D (default: 100)")
  bo.add_argument(
    "--p",
    type=_straggling_probability,
    default=0.3,
    help="straggling probability, i.i.d. per worker and step (default: 0.3)",
  )
  bo.add_argument(
    "--d", type=_positive_int, default=2, help="replication of sgc_cyclic(n, d) (default: 2)"
  )
  bo.add_argument(
    "--compressor",
    default="top_k:0.05",
    metavar="SPEC",
    help="the compressor, as bc.parse_compressor reads it; the loops run for an exact Top-k "
    "only, another compressor is timed in the library alone (default: top_k:0.05)",
  )
  bo.add_argument(
    "--steps",
    type=_positive_int,
    default=200,
    help="steps of the library's scan; the loops run min(steps, 50000 / n) steps per repeat "
    "(default: 200)",
  )
  bo.add_argument(
    "--repeats",
    type=_positive_int,
    default=3,
    help="timed runs after a warm-up; the min is kept (default: 3)",
  )
  bo.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  bo.add_argument("--json", default=None, metavar="PATH", help=_JSON_HELP)
  bo.set_defaults(func=_cmd_bench_coco, parser=bo)

  bl = bench_commands.add_parser(
    "collectives",
    help="bytes per device and time of the compressed all-reduce; modelled network speed-up",
    description="Bytes each device sends per step for the dense float32 all-reduce, "
    "all_gather and two_stage (scaled sign, Top-k 1%, natural dithering), read from the "
    "compiled programs on up to --devices local CPU devices and from the analytic model "
    "beyond; the time of one compressed mean against the dense pmean on the local devices; "
    "and an alpha-beta model of the step time of a --model-params model on a slow network, "
    "whose compression time is the cost per value measured at --dim (at most 2^22) "
    "extrapolated linearly.",
  )
  bl.add_argument(
    "--dim",
    type=_size_type(_MAX_SIZE),
    default=1 << 20,
    metavar="D",
    help=f"vector size of the measured parts, {_SIZE_SYNTAX}; the modelled step's "
    "compression cost is timed at min(D, 2^22) values and extrapolated linearly to "
    "--model-params, which overstates it below 2^20, where fixed per-call overhead "
    "dominates (default: 2^20)",
  )
  bl.add_argument(
    "--workers",
    type=_ints,
    default=(2, 4, 8, 16, 64, 256),
    metavar="N,N,...",
    help="worker counts (measured up to the device count; default: 2,4,8,16,64,256)",
  )
  bl.add_argument(
    "--devices", type=_positive_int, default=8, help="local CPU devices to use (default: 8)"
  )
  bl.add_argument(
    "--model-params",
    type=_size_type(None),
    default=100_000_000,
    metavar="P",
    help=f"parameters of the modelled model, {_SIZE_SYNTAX}; its compression time is the "
    "per-value cost measured at --dim times P, a linear extrapolation (default: 1e8)",
  )
  bl.add_argument(
    "--model-workers", type=_positive_int, default=16, help="modelled workers (default: 16)"
  )
  bl.add_argument(
    "--gbits",
    type=_floats,
    default=(10.0, 100.0),
    metavar="G,G,...",
    help="modelled link bandwidths in Gbit/s (default: 10,100)",
  )
  bl.add_argument(
    "--compute-ms",
    type=float,
    default=100.0,
    help="assumed forward + backward time of the modelled step (default: 100)",
  )
  bl.add_argument(
    "--alpha-us", type=float, default=20.0, help="latency per message, us (default: 20)"
  )
  bl.add_argument("--repeats", type=_positive_int, default=5, help=_REPEATS_HELP)
  bl.add_argument("--json", default=None, metavar="PATH", help=_JSON_HELP)
  bl.set_defaults(func=_cmd_bench_collectives, parser=bl)
  return parser


def _add_compressors_args(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--dim",
    type=_size_type(_MAX_SIZE),
    default=None,
    metavar="D",
    help=f"size of the Gaussian and heavy-tailed vectors, {_SIZE_SYNTAX} (default: the MLP "
    "gradient's, 9610)",
  )
  p.add_argument(
    "--draws", type=_positive_int, default=4, help="keys per random operator (default: 4)"
  )
  p.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  p.set_defaults(func=_cmd_compressors, parser=p)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status.

  Args:
    argv: the arguments without the program name; defaults to ``sys.argv[1:]``.

  Returns:
    0 on success. Usage errors raise ``SystemExit(2)`` (argparse's convention).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args = parser.parse_args(argv)
  if getattr(args, "bench_command", None) == "collectives":
    # CPU devices must be configured before the backend starts (nothing has started it yet).
    try:
      jax.config.update("jax_num_cpu_devices", args.devices)
    except RuntimeError:
      pass  # already started: _cmd_bench_collectives reports the device count
  if args.command is None:
    # No subcommand: the main job, `compare` with its defaults.
    args = parser.parse_args(["compare"])
  func: Callable[[argparse.Namespace, Sequence[str]], int] = args.func
  return func(args, argv)


if __name__ == "__main__":
  sys.exit(main())
