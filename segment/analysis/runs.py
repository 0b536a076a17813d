"""Read the run folders of a sweep: config, overrides, every validation, thresholds, status."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segment.analysis.thresholds import Crossing, Threshold, first_crossing
from segment.config.names import identity, value_text
from segment.run.layout import ARCHIVE, RunLayout
from segment.run.record import RunRecord, read_record

__all__ = ["Crossing", "Run", "load_run", "load_runs"]


@dataclass
class Run:
    """One training run as the report sees it.

    Attributes:
        folder: The run folder.
        choices: Hydra's config-group choices (``model``, ``protocol``, ``data``, ...).
        overrides: The job's command-line overrides as folder-name text (``{"model": "unet_vgg",
            "model.optimizer.lr": "1e-4"}``), infrastructure (paths, data root, resume flags)
            left out.
        config: The resolved config (``.hydra/config.yaml``; older runs: ``run.json``).
        seed: The training seed.
        status: ``completed``, ``failed``, ``interrupted`` or ``incomplete`` (killed or still
        running).
        error: The error of a failed run.
        weights: The encoder weights the run started from.
        validations: Every validation, in order: ``epoch`` (fractional), ``step``,
            ``images_seen``, ``seconds``, ``cpu_share`` and the ``val/*`` metrics.
        train_loss: ``{epoch (1-based): train/loss}``.
        patience: Validations in a row a threshold had to hold.
        record: The run record (``run.json``).
    """

    folder: Path
    choices: dict[str, str]
    overrides: dict[str, str]
    config: dict[str, Any]
    seed: int | None
    status: str
    error: str | None = None
    weights: str | None = None
    validations: list[dict[str, Any]] = field(default_factory=list)
    train_loss: dict[int, float] = field(default_factory=dict)
    patience: int = 1
    record: RunRecord = field(default_factory=RunRecord)
    typed: list[str] = field(default_factory=list)  # the overrides as typed (.hydra/overrides.yaml)
    # the sweep's parameters ({"seed": "0,1,2", ...}: hydra.sweeper.params), so a report can name
    # the runs still to come
    swept: dict[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Completed with at least one validation."""
        return self.status == "completed" and any("val/loss" in row for row in self.validations)

    @property
    def model(self) -> str:
        return self.choices.get("model", "?")

    def value(self, key: str) -> Any:
        """A config-group choice (``model``) or a config value (``model.optimizer.lr``)."""
        if key in self.choices:
            return self.choices[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def series(self, name: str, unit: str = "epoch") -> tuple[list[float], list[float]]:
        """``unit`` (epoch, images_seen, seconds) and values of one validation metric."""
        points = [(row[unit], row[name]) for row in self.validations if name in row and unit in row]
        return [t for t, _ in points], [v for _, v in points]

    def crossing(
        self, metric: str, mode: str, level: float, unit: str = "epoch", interpolate: bool = False
    ) -> Crossing | None:
        """The first validation from which ``metric`` held ``level`` for ``patience`` validations
        in a row.

        Args:
            metric: A validation metric (``val/loss``, ``val/miou``).
            mode: ``min`` (reached at ``<=``) or ``max`` (``>=``).
            level: The threshold.
            unit: ``epoch`` (fractional), ``images_seen`` or ``seconds``.
            interpolate: Credit the crossing at the linear interpolation between the last
                validation above the level and the first at or past it, instead of the latter.

        Returns:
            The crossing, or a right-censored point at the last validation; None without
            validations.
        """
        return first_crossing(
            self.validations, Threshold(metric, mode, level), self.patience, unit, interpolate
        )

    def best(self, name: str, lower_is_better: bool) -> tuple[float, float] | None:
        """Best value of a validation metric and its (fractional) epoch."""
        epochs, values = self.series(name)
        if not values:
            return None
        value = (min if lower_is_better else max)(values)
        return value, epochs[values.index(value)]

    @property
    def precision(self) -> str | None:
        """The precision the run trained in."""
        trained = self.record.trained
        return (trained.precision or {}).get("precision") if trained else None

    @property
    def last_epoch(self) -> float:
        return float(self.validations[-1]["epoch"]) if self.validations else 0.0


def _read_train_loss(path: Path) -> dict[int, float]:
    """``train/loss`` per epoch from Lightning's CSV log."""
    losses: dict[int, float] = {}
    if not path.is_file():
        return losses
    with path.open(newline="") as file:
        for number, row in enumerate(csv.DictReader(file), start=2):
            if row.get("train/loss") and row.get("epoch"):
                try:
                    value, epoch = float(row["train/loss"]), int(float(row["epoch"]))
                except ValueError:
                    raise ValueError(
                        f"{path}, line {number}: train/loss={row['train/loss']!r}, "
                        f"epoch={row['epoch']!r}: not numbers"
                    ) from None
                if math.isfinite(value):
                    losses[epoch + 1] = value
    return losses


def _weights_name(weights: Any) -> str | None:
    """``{"source": "hed-bsds500", "requested": "imagenet", ...}`` -> ``"hed-bsds500 (requested
    imagenet)"``."""
    if not isinstance(weights, dict):
        return None if weights is None else str(weights)
    source, requested = weights.get("source", "?"), weights.get("requested")
    return source if requested in (None, source) else f"{source} (requested {requested})"


def _typed(path: Path) -> list[str]:
    return (
        [str(item) for item in (yaml.safe_load(path.read_text()) or [])] if path.is_file() else []
    )


def _overrides(items: list[str]) -> dict[str, str]:
    return {key: value_text(value) for key, value in identity(items).items()}


def _json(path: Path, kind: type) -> Any:
    """A JSON file of the run folder, or an error naming it and the fix."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path} is unreadable ({error}); rerun the job with skip_completed=true"
        ) from None
    if not isinstance(value, kind):
        raise ValueError(
            f"{path} holds a {type(value).__name__}, not a {kind.__name__}; rerun the job"
        )
    return value


def _history(path: Path, tracked: dict) -> list[dict[str, Any]]:
    """``thresholds.json``'s validations, each value a number (else an error naming the row)."""
    rows = tracked.get("history", [])
    for index, row in enumerate(rows):
        bad = [
            key
            for key, value in row.items()
            if key != "cpu_share" and not isinstance(value, int | float)
        ]
        if bad:
            raise ValueError(
                f"{path}: history[{index}][{bad[0]!r}]={row[bad[0]]!r} is not a number"
            )
    return list(rows)


def plain_yaml(path: Path) -> dict[str, Any]:
    """A YAML file of a run as plain data (``{}`` if absent): nothing in it is resolved, so an
    interpolation written into a run's files is text, never run."""
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def load_run(folder: str | Path) -> Run:
    """Read one run folder written by ``train.py`` (its record, ``.hydra/``, thresholds, CSV
    log)."""
    folder = Path(folder)
    found = read_record(folder)
    record = found or RunRecord(status="completed")
    layout = RunLayout.of(record.layout)
    hydra = layout.path(folder, "hydra")
    settings = plain_yaml(hydra / "hydra.yaml").get("hydra") or {}
    choices = (settings.get("runtime") or {}).get("choices") or {}
    swept = (settings.get("sweeper") or {}).get("params") or {}
    # none where the first attempt failed before training
    config = record.config or plain_yaml(hydra / "config.yaml")
    tracked_file = layout.path(folder, "thresholds")
    tracked = _json(tracked_file, dict) if tracked_file.is_file() else {}
    status = {"running": "incomplete", "new": "incomplete"}.get(record.status, record.status)
    if found is None:  # a folder without a record: its tracker says whether it ended
        status = "completed" if tracked.get("finished") else "incomplete"
    return Run(
        folder=folder,
        choices={str(k): str(v) for k, v in choices.items() if v is not None},
        overrides=_overrides(_typed(hydra / "overrides.yaml")),
        config=config,
        seed=config.get("seed", record.seed),
        status=status,
        error=record.error,
        weights=_weights_name(record.encoder_weights_used),
        validations=_history(tracked_file, tracked),
        train_loss=_read_train_loss(layout.metrics_csv(folder)),
        patience=int(tracked.get("patience", 1)),
        record=record,
        typed=_typed(hydra / "overrides.yaml"),
        swept={str(k): str(v) for k, v in swept.items()},
    )


def load_runs(sweep: str | Path) -> list[Run]:
    """Every run folder under ``sweep`` (a Hydra multirun folder), archived runs left out,
    ordered by folder.

    A folder without a readable Hydra config is returned as a ``failed`` run naming the problem,
    so that the report lists it instead of silently dropping it.
    """
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise FileNotFoundError(f"no such sweep folder: {sweep}")
    runs = []
    layout = RunLayout()
    found = {p.parent for name in (layout.record, layout.hydra) for p in sweep.rglob(name)}
    for folder in sorted(found):
        if ARCHIVE in folder.relative_to(sweep).parts:
            continue  # a run that overwrite=true replaced
        try:
            runs.append(load_run(folder))
        except Exception as error:  # noqa: BLE001 -- one unreadable run must not hide the others
            runs.append(Run(folder, {}, {}, {}, None, "failed", f"unreadable run folder: {error}"))
    if not runs:
        raise FileNotFoundError(
            f"{sweep} holds no run folders (none has a .hydra/ folder); is it a multirun folder?"
        )
    return runs
