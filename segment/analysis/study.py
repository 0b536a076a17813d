"""A study as the report sees it: its runs grouped into arms, and the comparisons its experiment YAML declares.

An *arm* is the set of runs that share every command-line override but the seed. A
comparison (``study.comparisons``) names a slower and a faster arm by config choices or
values (``{slower: {model: unet_scratch}, faster: {model: unet_vgg}}``); it pairs the arms
that match its two sides and agree on every other override, and their runs by seed. A
length cap (``trainer.max_epochs``) is not a treatment: arms that differ only in it still
pair, their censoring says what the cap cost. A tuned comparison (``study.tuned``) takes the
same two sides over a swept ``rate`` key and compares each side at its own best rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from segment.analysis.runs import Run
from segment.analysis.stats import RatioEstimate, TunedEstimate, paired_ratio, tuned_ratio
from segment.callbacks.thresholds import Crossing, Threshold
from segment.config import short_names
from segment.data.labels import THIN_CLASSES

__all__ = ["Arm", "Comparison", "Study", "TunedComparison"]

# Keys that bound a run's length or its measurement, not what it trains: ignored when pairing arms.
_CAPS = ("trainer.max_epochs", "trainer.max_steps", "callbacks.thresholds.stop_when_reached")


@dataclass
class Arm:
    """Runs that differ only in their seed."""

    label: str
    key: frozenset[tuple[str, str]]
    runs: list[Run]

    def by_seed(self) -> dict[Any, Run]:
        return {run.seed: run for run in self.runs}

    def crossings(self, level: Threshold, unit: str = "epoch", interpolate: bool = False) -> dict[Any, Crossing]:
        found = {run.seed: run.crossing(level.metric, level.mode, level.level, unit, interpolate) for run in self.runs}
        return {seed: crossing for seed, crossing in found.items() if crossing is not None}

    def times(self, level: Threshold, unit: str = "epoch") -> dict[Any, tuple[float, bool]]:
        """``{seed: (time, reached)}``."""
        return {seed: (c.time, c.reached) for seed, c in self.crossings(level, unit).items()}

    def value(self, key: str) -> Any:
        return self.runs[0].value(key)


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

    def estimate(self, level: Threshold, unit: str = "epoch", interpolate: bool = False) -> RatioEstimate | None:
        slow, fast = self.slower.crossings(level, unit, interpolate), self.faster.crossings(level, unit, interpolate)
        seeds = [s for s in self.seeds if s in slow and s in fast]
        return paired_ratio([(slow[s].time, slow[s].reached) for s in seeds],
                            [(fast[s].time, fast[s].reached) for s in seeds])  # fmt: skip


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
        return f"{self.effect} at each arm's best rate" + (f" ({self.context})" if self.context else "")

    def estimate(self, level: Threshold, unit: str = "epoch", reselect: bool = True) -> TunedEstimate | None:
        return tuned_ratio({rate: arm.times(level, unit) for rate, arm in self.slower.items()},
                           {rate: arm.times(level, unit) for rate, arm in self.faster.items()},
                           reselect=reselect)  # fmt: skip


def ladder(spec: dict) -> list[float]:
    """``{start: 1.2, stop: 0.5, step: 0.05}`` -> ``[1.2, 1.15, ..., 0.5]``."""
    start, stop, step = float(spec["start"]), float(spec["stop"]), abs(float(spec["step"]))
    count = int(round(abs(start - stop) / step)) + 1
    sign = -1 if stop < start else 1
    return [round(start + sign * i * step, 6) for i in range(count)]


def _matches(arm: Arm, side: dict) -> bool:
    return all(str(arm.value(k)) == str(v) for k, v in side.items())


class Study:
    """The runs of a study folder, their arms and comparisons, and its settings (derived once)."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self.usable = [run for run in runs if run.usable]
        self.spec = self._spec()
        self.loss_metric = self.spec.get("loss_metric", "val/loss")
        self.arms = self._arms()
        self.comparisons = [c for c in self._pairs(self.spec["comparisons"]) if c.seeds]
        self.tuned = self._tuned()
        self.headline = [Threshold(self.loss_metric, "min", float(v)) for v in self.spec["headline"]]
        self.loss_ladder = [Threshold(self.loss_metric, "min", v) for v in ladder(self.spec["loss_ladder"])]
        self.miou_ladder = [Threshold("val/miou", "max", v) for v in ladder(self.spec["miou_ladder"])]
        # the mIoU levels the tables name: the ladder's multiples of 0.1
        self.miou_levels = [lv for lv in self.miou_ladder if abs(lv.level * 10 - round(lv.level * 10)) < 1e-6]
        logged = {key[len("val/iou/") :] for run in self.usable for row in run.validations for key in row}
        self.thin_classes = [name for name in THIN_CLASSES if name in logged]

    def _spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"comparisons": {}, "tuned": {}, "loss_metric": "val/loss",
                                "loss_ladder": {"start": 1.2, "stop": 0.5, "step": 0.05},
                                "miou_ladder": {"start": 0.2, "stop": 0.6, "step": 0.05}}  # fmt: skip
        for run in self.usable:  # a plain multirun names no study: its runs' own thresholds are the headline
            spec.setdefault("headline", run.value("callbacks.thresholds.val_loss") or [])
            found = run.config.get("study") or {}
            spec.update({k: v for k, v in found.items() if k not in ("comparisons", "tuned")})
            spec["comparisons"].update(found.get("comparisons") or {})
            spec["tuned"].update(found.get("tuned") or {})
        spec.setdefault("headline", [])
        return spec

    def _arms(self) -> list[Arm]:
        keys = {run.folder: frozenset((k, v) for k, v in run.overrides.items() if k != "seed") for run in self.usable}
        shared = frozenset.intersection(*keys.values()) if keys else frozenset()
        self.names = short_names(sorted({k for key in keys.values() for k, _ in key - shared}))
        arms: dict[frozenset, Arm] = {}
        for run in sorted(self.usable, key=lambda r: str(r.seed)):
            key = keys[run.folder] - shared
            arms.setdefault(key, Arm(self._label(key), key, [])).runs.append(run)
        return sorted(arms.values(), key=lambda arm: arm.label)

    def _context(self, arm: Arm, ignore: set[str]) -> frozenset:
        return frozenset((k, v) for k, v in arm.key if k not in ignore and k not in _CAPS)

    def _label(self, key: frozenset) -> str:
        """``model=unet_vgg, lr=1e-4``: groups and top-level keys first, dotted keys by their short names."""
        items = sorted(key, key=lambda kv: ("." in kv[0], kv))
        return ", ".join(f"{self.names.get(k, k)}={v}" for k, v in items) or "all runs"

    def _pairs(self, declared: dict) -> list[Comparison]:
        found = []
        for effect, sides in declared.items():
            ignore = set(sides["slower"]) | set(sides["faster"])
            for slower in (a for a in self.arms if _matches(a, sides["slower"])):
                for faster in (a for a in self.arms if _matches(a, sides["faster"])):
                    context = self._context(slower, ignore)
                    if slower is not faster and context == self._context(faster, ignore):
                        found.append(Comparison(effect, self._label(context) if context else "", slower, faster))
        return found

    def _tuned(self) -> list[TunedComparison]:
        found = []
        for effect, sides in self.spec["tuned"].items():
            rate = sides["rate"]
            ignore = set(sides["slower"]) | set(sides["faster"]) | {rate}
            groups: dict[frozenset, dict[str, dict[str, Arm]]] = {}
            for side in ("slower", "faster"):
                for arm in (a for a in self.arms if _matches(a, sides[side])):
                    cells = groups.setdefault(self._context(arm, ignore), {"slower": {}, "faster": {}})[side]
                    cells[str(arm.value(rate))] = arm
            for context, cells in groups.items():
                if len(cells["slower"]) > 1 or len(cells["faster"]) > 1:  # a bracket on at least one side
                    found.append(TunedComparison(effect, self._label(context) if context else "", rate, cells["slower"],
                                                 cells["faster"]))  # fmt: skip
        return found

    def where(self, comparison: Comparison, levels: Sequence[Threshold]) -> list[str]:
        """Levels at which a comparison's speedup is not established: point at or below 1, or interval across 1."""
        weak = []
        for level in levels:
            estimate = comparison.estimate(level)
            if estimate is not None and not estimate.bound and (estimate.point <= 1 or estimate.low <= 1):
                weak.append(f"{level.level:g} ({estimate.point:.2f}x [{estimate.low:.2f}, {estimate.high:.2f}])")
        return weak
