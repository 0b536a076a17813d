"""The loggers, one module each: Lightning's logger, plus what this project asks of it.

Adding a logger is one module here and one YAML in ``conf/logger/``. Beside Lightning's interface a
logger may define (the callbacks and the driver look for these by name, so a plain Lightning logger
works too, with its hyperparameters and metrics only):

- ``log_masks(tag, sheet, step, masks)``: the mask panel (``sheet``: an ``(H, W, 3)`` uint8 image;
  ``masks``: ``(images, truths, predictions, class_names)``); a logger without it takes no images.
- ``log_run(run)``: the run's hyperparameters when training starts, with the metrics a table of
  runs shows, the keys the sweep varies, the resolved config and the tags
  (``segment.callbacks.hparams.RunView``).
- ``log_scores(scores, step)``: the final and best scores when training ends.
- ``viewer(run)``: the command that shows its dashboards, printed in the run's summary.
- ``results(run)``: the folders it keeps in the run folder, moved aside with the run's other
  results when the folder is reused (``overwrite=true``).
- a ``log_position`` property and argument: what it has logged (stored in every checkpoint,
  :func:`log_position`), and the log continued from a checkpoint's position.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["log_position"]


def log_position(loggers: Iterable[Any]) -> dict[str, int]:
    """What the loggers have logged so far: ``rows`` (CSV rows) and ``step`` (the last step)."""
    position = {"rows": 0, "step": -1}
    for logger in loggers:
        found = getattr(logger, "log_position", None)  # fast_dev_run's answers any name: a method
        for key, value in (found if isinstance(found, dict) else {}).items():
            position[key] = max(position[key], value)
    return position
