"""The papers' claims as studies: one module per claim, a `Claim` each, and a report.

``biased-compression reproduce NAME`` runs one claim's study at a small size (``--full`` for
the paper's); ``reproduce all`` writes ``REPORT.md`` with every claim's statement, what was
measured and a verdict.
"""

from biased_compression.studies import _contraction  # the claims
from biased_compression.studies import _distributions
from biased_compression.studies import _divergence
from biased_compression.studies import _heavy_tails
from biased_compression.studies import _induced
from biased_compression.studies import _ranking
from biased_compression.studies import _scaling_rules
from biased_compression.studies._claims import VERDICTS
from biased_compression.studies._claims import Claim
from biased_compression.studies._claims import Finding
from biased_compression.studies._claims import Option
from biased_compression.studies._claims import markdown_table
from biased_compression.studies._claims import report
from biased_compression.studies._reproduce import CLAIMS
from biased_compression.studies._reproduce import register
from biased_compression.studies._reproduce import reproduce
from biased_compression.studies._reproduce import reproduce_all

for _module in (
  _contraction,
  _divergence,
  _ranking,
  _distributions,
  _induced,
  _heavy_tails,
  _scaling_rules,
):
  register(_module.CLAIM)
del _module

__all__ = [
  "CLAIMS",
  "VERDICTS",
  "Claim",
  "Finding",
  "Option",
  "markdown_table",
  "register",
  "report",
  "reproduce",
  "reproduce_all",
]
