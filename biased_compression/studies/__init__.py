"""The papers' claims as studies: one module per claim, a `Claim` each, and a report.

``biased-compression reproduce NAME`` runs one claim's study at a small size (``--full`` for
the paper's); ``reproduce all`` writes ``REPORT.md`` with every claim's statement, what was
measured and a verdict. From Python: `reproduce` / `reproduce_all`, or the study functions
(`linear_convergence`, ...), which return a `Finding`. Each claim's module is public under
its topic's name (``studies.contraction``, ``studies.distributions``, ...) with its helpers
(the closed forms of the gradient-distribution study, the budget matching of the ranking).

1. `linear_convergence` (``contraction``), 2. `divergence_without_ef` (``divergence``),
3. `compressor_ranking` (``ranking``), 4. `gradient_distributions` (``distributions``):
Beznosikov et al., On Biased Compression for Distributed Learning.
5. `induced_vs_ef` (``induced``): Horváth and Richtárik, A Better Alternative to Error
Feedback. 6. `heavy_tailed_noise` (``heavy_tails``), 7. `scaling_rules` (``scaling``):
Compagnoni et al., Unbiased and Sign Compression in Distributed Learning.
"""

from biased_compression.studies import _contraction as contraction
from biased_compression.studies import _distributions as distributions
from biased_compression.studies import _divergence as divergence
from biased_compression.studies import _heavy_tails as heavy_tails
from biased_compression.studies import _induced as induced
from biased_compression.studies import _ranking as ranking
from biased_compression.studies import _scaling_rules as scaling
from biased_compression.studies._claims import VERDICTS
from biased_compression.studies._claims import Claim
from biased_compression.studies._claims import Finding
from biased_compression.studies._claims import Option
from biased_compression.studies._claims import markdown_table
from biased_compression.studies._claims import report
from biased_compression.studies._contraction import linear_convergence
from biased_compression.studies._distributions import gradient_distributions
from biased_compression.studies._divergence import divergence_without_ef
from biased_compression.studies._heavy_tails import heavy_tailed_noise
from biased_compression.studies._induced import induced_vs_ef
from biased_compression.studies._ranking import compressor_ranking
from biased_compression.studies._reproduce import CLAIMS
from biased_compression.studies._reproduce import register
from biased_compression.studies._reproduce import reproduce
from biased_compression.studies._reproduce import reproduce_all
from biased_compression.studies._scaling_rules import scaling_rules

for _module in (
  contraction,
  divergence,
  ranking,
  distributions,
  induced,
  heavy_tails,
  scaling,
):
  register(_module.CLAIM)
del _module

__all__ = [
  "CLAIMS",
  "VERDICTS",
  "Claim",
  "Finding",
  "Option",
  "compressor_ranking",
  "contraction",
  "distributions",
  "divergence",
  "divergence_without_ef",
  "gradient_distributions",
  "heavy_tailed_noise",
  "heavy_tails",
  "induced",
  "induced_vs_ef",
  "linear_convergence",
  "markdown_table",
  "ranking",
  "register",
  "report",
  "reproduce",
  "reproduce_all",
  "scaling",
  "scaling_rules",
]
