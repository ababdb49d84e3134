"""Methods as data: a run is a small config that round-trips through JSON.

`RunConfig` names the task (and its options), the number of workers, the algorithm, the
compressor (a spec of `biased_compression.parse_compressor`), the step size, the number of
steps, the batch size and the seed, so a result file says exactly how to reproduce it.
`make_transformation` turns the algorithm and compressor into the library's Optax chain.
With a gradient code (``code``, ``stragglers``, ``decoding``) the workers' parts are coded and
the communicating transformation is wrapped by `biased_compression.coding.coded` (``"ef"``
becomes `biased_compression.coco_ef`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import optax

import biased_compression as bc

__all__ = ["ALGORITHMS", "CODES", "RunConfig", "make_code", "make_transformation"]

# name -> (what it is, whether the compressor must be contractive)
ALGORITHMS = {
  "gd": "uncompressed distributed (S)GD: the mean of the workers' gradients (32 bits a value)",
  "dcgd": "compressed GD without error feedback: the mean of C(g_i) (DCSGD; DSignSGD for sign)",
  "ef": "error feedback (EF14 / EF-SGD), after the step size: Delta_i = C(lr g_i + e_i)",
  "ef21": "EF21: workers send C(g_i - h_i), the server keeps the mean estimate",
  "ef21_sgdm": "EF21 with momentum (EF21-SGDM)",
  "econtrol": "EControl: error feedback with strength eta (algorithm_options eta)",
  "diana": "DIANA: compressed differences to learned shifts, unbiased C",
  "powersgd": "PowerSGD: rank-r factors by power iteration, error feedback, after the step "
  "size (the 'compressor' is the rank r)",
}
AXIS = "workers"

# code spec name -> (constructor, what its parameter is)
CODES = {
  "sgc_cyclic": (bc.coding.sgc_cyclic, "d, the replication"),
  "fractional_repetition": (bc.coding.fractional_repetition, "s, the stragglers tolerated"),
  "cyclic_repetition": (bc.coding.cyclic_repetition, "s, the stragglers tolerated"),
}


def make_code(spec: str, num_workers: int) -> bc.coding.GradientCode:
  """The gradient code of a spec ``"NAME:K"`` for n workers: ``"sgc_cyclic:2"`` (replication
  d = 2), ``"fractional_repetition:1"`` or ``"cyclic_repetition:2"`` (s tolerated)."""
  name, _, arg = str(spec).partition(":")
  if name not in CODES or not arg.strip().lstrip("-").isdigit():
    forms = ", ".join(f"'{k}:K' (K = {v[1]})" for k, v in CODES.items())
    raise ValueError(f"RunConfig: code must be one of {forms}, got {spec!r}")
  return CODES[name][0](num_workers, int(arg))


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One run: what to train, how, and for how long.

  Attributes:
    task: a name of `biased_compression.experiments.TASKS` (``"logistic"``, ...).
    task_options: its keyword options (e.g. ``{"dataset": "breast_cancer"}``).
    num_workers: n.
    algorithm: a name of `ALGORITHMS`.
    compressor: a spec for `biased_compression.parse_compressor` (``"top_k:0.1"``); None
      for ``"gd"``; the rank (``"2"``) for ``"powersgd"``.
    lr: the step size.
    steps: the number of steps T.
    seed: the seed of the compressors' randomness and of the mini-batches.
    batch_size: samples per worker per step, or None for full gradients.
    algorithm_options: extra keywords of the algorithm (``{"eta": 0.1}`` for EControl,
      ``{"momentum": 0.1}`` for EF21-SGDM) and shared options (``{"method": ...}``).
    label: the name shown in tables and plots (default: from the algorithm and compressor).
    code: a gradient code spec for `make_code` (``"sgc_cyclic:2"``), or None (uncoded):
      the task's n shards are the code's parts and each worker's gradient is its coded one.
    stragglers: with a code, the probability p in [0, 1) that each worker straggles at
      each step (i.i.d., `biased_compression.coding.iid`).
    decoding: with a code, ``"sgc"``, ``"exact"`` or ``"mean"`` (see
      `biased_compression.coding.coded`).
  """

  task: str = "logistic"
  task_options: dict = dataclasses.field(default_factory=dict)
  num_workers: int = 8
  algorithm: str = "gd"
  compressor: str | None = None
  lr: float = 0.1
  steps: int = 100
  seed: int = 0
  batch_size: int | None = None
  algorithm_options: dict = dataclasses.field(default_factory=dict)
  label: str | None = None
  code: str | None = None
  stragglers: float = 0.0
  decoding: str = "sgc"

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(
        f"RunConfig: algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}"
      )
    if self.algorithm != "gd" and self.compressor is None:
      raise ValueError(f"RunConfig: algorithm {self.algorithm!r} needs a compressor spec")
    if self.algorithm == "powersgd":
      object.__setattr__(self, "compressor", str(powersgd_rank(self.compressor)))
    elif self.compressor is not None:
      # a spec that names a compressor, written as the operator prints itself
      object.__setattr__(self, "compressor", repr(bc.parse_compressor(self.compressor)))
    for name, low in (("num_workers", 1), ("steps", 1)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"RunConfig: {name} must be an int >= {low}, got {value!r}")
    bs = self.batch_size
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
      raise ValueError(f"RunConfig: batch_size must be None or an int >= 1, got {bs!r}")
    if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
      raise ValueError(f"RunConfig: lr must be a finite number > 0, got {self.lr!r}")
    p = self.stragglers
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
      raise ValueError(f"RunConfig: stragglers must be a probability in [0, 1), got {p!r}")
    if self.decoding not in bc.coding.DECODINGS:
      raise ValueError(
        f"RunConfig: decoding must be one of {bc.coding.DECODINGS}, got {self.decoding!r}"
      )
    if self.code is not None:
      make_code(self.code, self.num_workers)  # a clear error now rather than at the run
    elif p:
      raise ValueError(f"RunConfig: stragglers={p!r} needs a code (e.g. code='sgc_cyclic:1')")

  @property
  def name(self) -> str:
    if self.label is not None:
      return self.label
    coded = "" if self.code is None else f" [{self.code}, p={self.stragglers:g}]"
    if self.algorithm == "gd":
      return "GD" + coded
    if self.algorithm == "ef" and self.code is not None:
      return f"COCO-EF {self.compressor}{coded}"
    if self.algorithm == "powersgd":
      return f"PowerSGD rank {self.compressor}{coded}"
    return f"{self.algorithm.upper()} {self.compressor}{coded}"

  def replace(self, **changes) -> RunConfig:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> RunConfig:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
      raise ValueError(f"RunConfig: unknown fields {unknown}; fields: {sorted(fields)}")
    return cls(**data)

  @classmethod
  def from_json(cls, text: str) -> RunConfig:
    return cls.from_dict(json.loads(text))


def powersgd_rank(spec) -> int:
  """The rank of a ``"powersgd"`` run's spec (``"2"``, ``"rank=2"`` or an int)."""
  text = str(spec).strip().removeprefix("rank=")
  if not text.isdigit() or int(text) < 1:
    raise ValueError(f"RunConfig: powersgd needs its rank as the spec (e.g. '2'), got {spec!r}")
  return int(text)


def make_transformation(config: RunConfig, lr: Any = None) -> optax.GradientTransformation:
  """The Optax chain of ``config`` over the worker axis ``"workers"``.

  ``lr`` overrides ``config.lr`` (it may be traced: the runner maps a step-size grid).
  Error feedback (``"ef"``) and ``"powersgd"`` follow the step size, as analysed; the others
  compress the gradients and are followed by ``optax.sgd``. ``"gd"`` is `bc.compress` with
  `bc.identity` (so its bits are counted the same way, 32 per value). With a ``code`` the
  communicating transformation is wrapped by `biased_compression.coding.coded` with the
  straggler model ``coding.iid(stragglers)`` and the ``decoding`` (``"ef"`` is then
  `biased_compression.coco_ef`, the same thing).
  """
  lr = config.lr if lr is None else lr
  options = dict(config.algorithm_options)
  options.setdefault("seed", config.seed)
  options["axis_name"] = AXIS
  algorithm = config.algorithm
  if algorithm == "gd":
    c = bc.identity()
  elif algorithm == "powersgd":
    c = None
  else:
    c = bc.parse_compressor(config.compressor)
  sgd = optax.sgd(lr)
  if config.code is None:
    wrap = lambda tx: tx  # noqa: E731
  else:
    code = make_code(config.code, config.num_workers)
    stragglers = bc.coding.iid(config.stragglers)

    def wrap(tx):
      return bc.coding.coded(tx, code, stragglers, axis_name=AXIS, decoding=config.decoding)

  if algorithm in ("gd", "dcgd"):
    return optax.chain(wrap(bc.compress(c, **options)), sgd)
  if algorithm == "ef":
    return optax.chain(sgd, wrap(bc.error_feedback(c, **options)))
  if algorithm == "ef21":
    return optax.chain(wrap(bc.ef21(c, **options)), sgd)
  if algorithm == "ef21_sgdm":
    return optax.chain(wrap(bc.ef21_sgdm(c, **options)), sgd)
  if algorithm == "econtrol":
    eta = options.pop("eta", 0.1)
    return optax.chain(wrap(bc.econtrol(c, eta, **options)), sgd)
  if algorithm == "powersgd":
    return optax.chain(sgd, wrap(bc.powersgd(powersgd_rank(config.compressor), **options)))
  return optax.chain(wrap(bc.diana(c, **options)), sgd)
