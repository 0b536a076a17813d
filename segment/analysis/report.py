"""The study report of a sweep: ``python -m segment.analysis.report <multirun folder>``.

Reads the run folders of one or more Hydra multiruns written into one folder
(``train.py -m experiment=compare_pretraining``, ``experiment=lab_comparison``), never a
GPU, and writes into that folder ``report.md`` and its figures. What it compares comes from
the runs' own config (``study.comparisons``, ``study.tuned``: :mod:`segment.analysis.study`);
the tables are :mod:`segment.analysis.tables`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segment.analysis import figures, tables
from segment.analysis.runs import Run, load_runs
from segment.analysis.stats import kaplan_meier
from segment.analysis.study import Study
from segment.callbacks.mask_images import snapshot_file
from segment.files import write_atomic

__all__ = ["main", "write_report"]

log = logging.getLogger(__name__)


def _figures(study: Study, sweep: Path) -> list[str]:
    """Draw every figure of the report; returns their file names, in the order the report shows them."""
    arms = {arm.label: arm.runs for arm in study.arms}
    levels = [level.level for level in study.headline]
    figures.curves_figure(arms, study.loss_metric, sweep / "loss_curves.png",
                          f"{study.loss_metric} at every validation: mean +- std over seeds", levels)  # fmt: skip
    figures.curves_figure(arms, "val/miou", sweep / "miou_curves.png", "val/miou at every validation",
                          [lv.level for lv in study.miou_levels])  # fmt: skip
    figures.curves_figure(arms, study.loss_metric, sweep / "val_loss_vs_seconds.png",
                          f"{study.loss_metric} against training seconds", levels, unit="seconds")  # fmt: skip
    names = ["loss_curves.png", "miou_curves.png", "val_loss_vs_seconds.png", "reached_vs_epochs.png"]
    if rows := tables.ladder_rows(study):
        figures.speedup_figure(rows, sweep / "speedup_vs_threshold.png")
        names.insert(0, "speedup_vs_threshold.png")
    if study.tuned:
        panels = {level.name: {f"{tuned.effect}: {side}": {float(rate): list(arm.times(level).values())
                                                            for rate, arm in getattr(tuned, side).items()}
                               for tuned in study.tuned for side in ("slower", "faster")}
                  for level in study.headline}  # fmt: skip
        figures.rate_figure(panels, sweep / "epochs_vs_rate.png")
        names.insert(0, "epochs_vs_rate.png")
    curves = {}
    for level in study.headline:
        per_arm = {}
        for arm in study.arms:
            crossings = list(arm.crossings(level).values())
            times, fraction = kaplan_meier([c.time for c in crossings], [c.reached for c in crossings])
            per_arm[arm.label] = (np.append(times, max(c.time for c in crossings)), np.append(fraction, fraction[-1]),
                                  len(crossings))  # fmt: skip
        curves[level.name] = per_arm
    figures.reached_figure(curves, sweep / "reached_vs_epochs.png")
    figures.calibration_figure([row for run in study.usable for row in run.validations], study.thin_classes, levels,
                               [lv.level for lv in study.miou_levels], sweep / "calibration.png",
                               study.loss_metric)  # fmt: skip
    if _mask_sheet(study, sweep) is not None:
        names.append("masks_at_thresholds.png")
    return names


def _mask_sheet(study: Study, folder: Path) -> Path | None:
    """Input / truth / prediction when each headline level was first reached, for the lowest seed of each arm."""
    columns = ["input", "truth", *[level.name for level in study.headline], "last validation"]
    rows = []
    for arm in study.arms:
        run = arm.runs[0]
        masks = run.folder / "masks"
        if not (masks / "truth.png").is_file():
            continue
        files: list[Path | None] = [masks / "input.png", masks / "truth.png"]
        captions = ["", ""]
        for level in study.headline:
            crossing = run.crossing(level.metric, level.mode, level.level)
            if crossing is None or not crossing.reached:
                files.append(None)
                captions.append(f"not reached in {run.last_epoch:.1f} epochs")
            else:
                files.append(snapshot_file(masks, crossing.step))
                captions.append(_caption(study, run, crossing.step))
        last = run.validations[-1]["step"]
        files.append(snapshot_file(masks, last))
        captions.append(_caption(study, run, last))
        label = arm.label.replace(", ", "\n")  # one override per line: a sheet row is narrow
        rows.append((f"{label}\n(seed {run.seed})", files, captions))
    if not rows:
        return None
    return figures.mask_sheet_figure(columns, rows, folder / "masks_at_thresholds.png")


def _caption(study: Study, run: Run, step: int) -> str:
    row = next((r for r in run.validations if r["step"] == step), {})
    if study.loss_metric in row and "val/miou" in row:
        return f"epoch {row['epoch']:.2f}: loss {row[study.loss_metric]:.2f}, mIoU {row['val/miou']:.2f}"
    return f"step {step}"


def _limits(study: Study) -> str:
    """Where each comparison's answer does not hold along the loss ladder."""
    lines = []
    for comparison in study.comparisons:
        weak = study.where(comparison, study.loss_ladder)
        if weak:
            lines.append(f"- {comparison.name}: not established at {', '.join(weak)}")
    return "\n".join(lines) or "Every comparison's speedup is above 1 with its interval at every level of the ladder."


def write_report(sweep: str | Path) -> tuple[Path, str]:
    """Write ``report.md`` and the figures into ``sweep``.

    Returns:
        The report's path and its headline.
    """
    sweep = Path(sweep)
    study = Study(load_runs(sweep))
    if not study.usable:
        problems = tables.problems(study)
        write_atomic(sweep / "report.md", f"# Study report\n\nNo run completed.\n\n{problems}\n")
        raise RuntimeError(f"no completed run with validations under {sweep}; see {sweep / 'report.md'}:\n{problems}")
    names = _figures(study, sweep)
    bins, first_reached, summary = tables.calibration(study)
    top = tables.headline_table(study)
    no_comparison = "No comparison: the runs name none (`study.comparisons`)."
    sections = [
        "# Study report: epochs to threshold, paired speedups, loss-to-quality calibration",
        f"Study folder: `{sweep}`; {len(study.usable)} usable runs of {len(study.runs)} in {len(study.arms)} arms. "
        "Epochs are fractional (validations within an epoch); a loss threshold is reached at `<=`, an mIoU one at "
        "`>=`.",
        "## Protocol\n\n" + tables.protocol_section(study),
        "## Headline\n\n" + top,
        "## Each arm at its best rate\n\n" + tables.tuned_table(study) + "\n\nEpochs to each level by rate:\n\n"
        + tables.rate_table(study) + ("\n\n![epochs vs rate](epochs_vs_rate.png)" if study.tuned else ""),
        "## Speedup at every threshold level\n\nThe fraction of runs of each arm that reached the level, and the "
        "paired speedup (geometric mean, 95% t-interval on log ratios, sign test and per-seed range; bounds where "
        "censoring decides).\n\n"
        + (tables.ladder_table(tables.ladder_rows(study)) if study.comparisons else no_comparison)
        + ("\n\n![speedup vs threshold](speedup_vs_threshold.png)" if study.comparisons else "")
        + "\n\nWhere the answer does not hold (point at or below 1, or the interval reaching 1):\n\n" + _limits(study),
        "## Per-seed ratios\n\n" + (tables.per_seed_table(study) if study.comparisons else no_comparison),
        "## In epochs, optimiser steps, images and seconds\n\nThe headline speedups in each unit (arms with "
        "another batch size differ between epochs and steps).\n\n"
        + (tables.units_table(study) if study.comparisons else no_comparison) + "\n\n" + tables.contention(study),
        "## Sensitivity\n\nThe headline speedups (geometric means) with the level moved by +-0.02, and with the "
        "crossing interpolated between validations.\n\n"
        + (tables.sensitivity_table(study) if study.comparisons else no_comparison),
        "## Epochs, steps, images and seconds to each threshold\n\nMean +- std over the runs that reached it.\n\n"
        + tables.cost_table(study) + "\n\n![fraction reached](reached_vs_epochs.png)",
        "## Best scores\n\n" + tables.best_table(study),
        "## Loss-to-quality calibration\n\n" + "\n".join(f"- {line}" for line in summary) + "\n\n"
        "Mask quality at each loss level, over every validation of every run (mean +- std):\n\n" + bins + "\n\n"
        "The loss, mIoU and thin-class IoU at the validation that first held each level:\n\n" + first_reached
        + "\n\n![calibration](calibration.png)",
        "## Figures\n\n" + "\n\n".join(f"![{name[:-4].replace('_', ' ')}]({name})" for name in names),
        "## Failed or incomplete runs\n\n" + tables.problems(study),
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
