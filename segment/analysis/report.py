"""The study report of a sweep: ``python -m segment.analysis.report <multirun folder>``.

Reads the run folders of one or more Hydra multiruns written into one folder
(``train.py -m experiment=compare_pretraining``, ``experiment=lab_comparison``), never a
GPU, and writes into that folder ``report.md`` and its figures.

What it compares comes from the runs' own config (``study.comparisons``, set by the
experiment YAML): each comparison names a slower and a faster arm by config choices or
values (``{slower: {model: unet_scratch}, faster: {model: unet_vgg}}``). An *arm* is the
set of runs that share every command-line override but the seed; a comparison pairs the
arms that match its two sides and agree on every other override (e.g. the learning rate),
and pairs their runs by seed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segment.analysis import figures
from segment.analysis.runs import Crossing, Run, load_runs
from segment.analysis.stats import RatioEstimate, kaplan_meier, mean_std, paired_ratio
from segment.files import write_atomic

__all__ = ["Arm", "Comparison", "Level", "Study", "main", "write_report"]

log = logging.getLogger(__name__)

# Thin structures of the road datasets; the calibration shows their IoU against the loss.
THIN_CLASSES = (
    "pole", "sign_symbol", "traffic_sign", "traffic_light", "pedestrian", "person",
    "bicyclist", "rider", "bicycle", "fence", "lane_marking",
)  # fmt: skip
# Used when no run carries a study spec (a plain multirun).
DEFAULT_SPEC: dict[str, Any] = {
    "comparisons": {},
    "headline": [1.0, 0.7, 0.5],
    "loss_ladder": {"start": 1.2, "stop": 0.5, "step": 0.05},
    "miou_ladder": {"start": 0.2, "stop": 0.6, "step": 0.05},
    "loss_metric": "val/loss",
}
UNITS = {"epoch": "epochs", "images_seen": "images", "seconds": "seconds"}


@dataclass(frozen=True)
class Level:
    """A threshold: ``metric`` reaches ``level`` at ``<=`` (``min``) or ``>=`` (``max``)."""

    metric: str
    mode: str
    level: float

    @property
    def name(self) -> str:
        return f"{self.metric}{'<=' if self.mode == 'min' else '>='}{self.level:g}"


@dataclass
class Arm:
    """Runs that differ only in their seed."""

    label: str
    key: frozenset[tuple[str, str]]
    runs: list[Run]

    def by_seed(self) -> dict[Any, Run]:
        return {run.seed: run for run in self.runs}


@dataclass
class Comparison:
    """Two arms whose per-seed ratio of time to a level measures one effect."""

    effect: str
    context: str
    slower: Arm
    faster: Arm

    @property
    def name(self) -> str:
        return f"{self.effect} ({self.context})" if self.context else self.effect

    @property
    def seeds(self) -> list[Any]:
        return sorted(set(self.slower.by_seed()) & set(self.faster.by_seed()), key=str)

    def estimate(self, level: Level, unit: str = "epoch", interpolate: bool = False) -> RatioEstimate | None:
        slow, fast = self.slower.by_seed(), self.faster.by_seed()
        pairs = [(slow[s].crossing(level.metric, level.mode, level.level, unit, interpolate),
                  fast[s].crossing(level.metric, level.mode, level.level, unit, interpolate))
                 for s in self.seeds]  # fmt: skip
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        return paired_ratio([(a.time, a.reached) for a, _ in pairs], [(b.time, b.reached) for _, b in pairs])


def _ladder(spec: dict) -> list[float]:
    start, stop, step = float(spec["start"]), float(spec["stop"]), abs(float(spec["step"]))
    count = int(round(abs(start - stop) / step)) + 1
    sign = -1 if stop < start else 1
    return [round(start + sign * i * step, 6) for i in range(count)]


class Study:
    """The runs of a study folder, their arms and comparisons, and its settings (derived once)."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.usable = [run for run in runs if run.usable]
        self.spec = self._spec()
        self.loss_metric = self.spec.get("loss_metric", "val/loss")
        self.arms = self._arms()
        self.comparisons = self._comparisons()
        self.headline = [Level(self.loss_metric, "min", float(v)) for v in self.spec["headline"]]
        self.loss_ladder = [Level(self.loss_metric, "min", v) for v in _ladder(self.spec["loss_ladder"])]
        self.miou_ladder = [Level("val/miou", "max", v) for v in _ladder(self.spec["miou_ladder"])]
        # the mIoU levels the tables name: the ladder's multiples of 0.1
        self.miou_levels = [lv for lv in self.miou_ladder if abs(lv.level * 10 - round(lv.level * 10)) < 1e-6]
        logged = {key[len("val/iou/") :] for run in self.usable for row in run.validations for key in row}
        self.thin_classes = [name for name in THIN_CLASSES if name in logged]

    def _spec(self) -> dict[str, Any]:
        spec = {**DEFAULT_SPEC, "comparisons": {}}
        for run in self.usable:
            found = run.config.get("study") or {}
            spec.update({k: v for k, v in found.items() if k != "comparisons"})
            spec["comparisons"].update(found.get("comparisons") or {})
        return spec

    def _arms(self) -> list[Arm]:
        keys = {run.folder: frozenset((k, v) for k, v in run.overrides.items() if k != "seed") for run in self.usable}
        shared = frozenset.intersection(*keys.values()) if keys else frozenset()
        arms: dict[frozenset, Arm] = {}
        for run in sorted(self.usable, key=lambda r: str(r.seed)):
            key = keys[run.folder] - shared
            label = ", ".join(f"{k}={v}" for k, v in sorted(key, key=lambda kv: ("." in kv[0], kv))) or "all runs"
            arms.setdefault(key, Arm(label, key, [])).runs.append(run)
        return sorted(arms.values(), key=lambda arm: arm.label)

    def _comparisons(self) -> list[Comparison]:
        found = []
        for effect, sides in self.spec["comparisons"].items():
            spec_keys = set(sides["slower"]) | set(sides["faster"])

            def matches(arm: Arm, side: dict) -> bool:
                return all(str(arm.runs[0].value(k)) == str(v) for k, v in side.items())

            def context(arm: Arm, spec_keys: set = spec_keys) -> frozenset:
                return frozenset((k, v) for k, v in arm.key if k not in spec_keys)

            for slower in (a for a in self.arms if matches(a, sides["slower"])):
                for faster in (a for a in self.arms if matches(a, sides["faster"])):
                    if slower is not faster and context(slower) == context(faster):
                        label = ", ".join(f"{k}={v}" for k, v in sorted(context(slower)))
                        comparison = Comparison(effect, label, slower, faster)
                        if comparison.seeds:
                            found.append(comparison)
        return found


def _pm(values: Sequence[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    return "" if not values else f"{mean:.{digits}f} +- {std:.{digits}f}"


def _ratio(estimate: RatioEstimate | None, interval: bool = True) -> str:
    if estimate is None:
        return "n/a"
    text = f"{estimate.bound}{estimate.point:.2f}x"
    if interval and not estimate.bound and np.isfinite(estimate.low):
        text += f" [{estimate.low:.2f}, {estimate.high:.2f}]"
    return text


def _crossings(arm: Arm, level: Level, unit: str = "epoch") -> list[Crossing]:
    return [c for c in (run.crossing(level.metric, level.mode, level.level, unit) for run in arm.runs) if c]


def _reached_cell(arm: Arm, level: Level, unit: str = "epoch", digits: int = 2) -> str:
    crossings = _crossings(arm, level, unit)
    times = [c.time for c in crossings if c.reached]
    if not times:
        last = max((c.time for c in crossings), default=0.0)
        return f"not reached ({len(crossings)} runs, up to {last:.{digits}g})"
    return f"{_pm(times, digits)} ({len(times)}/{len(crossings)})"


def protocol_section(study: Study) -> str:
    """What every arm was trained with, read from the runs' resolved configs."""
    lines = [
        "| arm | runs (seeds) | net | encoder weights | optimizer, lr | schedule | batch | image | "
        "validations/epoch | clip | precision | cap (epochs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in study.arms:
        run = arm.runs[0]
        config = run.config
        scheduler = (run.value("model.scheduler.scheduler._target_") or "none").rsplit(".", 1)[-1]
        warm = run.value("model.scheduler.scheduler.total_iters")
        if scheduler == "LinearLR" and warm:
            scheduler = f"linear warmup {warm} steps, then constant"
        interval = run.value("trainer.val_check_interval") or 1.0
        image = "x".join(str(v) for v in (run.value("data.image_size") or []))
        name = (run.value("model.optimizer._target_") or "?").rsplit(".", 1)[-1]
        optimizer = f"{name} {run.value('model.optimizer.lr')}"
        if run.value("model.optimizer.weight_decay"):
            optimizer += f" (wd {run.value('model.optimizer.weight_decay')})"
        precision = (run.record.get("precision") or {}).get("precision") or config.get("trainer", {}).get("precision")
        weights = ", ".join(sorted({r.weights or "?" for r in arm.runs}))
        net = [(run.value("model.net._target_") or "?").rsplit(".", 1)[-1], run.value("model.net.encoder_name")]
        if run.value("model.net.final_relu") is not None:  # the lab's VGG net: which head it trained with
            net.append("head ending in ReLU (the lab's)" if run.value("model.net.final_relu") else "corrected head")
        lines.append(
            f"| {arm.label} | {len(arm.runs)} ({', '.join(str(r.seed) for r in arm.runs)}) "
            f"| {', '.join(part for part in net if part)} | {weights} | {optimizer} | {scheduler} "
            f"| {run.value('data.batch_size')} | {image} | {round(1 / float(interval)) if interval <= 1 else 1} "
            f"| {run.value('trainer.gradient_clip_val') or '-'} | {precision} | {run.value('trainer.max_epochs')} |"
        )
    run = study.usable[0]
    thresholds = run.value("callbacks.thresholds") or {}
    host = run.record.get("precision", {}).get("host") or run.record.get("host", "?")
    versions = run.record.get("versions", {})
    lines += [
        "",
        f"A threshold counts once it has held for {run.patience} validations in a row and is credited to the first "
        "of them (its fractional epoch, images seen and seconds): the crossing is resolved to the first validation "
        "at or past the level. (The sensitivity table also gives linear interpolation between the last validation "
        "before the level and that one.) "
        f"Training stopped once `{thresholds.get('stop_when_reached')}` had held, or at the cap. "
        f"Host: {host}; versions: torch {versions.get('torch')}, lightning {versions.get('lightning')}; "
        f"code {str(run.record.get('git', {}).get('commit'))[:7]}.",
    ]
    return "\n".join(lines)


def headline_table(study: Study) -> str:
    """Epochs to each headline level per arm, and the paired speedups."""
    lines = [
        "| arm | runs | " + " | ".join(f"epochs to {level.name}" for level in study.headline) + " |",
        "|---|---|" + "---|" * len(study.headline),
    ]
    for arm in study.arms:
        cells = [_reached_cell(arm, level) for level in study.headline]
        lines.append(f"| {arm.label} | {len(arm.runs)} | " + " | ".join(cells) + " |")
    if study.comparisons:
        lines += [
            "",
            "| comparison | slower / faster | seed pairs | " + " | ".join(lv.name for lv in study.headline) + " |",
            "|---|---|---|" + "---|" * len(study.headline),
        ]
        for comparison in study.comparisons:
            cells = [_ratio(comparison.estimate(level)) for level in study.headline]
            lines.append(
                f"| {comparison.name} | {comparison.slower.label} / {comparison.faster.label} "
                f"| {len(comparison.seeds)} | " + " | ".join(cells) + " |"
            )
        lines.append(
            "\nSpeedup: geometric mean over seeds of (slower arm's epochs / faster arm's epochs), paired by seed, "
            "with a 95% t-interval on the log ratios. `>=`: some slower-arm runs never reached the level and count "
            "at their last validation, so the speedup is at least this; `<=` the reverse; n/a: censored on both sides."
        )
    return "\n".join(lines)


def ladder_rows(study: Study) -> list[dict]:
    rows = []
    for comparison in study.comparisons:
        for level in study.loss_ladder + study.miou_ladder:
            reached = {side: sum(c.reached for c in _crossings(arm, level))
                       for side, arm in (("slower", comparison.slower), ("faster", comparison.faster))}  # fmt: skip
            rows.append({"comparison": comparison.name, "metric": level.metric, "level": level.level,
                         "name": level.name, "estimate": comparison.estimate(level), "reached": reached,
                         "runs": (len(comparison.slower.runs), len(comparison.faster.runs))})  # fmt: skip
    return rows


def ladder_table(rows: list[dict]) -> str:
    lines = ["| comparison | threshold | slower reached | faster reached | speedup [95% CI] |", "|---|---|---|---|---|"]
    for row in rows:
        slow_runs, fast_runs = row["runs"]
        lines.append(
            f"| {row['comparison']} | {row['name']} | {row['reached']['slower']}/{slow_runs} "
            f"| {row['reached']['faster']}/{fast_runs} | {_ratio(row['estimate'])} |"
        )
    return "\n".join(lines)


def per_seed_table(study: Study) -> str:
    """Each seed's ratio at each headline level: the data behind the geometric means."""
    lines = ["| comparison | threshold | " + " | ".join(["per-seed ratios (seed: slower / faster epochs)"]) + " |",
             "|---|---|---|"]  # fmt: skip
    for comparison in study.comparisons:
        slow, fast = comparison.slower.by_seed(), comparison.faster.by_seed()
        for level in study.headline:
            cells = []
            for seed in comparison.seeds:
                a = slow[seed].crossing(level.metric, level.mode, level.level)
                b = fast[seed].crossing(level.metric, level.mode, level.level)
                if a is None or b is None:
                    continue
                mark = "" if a.reached and b.reached else (" (>=)" if not a.reached and b.reached else
                                                           " (<=)" if a.reached else " (never)")  # fmt: skip
                cells.append(f"{seed}: {a.time:.2f} / {b.time:.2f} = {a.time / b.time:.2f}{mark}")
            lines.append(f"| {comparison.name} | {level.name} | {'; '.join(cells)} |")
    return "\n".join(lines)


def sensitivity_table(study: Study) -> str:
    """The headline speedups with the level moved by +-0.02, with interpolated crossings, and in images/seconds."""
    lines = [
        "| comparison | level | level - 0.02 | level | level + 0.02 | interpolated crossing | images | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for comparison in study.comparisons:
        for level in study.headline:
            shifted = [Level(level.metric, level.mode, round(level.level + d, 6)) for d in (-0.02, 0.0, 0.02)]
            cells = [_ratio(comparison.estimate(s), interval=False) for s in shifted]
            cells.append(_ratio(comparison.estimate(level, interpolate=True), interval=False))
            cells += [_ratio(comparison.estimate(level, unit=u), interval=False) for u in ("images_seen", "seconds")]
            lines.append(f"| {comparison.name} | {level.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(study: Study) -> str:
    """Epochs, images and seconds to each headline and mIoU level per arm (mean +- std over runs that reached it)."""
    lines = ["| arm | threshold | reached | epochs | images seen | seconds |", "|---|---|---|---|---|---|"]
    for arm in study.arms:
        for level in study.headline + study.miou_levels:
            parts = [[c.time for c in _crossings(arm, level, unit) if c.reached] for unit in UNITS]
            lines.append(f"| {arm.label} | {level.name} | {len(parts[0])}/{len(arm.runs)} | {_pm(parts[0], 2)} "
                         f"| {_pm(parts[1], 0)} | {_pm(parts[2], 0)} |")  # fmt: skip
    return "\n".join(lines)


def best_table(study: Study) -> str:
    lines = [
        "| arm | encoder weights | epochs trained | best loss | at epoch | best val/miou | at epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in study.arms:
        losses = [run.best(study.loss_metric, True) for run in arm.runs]
        mious = [run.best("val/miou", False) for run in arm.runs]
        weights = ", ".join(sorted({run.weights or "?" for run in arm.runs}))
        lines.append(
            f"| {arm.label} | {weights} | {_pm([run.last_epoch for run in arm.runs])} "
            f"| {_pm([v for v, _ in losses], 3)} | {_pm([e for _, e in losses])} "
            f"| {_pm([v for v, _ in mious], 3)} | {_pm([e for _, e in mious])} |"
        )
    return "\n".join(lines)


# Loss bins (upper edges, descending) for the mask quality at each loss level.
LOSS_BINS = (float("inf"), 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0)


def calibration(study: Study) -> tuple[str, str, list[str]]:
    """Question 1: mask quality at each loss level, and the loss at which mIoU first reaches each level."""
    thin, metric = study.thin_classes, study.loss_metric
    points = [row for run in study.usable for row in run.validations if metric in row and "val/miou" in row]
    lines = [f"| {metric} | validations | val/miou | val/pixel_acc | thin-class IoU |", "|---|---|---|---|---|"]
    for high, low in zip(LOSS_BINS, LOSS_BINS[1:], strict=False):
        rows = [row for row in points if low < row[metric] <= high]
        if not rows:
            continue
        label = f"> {low:g}" if high == float("inf") else f"{low:g} - {high:g}"
        thins = [float(np.mean([row[f"val/iou/{c}"] for c in thin if f"val/iou/{c}" in row])) for row in rows
                 if any(f"val/iou/{c}" in row for c in thin)]  # fmt: skip
        accuracy = [r["val/pixel_acc"] for r in rows if "val/pixel_acc" in r]
        lines.append(f"| {label} | {len(rows)} | {_pm([r['val/miou'] for r in rows], 3)} | {_pm(accuracy, 3)} "
                     f"| {_pm(thins, 3)} |")  # fmt: skip
    bins = "\n".join(lines) + (f"\n\nThin classes: {', '.join(thin)}." if thin else "")

    lines = ["| first reached | runs | at loss | val/miou then | thin-class IoU then |", "|---|---|---|---|---|"]
    summary = []
    for level in study.headline + study.miou_levels:
        found = []
        for run in study.usable:
            crossing = run.crossing(level.metric, level.mode, level.level)
            if crossing is None or not crossing.reached:
                continue
            row = next(r for r in run.validations if r["step"] == crossing.step)
            thins = [row[f"val/iou/{c}"] for c in thin if f"val/iou/{c}" in row]
            found.append((row.get(metric), row.get("val/miou"), float(np.mean(thins)) if thins else None))
        losses = [f[0] for f in found if f[0] is not None]
        mious = [f[1] for f in found if f[1] is not None]
        thins = [f[2] for f in found if f[2] is not None]
        lines.append(f"| {level.name} | {len(found)}/{len(study.usable)} | {_pm(losses, 3)} | {_pm(mious, 3)} "
                     f"| {_pm(thins, 3)} |")  # fmt: skip
        if level.metric == "val/miou":
            summary.append(
                f"mIoU first held {level.level:g} at {metric} {np.mean(losses):.3f} on average "
                f"(range {min(losses):.3f}-{max(losses):.3f}; {len(found)} of {len(study.usable)} runs got there)."
                if losses else f"No run held mIoU {level.level:g}."
            )
    return bins, "\n".join(lines), summary


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
                files.append(masks / f"step_{crossing.step:07d}.png")
                captions.append(_caption(study, run, crossing.step))
        last = run.validations[-1]["step"]
        files.append(masks / f"step_{last:07d}.png")
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


def _contention(study: Study) -> str:
    shares = [(run, min((row.get("cpu_share") or 1.0) for row in run.validations)) for run in study.usable]
    contended = [(run, share) for run, share in shares if share < 0.8]
    if not contended:
        return "Every run had its CPU cores to itself (CPU share >= 0.8 at every validation, where measured)."
    names = ", ".join(f"{run.folder.name} ({share:.2f})" for run, share in contended)
    return (f"Seconds are inflated where another job shared the CPU: {len(contended)} run(s) had a CPU share "
            f"below 0.8 at some validation ({names}). Epochs and images are unaffected.")  # fmt: skip


def _problems(study: Study) -> str:
    bad = [run for run in study.runs if not run.usable]
    if not bad:
        return "None: every run completed."
    lines = ["| run folder | seed | status | error |", "|---|---|---|---|"]
    for run in bad:
        error = (run.error or ("no validation" if run.status == "completed" else "")).replace("|", "/")
        lines.append(f"| {run.folder.name} | {run.seed} | {run.status} | {error.splitlines()[0] if error else ''} |")
    return "\n".join(lines)


def write_report(sweep: str | Path) -> tuple[Path, str]:
    """Write ``report.md`` and the figures into ``sweep``.

    Returns:
        The report's path and its headline.
    """
    sweep = Path(sweep)
    study = Study(load_runs(sweep))
    if not study.usable:
        problems = _problems(study)
        write_atomic(sweep / "report.md", f"# Study report\n\nNo run completed.\n\n{problems}\n")
        raise RuntimeError(f"no completed run with validations under {sweep}; see {sweep / 'report.md'}:\n{problems}")

    arms = {arm.label: arm.runs for arm in study.arms}
    loss_levels = [level.level for level in study.headline]
    figures.curves_figure(arms, study.loss_metric, sweep / "loss_curves.png",
                          f"{study.loss_metric} at every validation: mean +- std over seeds", loss_levels)  # fmt: skip
    figures.curves_figure(arms, "val/miou", sweep / "miou_curves.png", "val/miou at every validation",
                          [lv.level for lv in study.miou_levels])
    figures.curves_figure(arms, study.loss_metric, sweep / "val_loss_vs_seconds.png",
                          f"{study.loss_metric} against training seconds", loss_levels, unit="seconds")  # fmt: skip
    rows = ladder_rows(study)
    if rows:
        figures.speedup_figure(rows, sweep / "speedup_vs_threshold.png")
    curves = {}
    for level in study.headline:
        per_arm = {}
        for arm in study.arms:
            crossings = _crossings(arm, level)
            times, fraction = kaplan_meier([c.time for c in crossings], [c.reached for c in crossings])
            per_arm[arm.label] = (np.append(times, max(c.time for c in crossings)), np.append(fraction, fraction[-1]),
                                  len(crossings))  # fmt: skip
        curves[level.name] = per_arm
    figures.reached_figure(curves, sweep / "reached_vs_epochs.png")
    points = [row for run in study.usable for row in run.validations]
    figures.calibration_figure(points, study.thin_classes, loss_levels,
                               [lv.level for lv in study.miou_levels],
                               sweep / "calibration.png", study.loss_metric)  # fmt: skip
    sheet = _mask_sheet(study, sweep)

    bins, first_reached, summary = calibration(study)
    top = headline_table(study)
    figure_names = ["loss_curves.png", "miou_curves.png", "val_loss_vs_seconds.png", "reached_vs_epochs.png"]
    if rows:
        figure_names.insert(0, "speedup_vs_threshold.png")
    if sheet:
        figure_names.append(sheet.name)
    sections = [
        "# Study report: epochs to threshold, paired speedups, loss-to-quality calibration",
        f"Study folder: `{sweep}`; {len(study.usable)} usable runs of {len(study.runs)} in {len(study.arms)} arms. "
        "Epochs are fractional (validations within an epoch); a loss threshold is reached at `<=`, an mIoU one at "
        "`>=`.",
        "## Protocol\n\n" + protocol_section(study),
        "## Headline\n\n" + top,
        "## Speedup at every threshold level\n\nThe fraction of runs of each arm that reached the level, and the "
        "paired speedup (geometric mean, 95% t-interval on log ratios; bounds where censoring decides).\n\n"
        + (ladder_table(rows) if rows else "No comparison: the runs name none (`study.comparisons`).")
        + ("\n\n![speedup vs threshold](speedup_vs_threshold.png)" if rows else ""),
        "## Per-seed ratios\n\n" + (per_seed_table(study) if study.comparisons else "No comparison."),
        "## Sensitivity\n\nThe headline speedups (geometric means) with the level moved by +-0.02, with the "
        "crossing interpolated between validations, and counted in images and in seconds.\n\n"
        + (sensitivity_table(study) if study.comparisons else "No comparison.")
        + "\n\n" + _contention(study),
        "## Epochs, images and seconds to each threshold\n\nMean +- std over the runs that reached it.\n\n"
        + cost_table(study) + "\n\n![fraction reached](reached_vs_epochs.png)",
        "## Best scores\n\n" + best_table(study),
        "## Loss-to-quality calibration\n\n" + "\n".join(f"- {line}" for line in summary) + "\n\n"
        "Mask quality at each loss level, over every validation of every run (mean +- std):\n\n" + bins + "\n\n"
        "The loss, mIoU and thin-class IoU at the validation that first held each level:\n\n" + first_reached
        + "\n\n![calibration](calibration.png)",
        "## Figures\n\n" + "\n\n".join(f"![{name[:-4].replace('_', ' ')}]({name})" for name in figure_names),
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
