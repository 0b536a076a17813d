"""The study's analysis: read a sweep's run folders, compare models, write the report.

The report itself is ``segment.analysis.report`` (``python -m segment.analysis.report <sweep>``).
"""

from segment.analysis.hydra_callback import StudyReport
from segment.analysis.runs import Run, load_run, load_runs
from segment.analysis.stats import bootstrap_ratio, mean_std

__all__ = ["Run", "StudyReport", "bootstrap_ratio", "load_run", "load_runs", "mean_std"]
