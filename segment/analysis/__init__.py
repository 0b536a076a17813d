"""The study's analysis: read a sweep's run folders, compare arms, write the report.

The report itself is ``segment.analysis.report`` (``python -m segment.analysis.report <sweep>``);
the Hydra callback that rewrites it after every job is
``segment.analysis.hydra_callback.StudyReport`` (not imported here: it imports the report, which
imports this package). Nothing here imports Lightning.
"""

from segment.analysis.runs import Run, load_run, load_runs
from segment.analysis.stats import Cell, Estimate, compare, kaplan_meier, mean_std, tuned
from segment.analysis.study import Study

__all__ = [
    "Cell",
    "Estimate",
    "Run",
    "Study",
    "compare",
    "kaplan_meier",
    "load_run",
    "load_runs",
    "mean_std",
    "tuned",
]
