"""Tests of the ``biased-compression`` command line, its benchmark record and test vectors."""

import argparse
import contextlib
import io
import json
import math
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from biased_compression import cli
from biased_compression import studies
from biased_compression.bench import _collectives as _bench_collectives
from biased_compression.bench import _timing
from biased_compression.compressors import _registry
from biased_compression.metrics import _vectors

_VECTOR_NAMES = ("gaussian", "heavy_tailed", "mlp_gradient")


def _rows(output: str) -> dict[str, list[str]]:
  """Table rows keyed by their first cell (the registry name)."""
  names = set(_registry.standard_compressors())
  rows = {}
  for line in output.splitlines():
    cells = line.split()
    if cells and cells[0] in names:
      rows[cells[0]] = cells
  return rows


@pytest.fixture(scope="module")
def compressors_output() -> str:
  """Stdout of ``compressors --dim 512 --draws 2`` (run once: it compiles every operator)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(["compressors", "--dim", "512", "--draws", "2"]) == 0
  return out.getvalue()


@pytest.mark.slow  # the fixture compiles and runs every registry entry: about 25 s
def test_compressors_prints_every_registry_entry(compressors_output):
  assert compressors_output.startswith("d = 512;")
  header = next(line for line in compressors_output.splitlines() if line.startswith("name"))
  assert header.split()[-3:] == list(_VECTOR_NAMES)
  rows = _rows(compressors_output)
  assert set(rows) == set(_registry.standard_compressors())
  for name, cells in rows.items():
    errors = [float(v) for v in cells[-3:]]
    assert all(math.isfinite(e) and e >= 0 for e in errors), (name, errors)
    assert cells[-7] in ("yes", "no"), cells  # unbiased, before omega, delta, bits/coord
  assert [float(v) for v in rows["identity"][-3:]] == [0.0, 0.0, 0.0]
  assert rows["sign"][-4] == "1.00"  # bits per coordinate


@pytest.mark.slow  # (the same fixture)
def test_compressors_top_k_error_matches_direct_computation(compressors_output):
  x = np.asarray(_vectors.test_vectors(512, seed=0)["gaussian"], np.float64)
  energy = np.sort(x * x)[::-1]
  k = round(0.1 * 512)
  expected = 1.0 - energy[:k].sum() / energy.sum()
  printed = _rows(compressors_output)["top_k"][-3]
  value = float(printed)
  # Printed with 4 significant digits: allow half a unit in the last place.
  ulp = 10.0 ** (math.floor(math.log10(abs(value))) - 3)
  assert abs(value - expected) <= 0.5 * ulp * (1 + 1e-6), (printed, expected)


def test_no_subcommand_runs_compare_with_defaults(monkeypatch):
  seen = {}

  def fake(args, argv):
    seen.update(vars(args))
    return 0

  monkeypatch.setattr(cli, "_cmd_compare", fake)
  assert cli.main([]) == 0
  assert seen["task"] == "logistic" and seen["dataset"] is None  # breast_cancer
  assert seen["workers"] == 8 and seen["methods"] is None and seen["iid"] is False


@pytest.mark.slow  # a benchmark run
def test_bench_compressors_writes_json(tmp_path, capsys):
  path = tmp_path / "x.json"
  argv = ["bench", "compressors", "--sizes", "2^10", "--repeats", "1", "--only", "sign,top_k"]
  argv += ["--json", str(path)]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "d = 2^10 = 1024" in out
  assert set(_rows(out)) == {"sign", "top_k"}
  record = json.loads(path.read_text())
  assert set(record) == {"machine", "date", "command", "results"}
  assert record["command"] == ["biased-compression", *argv]
  assert record["machine"]["cpu_count"] >= 1 and record["machine"]["jax"]
  assert "device_kind" in record["machine"]
  results = record["results"]
  assert [r["compressor"] for r in results] == ["sign", "top_k"]
  assert [r["operator"] for r in results] == ["sign()", "top_k(ratio=0.1)"]
  for r in results:
    assert r["d"] == 1024
    for field in ("encode_ms", "decode_ms", "reference_ms", "encode_ratio", "decode_ratio"):
      assert r[field] > 0 and math.isfinite(r[field]), (field, r)
    assert r["encode_ratio"] == pytest.approx(r["encode_ms"] / r["reference_ms"])
  assert results[0]["bits_per_coord"] == 1.0


@pytest.mark.slow  # a benchmark run
def test_bench_topk_writes_json(tmp_path, capsys):
  path = tmp_path / "topk.json"
  argv = ["bench", "topk", "--sizes", "2**12", "--ratios", "0.01", "--repeats", "1"]
  argv += ["--methods", "radix", "--json", str(path)]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "d = 2^12 float32" in out and "k = 41" in out
  record = json.loads(path.read_text())
  assert record["command"] == ["biased-compression", *argv]
  methods = [r["method"] for r in record["results"]]
  assert methods[:2] == ["exact_sort", "radix"] and set(methods) <= {*methods[:2], "torch.topk"}
  for r in record["results"]:
    assert r["d"] == 4096 and r["k"] == 41 and r["recall"] == 1.0
    assert r["ms"] > 0 and r["reference_ratio"] == pytest.approx(r["ms"] / r["reference_ms"])
  assert record["results"][0]["speedup_vs_lax_top_k"] == 1.0


@pytest.mark.slow  # a benchmark run
def test_bench_runner_times_the_runner_the_bare_step_and_the_loops(tmp_path, capsys):
  path = tmp_path / "runner.json"
  argv = ["bench", "runner", "--workers", "2,3", "--steps", "4", "--dim", "8"]
  assert cli.main([*argv, "--json", str(path)]) == 0
  out = capsys.readouterr().out
  assert "runner ms/step" in out and "numpy loop ms" in out
  rows = json.loads(path.read_text())["results"]
  assert [r["workers"] for r in rows] == [2, 3]
  for r in rows:
    assert r["runner_ms"] > 0 and r["bare_ms"] > 0 and r["numpy_loop_ms"] > 0
    assert r["logging_overhead"] == pytest.approx(r["runner_ms"] / r["bare_ms"])
    assert r["runner_vs_numpy"] == pytest.approx(r["numpy_loop_ms"] / r["runner_ms"])


@pytest.mark.slow  # about 20 s on 2 cores: ~20 shard_map programs compile
def test_bench_collectives_measures_and_models(tmp_path, capsys):
  """Measured traffic equals the analytic model; the JSON record has all three parts.

  Also, end to end: a --dim below 2^20 warns that the linearly extrapolated compression
  cost is overhead-dominated, and no progress bar reaches the captured stderr.
  """
  path = tmp_path / "collectives.json"
  # the bench's Top-k 1% keeps a k that every n divides (two_stage keeps k / n per chunk)
  argv = ["bench", "collectives", "--dim", "2^12", "--workers", "2,4,64", "--repeats", "1"]
  argv += ["--json", str(path)]
  assert cli.main(argv) == 0
  captured = capsys.readouterr()
  out = captured.out
  assert "Bytes sent per device per step" in out and "Modelled step" in out
  assert "measured on this machine at d = 2^12 and extrapolated linearly" in out
  assert "warning: below d = 2^20" in out
  err = " ".join(captured.err.split())
  assert "warning: --dim 2^12: the modelled step's compression cost is measured at d = 2^12" in err
  assert "extrapolated linearly" in err and "dominated by fixed per-call overhead" in err
  _assert_no_progress_bar(captured.err)
  rows = json.loads(path.read_text())["results"]
  model = [r for r in rows if r["part"] == "model"]
  assert model and all(r["compression_measured_d"] == 4096 for r in model)
  assert all(r["compression_extrapolation"] == "linear" for r in model)
  assert all(r["compression_overhead_dominated"] for r in model)
  for r in model:
    assert r["compression_ms"] == pytest.approx(r["compression_ms_per_million"] * r["params"] / 1e6)
  traffic = [r for r in rows if r["part"] == "traffic"]
  measured = [r for r in traffic if r["measured_bytes"] is not None]
  assert {r["n"] for r in measured} == {2, 4}
  assert all(r["measured_bytes"] == r["model_bytes"] for r in measured)
  assert all(r["measured_bytes"] is None for r in traffic if r["n"] == 64)
  ts_sign = [r for r in traffic if r["compressor"] == "scaled_sign" and r["method"] == "two_stage"]
  # 1 bit per coordinate plus a float32 scale per chunk of 4096 / n coordinates
  assert all(r["dense_over_this"] >= 25 for r in ts_sign if r["n"] == 4)
  assert {r["part"] for r in rows} == {"traffic", "time", "model"}


@pytest.mark.parametrize(
  "dim, measured_d, warns",
  [("2^16", 1 << 16, True), ("2^20", 1 << 20, False), ("2^23", 1 << 22, False)],
)
def test_bench_collectives_says_the_compression_cost_is_extrapolated(
  dim, measured_d, warns, tmp_path, monkeypatch, capsys
):
  """The modelled step's notes, warning and JSON fields, with the measured parts stubbed."""
  timed_at = []

  def cost(d, repeats, n):
    timed_at.append(d)
    return 2.0

  monkeypatch.setattr(_bench_collectives, "traffic", lambda d, ns: [])
  monkeypatch.setattr(_bench_collectives, "step_times", lambda d, n, repeats: [])
  monkeypatch.setattr(_bench_collectives, "sign_cost_ms_per_million", cost)
  path = tmp_path / "c.json"
  assert cli.main(["bench", "collectives", "--dim", dim, "--json", str(path)]) == 0
  assert timed_at == [measured_d]
  captured = capsys.readouterr()
  out = " ".join(captured.out.split())
  shown = _timing.format_size(measured_d)
  assert (
    f"compression ms: 2 ms per million values (one encode and two decodes of the values, an "
    f"encode of 1/n of them: a two_stage step's work), measured on this machine at "
    f"d = {shown} and extrapolated linearly to 100000000 parameters"
  ) in out
  err = " ".join(captured.err.split())
  _assert_no_progress_bar(captured.err)
  if warns:
    assert out.count("warning: below d = 2^20 the measured cost per value is dominated") == 1
    assert err.startswith(
      f"warning: --dim {dim}: the modelled step's compression cost is measured at "
      f"d = {shown} and extrapolated linearly to --model-params 100000000; below d = 2^20 the "
      "measured cost per value is dominated by fixed per-call overhead, so the extrapolated "
      "compression time is overstated"
    ), err
  else:
    assert "warning" not in out and "warning" not in err
  model = json.loads(path.read_text())["results"]
  assert [r["gbit_s"] for r in model] == [10.0, 100.0]
  for r in model:
    assert r["compression_measured_d"] == measured_d
    assert r["compression_extrapolation"] == "linear"
    assert r["compression_overhead_dominated"] is warns
    assert r["compression_ms_per_million"] == 2.0
    assert r["compression_ms"] == pytest.approx(2.0 * 100)

  terminal = _Terminal()  # on a terminal, the bar is drawn
  monkeypatch.setattr(sys, "stderr", terminal)
  assert cli.main(["bench", "collectives", "--dim", dim]) == 0
  assert "bench collectives: 100%|" in terminal.getvalue()


@pytest.mark.parametrize(
  "argv, message",
  [
    (["bench", "topk", "--ratios", "0"], "ratios must be in (0, 1]"),
    (["bench", "topk", "--ratios", "a"], "comma-separated fractions"),
    (["bench", "topk", "--methods", "radix,heap"], "expected methods among"),
    (["frobnicate"], "invalid choice"),
    (["bench"], "required"),
    (["bench", "collectives", "--workers", "1"], "worker counts >= 2"),
    (["bench", "collectives", "--gbits", "0"], "positive numbers"),
    (["bench", "compressors", "--sizes", "2^16,x"], "expected a positive size as 2^N"),
    (
      ["bench", "compressors", "--sizes", "22"],
      "argument --sizes: 22 elements is too small to time; did you mean 2^22?",
    ),
    (
      ["bench", "topk", "--sizes", "2^16,24"],
      "argument --sizes: 24 elements is too small to time; did you mean 2^24?",
    ),
    (["bench", "topk", "--sizes", "0"], "0 elements is too small to time; did you mean 2^0?"),
    (["bench", "compressors", "--sizes", "40"], "40 elements is too small to time; write sizes"),
    (["bench", "compressors", "--sizes", "2^40"], "above the largest size allowed, 2^30"),
    (["bench", "compressors", "--sizes", "2^16,,2^18"], "expected a positive size"),
    (["bench", "collectives", "--dim", "2^x"], "argument --dim: expected a positive size"),
    (["bench", "collectives", "--dim", "0"], "expected a positive size"),
    (["bench", "collectives", "--model-params", "1.5e0"], "expected a positive size"),
    (["bench", "compressors", "--repeats", "0"], "positive integer"),
    (["bench", "compressors", "--only", "sign,nope"], "unknown compressor(s) nope"),
    (["compressors", "--draws", "0"], "positive integer"),
    (["compressors", "--dim", "abc"], "expected a positive size"),
    (["stragglers", "--ps", "0.3,1"], "expected probabilities in [0, 1)"),
    (["stragglers", "--ds", "0"], "expected replications >= 1"),
    (["stragglers", "--workers", "4", "--ds", "5"], "every d must be <= --workers 4"),
    (["stragglers", "--compressors", "top_k:0.1;nope"], "nope"),
    (["stragglers", "--methods", "coco_ef,magic"], "methods must be among"),
  ],
)
def test_usage_errors_exit_with_status_2(argv, message, capsys):
  with pytest.raises(SystemExit) as excinfo:
    cli.main(argv)
  assert excinfo.value.code == 2
  assert message in capsys.readouterr().err


@pytest.mark.parametrize(
  "argv, dest, expected",
  [
    (["bench", "compressors", "--sizes", "2^10,2**12,5000"], "sizes", (1024, 4096, 5000)),
    (["bench", "compressors", "--sizes", "64, 2^3"], "sizes", (64, 8)),
    (["bench", "topk", "--sizes", "2^24"], "sizes", (1 << 24,)),
    (["bench", "collectives", "--dim", "2^16"], "dim", 65536),
    (["bench", "collectives", "--dim", "2**16"], "dim", 65536),
    (["bench", "collectives", "--dim", "65536"], "dim", 65536),
    (["bench", "collectives", "--dim", "16"], "dim", 16),  # --dim always was a count
    (["bench", "collectives", "--model-params", "1e8"], "model_params", 100_000_000),
    (["bench", "collectives", "--model-params", "2.5e9"], "model_params", 2_500_000_000),
    (["bench", "collectives", "--model-params", "2^34"], "model_params", 1 << 34),
    (["compressors", "--dim", "2^9"], "dim", 512),
  ],
)
def test_sizes_accept_powers_of_two_and_counts(argv, dest, expected):
  assert getattr(cli.build_parser().parse_args(argv), dest) == expected


def _subcommands(parser, prefix=()):
  """(argv prefix, parser) of the program and of every subcommand, depth first."""
  yield prefix, parser
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for name, sub in action.choices.items():
        yield from _subcommands(sub, (*prefix, name))


def test_help_of_every_subcommand_prints_cleanly(capsys):
  """``--help`` of each command: no unformatted ``%%``, the syntax and defaults shown."""
  expected = {
    (): ["Sizes are element counts, written 2^N, 2**N or plainly"],
    ("compressors",): ["2^N, 2**N or an element count", "(default: the MLP gradient's, 9610)"],
    ("bench",): ["writes a JSON record only with --json PATH"],
    ("bench", "runner"): ["EF-Top-k(10%)", "(default: 10,100,1000)", "PyTorch when importable"],
    ("compare",): [
      "examples: biased-compression # the default comparison",
      "biased-compression compare --methods 'gd;ef:top_k(0.05)",
      "(default: 0.003,0.01,0.03,0.1,0.3,1,3)",
    ],
    ("bench", "compressors"): ["(default: 2^16,2^18,2^20,2^22,2^24)", "plain counts below 64"],
    ("bench", "coco"): ["(default: 100,1000)", "(default: top_k:0.05)", "Top-k only"],
    ("stragglers",): [
      "biased-compression stragglers --workers 10 --ps 0.3 --ds 2",
      "(default: 0.03,0.1,0.3,1)",
      "(default: 100)",
    ],
    ("bench", "topk"): ["(default: 2^24)", "(default: exact_sort,radix,approx)"],
    ("bench", "powersgd"): ["(default: 2^20,2^22,2^24)", "(default: 1,2,4)", "Gram-Schmidt"],
    ("bench", "collectives"): [
      "(scaled sign, Top-k 1%, natural dithering)",
      "(default: 2^20)",
      "(default: 1e8)",
      "extrapolated linearly to --model-params, which overstates it below 2^20",
      "per-value cost measured at --dim times P, a linear extrapolation",
    ],
  }
  expected[("reproduce",)] = ["'all' runs every claim and writes OUT/REPORT.md"]
  expected[("reproduce", "all")] = ["(default: all of", "verdict (reproduced, partly"]
  for claim in studies.CLAIMS.values():
    option = next(iter(claim.options))
    expected[("reproduce", claim.name)] = [
      " ".join(claim.statement.split()),
      f"--{option.replace('_', '-')}",
      "(small: ",
    ]
  seen = []
  for prefix, _ in _subcommands(cli.build_parser()):
    seen.append(prefix)
    with pytest.raises(SystemExit) as excinfo:
      cli.main([*prefix, "--help"])
    assert excinfo.value.code == 0, prefix
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(('biased-compression', *prefix))}"), prefix
    assert "%%" not in out and "%(" not in out, (prefix, out)
    text = " ".join(out.split())  # argparse wraps lines wherever the terminal width says
    for snippet in expected[prefix]:
      assert snippet in text, (prefix, snippet, out)
    if prefix[:1] == ("bench",) and len(prefix) == 2:
      assert "--json PATH also write the results as a JSON record" in text, prefix
      assert "without --json nothing is written" in text, prefix
  assert sorted(seen) == sorted(expected)


def test_help_defaults_are_the_parser_defaults():
  """Every "(default: X)" shown parses, with the option's own type, to the actual default."""
  checked = 0
  for prefix, parser in _subcommands(cli.build_parser()):
    formatter = parser._get_formatter()
    for action in parser._actions:
      if not action.option_strings or action.default in (None, argparse.SUPPRESS):
        continue
      if isinstance(action, argparse._StoreTrueAction):  # a flag: off unless given
        continue
      shown = re.search(r"default: ([^)]*)\)", formatter._expand_help(action))
      assert shown, (prefix, action.dest, "shows no default")
      value = action.type(shown.group(1)) if action.type else shown.group(1)
      assert value == action.default, (prefix, action.dest, shown.group(1), action.default)
      checked += 1
  assert checked >= 15  # the loop did reach the options
  # compressors --dim's default, the MLP gradient's size (its shape is checked with the vectors)
  assert 64 * 128 + 128 + 128 * 10 + 10 == 9610


class _Terminal(io.StringIO):
  """A stderr that says it is a terminal."""

  def isatty(self):
    return True


def _assert_no_progress_bar(err: str) -> None:
  # tqdm redraws with carriage returns and draws "NN%|" before the bar.
  assert "\r" not in err and "%|" not in err and "it/s" not in err, err


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_helper_draws_only_on_a_terminal(terminal, monkeypatch):
  stream = _Terminal() if terminal else io.StringIO()
  monkeypatch.setattr(sys, "stderr", stream)
  with _timing.progress(total=2, desc="working") as bar:
    bar.update(2)
  if terminal:
    assert "working: 100%|" in stream.getvalue()
  else:
    assert stream.getvalue() == ""


_QUICK_COMMANDS = {
  "compressors": ["compressors", "--dim", "256", "--draws", "1"],
  "bench compressors": ["bench", "compressors", "--sizes", "2^8", "--repeats", "1"]
  + ["--only", "sign"],
  "bench topk": ["bench", "topk", "--sizes", "2^8", "--ratios", "0.1", "--repeats", "1"]
  + ["--methods", "exact_sort"],
}


@pytest.mark.parametrize("name", list(_QUICK_COMMANDS))
def test_commands_draw_progress_only_on_a_terminal(name, tmp_path, monkeypatch, capsys):
  """Under capture (stderr not a terminal) no bar is drawn; on a terminal one is.

  Run in an empty directory without --json: nothing may be written there.
  """
  # Two compressors and one vector stand in: the bar, not the operators, is under test.
  few = {k: v for k, v in _registry.standard_compressors().items() if k in ("identity", "sign")}
  monkeypatch.setattr(_registry, "standard_compressors", lambda: few)
  vectors = {"gaussian": jnp.linspace(-1.0, 1.0, 256)}  # not the MLP gradient: no training
  monkeypatch.setattr(_vectors, "test_vectors", lambda d=None, seed=0: vectors)
  monkeypatch.chdir(tmp_path)
  argv = _QUICK_COMMANDS[name]
  assert cli.main(argv) == 0
  captured = capsys.readouterr()
  assert captured.out and "wrote" not in captured.out
  _assert_no_progress_bar(captured.err)
  assert list(tmp_path.iterdir()) == []

  terminal = _Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  assert cli.main(argv) == 0
  assert f"{name.split()[-1]}: 100%|" in terminal.getvalue(), terminal.getvalue()


def test_model_notes_name_the_measured_dim_and_warn_only_below_2_20():
  assert _bench_collectives.cost_warning(1 << 20) is None
  assert _bench_collectives.cost_warning(1 << 22) is None
  assert "dominated by fixed per-call overhead" in _bench_collectives.cost_warning(1 << 16)
  model = _bench_collectives.network_model(100_000_000, 16, (10.0,), 100.0, 20.0, 1.0)
  rows = [{**r, **_bench_collectives.cost_fields(1 << 20, 1.0)} for r in model]
  text = _bench_collectives.tables(rows)
  assert "1 ms per million values" in text
  assert "measured on this machine at d = 2^20 and extrapolated linearly to 100000000" in text
  assert "warning" not in text
  assert rows[0]["compression_measured_d"] == 1 << 20
  assert rows[0]["compression_extrapolation"] == "linear"
  assert not rows[0]["compression_overhead_dominated"]


@pytest.mark.slow  # the benchmark's vectors: trains the MLP (for its gradient) four times
def test_vectors_are_deterministic_float32_and_finite():
  a = _vectors.test_vectors(300, seed=3)
  b = _vectors.test_vectors(300, seed=3)
  assert list(a) == list(_VECTOR_NAMES)
  assert a["gaussian"].shape == a["heavy_tailed"].shape == (300,)
  assert a["mlp_gradient"].shape == (64 * 128 + 128 + 128 * 10 + 10,)
  for name in a:
    x = np.asarray(a[name])
    assert x.dtype == np.float32 and np.all(np.isfinite(x)) and np.any(x != 0), name
    np.testing.assert_array_equal(x, np.asarray(b[name]))
  default = _vectors.test_vectors()
  assert {v.shape for v in default.values()} == {a["mlp_gradient"].shape}
  other = _vectors.test_vectors(300, seed=4)
  assert not np.array_equal(np.asarray(a["mlp_gradient"]), np.asarray(other["mlp_gradient"]))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("biased-compression") is None, reason="console script missing")
def test_console_script():
  proc = subprocess.run(
    [shutil.which("biased-compression"), "compressors", "--dim", "256", "--draws", "1"],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("d = 256;")
  _assert_no_progress_bar(proc.stderr)  # stderr is a pipe, not a terminal
  assert set(_rows(proc.stdout)) == set(_registry.standard_compressors())


@pytest.mark.slow  # two compiled runs
def test_stragglers_command_writes_its_table_and_files(tmp_path, capsys):
  out = tmp_path / "st"
  argv = ["stragglers", "--workers", "4", "--dim", "5", "--ps", "0.5", "--ds", "2", "--steps"]
  argv += ["4", "--lrs", "0.1", "--methods", "coco_ef,gc_exact", "--compressors", "top_k:0.4"]
  assert cli.main([*argv, "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "COCO-EF" in printed and "exact GC, uncompressed" in printed
  assert "lowest loss at equal bits:" in printed
  data = json.loads((out / "results.json").read_text())
  assert [row["method"] for row in data["table"]] == ["coco_ef", "gc_exact"]
  assert (out / "loss_vs_bits_top_k_ratio_0_4.png").exists()
