"""The study report of a sweep: ``python -m segment.analysis.report <multirun folder>``.

Reads the run folders of one or more Hydra multiruns written into one folder (``train.py -m
experiment=compare_pretraining``, ``experiment=lab_comparison``), never a GPU, and writes into that
folder ``report.md`` and its figures. What it compares comes from the runs' own config
(``study.comparisons``, ``study.tuned``: :mod:`segment.analysis.study`); the tables are
:mod:`segment.analysis.tables`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from segment.analysis import figures, size_tables, sizes, tables
from segment.analysis.runs import Run, load_runs
from segment.analysis.study import Study
from segment.data.labels import CAMVID_INFO, CITYSCAPES_INFO, KITTI_ROAD_INFO, DatasetInfo
from segment.data.synthetic import SYNTHETIC_INFO
from segment.files import write_atomic
from segment.run.layout import RunLayout

__all__ = ["main", "write_report"]

log = logging.getLogger(__name__)


def _figures(study: Study, sweep: Path) -> list[str]:
    """Draw every figure of the report; returns their file names, in the order the report shows
    them."""
    arms = {arm.name: arm.runs for arm in study.arms}
    loss, levels = study.loss_metric, [level.level for level in study.headline]
    miou_levels = [level.level for level in study.miou_levels]
    names = []
    if study.tuned:
        names.append(figures.rate_figure(study.times_by_rate(), sweep / "epochs_vs_rate.png").name)
    if study.comparisons or study.tuned:
        path = sweep / "speedup_vs_threshold.png"
        names.append(figures.speedup_figure(study.speedups(), path).name)
    for name, metric, title, marks, unit in (
        (
            "loss_curves",
            loss,
            f"{loss} at every validation: mean +- std over seeds",
            levels,
            "epoch",
        ),
        ("miou_curves", "val/miou", "val/miou at every validation", miou_levels, "epoch"),
        ("val_loss_vs_seconds", loss, f"{loss} against training seconds", levels, "seconds"),
    ):
        path = sweep / f"{name}.png"
        names.append(figures.curves_figure(arms, metric, path, title, marks, unit=unit).name)
    curves = {lv.name: {arm.name: arm.reached(lv) for arm in study.arms} for lv in study.headline}
    names.append(figures.reached_figure(curves, sweep / "reached_vs_epochs.png").name)
    rows = [row for run in study.usable for row in run.validations]
    path = sweep / "calibration.png"
    names.append(
        figures.calibration_figure(rows, study.thin_classes, levels, miou_levels, path, loss).name
    )
    if _mask_sheet(study, sweep) is not None:
        names.append("masks_at_thresholds.png")
    return _size_figures(study, sweep) + names


def _size_figures(study: Study, sweep: Path) -> list[str]:
    """The speedup against training-set size and the loss curves per size, in a study of sizes."""
    if not sizes.applies(study):
        return []
    found, names = sizes.sizes(study), []
    series = sizes.speedup_series(study, found)
    if any(series.values()):
        figures.size_speedup_figure(series, sweep / "speedup_vs_train_size.png")
        names.append("speedup_vs_train_size.png")
    figures.size_curves_figure(
        sizes.loss_curves(study, found, sizes.side_names(study)),
        study.loss_metric,
        sweep / "loss_by_train_size.png",
        [level.level for level in study.headline],
    )
    return [*names, "loss_by_train_size.png"]


def _mask_sheet(study: Study, folder: Path) -> Path | None:
    """Input / truth / prediction when each headline level was first reached, for the lowest seed of
    each arm."""
    columns = ["input", "truth", *[level.name for level in study.headline], "last validation"]
    rows = []
    for arm in study.arms:
        run = arm.runs[0]
        layout = RunLayout.of(run.record.layout)
        if not layout.snapshot(run.folder, "truth").is_file():
            continue
        files: list[Path | None] = [
            layout.snapshot(run.folder, "input"),
            layout.snapshot(run.folder, "truth"),
        ]
        captions = ["", ""]
        for level in study.headline:
            crossing = run.crossing(level.metric, level.mode, level.level)
            if crossing is None or not crossing.reached:
                files.append(None)
                captions.append(f"not reached in {run.last_epoch:.1f} epochs")
            else:
                files.append(layout.snapshot(run.folder, crossing.step))
                captions.append(_caption(study, run, crossing.step))
        last = run.validations[-1]["step"]
        files.append(layout.snapshot(run.folder, last))
        captions.append(_caption(study, run, last))
        rows.append((f"{arm.name}\n(seed {run.seed})", files, captions))
    if not rows:
        return None
    info = _dataset_info(study)
    classes = list(zip(info.class_names, info.palette, strict=False)) if info else []
    return figures.mask_sheet_figure(columns, rows, folder / "masks_at_thresholds.png", classes)


def _dataset_info(study: Study) -> DatasetInfo | None:
    """The class names and colours of the study's dataset (for the mask sheet's legend): as its
    runs recorded them, or for runs recorded before they were, the known dataset whose classes
    they logged."""
    recorded = next((run.record.labels for run in study.usable if run.record.labels), None)
    if recorded:
        colours = tuple(tuple(colour) for colour in recorded["palette"])
        return DatasetInfo(recorded["name"], tuple(recorded["class_names"]), colours)
    logged = {
        key[len("val/iou/") :]
        for run in study.usable
        for row in run.validations
        for key in row
        if key.startswith("val/iou/")
    }
    known = (CAMVID_INFO, SYNTHETIC_INFO, CITYSCAPES_INFO, KITTI_ROAD_INFO)
    return next((info for info in known if set(info.class_names) == logged), None)


def _caption(study: Study, run: Run, step: int) -> str:
    row = next((r for r in run.validations if r["step"] == step), {})
    if study.loss_metric in row and "val/miou" in row:
        loss, miou = row[study.loss_metric], row["val/miou"]
        return f"epoch {row['epoch']:.2f}: loss {loss:.2f}, mIoU {miou:.2f}"
    return f"step {step}"


def _grid(study: Study) -> str:
    """``4 validations per epoch``: the runs' validation grid, as their configs set it."""
    counts = sorted(
        {
            round(1 / float(run.value("trainer.val_check_interval") or 1.0))
            for run in study.usable
            if float(run.value("trainer.val_check_interval") or 1.0) <= 1
        }
    )
    if not counts:
        return "validations on a grid of steps"
    return f"{' or '.join(map(str, counts))} validation{'s' if counts != [1] else ''} per epoch"


def _limits(study: Study) -> str:
    """Where each comparison's answer does not hold along the loss ladder."""
    lines = []
    for comparison in study.comparisons:
        weak = study.where(comparison, study.loss_ladder)
        if weak:
            lines.append(
                f"- {comparison.context or comparison.name}: not established at {', '.join(weak)}"
            )
    if not study.comparisons:
        return (
            "No comparison to make: the runs declare none (`study.comparisons`), or no arm has a "
            "partner."
        )
    return (
        "\n".join(lines) or "Every comparison's interval excludes 1 at every level of the ladder."
    )


def write_report(sweep: str | Path) -> tuple[Path, str]:
    """Write ``report.md`` and the figures into ``sweep``.

    Returns:
        The report's path and its answer (the first lines of the report).
    """
    sweep = Path(sweep)
    study = Study(load_runs(sweep))
    if not study.usable:
        problems = tables.problems(study)
        write_atomic(sweep / "report.md", f"# Study report\n\nNo run completed.\n\n{problems}\n")
        raise RuntimeError(
            f"no completed run with validations under {sweep}; see "
            f"{sweep / 'report.md'}:\n{problems}"
        )
    answer = tables.answer(study)
    sections = [*_summary(study, sweep, answer, _figures(study, sweep)), *_details(study)]
    path = sweep / "report.md"
    write_atomic(path, "\n\n".join(section for section in sections if section) + "\n")
    return path, answer


def _summary(study: Study, sweep: Path, answer: str, figures: Sequence[str]) -> list[str]:
    """The report's first sections: the title and answer, the figures, the seeds to add, the
    sizes' answer and the best rates."""
    figure_links = "\n\n".join(f"![{name[:-4].replace('_', ' ')}]({name})" for name in figures)
    return [
        f"# Study report: {tables.title(study)}",
        answer,
        f"{len(study.usable)} usable runs of {len(study.runs)} in {len(study.arms)} arms "
        f"(protocol: the end of this report). Epochs are fractional ({_grid(study)}); a loss "
        "threshold is reached at `<=`, an mIoU one at `>=`. Ratios: slower arm's epochs / faster "
        "arm's.",
        "## Figures\n\n" + figure_links,
        "## Seeds\n\n" + tables.more_seeds(study, str(sweep)),
        size_tables.section(study),
        (
            "## Each arm at its best rate\n\n"
            + tables.tuned_table(study)
            + "\n\nEpochs to each level by rate:\n\n"
            + tables.rate_table(study)
        )
        if study.tuned
        else "",
    ]


def _details(study: Study) -> list[str]:
    """The report's tables under its answer: every comparison, level, unit and sensitivity, the
    costs and best scores, the calibration, the protocol and what failed."""
    bins, first_reached, summary = tables.calibration(study)
    return [
        "## Every comparison at the headline levels\n\n"
        + tables.comparison_table(study, study.comparisons)
        + "\n\n"
        + tables.EVIDENCE,
        "## At every threshold level\n\n"
        + tables.ladder_table(tables.ladder_rows(study))
        + "\n\nWhere the answer does not hold (the interval reaches 1):\n\n"
        + _limits(study),
        "## In epochs, optimiser steps, images and seconds\n\nThe headline ratios in each unit "
        "(arms with another batch size differ between epochs and steps).\n\n"
        + tables.units_table(study)
        + "\n\n"
        + tables.contention(study),
        "## Sensitivity\n\nThe headline ratios with the level moved by +-0.02, and with the "
        "crossing interpolated between validations.\n\n" + tables.sensitivity_table(study),
        "## Epochs, steps, images and seconds to each threshold\n\nMean +- std over the runs that "
        "reached it.\n\n" + tables.cost_table(study),
        "## Best scores\n\n" + tables.best_table(study),
        "## Loss-to-quality calibration\n\n" + "\n".join(f"- {line}" for line in summary) + "\n\n"
        "Mask quality at each loss level, over every validation of every run (mean +- std):\n\n"
        + bins
        + "\n\n"
        "The loss, mIoU and thin-class IoU at the validation that first held each level:\n\n"
        + first_reached,
        "## Protocol\n\n" + tables.protocol_section(study),
        "## Failed or incomplete runs\n\n" + tables.problems(study),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segment.analysis.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "sweep", type=Path, help="a multirun folder, e.g. logs/compare_pretraining/multiruns/<time>"
    )
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
