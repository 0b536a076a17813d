"""The study report's tables, each from a :class:`~segment.analysis.study.Study` (markdown text)."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from segment.analysis.runs import Run
from segment.analysis.stats import MAX_SEEDS, Estimate, mean_std
from segment.analysis.study import Arm, Comparison, Study, TunedComparison
from segment.analysis.thresholds import Threshold
from segment.config.names import ROLE, value_text

__all__ = [
    "answer",
    "best_table",
    "title",
    "calibration",
    "comparison_table",
    "contention",
    "cost_table",
    "ladder_rows",
    "ladder_table",
    "problems",
    "protocol_section",
    "rate_table",
    "sensitivity_table",
    "seconds_runs",
    "step_ms",
    "tuned_table",
    "units_table",
]

UNITS = {"epoch": "epochs", "step": "steps", "images_seen": "images", "seconds": "seconds"}
# Loss bins (upper edges, descending) for the mask quality at each loss level.
LOSS_BINS = (float("inf"), 1.2, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0)
EVIDENCE = (
    "Each cell: slower arm's epochs / faster arm's epochs to the level, a ratio of geometric "
    "means, with its 95% interval from the two cells alone (a paired t on the per-seed log ratios "
    "where both runs of every seed saw the same data order, else Welch's t; each log-time's "
    "variance never below the validation grid's rounding: docs/study.md), its p from the same t, "
    "and beside it the exact two-sided permutation p (every relabelling of the seeds; its "
    "smallest possible value is 2/2^n for n pairs, 2/C(n1+n2, n1) for independent runs), whether "
    "the seeds were paired and the seeds per arm needed for 80% power at a true speedup of "
    "`study.plan.ratio` and for a +-25% interval, at the upper 80% bound of the cell's spread. "
    "`>=`: the slower arm never reached the level (counted at its last validation): a bound; `~`: "
    "some runs never reached it, a censored log-normal fit (model-based, no interval)."
)


def p_text(p: float, name: str = "p") -> str:
    """``p=0.063``: two significant digits, rounded up (never below the true p, so never below a
    permutation test's floor), more where rounding up would carry p < 0.05 to 0.05; ``p<0.0001``
    below that."""
    if not np.isfinite(p):
        return f"{name}=n/a"
    if p < 1e-4:
        return f"{name}<0.0001"
    for significant in range(2, 6):
        digits = significant - 1 - math.floor(math.log10(p))
        shown = math.ceil(p * 10**digits - 1e-9) / 10**digits
        if not p < 0.05 <= shown:
            break
    return f"{name}={shown:.{max(digits, 0)}f}"


def seeds_text(needed: tuple[int, int] | None) -> str:
    """``needs 4/7`` (power / precision), ``>100`` past the search."""
    if not needed:
        return ""
    shown = [f">{MAX_SEEDS}" if n > MAX_SEEDS else str(n) for n in needed]
    return f"needs {shown[0]}/{shown[1]}"


def pm(values: Sequence[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    return "" if not values else f"{mean:.{digits}f} +- {std:.{digits}f}"


def rate(value: object) -> str:
    return value_text(float(value)) if value is not None else ""


def ratio(estimate: Estimate | None, interval: bool = True) -> str:
    """``1.34x [1.11, 1.61]``, ``>=5.22x``, ``~2.1x``, ``1.60x (no interval: ...)`` or ``n/a``."""
    if estimate is None:
        return "n/a"
    mark = estimate.bound or ("~" if estimate.model else "")
    text = f"{mark}{estimate.point:.2f}x"
    if interval and np.isfinite(estimate.low):
        text += f" [{estimate.low:.2f}, {estimate.high:.2f}]"
    elif interval and estimate.reason and not estimate.model:
        text += f" (no interval: {estimate.reason})"
    return text


def evidence(estimate: Estimate | None, plan: float | None = 1.25) -> str:
    """``p=0.019; exact p=0.063; paired, 5/5 seeds; needs 4/7``: beside every interval (the seeds
    needed for a true speedup of ``plan``; None: left out)."""
    if estimate is None or not np.isfinite(estimate.low):
        return ""
    if estimate.tuned:
        text = (
            f"{p_text(estimate.p)}; {p_text(estimate.exact_p, 'permutation p')} (rates chosen "
            f"again); {estimate.seeds[0]}/{estimate.seeds[1]} seeds"
        )
    else:
        pairing = "paired" if estimate.paired else "unpaired"
        text = (
            f"{p_text(estimate.p)}; {p_text(estimate.exact_p, 'exact p')}; {pairing}, "
            f"{estimate.seeds[0]}/{estimate.seeds[1]} seeds"
        )
    if plan is not None and estimate.needed(plan):
        text += f"; {seeds_text(estimate.needed(plan))}"
    return text


def per_seed(estimate: Estimate | None) -> str:
    """``0: 5.24/3.98; 1: 6.24/3.74``: each seed's epochs, slower/faster."""
    if estimate is None:
        return ""
    cell = lambda value: "-" if value is None else f"{value:.2f}"  # noqa: E731
    return "; ".join(f"{seed}: {cell(a)}/{cell(b)}" for seed, a, b in estimate.values)


def _fixed(study: Study, tuned: TunedComparison) -> list[Comparison]:
    """The fixed-rate comparisons inside a tuned one, by rate."""
    found = [c for c in study.comparisons if c.slower in tuned.arms and c.faster in tuned.arms]
    return sorted(found, key=lambda c: float(c.slower.value(tuned.rate)))


def title(study: Study) -> str:
    """``scratch / pretrained, epochs to val/loss <= 1 | 0.7 | 0.5``: the answer's columns."""
    levels = " | ".join(f"{level.level:g}" for level in study.headline)
    declared = {**study.spec["comparisons"], **study.spec["tuned"]}
    effect = (
        study.tuned[0].effect
        if study.tuned
        else (study.comparisons[0].effect if study.comparisons else None)
    )
    if effect is None:
        return f"epochs to {study.loss_metric} <= {levels}"
    names = study.spec["names"]
    slow, fast = (
        " ".join(names.get(str(v), str(v)) for v in declared[effect][side].values())
        for side in ("slower", "faster")
    )
    return f"{slow} / {fast}, epochs to {study.loss_metric} <= {levels}"


def _row(estimates: Sequence[Estimate | None], bold: bool = False) -> str:
    """``1.34x [0.96, 1.86] p=0.019 | ...``: one level after another (p: the interval's own)."""
    cells = []
    for e in estimates:
        text = ratio(e)
        if bold and e is not None:
            text = text.replace(f"{e.point:.2f}x", f"**{e.point:.2f}x**", 1)
        cells.append(text + (f" {p_text(e.p)}" if e is not None and np.isfinite(e.low) else ""))
    return " | ".join(cells)


def plain_answer(study: Study) -> str:
    """The answer in one sentence of plain words: how much sooner the faster side got to each
    headline level (each at its best rate where rates were bracketed), where that holds."""
    rows = _answer_rows(study)
    if not rows:
        return ""
    _, comparison = rows[0]
    if isinstance(comparison, TunedComparison):
        names = study.spec["names"]
        declared = study.spec["tuned"][comparison.effect]
        slow, fast = (
            " ".join(names.get(str(v), str(v)) for v in declared[side].values())
            for side in ("slower", "faster")
        )
        how = "each at its best rate, "
    else:
        slow, fast, how = comparison.slower.name, comparison.faster.name, ""
    held, open_ = [], []
    for level in study.headline:
        e = comparison.estimate(level)
        if e is not None and e.bound == "<=":  # the faster arm never got there
            held.append(f"<= {level.level:g} never, where the {slow} arm did")
        elif e is not None and (e.holds or e.bound):
            at_least = "at least " if e.bound else ""
            speed = f"{e.point:.1f}x sooner" if e.point >= 1 else f"{1 / e.point:.1f}x later"
            held.append(f"<= {level.level:g} {at_least}{speed}")
        elif e is not None:
            open_.append(f"<= {level.level:g} its {e.point:.2f}x")
    text = f"In plain words: {how}the {fast} arm reaches {study.loss_metric} "
    text += " and ".join(held) if held else "no headline level measurably sooner"
    text += f" than the {slow} arm"
    return text + (f"; at {' and '.join(open_)} is not established." if open_ else ".")


def answer(study: Study) -> str:
    """The report's first lines (at most 7), columns as in :func:`title`: the answer in plain
    words, each arm at its best rate, each fixed rate in a line, and where the answer does not
    hold."""
    levels = study.headline
    if not study.tuned and not study.comparisons:
        return "No comparison: the runs declare none (`study.comparisons`)."
    lines, weak = [plain_answer(study)], []
    comparisons = study.comparisons
    if study.tuned:
        tuned = study.tuned[0]
        estimates = [tuned.estimate(level) for level in levels]
        chosen = " | ".join(
            f"{rate(e.rates[0])}/{rate(e.rates[1])}" if e else "-" for e in estimates
        )
        seeds = " | ".join(f"{e.seeds[0]}/{e.seeds[1]}" if e else "-" for e in estimates)
        lines.append(
            f"- **each at its best rate** ({chosen}; {seeds} seeds): {_row(estimates, bold=True)}"
        )
        weak += [
            f"best rates at {lv.level:g}"
            for lv, e in zip(levels, estimates, strict=True)
            if e is not None and not e.holds
        ]
        comparisons = _fixed(study, tuned)
    for comparison in comparisons[: 6 - len(lines)]:
        line, open_ = _answer_line(comparison, levels)
        lines.append(line)
        weak += open_
    lines.append(
        "- not established (the 95% interval holds 1): "
        + ("; ".join(weak) if weak else "nowhere here")
        + ". Interval and p: each cell's own t (best rates: holding for every pair of rates at "
        "once); exact permutation p and seeds needed: the tables below."
    )
    return "\n".join(lines)


def _answer_line(comparison: Comparison, levels: Sequence[Threshold]) -> tuple[str, list[str]]:
    """A fixed-rate (or declared) comparison's line of the answer, and where it does not hold."""
    estimates = [comparison.estimate(level) for level in levels]
    where = comparison.context or comparison.effect
    first = next((e for e in estimates if e is not None and np.isfinite(e.low)), None)
    first = first or next((e for e in estimates if e is not None), None)
    how = (
        f"{first.seeds[0]}/{first.seeds[1]} seeds, {'paired' if first.paired else 'unpaired'}"
        if first
        else ""
    )
    label = (  # a rate of the title's arms, or another effect, named with its own arms
        f"at {comparison.context}"
        if comparison.context
        else f"{comparison.effect}, {comparison.slower.name} / {comparison.faster.name}"
    )
    weak = [
        f"{where} at {lv.level:g}"
        for lv, e in zip(levels, estimates, strict=True)
        if e is not None and not e.bound and not e.model and not e.holds
    ]
    return f"- {label}{f' ({how})' if how else ''}: {_row(estimates)}", weak


def _answer_rows(study: Study) -> list[tuple[str, Comparison | TunedComparison]]:
    """The comparisons the answer states, by name: the best rates and each fixed rate, or the
    declared comparisons."""
    if study.tuned:
        tuned = study.tuned[0]
        return [("the best rates", tuned)] + [(f"at {c.context}", c) for c in _fixed(study, tuned)]
    return [(c.label, c) for c in study.comparisons[:5]]


def more_seeds(study: Study, sweep: str) -> str:
    """The command that adds to ``sweep`` the seeds every cell of the answer needs for 80% power
    at a true speedup of ``study.plan_ratio`` (completed jobs are skipped)."""
    rows = _answer_rows(study)
    if not rows:
        return ""
    needs = [
        (e.needed(study.plan_ratio)[0], f"{name} at {level.level:g}")
        for name, comparison in rows
        for level in study.headline
        if (e := comparison.estimate(level)) is not None and e.needed(study.plan_ratio)
    ]
    needed, where = max(needs, default=(0, ""), key=lambda n: n[0])
    arms = {id(a): a for _, c in rows for a in getattr(c, "arms", None) or [c.slower, c.faster]}
    runs = [run for arm in arms.values() for run in arm.runs]
    seeds = sorted({int(run.seed) for run in runs if run.seed is not None})
    plan = f"80% power to tell a true speedup of {study.plan_ratio:g}x from none"
    if not seeds or needed <= len(seeds):
        return (
            f"Every cell of the answer has the seeds {plan} needs ({len(seeds)} per arm)."
            if needs
            else "No cell of the answer has an interval to plan from."
        )
    if needed > MAX_SEEDS:
        return (
            f"{plan} would need more than {MAX_SEEDS} seeds per arm ({where}): at its spread this "
            "design cannot resolve so small an effect there."
        )
    arguments = _seeds_arguments(runs, seeds, needed, sweep)
    roles = sorted(set(ROLE.findall(arguments)))
    fill = f" (with {' and '.join(f'`{r}`' for r in roles)} replaced by the path on your machine)"
    return (
        f"{plan} needs {needed} seeds per arm in the answer's most demanding cell ({where}; each "
        f"cell's need is in the tables below); to add them to this sweep{fill if roles else ''}:"
        f"\n\n```bash\nsegment-train -m {arguments}\n```"
    )


_APPENDED = ("seed", "hydra.sweep.dir", "skip_completed")  # what the seeds command sets itself


def _seeds_arguments(runs: list[Run], seeds: list[int], needed: int, sweep: str) -> str:
    """The sweep's arguments (shell-quoted) that add seeds up to ``needed`` to every arm of
    ``runs`` (``seeds``: those they have) in ``sweep``: each key once. An exported path's role
    (``'<data.root>'``) is written ``"<data.root>"``, to be replaced inside the quotes."""
    values: dict[str, list[str]] = {}
    for item in (item for run in runs for item in run.typed):
        key, _, value = item.partition("=")
        value = re.sub(r"^'(<[^']*)'$", r'"\1"', value)
        if key not in _APPENDED and value not in values.setdefault(key, []):
            values[key].append(value)
    new = range(seeds[-1] + 1, seeds[-1] + 1 + needed - len(seeds))
    parts = [f"{key}={','.join(found)}" for key, found in values.items()]
    parts += [f"seed={','.join(map(str, new))}", f"hydra.sweep.dir={sweep}", "skip_completed=true"]
    return " ".join(map(shlex.quote, parts))


def comparison_table(study: Study, comparisons: Sequence[Comparison]) -> str:
    """Each comparison at each headline level: ratio and interval, evidence, per-seed epochs."""
    lines = [
        "| comparison | level | slower / faster | ratio [95% CI] | p; exact p; pairing, seeds; "
        "seeds needed "
        "| per seed (slower/faster epochs) |",
        "|---|---|---|---|---|---|",
    ]
    for comparison in comparisons:
        for level in study.headline:
            e = comparison.estimate(level)
            lines.append(
                f"| {comparison.label} | {level.name} | {comparison.slower.name} / "
                f"{comparison.faster.name} | {ratio(e)} | {evidence(e, study.plan_ratio)} | "
                f"{per_seed(e)} |"
            )
    return "\n".join(lines)


def _own_rates(tuned: TunedComparison, level: Threshold) -> str:
    """``0: 0.001 / 0.0003; 1: ...``: the rate each seed alone would choose for each arm."""
    own = []
    slow, fast = tuned.cells(level)
    for seed in sorted({s for c in slow + fast for s in c.times}, key=str):
        picks = [
            min(
                (c for c in cells if seed in c.times and c.times[seed][1]),
                key=lambda c: (c.times[seed][0], c.rate),
                default=None,
            )
            for cells in (slow, fast)
        ]
        own.append(f"{seed}: " + " / ".join(rate(c.rate) if c else "never" for c in picks))
    return "; ".join(own)


def tuned_table(study: Study) -> str:
    """Each arm at its own best rate: the speedup, its interval for every pair of rates at once,
    each seed's own best rate."""
    if not study.tuned:
        return (
            "No tuned comparison: the runs declare none (`study.tuned`), or no arm has more than "
            "one rate."
        )
    lines = [
        "| comparison | level | rates (slower / faster) | ratio [95% CI] | p; permutation p; "
        "seeds; seeds needed "
        "| per seed at the chosen rates | each seed's own best rate (slower / faster) |",
        "|---|---|---|---|---|---|---|",
    ]
    for tuned in study.tuned:
        for level in study.headline:
            e = tuned.estimate(level)
            lines.append(
                f"| {tuned.name} | {level.name} | {rate(e.rates[0]) if e else ''} / "
                f"{rate(e.rates[1]) if e else ''} | {ratio(e)} | {evidence(e, study.plan_ratio)} | "
                f"{per_seed(e)} | "
                f"{_own_rates(tuned, level)} |"
            )
    return "\n".join(
        [
            *lines,
            "",
            "The best rate of an arm: the lowest mean log-epochs over its seeds (the geometric "
            "mean), ties to the rate with more seeds, then the lower rate. The interval holds for "
            "every pair of candidate rates at once (Sidak over all slower x faster pairs, each "
            "with its cells' own spreads), so choosing the pair on the same runs costs no "
            "coverage; it is wider than a fixed-rate interval by that much (docs/study.md). Its p "
            "is the level at which that interval just reaches 1; the permutation p relabels the "
            "arms within each rate and chooses the rates again in every relabelling. Each seed's "
            "own best rate shows how much the choice varies.",
        ]
    )


def rate_table(study: Study) -> str:
    """Each arm's epochs to each headline level at each rate: geometric mean over seeds, the
    chosen rate bold."""
    lines = []
    for tuned in study.tuned:
        lines += [
            "| arm | rate | runs | "
            + " | ".join(f"{lv.name}: geometric mean (reached)" for lv in study.headline)
            + " |",
            "|---|---|---|" + "---|" * len(study.headline),
        ]
        chosen = {lv.name: tuned.estimate(lv) for lv in study.headline}
        for index, side in enumerate(("slower", "faster")):
            for value, arm in sorted(getattr(tuned, side).items(), key=lambda kv: float(kv[0])):
                row = []
                for level in study.headline:
                    cell = arm.cell(level)
                    reached = len(cell.times) - cell.censored
                    text = (
                        "never"
                        if reached == 0
                        else f"{float(np.exp(cell.mean)):.2f}{'~' if cell.censored else ''}"
                    )
                    best = chosen[level.name] and chosen[level.name].rates[index] == float(value)
                    row.append(
                        f"{'**' + text + '**' if best else text} ({reached}/{len(cell.times)})"
                    )
                lines.append(
                    f"| {arm.name} | {rate(value)} | {len(arm.runs)} | " + " | ".join(row) + " |"
                )
        lines.append("")
    if lines:
        lines.append(
            "Bold: each arm's best rate at the level. `~`: a censored log-normal fit (some runs "
            "never got there)."
        )
    return "\n".join(lines)


def step_ms(run: Run) -> float | None:
    """A run's speed index: its own median milliseconds per optimiser step between consecutive
    validations (validation included), so a run slowed by another job shows it."""
    rows = [row for row in run.validations if "seconds" in row and "step" in row]
    times = [
        1000 * (b["seconds"] - a["seconds"]) / (b["step"] - a["step"])
        for a, b in zip(rows, rows[1:], strict=False)
        if b["step"] > a["step"]
    ]
    return float(np.median(times)) if times else None


def machine(run: Run) -> str:
    """The machine a run's record names: its CPU or GPU model (else its host) and the precision
    probe's fp32 time, which is measured once per host and cached, so two hosts with one CPU name
    tell apart; ``?`` if none."""
    trained = run.record.trained
    if trained is None:
        return "?"
    found = (trained.machine or {}).get("cpu") or {}
    name = found.get("model") if isinstance(found, dict) else None
    name = str(name or (trained.precision or {}).get("host") or trained.host or "?")
    probe = ((trained.machine or {}).get("speed") or trained.precision or {}).get("fp32_ms")
    return name.split(" | ")[0] + (f" (probe {probe:.1f} ms)" if isinstance(probe, float) else "")


def _cpu_share(run: Run) -> float:
    """The least CPU share the run had at a validation (1.0 where not measured)."""
    return min((row.get("cpu_share") or 1.0 for row in run.validations), default=1.0)


def seconds_runs(comparison: Comparison) -> tuple[Comparison | None, list[str]]:
    """The comparison on the runs whose seconds compare: one machine (the one most of its runs
    name), never sharing its CPU with another job (a CPU share below 0.8), each run's step time
    within 25% of its arm's median there. Returns it (None where an arm keeps fewer than 2 runs)
    and a note per run left out."""
    runs = comparison.slower.runs + comparison.faster.runs
    names = [machine(run) for run in runs]
    common = max(sorted(set(names)), key=names.count)
    notes, kept = [], []
    for arm in (comparison.slower, comparison.faster):
        here = [run for run in arm.runs if machine(run) == common and step_ms(run) is not None]
        median = float(np.median([step_ms(run) for run in here])) if here else 0.0
        for run in arm.runs:
            why = (
                f"on {machine(run)}"
                if run not in here
                else f"a CPU share of {_cpu_share(run):.2f}"
                if _cpu_share(run) < 0.8
                else f"{step_ms(run):.0f} ms a step, its arm's median {median:.0f} ms"
                if abs(step_ms(run) - median) > 0.25 * median
                else ""
            )
            if why:
                notes.append(f"{arm.name} seed {run.seed} ({why})")
        kept.append(
            [r for r in here if abs(step_ms(r) - median) <= 0.25 * median and _cpu_share(r) >= 0.8]
        )
    if min(len(k) for k in kept) < 2:
        return None, notes
    sides = (comparison.slower, comparison.faster)
    arms = [replace(arm, runs=k) for arm, k in zip(sides, kept, strict=True)]
    return replace(comparison, slower=arms[0], faster=arms[1]), notes


def units_table(study: Study) -> str:
    """Every comparison's headline speedups counted in epochs, optimiser steps, images and
    seconds; seconds only between runs of one machine at their arm's usual speed."""
    lines = [
        "| comparison | level | " + " | ".join(UNITS.values()) + " |",
        "|---|---|" + "---|" * len(UNITS),
    ]
    notes = []
    for comparison in study.comparisons:
        timed, left = seconds_runs(comparison)
        name = f"{comparison.label} ({comparison.slower.name} vs {comparison.faster.name})"
        if timed is None:
            left.append("seconds withheld: fewer than 2 comparable runs in an arm")
        if left:
            notes.append(f"{name}: {'; '.join(left)}")
        for level in study.headline:
            cells = [
                ratio(comparison.estimate(level, unit=unit))
                if unit != "seconds"
                else (ratio(timed.estimate(level, unit=unit)) if timed else "withheld")
                for unit in UNITS
            ]
            lines.append(f"| {comparison.label} | {level.name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    if notes:
        text += (
            "\n\nSeconds compare only between runs on one machine (as each run's record names "
            "it) whose own step time is within 25% of their arm's median there (a run slowed by "
            "another job, or a host of another speed, is left out; a machine is its CPU name and "
            "the precision probe's fp32 time, measured once per host). Where seconds are "
            "withheld, the epochs ratio times the two nets' per-epoch cost measured side by side "
            "(`python benchmarks/train_throughput.py`) estimates them. Left out:\n\n"
            + "\n".join(f"- {n}" for n in notes)
        )
    return text


def ladder_rows(study: Study) -> list[dict]:
    rows = []
    for comparison in study.comparisons:
        for level in study.loss_ladder + study.miou_ladder:
            reached = {
                side: sum(c.reached for c in arm.crossings(level).values())
                for side, arm in (("slower", comparison.slower), ("faster", comparison.faster))
            }
            rows.append(
                {
                    "comparison": comparison,
                    "metric": level.metric,
                    "level": level.level,
                    "name": level.name,
                    "estimate": comparison.estimate(level),
                    "reached": reached,
                    "runs": (len(comparison.slower.runs), len(comparison.faster.runs)),
                }
            )
    return rows


def ladder_table(rows: list[dict]) -> str:
    lines = [
        "| comparison | threshold | slower reached | faster reached | ratio [95% CI] | p, pairing, "
        "seeds |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        slow_runs, fast_runs = row["runs"]
        lines.append(
            f"| {row['comparison'].label} | {row['name']} | {row['reached']['slower']}/{slow_runs} "
            f"| {row['reached']['faster']}/{fast_runs} | {ratio(row['estimate'])} | "
            f"{evidence(row['estimate'], None)} |"
        )
    return "\n".join(lines)


def sensitivity_table(study: Study) -> str:
    """The headline speedups with the level moved by +-0.02, and with interpolated crossings."""
    lines = [
        "| comparison | level | level - 0.02 | level | level + 0.02 | interpolated crossing |",
        "|---|---|---|---|---|---|",
    ]
    for comparison in study.comparisons:
        for level in study.headline:
            shifted = [
                Threshold(level.metric, level.mode, round(level.level + d, 6))
                for d in (-0.02, 0.0, 0.02)
            ]
            cells = [ratio(comparison.estimate(s), interval=False) for s in shifted]
            cells.append(ratio(comparison.estimate(level, interpolate=True), interval=False))
            lines.append(f"| {comparison.label} | {level.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protocol_section(study: Study) -> str:
    """What every arm was trained with, read from the runs' resolved configs and records: the
    full overrides once, the commits and the machines' speed; a warning where precisions differ.
    """
    lines = [
        "| arm | overrides | seeds | net | encoder weights | optimizer, lr | schedule | batch | "
        "image | validations | clip | precision | cap | code | speed index (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_protocol_row(arm) for arm in study.arms]
    return "\n".join([*lines, *_protocol_notes(study)])


def _protocol_row(arm: Arm) -> str:
    """An arm's line of the protocol table, read from its first run (seeds, weights, precisions,
    caps, commits and speeds from all of them)."""
    run = arm.runs[0]
    scheduler = (run.value("model.scheduler.scheduler._target_") or "none").rsplit(".", 1)[-1]
    warm = run.value("model.scheduler.scheduler.total_iters")
    if scheduler == "LinearLR" and warm:
        scheduler = f"linear warmup {warm} steps, then constant"
    image = "x".join(str(v) for v in (run.value("data.image_size") or []))
    name = (run.value("model.optimizer._target_") or "?").rsplit(".", 1)[-1]
    optimizer = f"{name} {run.value('model.optimizer.lr')}"
    if run.value("model.optimizer.weight_decay"):
        optimizer += f" (wd {run.value('model.optimizer.weight_decay')})"
    precision = ", ".join(sorted({str(r.precision) for r in arm.runs}))
    weights = ", ".join(sorted({r.weights or "?" for r in arm.runs}))
    caps = ", ".join(sorted({_cap(r) for r in arm.runs}))
    net = [
        (run.value("model.net._target_") or "?").rsplit(".", 1)[-1],
        run.value("model.net.encoder_name"),
    ]
    if (
        run.value("model.net.final_relu") is not None
    ):  # the lab's VGG net: which head it trained with
        net.append(
            "head ending in ReLU (the lab's)"
            if run.value("model.net.final_relu")
            else "corrected head"
        )
    commits = ", ".join(f"{commit} ({seeds})" for commit, seeds in _commits(arm.runs).items())
    speeds = [step_ms(r) for r in arm.runs if step_ms(r) is not None]
    speed = f"{min(speeds):.0f}-{max(speeds):.0f}" if speeds else "-"
    return (
        f"| {arm.name} | `{arm.label}` | {', '.join(str(r.seed) for r in arm.runs)} | "
        f"{', '.join(part for part in net if part)} | {weights} | {optimizer} | {scheduler} | "
        f"{run.value('data.batch_size')} | {image} | "
        f"{_validations(run)} | "
        f"{run.value('trainer.gradient_clip_val') or '-'} | {precision} | {caps} | {commits} | "
        f"{speed} |"
    )


def _on_images(run: Run) -> bool:
    """Measured on the grid of images seen (``measurement=images``), not per epoch."""
    return run.value("measurement.val_every_images") is not None


def _validations(run: Run) -> str:
    if _on_images(run):
        return f"every {run.value('measurement.val_every_images'):,} images"
    interval = float(run.value("trainer.val_check_interval") or 1.0)
    return f"{round(1 / interval) if interval <= 1 else 1} per epoch"


def _cap(run: Run) -> str:
    if _on_images(run):
        return f"{run.value('measurement.max_images'):,} images"
    return f"{run.value('trainer.max_epochs')} epochs"


def _protocol_notes(study: Study) -> list[str]:
    """Below the protocol table: how thresholds count, versions, machines, pairing; a warning
    where arms compared trained in different precisions."""
    run = study.usable[0]
    thresholds = run.value("callbacks.thresholds") or {}
    versions = run.record.versions
    cpus = sorted(
        {
            str(
                ((r.record.trained.machine or {}).get("cpu") or {}).get("model")
                or (r.record.trained.precision or {}).get("host", "?")
            ).split(" | ")[0]
            for r in study.usable
            if r.record.trained
        }
    )
    lines = [
        "",
        f"A threshold counts once it has held for {run.patience} validations in a row and is "
        "credited to the first of them (its fractional epoch, optimiser step, images seen and "
        f"seconds). Training stopped once `{thresholds.get('stop_when_reached')}` had held, or at "
        f"the cap. Versions: torch {versions.get('torch')}, lightning {versions.get('lightning')}. "
        "Code: the commits that trained each arm's seeds. Speed index: the range of the runs' own "
        "median milliseconds per optimiser step, validations included (seconds compare only "
        "between runs of one machine within 25% of their arm's median). CPUs: "
        f"{', '.join(cpus)}. Pairing: {_ordered(study)}",
    ]
    mixed = [
        c.name
        for c in study.comparisons
        if {r.precision for r in c.slower.runs + c.faster.runs} != {c.slower.runs[0].precision}
    ]
    if mixed:
        lines.append(
            f"\n**Warning: the arms of {', '.join(mixed)} trained in different precisions** (see "
            "the precision column): their seconds, and possibly their epochs, are not comparable."
        )
    return lines


def _ordered(study: Study) -> str:
    """How the runs' data orders are known: recorded, or from the commit that trained them."""
    recorded = sum(bool(run.record.data_order) for run in study.usable)
    if recorded == len(study.usable):
        return "every run records its data order (`data_order`)."
    return (
        f"{recorded} of {len(study.usable)} runs record their data order (`data_order`); the "
        "others pair by seed only where one clean commit trained both runs."
    )


def _commits(runs: Sequence[Run]) -> dict[str, str]:
    """``{"f04561e": "0, 1, 2"}``: the commits that trained each run (a resumed run may have
    two)."""
    found: dict[str, list[str]] = {}
    for run in runs:
        trained = {
            str((a.git or {}).get("commit") or "?")[:7]
            for a in run.record.attempts
            if a.outcome in ("completed", "interrupted", "failed", None) and a.action != "refuse"
        }
        for commit in sorted(trained):
            found.setdefault(commit, []).append(str(run.seed))
    return {commit: ", ".join(seeds) for commit, seeds in found.items()}


def cost_table(study: Study) -> str:
    """Epochs, steps, images and seconds to each headline and mIoU level per arm (mean +- std
    where reached)."""
    lines = [
        "| arm | threshold | reached | epochs | steps | images seen | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in study.arms:
        for level in study.headline + study.miou_levels:
            parts = [
                [c.time for c in arm.crossings(level, unit).values() if c.reached] for unit in UNITS
            ]
            lines.append(
                f"| {arm.name} | {level.name} | {len(parts[0])}/{len(arm.runs)} | "
                f"{pm(parts[0], 2)} | {pm(parts[1], 0)} | {pm(parts[2], 0)} | {pm(parts[3], 0)} |"
            )
    return "\n".join(lines)


def best_table(study: Study) -> str:
    lines = [
        "| arm | encoder weights | epochs trained | best loss | at epoch | best val/miou "
        "| at epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in study.arms:
        losses = [run.best(study.loss_metric, True) for run in arm.runs]
        mious = [run.best("val/miou", False) for run in arm.runs]
        weights = ", ".join(sorted({run.weights or "?" for run in arm.runs}))
        lines.append(
            f"| {arm.name} | {weights} | {pm([run.last_epoch for run in arm.runs])} | "
            f"{pm([v for v, _ in losses], 3)} | {pm([e for _, e in losses])} | "
            f"{pm([v for v, _ in mious], 3)} | {pm([e for _, e in mious])} |"
        )
    return "\n".join(lines)


def calibration(study: Study) -> tuple[str, str, list[str]]:
    """Question 1: mask quality at each loss level, and the loss at which mIoU first reaches each
    level."""
    return _quality_by_loss(study), *_first_reached(study)


def _thin_iou(row: dict[str, float], thin: Sequence[str]) -> float | None:
    """A validation's mean IoU over the thin classes it scored (None: none)."""
    values = [row[f"val/iou/{c}"] for c in thin if f"val/iou/{c}" in row]
    return float(np.mean(values)) if values else None


def _quality_by_loss(study: Study) -> str:
    """The validations' mIoU, pixel accuracy and thin-class IoU, binned by the loss (LOSS_BINS)."""
    thin, metric = study.thin_classes, study.loss_metric
    points = [
        row
        for run in study.usable
        for row in run.validations
        if metric in row and "val/miou" in row
    ]
    lines = [
        f"| {metric} | validations | val/miou | val/pixel_acc | thin-class IoU |",
        "|---|---|---|---|---|",
    ]
    for high, low in zip(LOSS_BINS, LOSS_BINS[1:], strict=False):
        rows = [row for row in points if low < row[metric] <= high]
        if not rows:
            continue
        label = f"> {low:g}" if high == float("inf") else f"{low:g} - {high:g}"
        thins = [t for row in rows if (t := _thin_iou(row, thin)) is not None]
        accuracy = [r["val/pixel_acc"] for r in rows if "val/pixel_acc" in r]
        lines.append(
            f"| {label} | {len(rows)} | {pm([r['val/miou'] for r in rows], 3)} | {pm(accuracy, 3)} "
            f"| {pm(thins, 3)} |"
        )
    return "\n".join(lines) + (f"\n\nThin classes: {', '.join(thin)}." if thin else "")


def _first_reached(study: Study) -> tuple[str, list[str]]:
    """Each level (headline losses, mIoU levels) at its first crossing: the loss, mIoU and
    thin-class IoU then; a sentence per mIoU level."""
    thin, metric = study.thin_classes, study.loss_metric
    lines = [
        "| first reached | runs | at loss | val/miou then | thin-class IoU then |",
        "|---|---|---|---|---|",
    ]
    summary = []
    for level in study.headline + study.miou_levels:
        found = []
        for run in study.usable:
            crossing = run.crossing(level.metric, level.mode, level.level)
            if crossing is not None and crossing.reached:
                row = next(r for r in run.validations if r["step"] == crossing.step)
                found.append((row.get(metric), row.get("val/miou"), _thin_iou(row, thin)))
        losses, mious, thins = ([f[i] for f in found if f[i] is not None] for i in range(3))
        lines.append(
            f"| {level.name} | {len(found)}/{len(study.usable)} | {pm(losses, 3)} | {pm(mious, 3)} "
            f"| {pm(thins, 3)} |"
        )
        if level.metric == "val/miou":
            summary.append(
                f"mIoU first held {level.level:g} at {metric} {np.mean(losses):.3f} on average "
                f"(range {min(losses):.3f}-{max(losses):.3f}; {len(found)} of {len(study.usable)} "
                "runs got there)."
                if losses
                else f"No run held mIoU {level.level:g}."
            )
    return "\n".join(lines), summary


def contention(study: Study) -> str:
    shares = [(run, _cpu_share(run)) for run in study.usable]
    contended = [(run, share) for run, share in shares if share < 0.8]
    if not contended:
        return (
            "Every run had its CPU cores to itself (CPU share >= 0.8 at every validation, where "
            "measured)."
        )
    names = ", ".join(f"{run.folder.name} ({share:.2f})" for run, share in contended)
    return (
        f"Seconds are inflated where another job shared the CPU: {len(contended)} run(s) had a CPU "
        f"share below 0.8 at some validation ({names}). Epochs, steps and images are unaffected."
    )


def problems(study: Study) -> str:
    bad = [run for run in study.runs if not run.usable]
    if not bad:
        return "None: every run completed."
    lines = ["| run folder | seed | status | error |", "|---|---|---|---|"]
    for run in bad:
        error = (run.error or ("no validation" if run.status == "completed" else "")).replace(
            "|", "/"
        )
        lines.append(
            f"| {run.folder.name} | {run.seed} | {run.status} | "
            f"{error.splitlines()[0] if error else ''} |"
        )
    return "\n".join(lines)
