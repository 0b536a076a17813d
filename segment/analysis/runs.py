"""Read the run folders of a sweep: config choices, per-epoch metrics, thresholds, status."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segment.provenance import RunRecord

__all__ = ["Run", "load_run", "load_runs"]


@dataclass
class Run:
    """One training run as the report sees it.

    Attributes:
        folder: The run folder.
        model: The ``model`` config choice (``unet_vgg``, ...).
        seed: The training seed.
        status: ``completed``, ``failed``, ``interrupted`` or ``incomplete`` (killed or still running).
        error: The error of a failed run.
        weights: The encoder weights the run started from.
        epochs: Per-epoch metrics, ``{epoch (1-based): {"train/loss": ..., "val/loss": ..., ...}}``.
        thresholds: ``{"val_loss<=0.7": {"epoch", "step", "images_seen", "seconds", "value"} or None}``.
        history: The threshold tracker's per-epoch ``images_seen`` and ``seconds``.
    """

    folder: Path
    model: str
    seed: int | None
    status: str
    error: str | None = None
    weights: str | None = None
    epochs: dict[int, dict[str, float]] = field(default_factory=dict)
    thresholds: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Completed with at least one validated epoch."""
        return self.status == "completed" and any("val/loss" in row for row in self.epochs.values())

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """Epochs and values of one metric, skipping epochs that did not log it."""
        points = [(epoch, row[name]) for epoch, row in sorted(self.epochs.items()) if name in row]
        return [e for e, _ in points], [v for _, v in points]

    def best(self, name: str, lower_is_better: bool) -> tuple[float, int] | None:
        """Best value of a metric and its epoch."""
        epochs, values = self.series(name)
        if not values:
            return None
        pick = min if lower_is_better else max
        value = pick(values)
        return value, epochs[values.index(value)]


def _read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """Lightning's CSV log, one row per logging call -> one dict per epoch (last value wins)."""
    epochs: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return epochs
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if not row.get("epoch"):
                continue
            merged = epochs.setdefault(int(float(row["epoch"])) + 1, {})
            for key, text in row.items():
                if key in ("epoch", "step") or not text:
                    continue
                value = float(text)
                if math.isfinite(value):
                    merged[key] = value
    return epochs


def _weights_name(weights: Any) -> str | None:
    """``{"source": "hed-bsds500", "requested": "imagenet", ...}`` -> ``"hed-bsds500 (requested imagenet)"``."""
    if weights is None:
        return None
    if not hasattr(weights, "get"):
        return str(weights)
    source, requested = weights.get("source", "?"), weights.get("requested")
    return source if requested in (None, source) else f"{source} (requested {requested})"


def load_run(folder: str | Path) -> Run:
    """Read one run folder written by ``train.py`` (``.hydra/``, ``run.json``, ``csv/``, ``thresholds.json``)."""
    folder = Path(folder)
    hydra = OmegaConf.load(folder / ".hydra" / "hydra.yaml")
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    model = str(hydra.hydra.runtime.choices.get("model", "?"))
    record = RunRecord.read(folder) or {}
    thresholds_file = folder / "thresholds.json"
    tracked = json.loads(thresholds_file.read_text()) if thresholds_file.is_file() else {}
    status = record.get("status")
    if status is None:  # a run from before run.json existed: trust the tracker's end mark
        status = "completed" if tracked.get("finished") else "incomplete"
    elif status == "running":
        status = "incomplete"
    weights = record.get("encoder_weights_used")
    if weights is None and (folder / "csv" / "hparams.yaml").is_file():
        weights = OmegaConf.load(folder / "csv" / "hparams.yaml").get("encoder_weights_used")
    return Run(
        folder=folder,
        model=model,
        seed=config.get("seed"),
        status=status,
        error=record.get("error"),
        weights=_weights_name(weights),
        epochs=_read_metrics(folder / "csv" / "metrics.csv"),
        thresholds=tracked.get("thresholds", {}),
        history=tracked.get("history", []),
    )


def load_runs(sweep: str | Path) -> list[Run]:
    """Every run folder under ``sweep`` (a Hydra multirun folder), ordered by model and seed.

    A folder without a readable Hydra config is returned as a ``failed`` run naming the
    problem, so that the report lists it instead of silently dropping it.
    """
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise FileNotFoundError(f"no such sweep folder: {sweep}")
    runs = []
    for hydra_dir in sorted(sweep.rglob(".hydra")):
        try:
            runs.append(load_run(hydra_dir.parent))
        except Exception as error:  # noqa: BLE001 -- one unreadable run must not hide the others
            runs.append(Run(hydra_dir.parent, "?", None, "failed", f"unreadable run folder: {error}"))
    if not runs:
        raise FileNotFoundError(f"{sweep} holds no run folders (none has a .hydra/ folder); is it a multirun folder?")
    return sorted(runs, key=lambda run: (run.model, run.seed if run.seed is not None else -1, str(run.folder)))
