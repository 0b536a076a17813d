"""The study report of a sweep: ``python -m segment.analysis.report <multirun folder>``.

Reads the run folders of a Hydra multirun (``train.py -m experiment=compare_pretraining``),
never a GPU, and writes into that folder:

- ``report.md``: epochs / images / seconds to each threshold per model (mean +- std over
  seeds, seeds that reached it), best scores, bootstrap intervals of the speedup ratios,
  the loss-to-quality calibration, and every failed or incomplete run with its error;
- ``loss_curves.png``, ``miou_curves.png``, ``val_loss_vs_seconds.png``,
  ``epochs_to_threshold.png``, ``calibration.png``, ``masks_at_thresholds.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segment.analysis import figures
from segment.analysis.runs import Run, load_runs
from segment.analysis.stats import bootstrap_ratio, mean_std
from segment.files import write_atomic

__all__ = ["PAIRS", "Study", "main", "write_report"]

log = logging.getLogger(__name__)

# (what the ratio measures, slower model, faster model): ratio = slower / faster
PAIRS = (
    ("pretraining", "unet_scratch", "unet_vgg"),
    ("architecture", "unet_lab", "unet_scratch"),
    ("lab's comparison", "unet_lab", "unet_vgg"),
)
# Thin structures of the road datasets; the calibration shows their IoU against the loss.
THIN_CLASSES = (
    "pole", "sign_symbol", "traffic_sign", "traffic_light", "pedestrian", "person",
    "bicyclist", "rider", "bicycle", "fence", "lane_marking",
)  # fmt: skip


def _split(threshold: str) -> tuple[str, float]:
    """``"val_loss<=0.7"`` -> ``("val_loss", 0.7)``."""
    for operator in ("<=", ">="):
        if operator in threshold:
            metric, level = threshold.split(operator)
            return metric, float(level)
    raise ValueError(f"not a threshold name: {threshold!r}")


def _pm(values: Sequence[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    return "" if not values else f"{mean:.{digits}f} +- {std:.{digits}f}"


class Study:
    """The runs of a sweep, and the usable ones grouped for the report (derived once)."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.usable = [run for run in runs if run.usable]
        self.models = sorted({run.model for run in self.usable})
        self.thresholds: list[str] = []
        for run in self.usable:
            self.thresholds += [name for name in run.thresholds if name not in self.thresholds]
        logged = {key[len("val/iou/") :] for run in self.usable for row in run.epochs.values() for key in row}
        self.thin_classes = [name for name in THIN_CLASSES if name in logged]

    def of(self, model: str) -> list[Run]:
        return [run for run in self.usable if run.model == model]

    def reached(self, model: str, threshold: str, key: str = "epoch") -> list[float]:
        """``key`` (epoch, images_seen, seconds) of the seeds of ``model`` that reached ``threshold``."""
        return [float(run.thresholds[threshold][key]) for run in self.of(model) if run.thresholds.get(threshold)]

    @staticmethod
    def metric_at(run: Run, epoch: int, name: str) -> float | None:
        return run.epochs.get(epoch, {}).get(name)


def threshold_table(study: Study) -> str:
    """Epochs, images and seconds to each threshold per model (mean +- std over the seeds that reached it)."""
    lines = [
        "| model | threshold | reached | epochs | images seen | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for model in study.models:
        for threshold in study.thresholds:
            epochs = study.reached(model, threshold)
            lines.append(
                f"| {model} | {threshold} | {len(epochs)}/{len(study.of(model))} | {_pm(epochs)} "
                f"| {_pm(study.reached(model, threshold, 'images_seen'), 0)} "
                f"| {_pm(study.reached(model, threshold, 'seconds'), 0)} |"
            )
    return "\n".join(lines)


def best_table(study: Study) -> str:
    """Best val/loss and val/miou per model with their epochs, epochs trained and weights."""
    lines = [
        "| model | seeds | encoder weights | epochs trained | best val/loss | at epoch | best val/miou | at epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in study.models:
        runs = study.of(model)
        losses = [run.best("val/loss", True) for run in runs]
        mious = [run.best("val/miou", False) for run in runs]
        weights = ", ".join(sorted({run.weights or "?" for run in runs}))
        lines.append(
            f"| {model} | {', '.join(str(run.seed) for run in runs)} | {weights} "
            f"| {_pm([max(run.epochs) for run in runs], 0)} "
            f"| {_pm([v for v, _ in losses], 3)} | {_pm([e for _, e in losses])} "
            f"| {_pm([v for v, _ in mious], 3)} | {_pm([e for _, e in mious])} |"
        )
    return "\n".join(lines)


def speedups(study: Study, key: str = "epoch") -> list[dict]:
    """Ratio slower / faster model of the mean ``key`` to each threshold, with a bootstrap 95% interval.

    A ratio needs every seed of both models to have reached the threshold: where the
    slower model missed it in some seeds, those seeds are counted at the epochs they
    trained, which gives a lower bound (``bound: ">="``); where the faster one missed
    it, no ratio is given.
    """
    rows = []
    for effect, slow, fast in PAIRS:
        if slow not in study.models or fast not in study.models:
            continue
        for threshold in study.thresholds:
            row = {"effect": effect, "ratio": f"{slow} / {fast}", "threshold": threshold, "bound": ""}
            fast_values = study.reached(fast, threshold, key)
            slow_values = study.reached(slow, threshold, key)
            if len(fast_values) < len(study.of(fast)) or not fast_values:
                row["note"] = f"{fast} reached it in {len(fast_values)}/{len(study.of(fast))} seeds"
            elif len(slow_values) < len(study.of(slow)):
                censored = [
                    float(run.thresholds[threshold][key]) if run.thresholds.get(threshold) else _trained(run, key)
                    for run in study.of(slow)
                ]
                row.update(point=float(np.mean(censored) / np.mean(fast_values)), bound=">=")
                row["note"] = f"{slow} reached it in {len(slow_values)}/{len(study.of(slow))} seeds"
            else:
                point, low, high = bootstrap_ratio(slow_values, fast_values)
                row.update(point=point, low=low, high=high, note="")
            rows.append(row)
    return rows


def _trained(run: Run, key: str) -> float:
    """How far a run got: epochs trained, or the last images/seconds of its history."""
    if key == "epoch":
        return float(max(run.epochs))
    return float(run.history[-1][key]) if run.history else float("nan")


def speedup_table(rows: list[dict], unit: str) -> str:
    lines = [
        f"| effect | ratio of {unit} | threshold | speedup | 95% bootstrap CI | note |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        point = f"{row['bound']}{row['point']:.2f}x" if "point" in row else "n/a"
        interval = f"[{row['low']:.2f}, {row['high']:.2f}]" if "low" in row else ""
        lines.append(
            f"| {row['effect']} | {row['ratio']} | {row['threshold']} | {point} | {interval} | {row['note']} |"
        )
    return "\n".join(lines)


def calibration(study: Study) -> tuple[str, str, list[str]]:
    """The loss-to-quality calibration as two markdown tables and a plain-language summary.

    1. For each loss threshold: val/miou (and thin-class IoU) at the epoch each run first reached it.
    2. For each mIoU level: the val/loss at the epoch each run first reached it.
    """
    thin = study.thin_classes
    loss_thresholds = [t for t in study.thresholds if _split(t)[0] == "val_loss"]
    miou_thresholds = [t for t in study.thresholds if _split(t)[0] == "val_miou"]
    groups = [(model, study.of(model)) for model in study.models] + [("all", study.usable)]

    lines = ["| when first | model | runs | val/miou | thin-class IoU |", "|---|---|---|---|---|"]
    for threshold in loss_thresholds:
        for name, runs in groups:
            mious, thins = [], []
            for run in runs:
                point = run.thresholds.get(threshold)
                if point is None:
                    continue
                mious.append(study.metric_at(run, point["epoch"], "val/miou"))
                values = [study.metric_at(run, point["epoch"], f"val/iou/{c}") for c in thin]
                values = [v for v in values if v is not None]
                if values:
                    thins.append(float(np.mean(values)))
            mious = [m for m in mious if m is not None]
            lines.append(f"| {threshold} | {name} | {len(mious)} | {_pm(mious, 3)} | {_pm(thins, 3)} |")
    loss_to_quality = "\n".join(lines)

    lines = ["| when first | model | runs | val/loss |", "|---|---|---|---|"]
    summary = []
    for threshold in miou_thresholds:
        for name, runs in groups:
            losses = []
            for run in runs:
                point = run.thresholds.get(threshold)
                if point is not None and study.metric_at(run, point["epoch"], "val/loss") is not None:
                    losses.append(study.metric_at(run, point["epoch"], "val/loss"))
            lines.append(f"| {threshold} | {name} | {len(losses)}/{len(runs)} | {_pm(losses, 3)} |")
            if name == "all":
                level = _split(threshold)[1]
                if losses:
                    summary.append(
                        f"mIoU first reached {level:g} at val/loss {np.mean(losses):.3f} on average "
                        f"(range {min(losses):.3f}-{max(losses):.3f}, {len(losses)} of {len(runs)} runs reached it)."
                    )
                else:
                    summary.append(f"No run reached mIoU {level:g}.")
    return loss_to_quality, "\n".join(lines), summary


# val/loss bins (upper edges, descending) for the mask quality at each loss level
LOSS_BINS = (float("inf"), 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0)


def loss_bins(study: Study) -> str:
    """Mask quality (mIoU, pixel accuracy, thin-class IoU) of every (run, epoch) point, binned by val/loss."""
    thin = study.thin_classes
    lines = ["| val/loss | points | val/miou | val/pixel_acc | thin-class IoU |", "|---|---|---|---|---|"]
    points = [row for run in study.usable for row in run.epochs.values() if "val/loss" in row and "val/miou" in row]
    for high, low in zip(LOSS_BINS, LOSS_BINS[1:], strict=False):
        rows = [row for row in points if low < row["val/loss"] <= high]
        if not rows:
            continue
        label = f"> {low:g}" if high == float("inf") else f"{low:g} - {high:g}"
        thins = [float(np.mean([row[f"val/iou/{c}"] for c in thin if f"val/iou/{c}" in row])) for row in rows
                 if any(f"val/iou/{c}" in row for c in thin)]  # fmt: skip
        lines.append(
            f"| {label} | {len(rows)} | {_pm([r['val/miou'] for r in rows], 3)} "
            f"| {_pm([r['val/pixel_acc'] for r in rows if 'val/pixel_acc' in r], 3)} | {_pm(thins, 3)} |"
        )
    return "\n".join(lines) + (f"\n\nThin classes: {', '.join(thin)}." if thin else "")


def _mask_sheet(study: Study, folder: Path) -> Path | None:
    """Input / truth / prediction when each loss threshold was first reached, for the lowest seed per model."""
    loss_thresholds = [t for t in study.thresholds if _split(t)[0] == "val_loss"]
    columns = ["input", "truth", *loss_thresholds, "last epoch"]
    rows = []
    for model in study.models:
        run = study.of(model)[0]
        masks = run.folder / "masks"
        if not (masks / "truth.png").is_file():
            continue
        files: list[Path | None] = [masks / "input.png", masks / "truth.png"]
        captions = ["", ""]
        for threshold in loss_thresholds:
            point = run.thresholds.get(threshold)
            if point is None:
                files.append(None)
                captions.append(f"not reached in {max(run.epochs)} epochs")
            else:
                files.append(masks / f"epoch_{point['epoch']:03d}.png")
                captions.append(_caption(study, run, point["epoch"]))
        last = max(run.epochs)
        files.append(masks / f"epoch_{last:03d}.png")
        captions.append(_caption(study, run, last))
        rows.append((f"{model} (seed {run.seed})", files, captions))
    if not rows:
        return None
    return figures.mask_sheet_figure(columns, rows, folder / "masks_at_thresholds.png")


def _caption(study: Study, run: Run, epoch: int) -> str:
    loss, miou = study.metric_at(run, epoch, "val/loss"), study.metric_at(run, epoch, "val/miou")
    return (
        f"epoch {epoch}: loss {loss:.2f}, mIoU {miou:.2f}"
        if loss is not None and miou is not None
        else f"epoch {epoch}"
    )


def headline(study: Study, epoch_speedups: list[dict]) -> str:
    """The short answer: epochs to each loss threshold per model, and the speedups in epochs."""
    loss_thresholds = [t for t in study.thresholds if _split(t)[0] == "val_loss"]
    lines = [
        "| model | seeds | " + " | ".join(f"epochs to {t}" for t in loss_thresholds) + " |",
        "|---|---|" + "---|" * len(loss_thresholds),
    ]
    for model in study.models:
        cells = []
        for threshold in loss_thresholds:
            epochs = study.reached(model, threshold)
            cells.append(f"{_pm(epochs)} ({len(epochs)}/{len(study.of(model))})" if epochs else "not reached")
        lines.append(f"| {model} | {len(study.of(model))} | " + " | ".join(cells) + " |")
    rows = [row for row in epoch_speedups if _split(row["threshold"])[0] == "val_loss"]
    if rows:
        lines += ["", speedup_table(rows, "epochs")]
    return "\n".join(lines)


def _problems(study: Study) -> str:
    bad = [run for run in study.runs if not run.usable]
    if not bad:
        return "None: every run completed."
    lines = ["| run folder | model | seed | status | error |", "|---|---|---|---|---|"]
    for run in bad:
        error = (run.error or ("no validated epoch" if run.status == "completed" else "")).replace("|", "/")
        first_line = error.splitlines()[0] if error else ""
        lines.append(f"| {run.folder.name} | {run.model} | {run.seed} | {run.status} | {first_line} |")
    return "\n".join(lines)


def write_report(sweep: str | Path) -> tuple[Path, str]:
    """Write ``report.md`` and the figures into ``sweep``.

    Returns:
        The report's path and its headline table.
    """
    sweep = Path(sweep)
    study = Study(load_runs(sweep))
    if not study.usable:
        problems = _problems(study)
        write_atomic(sweep / "report.md", f"# Study report\n\nNo run completed.\n\n{problems}\n")
        raise RuntimeError(f"no completed run with metrics under {sweep}; see {sweep / 'report.md'}:\n{problems}")

    loss_levels = [_split(t)[1] for t in study.thresholds if _split(t)[0] == "val_loss"]
    miou_levels = [_split(t)[1] for t in study.thresholds if _split(t)[0] == "val_miou"]
    usable, models = study.usable, study.models
    figures.curves_figure(usable, models, [("val/loss", "-"), ("train/loss", "--")], sweep / "loss_curves.png",
                          "Loss per epoch: val (solid), train (dashed); mean +- std", loss_levels)  # fmt: skip
    figures.curves_figure(usable, models, [("val/miou", "-")], sweep / "miou_curves.png",
                          "Validation mIoU per epoch; mean +- std over seeds", miou_levels)  # fmt: skip
    figures.seconds_figure(usable, models, sweep / "val_loss_vs_seconds.png", loss_levels)
    bars = {t: {m: study.reached(m, t) for m in models} for t in study.thresholds}
    figures.threshold_bars_figure(
        bars, {m: len(study.of(m)) for m in models}, models, sweep / "epochs_to_threshold.png"
    )
    figures.calibration_figure(usable, models, study.thin_classes, loss_levels, miou_levels,
                               sweep / "calibration.png")  # fmt: skip
    sheet = _mask_sheet(study, sweep)

    loss_to_quality, quality_to_loss, summary = calibration(study)
    epoch_speedups = speedups(study)
    top = headline(study, epoch_speedups)
    sections = [
        "# Study report: epochs to threshold, speedups, loss-to-quality calibration",
        f"Sweep folder: `{sweep}`; {len(usable)} usable runs of {len(study.runs)}. "
        "Epochs count completed epochs (1 = after the first epoch); a threshold is reached at "
        "`<=` for the loss and `>=` for mIoU.",
        "## Headline\n\n" + top,
        "## Epochs, images and seconds to each threshold\n\nMean +- std over the seeds that reached it.\n\n"
        + threshold_table(study),
        "## Best scores\n\n" + best_table(study),
        "## Speedup ratios\n\nRatio of mean epochs (and seconds) to threshold, slower / faster model, with a "
        "percentile bootstrap 95% interval over seeds (each model's seeds resampled independently; "
        "coarse with few seeds).\n\n"
        + speedup_table(epoch_speedups, "epochs")
        + "\n\n"
        + speedup_table(speedups(study, "seconds"), "seconds"),
        "## Loss-to-quality calibration\n\n" + "\n".join(f"- {line}" for line in summary) + "\n\n"
        "Mask quality at each validation loss level, over every (run, epoch) point (mean +- std):\n\n"
        + loss_bins(study)
        + "\n\n"
        "Mask quality when the validation loss first reaches each threshold:\n\n" + loss_to_quality + "\n\n"
        "Validation loss when mIoU first reaches each level:\n\n" + quality_to_loss + "\n\n"
        "![calibration](calibration.png)",
        "## Figures\n\n![loss curves](loss_curves.png)\n\n![mIoU curves](miou_curves.png)\n\n"
        "![val loss vs seconds](val_loss_vs_seconds.png)\n\n![epochs to threshold](epochs_to_threshold.png)"
        + (f"\n\n![masks at thresholds]({sheet.name})" if sheet else ""),
        "## Failed or incomplete runs\n\n" + _problems(study),
    ]
    path = sweep / "report.md"
    write_atomic(path, "\n\n".join(sections) + "\n")
    return path, top


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segment.analysis.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="a multirun folder, e.g. logs/compare_pretraining/multiruns/<time>")
    args = parser.parse_args(argv)
    try:
        path, top = write_report(args.sweep)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{top}\n\nReport: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
