"""The one place where ncflow calls the analysis: `ncflow reproduce` ends by writing the paper's report.

Everything else in ncflow writes the tracking store and leaves reading it to `analysis`, which imports nothing of
ncflow; this module sits at the top of the CLI, so the arrow from training to the analysis is drawn once, here.
"""

from __future__ import annotations

from pathlib import Path


def write_reproduction_report(tracking_uri: str, experiment: str, out: Path, progress: bool) -> str:
    """The report (Markdown, CSV and LaTeX tables, PNG figures, the paper comparison) in `out`; what was written."""
    from analysis.report import Source, build_report  # the analysis' own dependencies load only when it runs

    outcome = build_report(Source(tracking_uri, experiment, None, None, progress), out, ("md", "csv", "tex"),
                           ("png",), compare=True)
    return "\n".join((outcome.describe(), *outcome.comparisons))  # and which comparisons with the paper are filled
