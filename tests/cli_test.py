"""Tests of the ``biased-compression`` command line, its benchmark record and test vectors."""

import contextlib
import io
import json
import math
import shutil
import subprocess

import numpy as np
import pytest

from biased_compression import _registry
from biased_compression import _vectors
from biased_compression import cli

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


def test_no_subcommand_runs_compressors_with_defaults(monkeypatch):
  seen = {}

  def fake(args, argv):
    seen.update(vars(args))
    return 0

  monkeypatch.setattr(cli, "_cmd_compressors", fake)
  assert cli.main([]) == 0
  assert seen["dim"] is None and seen["draws"] == 4 and seen["seed"] == 0


def test_bench_compressors_writes_json(tmp_path, capsys):
  path = tmp_path / "x.json"
  argv = ["bench", "compressors", "--sizes", "10", "--repeats", "1", "--only", "sign,top_k"]
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


def test_bench_topk_writes_json(tmp_path, capsys):
  path = tmp_path / "topk.json"
  argv = ["bench", "topk", "--sizes", "12", "--ratios", "0.01", "--repeats", "1"]
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


def test_bench_collectives_measures_and_models(tmp_path, capsys):
  """Measured traffic equals the analytic model; the JSON record has all three parts."""
  path = tmp_path / "collectives.json"
  argv = ["bench", "collectives", "--dim", "4096", "--workers", "2,4,64", "--repeats", "1"]
  argv += ["--json", str(path)]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "Bytes sent per device per step" in out and "Modelled step" in out
  rows = json.loads(path.read_text())["results"]
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
  "argv, message",
  [
    (["bench", "topk", "--ratios", "0"], "ratios must be in (0, 1]"),
    (["bench", "topk", "--ratios", "a"], "comma-separated fractions"),
    (["bench", "topk", "--methods", "radix,heap"], "expected methods among"),
    (["frobnicate"], "invalid choice"),
    (["bench"], "required"),
    (["bench", "collectives", "--workers", "1"], "worker counts >= 2"),
    (["bench", "collectives", "--gbits", "0"], "positive numbers"),
    (["bench", "compressors", "--sizes", "16,x"], "comma-separated integers"),
    (["bench", "compressors", "--sizes", "40"], "must be in 0 .. 30"),
    (["bench", "compressors", "--repeats", "0"], "positive integer"),
    (["bench", "compressors", "--only", "sign,nope"], "unknown compressor(s) nope"),
    (["compressors", "--draws", "0"], "positive integer"),
    (["compressors", "--dim", "abc"], "positive integer"),
  ],
)
def test_usage_errors_exit_with_status_2(argv, message, capsys):
  with pytest.raises(SystemExit) as excinfo:
    cli.main(argv)
  assert excinfo.value.code == 2
  assert message in capsys.readouterr().err


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
  assert set(_rows(proc.stdout)) == set(_registry.standard_compressors())
