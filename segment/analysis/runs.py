"""Read the run folders of a sweep: config, overrides, every validation, thresholds, status."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from segment.provenance import RunRecord

__all__ = ["Crossing", "Run", "load_run", "load_runs"]

# Overrides that say where things are or how a run was continued, never what it is.
_INFRASTRUCTURE = ("hydra", "paths", "data.root", "data.download", "skip_completed", "ckpt_path", "overwrite",
                   "trainer.enable_progress_bar", "trainer.enable_model_summary")  # fmt: skip


@dataclass(frozen=True)
class Crossing:
    """When a run first reached a level (held for ``patience`` validations), or when it was last seen without it."""

    time: float  # in the unit asked for (fractional epochs, images, seconds)
    reached: bool  # False: right-censored at ``time``
    step: int | None = None  # the global step of the crediting validation (its mask snapshot)


@dataclass
class Run:
    """One training run as the report sees it.

    Attributes:
        folder: The run folder.
        choices: Hydra's config-group choices (``model``, ``protocol``, ``data``, ...).
        overrides: The job's command-line overrides (``{"model": "unet_vgg", "seed": "0"}``),
            infrastructure (paths, data root, resume flags) left out.
        config: The resolved config (``run.json``), else Hydra's composed one.
        seed: The training seed.
        status: ``completed``, ``failed``, ``interrupted`` or ``incomplete`` (killed or still running).
        error: The error of a failed run.
        weights: The encoder weights the run started from.
        validations: Every validation, in order: ``epoch`` (fractional), ``step``,
            ``images_seen``, ``seconds``, ``cpu_share`` and the ``val/*`` metrics.
        train_loss: ``{epoch (1-based): train/loss}``.
        patience: Validations in a row a threshold had to hold.
        record: ``run.json``.
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
    record: dict[str, Any] = field(default_factory=dict)

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

    def crossing(self, metric: str, mode: str, level: float, unit: str = "epoch",
                 interpolate: bool = False) -> Crossing | None:  # fmt: skip
        """The first validation from which ``metric`` held ``level`` for ``patience`` validations in a row.

        Args:
            metric: A validation metric (``val/loss``, ``val/miou``).
            mode: ``min`` (reached at ``<=``) or ``max`` (``>=``).
            level: The threshold.
            unit: ``epoch`` (fractional), ``images_seen`` or ``seconds``.
            interpolate: Credit the crossing at the linear interpolation between the last
                validation above the level and the first at or past it, instead of the latter.

        Returns:
            The crossing, or a right-censored point at the last validation; None without validations.
        """
        rows = [row for row in self.validations if metric in row]
        if not rows:
            return None
        holds = [row[metric] <= level if mode == "min" else row[metric] >= level for row in rows]
        for i in range(len(rows) - self.patience + 1):
            if all(holds[i : i + self.patience]):
                time = float(rows[i][unit])
                if interpolate and i > 0:
                    before, after = rows[i - 1], rows[i]
                    span = before[metric] - after[metric]
                    fraction = (before[metric] - level) / span if span else 1.0
                    time = float(before[unit]) + fraction * (float(after[unit]) - float(before[unit]))
                return Crossing(time, True, int(rows[i]["step"]))
        return Crossing(float(rows[-1][unit]), False)

    def best(self, name: str, lower_is_better: bool) -> tuple[float, float] | None:
        """Best value of a validation metric and its (fractional) epoch."""
        epochs, values = self.series(name)
        if not values:
            return None
        value = (min if lower_is_better else max)(values)
        return value, epochs[values.index(value)]

    @property
    def last_epoch(self) -> float:
        return float(self.validations[-1]["epoch"]) if self.validations else 0.0


def _read_train_loss(path: Path) -> dict[int, float]:
    """``train/loss`` per epoch from Lightning's CSV log."""
    losses: dict[int, float] = {}
    if not path.is_file():
        return losses
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if row.get("train/loss") and row.get("epoch"):
                value = float(row["train/loss"])
                if math.isfinite(value):
                    losses[int(float(row["epoch"])) + 1] = value
    return losses


def _weights_name(weights: Any) -> str | None:
    """``{"source": "hed-bsds500", "requested": "imagenet", ...}`` -> ``"hed-bsds500 (requested imagenet)"``."""
    if not isinstance(weights, dict):
        return None if weights is None else str(weights)
    source, requested = weights.get("source", "?"), weights.get("requested")
    return source if requested in (None, source) else f"{source} (requested {requested})"


def _overrides(folder: Path) -> dict[str, str]:
    path = folder / ".hydra" / "overrides.yaml"
    overrides = {}
    items = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    for item in items:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not any(key == name or key.startswith((name + ".", name + "/")) for name in _INFRASTRUCTURE):
            overrides[key] = value
    return overrides


def load_run(folder: str | Path) -> Run:
    """Read one run folder written by ``train.py`` (``.hydra/``, ``run.json``, ``thresholds.json``, ``csv/``)."""
    folder = Path(folder)
    hydra = OmegaConf.load(folder / ".hydra" / "hydra.yaml")
    record = RunRecord.read(folder) or {}
    config = record.get("config") or OmegaConf.to_container(OmegaConf.load(folder / ".hydra" / "config.yaml"))
    tracked_file = folder / "thresholds.json"
    tracked = json.loads(tracked_file.read_text()) if tracked_file.is_file() else {}
    status = record.get("status")
    if status is None:
        status = "completed" if tracked.get("finished") else "incomplete"
    elif status == "running":
        status = "incomplete"
    return Run(
        folder=folder,
        choices={str(k): str(v) for k, v in hydra.hydra.runtime.choices.items() if v is not None},
        overrides=_overrides(folder),
        config=config,
        seed=config.get("seed"),
        status=status,
        error=record.get("error"),
        weights=_weights_name(record.get("encoder_weights_used")),
        validations=list(tracked.get("history", [])),
        train_loss=_read_train_loss(folder / "csv" / "metrics.csv"),
        patience=int(tracked.get("patience", 1)),
        record=record,
    )


def load_runs(sweep: str | Path) -> list[Run]:
    """Every run folder under ``sweep`` (a Hydra multirun folder), archived runs left out, ordered by folder.

    A folder without a readable Hydra config is returned as a ``failed`` run naming the
    problem, so that the report lists it instead of silently dropping it.
    """
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise FileNotFoundError(f"no such sweep folder: {sweep}")
    runs = []
    for hydra_dir in sorted(sweep.rglob(".hydra")):
        folder = hydra_dir.parent
        if "archive" in folder.relative_to(sweep).parts:
            continue  # a run that overwrite=true replaced
        try:
            runs.append(load_run(folder))
        except Exception as error:  # noqa: BLE001 -- one unreadable run must not hide the others
            runs.append(Run(folder, {}, {}, {}, None, "failed", f"unreadable run folder: {error}"))
    if not runs:
        raise FileNotFoundError(f"{sweep} holds no run folders (none has a .hydra/ folder); is it a multirun folder?")
    return runs
