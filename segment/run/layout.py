"""Where a run keeps its files: the one definition of the run folder's names.

The names follow the config (the CSV logger's ``name``, the tracker's ``filename``, ...), so
:meth:`RunLayout.from_config` reads them once; the run folder stores the layout in its record, and
every reader (the report, evaluation, the next attempt) takes it from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["ARCHIVE", "METRICS", "RunLayout"]

METRICS = "metrics.csv"  # the CSV logger's file in its folder (Lightning's name)
ARCHIVE = "archive"  # earlier runs of a reused folder, by start time; never read as this run's
_CONFIG_KEYS = {  # the layout's parts that the config names
    "checkpoints": "callbacks.last_checkpoint.dirpath",
    "thresholds": "callbacks.thresholds.filename",
    "csv": "logger.csv.name",
    "tensorboard": "logger.tensorboard.name",
    "masks": "callbacks.mask_snapshots.dirname",
}


@dataclass(frozen=True)
class RunLayout:
    """File and folder names inside a run folder, relative to it (any other: ValueError)."""

    record: str = "run.json"  # segment.run.record's file
    hydra: str = ".hydra"
    checkpoints: str = "checkpoints"
    thresholds: str = "thresholds.json"
    csv: str = "csv"
    tensorboard: str = "tensorboard"
    masks: str = "masks"
    log: str = "train.log"

    def __post_init__(self) -> None:
        # every reader joins these to the run folder: an absolute or ".." name would leave it
        for key, value in asdict(self).items():
            parts = Path(value).parts if isinstance(value, str) else ("..",)
            if not parts or parts[0] == "/" or ".." in parts:
                raise ValueError(
                    f"layout {key}={value!r} (from {_CONFIG_KEYS.get(key, 'the run record')}) is "
                    f"not a path in the run folder: name it relative to it, without '..' (default "
                    f"{getattr(type(self), key)!r})"
                )

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunLayout:
        """The names ``cfg`` gives (defaults where a callback or logger is not configured)."""
        from omegaconf import OmegaConf  # here: reading a record needs no OmegaConf

        folder = Path(str(cfg.paths.output_dir))

        def name(key: str, default: str) -> str:
            path = Path(str(OmegaConf.select(cfg, key) or default))
            return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)

        return cls(**{k: name(key, getattr(cls, k)) for k, key in _CONFIG_KEYS.items()})

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
        return tuple(name for part, name in asdict(self).items() if part != "log")

    def holds_results(self, folder: str | Path) -> bool:
        """Whether a run left results in ``folder``: any of :attr:`results` but the record and
        ``.hydra/`` (a refused attempt writes the one, an attempt that starts the other)."""
        kept = set(self.results) - {self.record, self.hydra}
        paths = [Path(folder) / name for name in kept]
        return any(path.is_file() or any(path.glob("*")) for path in paths)
