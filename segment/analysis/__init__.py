"""The study's analysis: read a sweep's run folders, compare arms, write the report.

The report itself is ``segment.analysis.report`` (``python -m segment.analysis.report <sweep>``); the Hydra
callback that rewrites it after every job is ``segment.analysis.hydra_callback.StudyReport`` (not imported here:
it imports the report, which imports this package).
"""

from segment.analysis.runs import Run, load_run, load_runs
from segment.analysis.stats import RatioEstimate, kaplan_meier, mean_std, paired_ratio, tuned_ratio
from segment.analysis.study import Study

__all__ = [
    "RatioEstimate", "Run", "Study", "kaplan_meier", "load_run", "load_runs", "mean_std",
    "paired_ratio", "tuned_ratio",
]  # fmt: skip
