"""Claim 3 (`compressor_ranking`): budget matching, the ranking, the verdict rule, a tiny run."""

import dataclasses
import inspect
import json
import math

import numpy as np
import pytest

import biased_compression as bc
from biased_compression import experiments as ex
from biased_compression.compressors._combinators import Contractive
from biased_compression.studies import _ranking

# the leaf sizes of the tasks' parameters: logistic regression (one leaf), the MLP and CNN
# on digits (kernels and biases: several leaves of very different sizes)
SIZES = {"logistic": [30], "mlp": [64, 4096, 10, 640], "cnn": [8, 72, 16, 1152, 10, 640]}


def _bits(c, sizes):
  return sum(c.payload_bits(d, np.float32) for d in sizes)


def _inner(c):
  return c.compressor if isinstance(c, Contractive) else c


# -- budget matching ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(SIZES))
@pytest.mark.parametrize("budget", [1.0, 2.5, 4.5, 10.0])
def test_match_stays_within_the_budget_and_is_the_largest(task, budget):
  sizes = SIZES[task]
  d, top = sum(sizes), max(sizes)
  for family in _ranking.FAMILIES:
    m = _ranking.match_budget(family, budget, sizes)
    if m.compressor is None:
      # left out: even the smallest message of the family is over the budget
      assert m.bits_per_step > budget * d, (family, m)
      continue
    c = m.compressor
    assert m.bits_per_step == _bits(c, sizes) <= budget * d, (family, c)
    inner = _inner(c)
    # error feedback gets a contractive operator: unbiased ones are scaled into B3
    assert not c.unbiased and all(math.isfinite(c.delta(n)) for n in sizes), c
    assert isinstance(c, Contractive) == inner.unbiased or family == "top_k_nd"
    if family in ("top_k", "rand_k", "top_k_nd"):
      sparsifier = inner.inner if family == "top_k_nd" else inner
      j = round(sparsifier.ratio * top)
      if j < top:  # one more value in the largest leaf no longer fits
        bigger = dataclasses.replace(sparsifier, ratio=(j + 1) / top)
        more = dataclasses.replace(inner, inner=bigger) if family == "top_k_nd" else bigger
        assert _bits(more, sizes) > budget * d, (family, j)
    elif family == "natural_dithering":
      s = inner.levels
      if s < 63:
        assert _bits(bc.natural_dithering(2 * s + 1), sizes) > budget * d


def test_match_counts_bits_per_leaf_as_the_runner_does():
  # on the MLP a global count (one leaf of 4810) would give different k and bits: the
  # 64- and 10-element biases each keep at least one value with its own 8-bit index
  m = _ranking.match_budget("top_k", 2.5, SIZES["mlp"])
  per_leaf = sum(max(1, round(m.compressor.ratio * n)) for n in SIZES["mlp"])
  assert m.bits_per_step == 32 * per_leaf + 8 * (
    max(1, round(m.compressor.ratio * 64))
    + max(1, round(m.compressor.ratio * 10))
    + max(1, round(m.compressor.ratio * 640)) * 2
  ) + 16 * max(1, round(m.compressor.ratio * 4096))
  assert m.bits_per_step != m.compressor.bits(sum(SIZES["mlp"]))


def test_fixed_families_fit_or_not():
  # scaled sign: a norm and a bit a coordinate per leaf; natural compression: 9 bits
  assert _ranking.match_budget("scaled_sign", 2.5, [30]).bits_per_step == 32 + 32
  assert _ranking.match_budget("scaled_sign", 2.0, [30]).compressor is None
  assert _ranking.match_budget("natural_compression", 8.9, [4096]).compressor is None
  assert _ranking.match_budget("natural_compression", 9.1, [4096]).compressor is not None
  # natural dithering needs a sign and a level bit a coordinate: never below 2
  assert _ranking.match_budget("natural_dithering", 1.9, [4096]).compressor is None
  assert _ranking.match_budget("natural_dithering", 4.1, [4096]).compressor.compressor.levels == 7


@pytest.mark.parametrize(
  "name, value",
  [
    ("family", "top_kk"),
    ("budget", 0.0),
    ("budget", math.inf),
    ("budget", True),
    ("sizes", []),
    ("sizes", [0]),
  ],
)
def test_match_rejects_bad_arguments(name, value):
  kwargs = {"family": "top_k", "budget": 1.0, "sizes": [10], name: value}
  with pytest.raises(ValueError, match=name):
    _ranking.match_budget(**kwargs)


# -- ranking and verdict --------------------------------------------------------------------------


def test_ranks_are_competition_ranks_with_diverged_last():
  assert _ranking._ranks([0.3, 0.1, 0.2]) == [3, 1, 2]
  assert _ranking._ranks([0.1, 0.1, 0.2]) == [1, 1, 3]
  assert _ranking._ranks([math.nan, 0.5, math.inf]) == [2, 1, 2]


def test_is_first_uses_the_relative_tolerance():
  losses = {"top_k_nd": 1.005, "top_k": 1.0, "scaled_sign": 2.0}
  assert _ranking.is_first(losses, 0.01)
  assert not _ranking.is_first(losses, 0.001)
  assert _ranking.is_first({"top_k_nd": 0.5, "top_k": math.nan}, 0.0)  # the other diverged
  assert not _ranking.is_first({"top_k_nd": math.nan, "top_k": 9.0}, 0.01)
  assert not _ranking.is_first({"top_k_nd": math.inf, "top_k": math.inf}, 0.01)


@pytest.mark.parametrize(
  "firsts, verdict",
  [
    ([True] * 6, "reproduced"),
    ([True], "reproduced"),
    ([True, True, True, False, False, False], "partly"),
    ([True, False], "partly"),
    ([True, True, False], "partly"),
    ([True, False, False], "not reproduced"),
    ([False] * 4, "not reproduced"),
    ([], "not reproduced"),
  ],
)
def test_verdict_rule(firsts, verdict):
  assert _ranking.verdict_of(firsts) == verdict


# -- options ---------------------------------------------------------------------------------------


def test_option_defaults_are_the_function_defaults():
  params = inspect.signature(_ranking.compressor_ranking).parameters
  defaults = {k: p.default for k, p in params.items() if k != "show_progress"}
  assert defaults == _ranking.CLAIM.defaults()
  assert set(_ranking.CLAIM.options) == set(defaults)
  assert _ranking.CLAIM.name == "compressor_ranking" and _ranking.CLAIM.number == 3
  full = _ranking.CLAIM.defaults(full=True)
  assert set(full["families"]) == set(_ranking.FAMILIES)
  assert full["steps"] > defaults["steps"]


@pytest.mark.parametrize(
  "name, value",
  [
    ("tasks", ()),
    ("tasks", ("nope",)),
    ("tasks", "logistic"),
    ("budgets", ()),
    ("budgets", (-1.0,)),
    ("budgets", (math.nan,)),
    ("families", ("top_k", "scaled_sign")),
    ("families", ("top_k_nd",)),
    ("families", ("top_k_nd", "sign")),
    ("levels", 0),
    ("levels", 65),
    ("num_workers", 0),
    ("steps", 0),
    ("steps", 2.5),
    ("lrs", (0.0,)),
    ("lrs", ()),
    ("batch_size", -1),
    ("tolerance", -0.1),
    ("tolerance", math.inf),
    ("libsvm", 3),
    ("seed", -1),
  ],
)
def test_bad_options_raise_naming_them(name, value):
  with pytest.raises(ValueError, match=name):
    _ranking.compressor_ranking(**{name: value}, show_progress=False)


# -- tiny runs -------------------------------------------------------------------------------------

TINY = {
  "tasks": ("logistic",),
  "budgets": (2.5, 4.5),
  "families": ("top_k_nd", "scaled_sign", "natural_dithering"),
  "num_workers": 2,
  "steps": 4,
  "lrs": (1.0, 3.0),
}


@pytest.fixture(scope="module")
def tiny():
  return _ranking.CLAIM.run(show_progress=False, **TINY)


def _present(finding):
  return [r for r in finding.rows if "rank" in r]


@pytest.mark.slow
def test_tiny_run_gives_a_rank_per_compressor(tiny):
  assert tiny.verdict in ("reproduced", "partly", "not reproduced")
  assert tiny.claim == "compressor_ranking" and tiny.seconds > 0
  cells = {(r["task"], r["budget"]) for r in tiny.rows}
  assert cells == {("logistic", 2.5), ("logistic", 4.5)}
  for task, budget in cells:
    rows = [r for r in tiny.rows if (r["task"], r["budget"]) == (task, budget)]
    assert {r["family"] for r in rows} == set(TINY["families"])  # every family has a row
    present = [r for r in rows if "rank" in r]
    # the ranks order the losses at equal bits
    for a in present:
      below = sum(b["loss_at_equal_bits"] < a["loss_at_equal_bits"] for b in present)
      assert a["rank"] == 1 + below
      assert math.isfinite(a["loss_at_equal_bits"])
    for r in rows:
      if "rank" not in r:
        assert "left out" in r["note"] and r["predicted_bits_per_coord"] > budget
  # natural dithering (>= 3.2 bits a coordinate at d = 30) is left out at 2.5 only
  nd = {r["budget"]: r for r in tiny.rows if r["family"] == "natural_dithering"}
  assert "rank" not in nd[2.5] and "rank" in nd[4.5]


@pytest.mark.slow
def test_tiny_run_sends_the_matched_bits_within_the_budget(tiny):
  d = 30
  for r in _present(tiny):
    # the runner's measured bits per step and coordinate are the matched payload bits
    assert r["bits_per_coord"] == pytest.approx(r["predicted_bits_per_coord"], rel=1e-12)
    assert r["bits_per_coord"] <= r["budget"]
    # every compressor is compared after the same total: steps x budget x d bits
    total = TINY["steps"] * r["budget"] * d
    assert r["steps"] == math.floor(total / (r["bits_per_coord"] * d) + 1e-9)
    assert r["steps"] >= TINY["steps"]
    assert r["lr"] in TINY["lrs"]
    assert r["spec"] == repr(bc.parse_compressor(r["spec"]))


@pytest.mark.slow
def test_tiny_run_verdict_follows_from_its_rows(tiny):
  firsts = []
  for budget in TINY["budgets"]:
    losses = {r["family"]: r["loss_at_equal_bits"] for r in _present(tiny) if r["budget"] == budget}
    if "top_k_nd" in losses and len(losses) >= 2:
      firsts.append(_ranking.is_first(losses, _ranking.CLAIM.defaults()["tolerance"]))
  assert tiny.verdict == _ranking.verdict_of(firsts)
  assert f"in {sum(firsts)} of {len(firsts)}" in tiny.measured
  cells = tiny.record["cells"]
  assert [c["top_k_nd_first"] for c in cells if c["counted"]] == firsts
  # the recorded curves stop at the cell's bits
  for c in cells:
    for curve in c["curves"].values():
      assert curve["bits_per_worker"][-1] <= c["bits_per_worker"]
      assert len(curve["loss"]) == len(curve["bits_per_worker"])


@pytest.mark.slow
def test_tiny_run_writes_its_files(tiny, tmp_path):
  paths = tiny.write(tmp_path)
  data = json.loads(paths["json"].read_text())
  assert data["claim"] == "compressor_ranking" and data["verdict"] == tiny.verdict
  assert "loss at equal bits" in paths["table"].read_text()
  assert (tmp_path / "loss_vs_bits.png").stat().st_size > 0
  assert data["options"]["budgets"] == list(TINY["budgets"])


@pytest.mark.slow
def test_multi_leaf_task_sends_at_most_the_budget():
  # the MLP's four leaves: the runner's count matches the per-leaf payload bits
  f = _ranking.compressor_ranking(
    tasks=("mlp",),
    budgets=(2.5,),
    families=("top_k_nd", "top_k"),
    num_workers=2,
    steps=2,
    lrs=(1.0,),
    show_progress=False,
  )
  task = ex.make_task("mlp", 2)
  d = task.num_params
  for r in _present(f):
    m = _ranking.match_budget(r["family"], 2.5, SIZES["mlp"])
    assert d == sum(SIZES["mlp"])
    assert r["bits_per_coord"] * d == pytest.approx(m.bits_per_step, rel=1e-12)
    assert r["bits_per_coord"] <= 2.5
