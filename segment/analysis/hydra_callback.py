"""A Hydra callback that keeps a sweep's study report current and prints its headline at the end."""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

__all__ = ["StudyReport"]

log = logging.getLogger(__name__)


class StudyReport(Callback):
    """Rewrite ``report.md`` in the sweep folder after every job, print its headline after the
    sweep.

    After every job, not only at the end: Hydra skips ``on_multirun_end`` when a job failed, and a
    sweep killed half-way should still leave a report of what finished. Enabled by
    ``experiment=compare_pretraining`` (``hydra.callbacks.study_report``).
    """

    def _write(self, config: DictConfig) -> str | None:
        from segment.analysis.report import write_report  # matplotlib only when a report is due

        try:
            path, top = write_report(config.hydra.sweep.dir)
        except Exception as error:  # noqa: BLE001 -- a report problem must never fail the sweep
            log.warning("study report not written: %s", error)
            return None
        log.info("study report: %s", path)
        return top

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            self._write(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        top = self._write(config)
        if top is not None:
            print(f"\n{top}\n\nFull report: {config.hydra.sweep.dir}/report.md")
