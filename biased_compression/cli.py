"""The ``biased-compression`` command line.

Subcommands:

* ``compressors [--dim D] [--draws N] [--seed S]`` (the default): tabulates every compressor
  of `standard_compressors` with its constants, its wire size and its measured relative
  error ``||C(x) - x||^2 / ||x||^2`` on three test vectors (see `_vectors.test_vectors`).
* ``bench compressors [--sizes 16,18,...] [--repeats R] [--only NAME,...] [--json PATH]``:
  times encode and decode of every compressor against a memory-bound reference.
* ``bench topk [--sizes 24] [--ratios 0.01,0.1] [--repeats R] [--methods ...] [--json PATH]``:
  times the Top-k selection methods (and ``torch.topk`` when PyTorch is importable).

Tables go to stdout, progress bars to stderr (only on a terminal). Usage errors exit with
status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from biased_compression import _bench
from biased_compression import _registry
from biased_compression import _sparsification
from biased_compression import _vectors

__all__ = ["main", "build_parser", "relative_errors"]

_DEFAULT_SIZES = (16, 18, 20, 22, 24)
_MAX_LOG2_SIZE = 30


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


def _log2_sizes(text: str) -> tuple[int, ...]:
  """Parses ``16,18,20``: base-2 logarithms of vector sizes, each in 0 .. 30."""
  parts = [p.strip() for p in text.split(",")]
  try:
    sizes = tuple(int(p) for p in parts)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"expected comma-separated integers (log2 of the sizes, e.g. 16,18,20), got {text!r}"
    ) from None
  bad = [s for s in sizes if not 0 <= s <= _MAX_LOG2_SIZE]
  if bad:
    raise argparse.ArgumentTypeError(
      f"sizes are log2 of the vector size and must be in 0 .. {_MAX_LOG2_SIZE}, got {bad}"
    )
  return sizes


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


def _topk_methods(text: str) -> tuple[str, ...]:
  methods = tuple(p.strip() for p in text.split(",") if p.strip())
  bad = [m for m in methods if m not in _bench.TOPK_METHODS]
  if not methods or bad:
    raise argparse.ArgumentTypeError(
      f"expected methods among {', '.join(_bench.TOPK_METHODS)}, got {text!r}"
    )
  return methods


def _names(text: str) -> tuple[str, ...]:
  names = tuple(p.strip() for p in text.split(",") if p.strip())
  if not names:
    raise argparse.ArgumentTypeError("expected comma-separated compressor names")
  return names


# -- compressors ----------------------------------------------------------------------------


def relative_errors(
  compressor: Any, vectors: dict[str, jax.Array], draws: int, seed: int = 0
) -> dict[str, float]:
  """Mean relative error ``||C(x) - x||^2 / ||x||^2`` of a compressor on each vector.

  The compress call is jitted (once per vector size). Random operators average over
  ``draws`` keys folded from ``jax.random.key(seed)``; deterministic ones are evaluated
  once. The error itself is computed in float64 on the host.

  Args:
    compressor: a `Compressor`.
    vectors: name -> 1-D float32 array.
    draws: number of keys for random operators, >= 1.
    seed: seed of the keys.

  Returns:
    name -> mean relative error (``nan`` for an all-zero vector).
  """
  random = compressor.needs_key
  compress = jax.jit(lambda x, key: compressor.compress(x, key=key if random else None))
  base = jax.random.key(seed)
  keys = [jax.random.fold_in(base, i) for i in range(draws if random else 1)]
  out = {}
  for name, x in vectors.items():
    x64 = np.asarray(x, np.float64)
    norm2 = float(np.dot(x64, x64))
    errs = []
    for key in keys:
      y = np.asarray(compress(x, key), np.float64)
      errs.append(float(np.sum((y - x64) ** 2)) / norm2 if norm2 > 0 else math.nan)
    out[name] = float(np.mean(errs))
  return out


def _cmd_compressors(args: argparse.Namespace, argv: Sequence[str]) -> int:
  del argv
  vectors = _vectors.test_vectors(args.dim, seed=args.seed)
  d = next(iter(vectors.values())).shape[0]
  sizes = ", ".join(f"{k} ({v.shape[0]})" for k, v in vectors.items())
  compressors = _registry.standard_compressors()
  rows = []
  for name, c in tqdm(compressors.items(), disable=None, file=sys.stderr, desc="compressors"):
    errors = relative_errors(c, vectors, args.draws, seed=args.seed)
    rows.append(
      [
        name,
        c.name,
        "yes" if c.unbiased else "no",
        _bench.format_sig(c.omega(d)),
        _bench.format_sig(c.delta(d)),
        f"{c.bits(d) / d:.2f}",
        *(_bench.format_sig(errors[k], 4) for k in vectors),
      ]
    )
  headers = ["name", "operator", "unbiased", "omega", "delta", "bits/coord", *vectors]
  print(
    f"d = {d}; omega, delta and bits/coord at d; relative error ||C(x) - x||^2 / ||x||^2 "
    f"on {sizes}, mean over {args.draws} key(s) for random operators (seed {args.seed})"
  )
  print(_bench.format_table(headers, rows, align="<<<"))
  return 0


# -- bench ----------------------------------------------------------------------------------


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
    tqdm.write(_bench.compressor_bench_tables(rows) + "\n", file=sys.stdout)

  results = _bench.bench_compressors(
    compressors, args.sizes, repeats=args.repeats, seed=args.seed, on_size_done=print_size
  )
  if args.json is not None:
    _bench.write_record(args.json, results, argv)
    print(f"wrote {args.json}")
  return 0


def _cmd_bench_topk(args: argparse.Namespace, argv: Sequence[str]) -> int:
  def print_size(d: int, rows: list[dict[str, Any]]) -> None:
    tqdm.write(_bench.topk_bench_tables(rows) + "\n", file=sys.stdout)

  results = _bench.bench_topk(
    args.sizes,
    args.ratios,
    repeats=args.repeats,
    seed=args.seed,
    methods=args.methods,
    on_size_done=print_size,
  )
  if args.json is not None:
    _bench.write_record(args.json, results, argv)
    print(f"wrote {args.json}")
  return 0


def _cmd_bench_collectives(args: argparse.Namespace, argv: Sequence[str]) -> int:
  if jax.default_backend() == "cpu" and jax.device_count() < args.devices:
    args.parser.error(
      f"only {jax.device_count()} CPU devices: the JAX backend started before --devices "
      f"{args.devices} could be applied"
    )
  from biased_compression import _bench_collectives

  with tqdm(total=3, desc="bench collectives", file=sys.stderr) as bar:
    rows = _bench_collectives.traffic(args.dim, args.workers)
    bar.update()
    rows += _bench_collectives.step_times(
      args.dim, min(jax.device_count(), max(args.workers)), args.repeats
    )
    bar.update()
    cost = _bench_collectives.sign_cost_ms_per_million(
      min(args.dim, 1 << 22), args.repeats, args.model_workers
    )
    rows += _bench_collectives.network_model(
      args.model_params, args.model_workers, args.gbits, args.compute_ms, args.alpha_us, cost
    )
    bar.update()
  print(_bench_collectives.tables(rows))
  if args.json is not None:
    _bench.write_record(args.json, rows, argv)
    print(f"wrote {args.json}")
  return 0


def _floats(text: str) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
  if not values or any(not v > 0 for v in values):
    raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
  return values


def _ints(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
  if not values or any(v < 2 for v in values):
    raise argparse.ArgumentTypeError(f"expected worker counts >= 2, got {text!r}")
  return values


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  """The argument parser of ``biased-compression``."""
  parser = argparse.ArgumentParser(
    prog="biased-compression",
    description="Tabulate and benchmark the compressors of biased_compression.",
  )
  commands = parser.add_subparsers(dest="command", metavar="COMMAND")

  comp = commands.add_parser(
    "compressors",
    help="constants, wire size and relative error of every standard compressor (default)",
    description="For every compressor of standard_compressors(): omega, delta, bits per "
    "coordinate and the relative error ||C(x) - x||^2 / ||x||^2 on three test vectors.",
  )
  _add_compressors_args(comp)

  bench = commands.add_parser("bench", help="timing benchmarks")
  bench_commands = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
  bc = bench_commands.add_parser(
    "compressors",
    help="encode / decode time of every compressor against a memory-bound reference",
    description="Times jitted encode and decode of every compressor on float32 Gaussian "
    "vectors of size 2^s, next to the reference jax.jit(lambda x: x * 1.0001) on the same "
    "array; reports the min over the repeats in ms and the ratios to the reference.",
  )
  bc.add_argument(
    "--sizes",
    type=_log2_sizes,
    default=_DEFAULT_SIZES,
    metavar="S,S,...",
    help="log2 of the vector sizes (default: %(default)s)",
  )
  bc.add_argument(
    "--repeats", type=_positive_int, default=5, help="timed calls, min is kept (default: 5)"
  )
  bc.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  bc.add_argument(
    "--only", type=_names, default=None, metavar="NAME,...", help="only these compressors"
  )
  bc.add_argument("--json", default=None, metavar="PATH", help="write a JSON record to PATH")
  bc.set_defaults(func=_cmd_bench_compressors, parser=bc)

  bt = bench_commands.add_parser(
    "topk",
    help="Top-k selection: lax.top_k, radix, approx_max_k (and torch.topk if installed)",
    description="Times jitted Top-k selection of the k largest |x_i| of float32 Gaussian "
    "vectors of size 2^s with each method of abs_top_k (exact_sort = jax.lax.top_k, radix, "
    "approx = jax.lax.approx_max_k), and torch.topk when PyTorch is importable, next to the "
    "references x * 1.0001 and sum(x); reports the min over the repeats in ms, the ratios, "
    "the speed-up over lax.top_k and the recall of lax.top_k's set.",
  )
  bt.add_argument(
    "--sizes",
    type=_log2_sizes,
    default=(24,),
    metavar="S,S,...",
    help="log2 of the vector sizes (default: 24)",
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
    default=_bench.TOPK_METHODS,
    metavar="M,M,...",
    help="methods to time; exact_sort is always timed (default: all)",
  )
  bt.add_argument(
    "--repeats", type=_positive_int, default=5, help="timed calls, min is kept (default: 5)"
  )
  bt.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
  bt.add_argument("--json", default=None, metavar="PATH", help="write a JSON record to PATH")
  bt.set_defaults(func=_cmd_bench_topk, parser=bt)

  bl = bench_commands.add_parser(
    "collectives",
    help="bytes per device and time of the compressed all-reduce; modelled network speed-up",
    description="Bytes each device sends per step for the dense float32 all-reduce, "
    "all_gather and two_stage (scaled sign, Top-k 1%%, natural dithering), read from the "
    "compiled programs on up to --devices local CPU devices and from the analytic model "
    "beyond; the time of one compressed mean against the dense pmean on the local devices; "
    "and an alpha-beta model of a large model's step time on a slow network.",
  )
  bl.add_argument("--dim", type=_positive_int, default=1 << 20, help="model size (default: 2^20)")
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
    type=_positive_int,
    default=100_000_000,
    help="parameters of the modelled model (default: 1e8)",
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
  bl.add_argument(
    "--repeats", type=_positive_int, default=5, help="timed calls, min is kept (default: 5)"
  )
  bl.add_argument("--json", default=None, metavar="PATH", help="write a JSON record to PATH")
  bl.set_defaults(func=_cmd_bench_collectives, parser=bl)
  return parser


def _add_compressors_args(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--dim",
    type=_positive_int,
    default=None,
    help="size of the Gaussian and heavy-tailed vectors (default: the MLP gradient's, 9610)",
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
    # No subcommand: `compressors` with its defaults.
    args = parser.parse_args(["compressors"])
  func: Callable[[argparse.Namespace, Sequence[str]], int] = args.func
  return func(args, argv)


if __name__ == "__main__":
  sys.exit(main())
