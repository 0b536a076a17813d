"""The study report's tables, each from a :class:`~segment.analysis.study.Study` (markdown text)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segment.analysis.stats import RatioEstimate, TunedEstimate, mean_std
from segment.analysis.study import Arm, Study
from segment.callbacks.thresholds import Crossing, Threshold
from segment.config import value_text

__all__ = [
    "best_table", "calibration", "contention", "cost_table", "headline_table", "ladder_rows", "ladder_table",
    "per_seed_table", "problems", "protocol_section", "rate_table", "sensitivity_table", "tuned_table",
    "units_table",
]  # fmt: skip

UNITS = {"epoch": "epochs", "step": "steps", "images_seen": "images", "seconds": "seconds"}
# Loss bins (upper edges, descending) for the mask quality at each loss level.
LOSS_BINS = (float("inf"), 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0)
EVIDENCE = ("Speedup: geometric mean over seeds of (slower arm's epochs / faster arm's epochs), paired by seed, with a "
            "95% t-interval on the log ratios; beside it the exact one-sided sign test (p) and the range of the "
            "per-seed ratios. `>=`: some slower-arm runs never reached the level and count at their last "
            "validation, so the speedup is at least this; `<=` the reverse; n/a: censored on both sides.")  # fmt: skip


def pm(values: Sequence[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    return "" if not values else f"{mean:.{digits}f} +- {std:.{digits}f}"


def ratio(estimate: RatioEstimate | None, interval: bool = True) -> str:
    """``1.34x [1.11, 1.61]``, ``>=5.22x`` or ``n/a``."""
    if estimate is None:
        return "n/a"
    text = f"{estimate.bound}{estimate.point:.2f}x"
    if interval and not estimate.bound and np.isfinite(estimate.low):
        text += f" [{estimate.low:.2f}, {estimate.high:.2f}]"
    return text


def evidence(estimate: RatioEstimate | None) -> str:
    """``p=0.031, 1.20-1.52``: the sign test and the per-seed range beside an interval."""
    if estimate is None or estimate.bound or estimate.seeds < 2:
        return ""
    return f"p={estimate.sign_p:.3f}, {min(estimate.ratios):.2f}-{max(estimate.ratios):.2f}"


def _crossings(arm: Arm, level: Threshold, unit: str = "epoch") -> list[Crossing]:
    return list(arm.crossings(level, unit).values())


def _reached_cell(arm: Arm, level: Threshold, unit: str = "epoch", digits: int = 2) -> str:
    crossings = _crossings(arm, level, unit)
    times = [c.time for c in crossings if c.reached]
    if not times:
        last = max((c.time for c in crossings), default=0.0)
        return f"not reached ({len(crossings)} runs, up to {last:.{digits}g})"
    return f"{pm(times, digits)} ({len(times)}/{len(crossings)})"


def protocol_section(study: Study) -> str:
    """What every arm was trained with, read from the runs' resolved configs; a warning where precisions differ."""
    lines = [
        "| arm | runs (seeds) | net | encoder weights | optimizer, lr | schedule | batch | image | "
        "validations/epoch | clip | precision | cap (epochs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in study.arms:
        run = arm.runs[0]
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
        precision = ", ".join(sorted({str(r.precision) for r in arm.runs}))
        weights = ", ".join(sorted({r.weights or "?" for r in arm.runs}))
        caps = ", ".join(sorted({str(r.value("trainer.max_epochs")) for r in arm.runs}))
        net = [(run.value("model.net._target_") or "?").rsplit(".", 1)[-1], run.value("model.net.encoder_name")]
        if run.value("model.net.final_relu") is not None:  # the lab's VGG net: which head it trained with
            net.append("head ending in ReLU (the lab's)" if run.value("model.net.final_relu") else "corrected head")
        lines.append(
            f"| {arm.label} | {len(arm.runs)} ({', '.join(str(r.seed) for r in arm.runs)}) "
            f"| {', '.join(part for part in net if part)} | {weights} | {optimizer} | {scheduler} "
            f"| {run.value('data.batch_size')} | {image} | {round(1 / float(interval)) if interval <= 1 else 1} "
            f"| {run.value('trainer.gradient_clip_val') or '-'} | {precision} | {caps} |"
        )
    run = study.usable[0]
    thresholds = run.value("callbacks.thresholds") or {}
    host = ((run.record.get("attempts") or [{}])[-1].get("precision") or run.record.get("precision") or {}).get(
        "host") or run.record.get("host", "?")  # fmt: skip
    versions = run.record.get("versions", {})
    attempts = run.record.get("attempts") or [run.record]
    lines += [
        "",
        f"A threshold counts once it has held for {run.patience} validations in a row and is credited to the first "
        "of them (its fractional epoch, optimiser step, images seen and seconds): the crossing is resolved to the "
        "first validation at or past the level. (The sensitivity table also gives linear interpolation between the "
        "last validation before the level and that one.) "
        f"Training stopped once `{thresholds.get('stop_when_reached')}` had held, or at the cap. "
        f"Host: {host}; versions: torch {versions.get('torch')}, lightning {versions.get('lightning')}; "
        f"code {str((attempts[0].get('git') or {}).get('commit'))[:7]}.",
    ]
    mixed = [c.name for c in study.comparisons if {r.precision for r in c.slower.runs + c.faster.runs} != {
        c.slower.runs[0].precision}]  # fmt: skip
    if mixed:
        lines.append(f"\n**Warning: the arms of {', '.join(mixed)} trained in different precisions** (see the "
                     "precision column): their seconds, and possibly their epochs, are not comparable.")  # fmt: skip
    return "\n".join(lines)


def headline_table(study: Study) -> str:
    """Epochs to each headline level per arm, and the paired speedups with their evidence."""
    lines = [
        "| arm | runs | " + " | ".join(f"epochs to {level.name}" for level in study.headline) + " |",
        "|---|---|" + "---|" * len(study.headline),
    ]
    for arm in study.arms:
        cells = [_reached_cell(arm, level) for level in study.headline]
        lines.append(f"| {arm.label} | {len(arm.runs)} | " + " | ".join(cells) + " |")
    if not study.comparisons:
        return "\n".join(lines)
    lines += [
        "",
        "| comparison | slower / faster | seed pairs | "
        + " | ".join(f"{lv.name} | sign test p, per-seed range" for lv in study.headline) + " |",
        "|---|---|---|" + "---|---|" * len(study.headline),
    ]
    only_t = []
    for comparison in study.comparisons:
        estimates = [comparison.estimate(level) for level in study.headline]
        cells = [f"{ratio(e)} | {evidence(e)}" for e in estimates]
        lines.append(f"| {comparison.name} | {comparison.slower.label} / {comparison.faster.label} "
                     f"| {len(comparison.seeds)} | " + " | ".join(cells) + " |")  # fmt: skip
        only_t += [f"{comparison.name} at {lv.level:g}" for lv, e in zip(study.headline, estimates, strict=True)
                   if e is not None and e.only_parametric]  # fmt: skip
    lines.append("\n" + EVIDENCE)
    if only_t:
        lines.append(f"\nThe direction is established only by the parametric t-interval (the sign test cannot "
                     f"reach p < 0.05 with these pairs) for: {'; '.join(only_t)}.")  # fmt: skip
    return "\n".join(lines)


def rate_table(study: Study) -> str:
    """Each arm's epochs to each headline level at each rate: median over seeds, and the rate it does best at."""
    lines = []
    for tuned in study.tuned:
        lines += [f"**{tuned.effect}** ({tuned.context or 'all runs'}; rate: `{tuned.rate}`)", "",
                  "| arm | rate | runs | " + " | ".join(f"{lv.name}: median (reached)" for lv in study.headline)
                  + " |", "|---|---|---|" + "---|" * len(study.headline)]  # fmt: skip
        for side in ("slower", "faster"):
            cells = getattr(tuned, side)
            best = {lv.name: tuned.estimate(lv, reselect=False) for lv in study.headline}
            for rate, arm in sorted(cells.items(), key=lambda kv: float(kv[0])):
                row = []
                for level in study.headline:
                    times = arm.times(level)
                    median = np.median([t if reached else np.inf for t, reached in times.values()])
                    chosen = best[level.name] and getattr(best[level.name], f"{side}_rate") == rate
                    text = "never" if not np.isfinite(median) else f"{median:.2f}"
                    reached = sum(r for _, r in times.values())
                    row.append(f"{'**' + text + '**' if chosen else text} ({reached}/{len(times)})")
                label = ", ".join(f"{k}={v}" for k, v in sorted(dict(arm.key).items()) if k != tuned.rate)
                lines.append(f"| {label} | {value_text(float(rate))} | {len(arm.runs)} | " + " | ".join(row) + " |")
        lines.append("")
    if lines:
        lines.append("Bold: the rate each arm reaches the level soonest at (lowest median over seeds; a run that "
                     "never got there counts as never).")  # fmt: skip
    return "\n".join(lines)


def _tuned_cell(estimate: TunedEstimate | None) -> str:
    if estimate is None or estimate.estimate is None:
        return "n/a"
    rates = f"{value_text(float(estimate.slower_rate))} / {value_text(float(estimate.faster_rate))}"
    if estimate.estimate.bound:
        return f"{ratio(estimate.estimate)} ({rates})"
    return (f"{estimate.estimate.point:.2f}x [{estimate.low:.2f}, {estimate.high:.2f}] ({rates}; "
            f"{evidence(estimate.estimate)})")  # fmt: skip


def tuned_table(study: Study) -> str:
    """Each arm at its own best rate: the speedup, its reselecting bootstrap interval, and how stable the choice is."""
    if not study.tuned:
        return "No tuned comparison: the runs declare none (`study.tuned`), or no arm has more than one rate."
    lines = ["| comparison | " + " | ".join(lv.name for lv in study.headline) + " |",
             "|---|" + "---|" * len(study.headline)]  # fmt: skip
    stability = []
    for tuned in study.tuned:
        estimates = [tuned.estimate(level) for level in study.headline]
        lines.append(f"| {tuned.name} | " + " | ".join(_tuned_cell(e) for e in estimates) + " |")
        for level, estimate in zip(study.headline, estimates, strict=True):
            if estimate is not None and estimate.chosen:
                shares = ", ".join(f"{value_text(float(a))} / {value_text(float(b))} {share:.0%}"
                                   for (a, b), share in list(estimate.chosen.items())[:3])  # fmt: skip
                stability.append(f"- {tuned.effect}, {level.name}: {shares}")
    return "\n".join([
        *lines, "",
        "Each cell: slower arm at its best rate over faster arm at its best rate, paired by seed (geometric mean), "
        "the rates chosen per level on all seeds (in brackets: slower / faster rate). The interval is a 95% "
        "percentile bootstrap over seeds that chooses both rates again inside every resample, so it carries the "
        "uncertainty of the choice (choosing on the same runs flatters the winner; splitting the 3-5 seeds into a "
        "choosing half and a measuring half would leave 1-2 seeds per half). With so few seeds a percentile "
        "bootstrap undercovers: read it beside the sign test and the per-seed range.", "",
        "How often each pair of rates was chosen over the resamples (slower / faster):", "", *stability,
    ])  # fmt: skip


def units_table(study: Study) -> str:
    """Every comparison's headline speedups counted in epochs, optimiser steps, images and seconds."""
    lines = ["| comparison | level | " + " | ".join(UNITS.values()) + " |", "|---|---|" + "---|" * len(UNITS)]
    for comparison in study.comparisons:
        for level in study.headline:
            cells = [ratio(comparison.estimate(level, unit=unit)) for unit in UNITS]
            lines.append(f"| {comparison.name} | {level.name} | " + " | ".join(cells) + " |")
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
    lines = ["| comparison | threshold | slower reached | faster reached | speedup [95% CI] | sign test p, range |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        slow_runs, fast_runs = row["runs"]
        lines.append(
            f"| {row['comparison']} | {row['name']} | {row['reached']['slower']}/{slow_runs} "
            f"| {row['reached']['faster']}/{fast_runs} | {ratio(row['estimate'])} | {evidence(row['estimate'])} |"
        )
    return "\n".join(lines)


def per_seed_table(study: Study) -> str:
    """Each seed's ratio at each headline level: the data behind the geometric means."""
    lines = ["| comparison | threshold | per-seed ratios (seed: slower / faster epochs) |", "|---|---|---|"]
    for comparison in study.comparisons:
        for level in study.headline:
            slow, fast = comparison.slower.crossings(level), comparison.faster.crossings(level)
            cells = []
            for seed in (s for s in comparison.seeds if s in slow and s in fast):
                a, b = slow[seed], fast[seed]
                mark = "" if a.reached and b.reached else (" (>=)" if not a.reached and b.reached else
                                                           " (<=)" if a.reached else " (never)")  # fmt: skip
                cells.append(f"{seed}: {a.time:.2f} / {b.time:.2f} = {a.time / b.time:.2f}{mark}")
            lines.append(f"| {comparison.name} | {level.name} | {'; '.join(cells)} |")
    return "\n".join(lines)


def sensitivity_table(study: Study) -> str:
    """The headline speedups with the level moved by +-0.02, and with interpolated crossings."""
    lines = ["| comparison | level | level - 0.02 | level | level + 0.02 | interpolated crossing |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for comparison in study.comparisons:
        for level in study.headline:
            shifted = [Threshold(level.metric, level.mode, round(level.level + d, 6)) for d in (-0.02, 0.0, 0.02)]
            cells = [ratio(comparison.estimate(s), interval=False) for s in shifted]
            cells.append(ratio(comparison.estimate(level, interpolate=True), interval=False))
            lines.append(f"| {comparison.name} | {level.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(study: Study) -> str:
    """Epochs, steps, images and seconds to each headline and mIoU level per arm (mean +- std where reached)."""
    lines = ["| arm | threshold | reached | epochs | steps | images seen | seconds |", "|---|---|---|---|---|---|---|"]
    for arm in study.arms:
        for level in study.headline + study.miou_levels:
            parts = [[c.time for c in _crossings(arm, level, unit) if c.reached] for unit in UNITS]
            lines.append(f"| {arm.label} | {level.name} | {len(parts[0])}/{len(arm.runs)} | {pm(parts[0], 2)} "
                         f"| {pm(parts[1], 0)} | {pm(parts[2], 0)} | {pm(parts[3], 0)} |")  # fmt: skip
    return "\n".join(lines)


def best_table(study: Study) -> str:
    lines = ["| arm | encoder weights | epochs trained | best loss | at epoch | best val/miou | at epoch |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm in study.arms:
        losses = [run.best(study.loss_metric, True) for run in arm.runs]
        mious = [run.best("val/miou", False) for run in arm.runs]
        weights = ", ".join(sorted({run.weights or "?" for run in arm.runs}))
        lines.append(
            f"| {arm.label} | {weights} | {pm([run.last_epoch for run in arm.runs])} "
            f"| {pm([v for v, _ in losses], 3)} | {pm([e for _, e in losses])} "
            f"| {pm([v for v, _ in mious], 3)} | {pm([e for _, e in mious])} |"
        )
    return "\n".join(lines)


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
        lines.append(f"| {label} | {len(rows)} | {pm([r['val/miou'] for r in rows], 3)} | {pm(accuracy, 3)} "
                     f"| {pm(thins, 3)} |")  # fmt: skip
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
        lines.append(f"| {level.name} | {len(found)}/{len(study.usable)} | {pm(losses, 3)} | {pm(mious, 3)} "
                     f"| {pm(thins, 3)} |")  # fmt: skip
        if level.metric == "val/miou":
            summary.append(
                f"mIoU first held {level.level:g} at {metric} {np.mean(losses):.3f} on average "
                f"(range {min(losses):.3f}-{max(losses):.3f}; {len(found)} of {len(study.usable)} runs got there)."
                if losses else f"No run held mIoU {level.level:g}."
            )
    return bins, "\n".join(lines), summary


def contention(study: Study) -> str:
    shares = [(run, min((row.get("cpu_share") or 1.0) for row in run.validations)) for run in study.usable]
    contended = [(run, share) for run, share in shares if share < 0.8]
    if not contended:
        return "Every run had its CPU cores to itself (CPU share >= 0.8 at every validation, where measured)."
    names = ", ".join(f"{run.folder.name} ({share:.2f})" for run, share in contended)
    return (f"Seconds are inflated where another job shared the CPU: {len(contended)} run(s) had a CPU share "
            f"below 0.8 at some validation ({names}). Epochs, steps and images are unaffected.")  # fmt: skip


def problems(study: Study) -> str:
    bad = [run for run in study.runs if not run.usable]
    if not bad:
        return "None: every run completed."
    lines = ["| run folder | seed | status | error |", "|---|---|---|---|"]
    for run in bad:
        error = (run.error or ("no validation" if run.status == "completed" else "")).replace("|", "/")
        lines.append(f"| {run.folder.name} | {run.seed} | {run.status} | {error.splitlines()[0] if error else ''} |")
    return "\n".join(lines)
