"""The claims' frame: `Claim.run`, `Finding.write`, the report, `reproduce(_all)` and the CLI.

A fake claim with a known result checks the frame itself; the registered claims are checked
for what every claim must have (their own tests check what they measure).
"""

import inspect
import json
import math

import numpy as np
import pytest

from biased_compression import cli
from biased_compression import studies


def _fake_study(
  *, steps: int = 5, rates: tuple = (0.5, 0.25), name: str = "x", show_progress: bool = True
):
  from matplotlib.figure import Figure

  fig = Figure()
  fig.subplots().plot(np.arange(steps), np.arange(steps) ** 2)
  rows = [{"rate": r, "steps": steps, "name": name, "inf": math.inf} for r in rates]
  verdict = "reproduced" if all(r < 1 for r in rates) else "not reproduced"
  return studies.Finding(
    verdict=verdict,
    measured=f"every rate below one: {verdict == 'reproduced'}",
    columns=[
      ("name", "name", "{}"),
      ("rate", "rate", "{:.2f}"),
      ("inf", "inf", "{:.1f}"),
      ("absent", "absent", "{}"),
    ],
    rows=rows,
    figures={"curve": fig},
    record={"curve": np.arange(steps) * 1.0, "nan": math.nan},
  )


FAKE = studies.Claim(
  name="fake_claim",
  number=99,
  title="A fake claim",
  paper="Nobody, Nothing, 2026",
  statement="Every rate is below one.",
  options={
    "steps": studies.Option(5, "steps", full=50),
    "rates": studies.Option((0.5, 0.25), "the rates"),
    "name": studies.Option("x", "a name"),
  },
  study=_fake_study,
)


@pytest.fixture
def fake_registry(monkeypatch):
  saved = dict(studies.CLAIMS)
  studies.CLAIMS.clear()
  studies.register(FAKE)
  yield
  studies.CLAIMS.clear()
  studies.CLAIMS.update(saved)


def test_run_fills_the_finding_and_checks_options():
  f = FAKE.run(steps=3)
  assert (f.claim, f.options, f.verdict) == (
    "fake_claim",
    {"steps": 3, "rates": [0.5, 0.25], "name": "x"},
    "reproduced",
  )
  assert f.seconds >= 0 and f.rows[0]["steps"] == 3
  assert FAKE.run(full=True).rows[0]["steps"] == 50
  with pytest.raises(ValueError, match=r"reproduce fake_claim: unknown options \['step'\]"):
    FAKE.run(step=3)


def test_a_verdict_outside_the_three_is_refused():
  bad = studies.Claim(
    **{
      **FAKE.__dict__,
      "study": lambda **k: _fake_study(**k).__class__(
        verdict="sort of", measured="", columns=[], rows=[]
      ),
    }
  )
  with pytest.raises(RuntimeError, match="sort of"):
    bad.run()


def test_markdown_table_keeps_present_columns_and_spells_non_finite_values():
  table = studies.markdown_table(
    [("a", "A", "{:.1f}"), ("b", "B", "{}"), ("c", "C", "{}")],
    [{"a": 1.0, "b": math.inf}, {"a": math.nan, "b": None}],
  )
  assert table.splitlines() == ["| A | B |", "|---|---|", "| 1.0 | inf |", "| - | - |"]


def test_write_gives_json_without_nan_the_table_and_the_figure(tmp_path):
  f = FAKE.run()
  paths = f.write(tmp_path / "out")
  record = json.loads(paths["json"].read_text())
  assert record["verdict"] == "reproduced" and record["record"]["nan"] is None
  assert record["rows"][0]["inf"] is None and record["record"]["curve"] == [0.0, 1, 2, 3, 4]
  assert paths["table"].read_text() == f.table() + "\n"
  assert paths["curve"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert set(f.write(tmp_path / "np", plot=False)) == {"json", "table"}
  loaded = studies.Finding.load(tmp_path / "out")
  # what JSON holds: the rows with non-finite values as null
  assert loaded.rows == record["rows"] and list(loaded.figures) == ["curve"]
  assert loaded.table() == studies.markdown_table(f.columns, record["rows"]) != f.table()
  assert (loaded.claim, loaded.verdict, loaded.options) == (f.claim, f.verdict, f.options)


def test_report_has_each_claims_statement_verdict_table_and_figures(tmp_path, fake_registry):
  findings, path = studies.reproduce_all(tmp_path, options={"fake_claim": {"steps": 4}})
  text = path.read_text()
  assert path == tmp_path / "REPORT.md" and len(findings) == 1
  for part in (
    FAKE.statement,
    FAKE.paper,
    "**Verdict: reproduced.**",
    findings[0].table(),
    "![A fake claim: curve](fake_claim/curve.png)",
    "steps=4",
    "1 reproduced",
  ):
    assert part in text, part
  assert (tmp_path / "fake_claim" / "curve.png").exists()
  other = studies.Claim(**{**FAKE.__dict__, "name": "other", "number": 100, "title": "Other"})
  text = studies.report([FAKE, other], findings, tmp_path).read_text()
  assert "## 100. Other" in text and "Not run." in text


def test_reproduce_names_the_known_claims(fake_registry):
  with pytest.raises(ValueError, match="name must be one of fake_claim or 'all', got 'nope'"):
    studies.reproduce("nope")
  with pytest.raises(ValueError, match=r"options given for claims not run: \['nope'\]"):
    studies.reproduce_all("unused", options={"nope": {}})


def test_cli_reproduce_parses_the_claims_options(tmp_path, capsys, fake_registry):
  out = tmp_path / "r"
  code = cli.main(
    ["reproduce", "fake_claim", "--steps", "7", "--rates", "0.1,2", "--out", str(out), "--no-plot"]
  )
  assert code == 0
  printed = capsys.readouterr().out
  assert "claim 99, A fake claim: not reproduced" in printed
  record = json.loads((out / "fake_claim" / "result.json").read_text())
  assert record["options"] == {"steps": 7, "rates": [0.1, 2.0], "name": "x"}
  assert not (out / "fake_claim" / "curve.png").exists()
  assert cli.main(["reproduce", "all", "--only", "fake_claim", "--out", str(out)]) == 0
  assert "fake_claim: reproduced" in capsys.readouterr().out
  assert (out / "REPORT.md").exists()
  with pytest.raises(SystemExit):
    cli.main(["reproduce", "fake_claim", "--steps", "many"])
  assert "argument --steps: expected int, got 'many'" in capsys.readouterr().err


def test_every_registered_claim_is_complete():
  numbers = [c.number for c in studies.CLAIMS.values()]
  assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
  for claim in studies.CLAIMS.values():
    assert claim.paper and claim.statement and claim.title
    params = inspect.signature(claim.study).parameters
    assert "show_progress" in params, claim.name
    for key, option in claim.options.items():
      assert params[key].default == option.default, (claim.name, key)
      assert option.help, (claim.name, key)
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty]
    assert not missing, (claim.name, missing)
    assert set(params) - {"show_progress"} == set(claim.options), claim.name


# every claim at a tiny size, as command-line flags (the claims' own tests check what they
# measure at these sizes; here: the command, its files, and a report with every claim)
TINY_FLAGS = {
  "linear_convergence": [
    "--dim",
    "16",
    "--condition",
    "4",
    "--steps",
    "60",
    "--draws",
    "8",
    "--compressors",
    "top_k(0.25);rand_k(0.25)",
  ],
  "divergence_without_ef": ["--step-sizes", "0.2,0.4", "--steps", "1500", "--instances", "6"],
  "compressor_ranking": [
    "--tasks",
    "logistic",
    "--budgets",
    "2.5",
    "--families",
    "top_k_nd;scaled_sign",
    "--num-workers",
    "2",
    "--steps",
    "4",
    "--lrs",
    "1",
  ],
  "gradient_distributions": [
    "--dim",
    "4810",
    "--vectors",
    "1",
    "--draws",
    "4",
    "--dofs",
    "1,10",
    "--mlp-steps",
    "0,3",
  ],
  "induced_vs_ef": [
    "--steps",
    "40",
    "--lrs",
    "1,3",
    "--pp-steps",
    "60",
    "--pp-lrs",
    "0.3,1",
    "--pp-seeds",
    "2",
  ],
  "heavy_tailed_noise": [
    "--dim",
    "16",
    "--workers",
    "4",
    "--steps",
    "40",
    "--seeds",
    "2",
    "--scales",
    "0.1,10",
    "--noises",
    "gaussian;t1",
    "--compressors",
    "rand_k(0.25)",
    "--lrs",
    "0.01,0.1",
  ],
  "scaling_rules": [
    "--dim",
    "16",
    "--workers",
    "4",
    "--steps",
    "60",
    "--sign-steps",
    "400",
    "--seeds",
    "16",
    "--sign-lr",
    "0.1",
  ],
}


def test_every_claim_has_tiny_flags():
  assert set(TINY_FLAGS) == set(studies.CLAIMS)


@pytest.mark.slow  # seven studies at a tiny size: a minute or two on 2 cores
def test_every_reproduce_command_writes_its_files_and_the_report_has_every_claim(tmp_path, capsys):
  for name, flags in TINY_FLAGS.items():
    assert cli.main(["reproduce", name, "--out", str(tmp_path), *flags]) == 0, name
    printed = capsys.readouterr().out
    claim = studies.CLAIMS[name]
    assert printed.startswith(f"claim {claim.number}, {claim.title}: "), printed
    folder = tmp_path / name
    record = json.loads((folder / "result.json").read_text())
    assert record["verdict"] in studies.VERDICTS and record["rows"], name
    assert (folder / "table.md").read_text().startswith("| "), name
    assert record["figures"], name
    for figure in record["figures"]:
      assert (folder / f"{figure}.png").stat().st_size > 1000, (name, figure)
  findings = [studies.Finding.load(tmp_path / name) for name in studies.CLAIMS]
  text = studies.report(list(studies.CLAIMS.values()), findings, tmp_path).read_text()
  for claim, finding in zip(studies.CLAIMS.values(), findings, strict=True):
    assert f"## {claim.number}. {claim.title}" in text
    assert " ".join(claim.statement.split()) in " ".join(text.split())
    assert f"**Verdict: {finding.verdict}.**" in text
    for figure in finding.figures:
      assert f"({claim.name}/{figure}.png)" in text
  assert "Not run." not in text
