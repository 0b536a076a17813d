"""A study as the report sees it: its runs grouped into arms, and the comparisons its experiment
YAML declares.

An *arm* is the set of runs that share every command-line override but the seed. A comparison
(``study.comparisons``) names a slower and a faster arm by config choices or values (``{slower:
{model: unet_scratch}, faster: {model: unet_vgg}}``); it pairs the arms that match its two sides and
agree on every other override. A length cap (``trainer.max_epochs``) is not a treatment: arms that
differ only in it still pair, their censoring says what the cap cost. A tuned comparison
(``study.tuned``) takes the same two sides over a swept ``rate`` key and compares each side at its
own best rate. The statistics are :mod:`segment.analysis.stats`: every interval uses only its own
cells, each carrying its rate and its validation grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segment.analysis.runs import Run
from segment.analysis.stats import Cell, Estimate, compare, kaplan_meier, tuned
from segment.analysis.thresholds import Crossing, Threshold
from segment.config.names import short_names, value_text
from segment.data.labels import THIN_CLASSES

__all__ = ["Arm", "Comparison", "Study", "TunedComparison", "matches", "order_key", "resolution"]

# Keys that bound a run's length or its measurement, not what it trains: ignored when pairing arms.
_CAPS = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "measurement.max_images",
    "callbacks.thresholds.stop_when_reached",
)
# Short names of the study's arms (study.names in a run's config adds or replaces them).
NAMES = {
    "unet_scratch": "scratch",
    "unet_vgg": "pretrained",
    "unet_lab": "lab net",
    "lab_small": "lab small",
    "lab_vgg": "lab VGG",
}


SIZE_KEY = "data.train_size"  # the training-set size a study of sizes varies


def shown(key: str, value: str) -> str:
    """An arm's value as its name shows it: a training-set size with its unit (``46 images``,
    ``all images``: the override ``null``), any other as it is."""
    if key != SIZE_KEY:
        return value
    return "all images" if value == "none" else f"{value} images"


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def resolution(runs: Sequence[Run], unit: str) -> float:
    """The step of the runs' validation grid in ``unit``: the median spacing of their validations
    (a crossing is known only to within it)."""
    gaps = [
        gap
        for run in runs
        for gap in np.diff([row[unit] for row in run.validations if unit in row])
        if gap > 0
    ]
    return float(np.median(gaps)) if gaps else 0.0


def order_key(run: Run) -> Any:
    """What fixed a run's training order: its record's ``data_order``, else the commit that trained
    it with the seed (the same code orders a seed's data alike); None when unknown (a dirty tree).
    """
    recorded = run.record.data_order
    if recorded:
        return ("order", recorded.get("version"), recorded.get("seed"))
    trained = run.record.trained
    git = (trained.git if trained else None) or {}
    return (
        ("commit", git["commit"], run.seed) if git.get("commit") and not git.get("dirty") else None
    )


@dataclass
class Arm:
    """Runs that differ only in their seed."""

    label: str
    key: frozenset[tuple[str, str]]
    runs: list[Run]
    name: str = ""  # short: "scratch 1e-3"
    rate_key: str = "model.optimizer.lr"  # the key whose value is the arm's rate

    def crossings(
        self, level: Threshold, unit: str = "epoch", interpolate: bool = False
    ) -> dict[Any, Crossing]:
        found = {
            run.seed: run.crossing(level.metric, level.mode, level.level, unit, interpolate)
            for run in self.runs
        }
        return {seed: crossing for seed, crossing in found.items() if crossing is not None}

    def times(self, level: Threshold, unit: str = "epoch") -> dict[Any, tuple[float, bool]]:
        """``{seed: (time, reached)}``."""
        return {seed: (c.time, c.reached) for seed, c in self.crossings(level, unit).items()}

    def cell(self, level: Threshold, unit: str = "epoch", interpolate: bool = False) -> Cell:
        """The arm's runs at one level: their times, data orders, the arm's rate and the step of
        its validation grid in ``unit``."""
        times = {
            s: (c.time, c.reached) for s, c in self.crossings(level, unit, interpolate).items()
        }
        rate = self.value(self.rate_key)
        return Cell(
            times,
            {run.seed: order_key(run) for run in self.runs},
            float(rate) if isinstance(rate, int | float | str) and _number(rate) else None,
            resolution(self.runs, unit),
        )

    def reached(self, level: Threshold) -> tuple[np.ndarray, np.ndarray, int]:
        """The fraction of the arm's runs that reached ``level`` by each epoch (1 - Kaplan-Meier
        survival: a run that did not is censored at its last epoch), held to the last run's end,
        and the number of runs."""
        crossings = list(self.crossings(level).values())
        times, fraction = kaplan_meier([c.time for c in crossings], [c.reached for c in crossings])
        end = max(c.time for c in crossings)
        return np.append(times, end), np.append(fraction, fraction[-1]), len(crossings)

    def value(self, key: str) -> Any:
        return self.runs[0].value(key)


@dataclass
class Comparison:
    """Two arms whose ratio of time to a level measures one effect."""

    effect: str
    context: str
    slower: Arm
    faster: Arm

    @property
    def name(self) -> str:
        return f"{self.effect} ({self.context})" if self.context else self.effect

    @property
    def label(self) -> str:
        """``pretraining at 1e-3``: short, for tables."""
        return f"{self.effect} at {self.context}" if self.context else self.effect

    def estimate(
        self, level: Threshold, unit: str = "epoch", interpolate: bool = False
    ) -> Estimate | None:
        """The slower arm's time to ``level`` over the faster arm's, from their two cells alone."""
        return compare(
            self.slower.cell(level, unit, interpolate), self.faster.cell(level, unit, interpolate)
        )


@dataclass
class TunedComparison:
    """Two sides over the values of a rate key, each at its own best rate (chosen per level)."""

    effect: str
    context: str
    rate: str
    slower: dict[str, Arm]  # {rate value: arm}
    faster: dict[str, Arm]

    @property
    def name(self) -> str:
        return f"{self.effect} at each arm's best rate" + (
            f" ({self.context})" if self.context else ""
        )

    @property
    def arms(self) -> list[Arm]:
        return [*self.slower.values(), *self.faster.values()]

    def cells(self, level: Threshold, unit: str = "epoch") -> tuple[list[Cell], list[Cell]]:
        return (
            [arm.cell(level, unit) for arm in self.slower.values()],
            [arm.cell(level, unit) for arm in self.faster.values()],
        )

    def estimate(self, level: Threshold, unit: str = "epoch") -> Estimate | None:
        """Each side at its own best rate at ``level`` (:func:`~segment.analysis.stats.tuned`)."""
        return tuned(*self.cells(level, unit))


def ladder(spec: dict) -> list[float]:
    """``{start: 1.2, stop: 0.5, step: 0.05}`` -> ``[1.2, 1.15, ..., 0.5]``."""
    start, stop, step = float(spec["start"]), float(spec["stop"]), abs(float(spec["step"]))
    count = int(round(abs(start - stop) / step)) + 1
    sign = -1 if stop < start else 1
    return [round(start + sign * i * step, 6) for i in range(count)]


def matches(arm: Arm | Run, side: dict) -> bool:
    """Whether an arm (or a run) has every choice or value of a comparison's side."""
    return all(str(arm.value(k)) == str(v) for k, v in side.items())


class Study:
    """The runs of a study folder, their arms and comparisons, and its settings (derived once)."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.usable = [run for run in runs if run.usable]
        self.spec = self._spec()
        self.loss_metric = self.spec.get("loss_metric", "val/loss")
        # the smallest speedup worth knowing: what "seeds needed" plans for
        self.plan_ratio = float((self.spec.get("plan") or {}).get("ratio", 1.25))
        self.rate_key = next(
            (str(t["rate"]) for t in self.spec["tuned"].values()), "model.optimizer.lr"
        )
        self.arms = self._arms()
        self.tuned = self._tuned()
        self.comparisons = [c for c in self._pairs(self.spec["comparisons"]) if self._seeds(c)]
        self.headline = [
            Threshold(self.loss_metric, "min", float(v)) for v in self.spec["headline"]
        ]
        self.loss_ladder = [
            Threshold(self.loss_metric, "min", v) for v in ladder(self.spec["loss_ladder"])
        ]
        self.miou_ladder = [
            Threshold("val/miou", "max", v) for v in ladder(self.spec["miou_ladder"])
        ]
        # the mIoU levels the tables name: the ladder's multiples of 0.1
        self.miou_levels = [
            lv for lv in self.miou_ladder if abs(lv.level * 10 - round(lv.level * 10)) < 1e-6
        ]
        logged = {
            key[len("val/iou/") :] for run in self.usable for row in run.validations for key in row
        }
        self.thin_classes = [name for name in THIN_CLASSES if name in logged]

    @staticmethod
    def _seeds(comparison: Comparison) -> bool:
        return bool(comparison.slower.runs and comparison.faster.runs)

    def _spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "comparisons": {},
            "tuned": {},
            "loss_metric": "val/loss",
            "names": dict(NAMES),
            "loss_ladder": {"start": 1.2, "stop": 0.5, "step": 0.05},
            "miou_ladder": {"start": 0.2, "stop": 0.6, "step": 0.05},
        }
        for run in (
            self.usable
        ):  # a plain multirun names no study: its runs' own thresholds are the headline
            spec.setdefault("headline", run.value("callbacks.thresholds.val_loss") or [])
            found = run.config.get("study") or {}
            spec.update(
                {k: v for k, v in found.items() if k not in ("comparisons", "tuned", "names")}
            )
            for key in ("comparisons", "tuned", "names"):
                spec[key].update(found.get(key) or {})
        spec.setdefault("headline", [])
        return spec

    def _arms(self) -> list[Arm]:
        keys = {
            run.folder: frozenset((k, v) for k, v in run.overrides.items() if k != "seed")
            for run in self.usable
        }
        shared = frozenset.intersection(*keys.values()) if keys else frozenset()
        self.names = short_names(sorted({k for key in keys.values() for k, _ in key - shared}))
        arms: dict[frozenset, Arm] = {}
        for run in sorted(self.usable, key=lambda r: str(r.seed)):
            key = keys[run.folder] - shared
            arm = Arm(self._label(key), key, [], self._short(key), self.rate_key)
            arms.setdefault(key, arm).runs.append(run)
        return sorted(arms.values(), key=lambda arm: arm.label)

    def _short(self, key: frozenset) -> str:
        """``scratch 1e-3``: the arm's known choices by their short names, then its other values."""
        names = self.spec["names"]
        parts = [
            names.get(v, v)
            for k, v in sorted(key)
            if "." not in k and k not in ("experiment", "data")
        ]
        parts += [
            shown(k, value_text(v) if not isinstance(v, str) else v)
            for k, v in sorted(key)
            if "." in k
        ]
        return " ".join(parts) or "all runs"

    def _context(self, arm: Arm, ignore: set[str]) -> frozenset:
        return frozenset((k, v) for k, v in arm.key if k not in ignore and k not in _CAPS)

    def _label(self, key: frozenset) -> str:
        """``model=unet_vgg, lr=1e-4``: groups and top-level keys first, dotted keys by their short
        names."""
        items = sorted(key, key=lambda kv: ("." in kv[0], kv))
        return ", ".join(f"{self.names.get(k, k)}={v}" for k, v in items) or "all runs"

    def _pairs(self, declared: dict) -> list[Comparison]:
        found = []
        for effect, sides in declared.items():
            ignore = set(sides["slower"]) | set(sides["faster"])
            for slower in (a for a in self.arms if matches(a, sides["slower"])):
                for faster in (a for a in self.arms if matches(a, sides["faster"])):
                    context = self._context(slower, ignore)
                    if slower is not faster and context == self._context(faster, ignore):
                        label = " ".join(
                            self.spec["names"].get(v, shown(k, v))
                            for k, v in sorted(context)
                            if k != "experiment"
                        )
                        found.append(Comparison(effect, label, slower, faster))
        return found

    def _tuned(self) -> list[TunedComparison]:
        found = []
        for effect, sides in self.spec["tuned"].items():
            rate = sides["rate"]
            ignore = set(sides["slower"]) | set(sides["faster"]) | {rate}
            groups: dict[frozenset, dict[str, dict[str, Arm]]] = {}
            for side in ("slower", "faster"):
                for arm in (a for a in self.arms if matches(a, sides[side])):
                    cells = groups.setdefault(
                        self._context(arm, ignore), {"slower": {}, "faster": {}}
                    )[side]
                    cells[str(arm.value(rate))] = arm
            for context, cells in groups.items():
                if (
                    len(cells["slower"]) > 1 or len(cells["faster"]) > 1
                ):  # a bracket on at least one side
                    label = " ".join(shown(k, v) for k, v in sorted(context) if k != "experiment")
                    found.append(
                        TunedComparison(effect, label, rate, cells["slower"], cells["faster"])
                    )
        return found

    def times_by_rate(self) -> dict[str, dict[str, dict[float, list[tuple[float, bool]]]]]:
        """``{level: {arm name without its rate: {rate: [(epochs, reached) per seed]}}}`` for each
        headline level, of the arms a tuned comparison chose between."""
        return {
            level.name: {
                f"{arm.name.rsplit(' ', 1)[0]}": {
                    float(r): list(arm.times(level).values())
                    for r, arm in getattr(tuned, side).items()
                }
                for tuned in self.tuned
                for side in ("slower", "faster")
                for arm in [next(iter(getattr(tuned, side).values()))]
            }
            for level in self.headline
        }

    def speedups(self) -> dict[str, list[tuple[str, float, Estimate | None]]]:
        """``{comparison: [(metric, level, estimate) per level of both ladders]}``: every tuned
        comparison (each arm at its best rates), then every declared one."""
        levels = self.loss_ladder + self.miou_ladder
        series = {
            f"{tuned.effect}, each at its best rates": [
                (lv.metric, lv.level, tuned.estimate(lv)) for lv in levels
            ]
            for tuned in self.tuned
        }
        for comparison in self.comparisons:
            label = f"{comparison.slower.name} / {comparison.faster.name}"
            series[label] = [(lv.metric, lv.level, comparison.estimate(lv)) for lv in levels]
        return series

    def where(self, comparison: Comparison, levels: Sequence[Threshold]) -> list[str]:
        """Levels at which a comparison's speedup is not established: its interval reaches 1."""
        weak = []
        for level in levels:
            estimate = comparison.estimate(level)
            if (
                estimate is not None
                and not estimate.bound
                and not estimate.model
                and not estimate.holds
            ):
                weak.append(
                    f"{level.level:g} ({estimate.point:.2f}x [{estimate.low:.2f}, "
                    f"{estimate.high:.2f}])"
                )
        return weak
