"""The COCO-EF benchmark (``bench coco``): its loops compute what the library does."""

import json

import numpy as np
import pytest

from biased_compression import cli
from biased_compression.bench import _coco


@pytest.fixture
def no_torch(monkeypatch):
  """The benchmark as it runs where PyTorch is not installed (CI)."""
  monkeypatch.setattr(_coco, "_import_torch", lambda: None)


def test_numpy_loop_equals_the_library_on_the_same_stragglers(no_torch):
  r = _coco.check_loops(8, 10, 3)  # n = 8, D = 10, 3 steps, top_k:0.05 (k = 1), p = 0.3
  assert r["torch"] is None
  assert r["library"].shape == r["numpy"].shape == (3, 10) and r["alive"].shape == (3, 8)
  assert not r["alive"].all() and r["alive"].any()  # some workers straggled, some arrived
  assert np.abs(r["library"][-1]).max() > 0.05  # the parameters moved
  np.testing.assert_allclose(r["numpy"], r["library"], rtol=1e-5, atol=1e-6)
  # the check is sensitive to the masks: with everyone arriving the loop ends elsewhere
  task, code = _coco._setup(8, 10, 2, 0)
  loop = _coco._NumpyLoop(task, code, 1, 0.3, 0.1)
  for _ in range(3):
    loop.step(np.ones(8, bool))
  assert np.abs(loop.params() - r["library"][-1]).max() > 1e-3


def test_torch_loop_equals_the_library():
  pytest.importorskip("torch")
  r = _coco.check_loops(8, 10, 3, d=3, torch=True)
  np.testing.assert_allclose(r["torch"], r["library"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(r["numpy"], r["library"], rtol=1e-5, atol=1e-6)


def test_compressors_the_loops_do_not_implement():
  assert _coco.loops_support(_coco.parse_coco_compressor("top_k:0.05", 100))
  assert _coco.loops_support(_coco.parse_coco_compressor("top_k(k=3)", 100))
  assert not _coco.loops_support(_coco.parse_coco_compressor("scaled_sign", 100))
  assert not _coco.loops_support(_coco.parse_coco_compressor("top_k(0.1, method='approx')", 9))
  with pytest.raises(ValueError, match="not contractive"):
    _coco.parse_coco_compressor("rand_k:0.1", 100)
  with pytest.raises(ValueError, match="exact top_k only"):
    _coco.check_loops(compressor="scaled_sign")


def test_tables_without_the_loops():
  row = {
    "workers": 4,
    "dim": 8,
    "d": 2,
    "p": 0.3,
    "compressor": "scaled_sign",
    "k": None,
    "steps": 2,
    "repeats": 1,
    "library_ms": 0.5,
    "library_mask_given_ms": 0.25,
  }
  text = _coco.coco_tables([row])
  assert "the loops implement Top-k only, so scaled_sign ran in the library alone" in text
  assert text.splitlines()[-1].split() == ["4", "0.5", "0.25", "-", "-", "-", "-"]


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--workers", "8", "--d", "9"], "--d 9: the replication must be <= every worker count"),
    (["--p", "1"], "expected a probability in [0, 1)"),
    (["--compressor", "rand_k:0.1"], "not contractive"),
    (["--compressor", "no_such"], "--compressor: parse_compressor"),
  ],
)
def test_usage_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as excinfo:
    cli.main(["bench", "coco", *argv])
  assert excinfo.value.code == 2
  assert message in capsys.readouterr().err


def test_help(capsys):
  with pytest.raises(SystemExit):
    cli.main(["bench", "coco", "--help"])
  text = " ".join(capsys.readouterr().out.split())
  for snippet in ("(default: 100,1000)", "(default: top_k:0.05)", "(default: 0.3)", "Top-k only"):
    assert snippet in text


@pytest.mark.slow  # a benchmark run: two programs compile
def test_cli_prints_the_table_without_torch(no_torch, tmp_path, capsys):
  path = tmp_path / "coco.json"
  argv = ["bench", "coco", "--workers", "8", "--dim", "10", "--steps", "5", "--repeats", "1"]
  assert cli.main([*argv, "--json", str(path)]) == 0
  out = capsys.readouterr().out
  assert "library ms/step" in out and "numpy loop ms/step" in out
  assert "PyTorch is not installed" in out
  (row,) = json.loads(path.read_text())["results"]
  assert row["workers"] == 8 and row["k"] == 1 and "torch_loop_ms" not in row
  assert row["library_ms"] > 0 and row["library_mask_given_ms"] > 0 and row["numpy_loop_ms"] > 0
  assert row["library_vs_numpy"] == pytest.approx(row["numpy_loop_ms"] / row["library_ms"])


@pytest.mark.slow  # a benchmark run
def test_bench_with_torch():
  pytest.importorskip("torch")
  (row,) = _coco.bench_coco((4,), dim=8, steps=2, repeats=1)
  assert row["torch_loop_ms"] > 0
  assert row["library_vs_torch"] == pytest.approx(row["torch_loop_ms"] / row["library_ms"])


@pytest.mark.slow  # a benchmark run
def test_another_compressor_runs_in_the_library_alone(capsys):
  argv = ["bench", "coco", "--workers", "4", "--dim", "8", "--steps", "2", "--repeats", "1"]
  assert cli.main([*argv, "--compressor", "scaled_sign"]) == 0
  captured = capsys.readouterr()
  assert "scaled_sign() is timed in the library alone" in captured.err
  assert "ran in the library alone" in captured.out
