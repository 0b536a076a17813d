"""Where a run keeps its files: the one definition of the run folder's names.

The names follow the config (the CSV logger's ``name``, the tracker's ``filename``, ...), so
:meth:`RunLayout.from_config` reads them once; the run folder stores the layout in its record, and
every reader (the report, evaluation, the next attempt) takes it from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segment.record import FILE as RECORD

__all__ = ["METRICS", "RunLayout"]

METRICS = "metrics.csv"  # the CSV logger's file in its folder (Lightning's name)


@dataclass(frozen=True)
class RunLayout:
    """File and folder names inside a run folder (relative to it)."""

    record: str = RECORD
    hydra: str = ".hydra"
    checkpoints: str = "checkpoints"
    thresholds: str = "thresholds.json"
    csv: str = "csv"
    tensorboard: str = "tensorboard"
    masks: str = "masks"
    log: str = "train.log"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunLayout:
        """The names ``cfg`` gives (defaults where a callback or logger is not configured)."""
        folder = Path(str(cfg.paths.output_dir))

        def name(key: str, default: str) -> str:
            value = OmegaConf.select(cfg, key, default=None)
            if value is None:
                return default
            path = Path(str(value))
            return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)

        return cls(
            checkpoints=name("callbacks.last_checkpoint.dirpath", cls.checkpoints),
            thresholds=name("callbacks.thresholds.filename", cls.thresholds),
            csv=name("logger.csv.name", cls.csv),
            tensorboard=name("logger.tensorboard.name", cls.tensorboard),
            masks=name("callbacks.mask_snapshots.dirname", cls.masks),
        )

    @classmethod
    def of(cls, saved: dict[str, Any] | None) -> RunLayout:
        """The layout a record saved (the defaults for records written before layouts were)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (saved or {}).items() if k in known})

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def path(self, folder: str | Path, part: str) -> Path:
        """``layout.path(run, "thresholds")`` -> ``<run>/thresholds.json``."""
        return Path(folder) / getattr(self, part)

    def metrics_csv(self, folder: str | Path) -> Path:
        return Path(folder) / self.csv / METRICS

    def snapshot(self, folder: str | Path, step: int | str) -> Path:
        """A mask snapshot: ``masks/step_0000123.png``; ``step`` ``"input"`` or ``"truth"``: the
        image and its labels, written once."""
        name = step if isinstance(step, str) else f"step_{int(step):07d}"
        return Path(folder) / self.masks / f"{name}.png"

    @property
    def results(self) -> tuple[str, ...]:
        """What a run leaves besides its log: moved to ``archive/`` when the folder is reused."""
        return (
            self.record,
            self.hydra,
            self.thresholds,
            self.checkpoints,
            self.csv,
            self.tensorboard,
            self.masks,
        )
