"""Validate a dataset and summarise it: ``python -m segment.data check data=<name> [overrides]``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from segment.data.datamodule import SegmentationDataModule
from segment.data.dataset import DatasetStatistics, Sample, SegmentationDataset

__all__ = ["DatasetReport", "check_datamodule"]

_ORIENTATION = 0x0112  # the EXIF tag


@dataclass
class DatasetReport:
    """What :func:`check_datamodule` found: the statistics of each split, and every problem."""

    name: str
    class_names: Sequence[str]
    splits: dict[str, DatasetStatistics] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def frequencies(self, split: str) -> dict[str, float]:
        """Share of labelled (non-ignored) pixels per class in ``split``."""
        pixels = self.splits[split].pixels
        total = pixels.sum()
        return {
            name: float(n / total) if total else 0.0
            for name, n in zip(self.class_names, pixels, strict=True)
        }

    @property
    def warnings(self) -> list[str]:
        return [
            f"{split}: {len(stats.unlabelled)} mask(s) have no labelled pixel (all ignored): "
            f"{', '.join(str(p) for p in stats.unlabelled[:5])}"
            f"{' ...' if len(stats.unlabelled) > 5 else ''}"
            for split, stats in self.splits.items()
            if stats.unlabelled
        ]

    def to_markdown(self) -> str:
        lines = [
            f"# {self.name}",
            "",
            "| split | samples | image sizes (HxW: count) | ignored pixels |",
            "|---|---|---|---|",
        ]
        for split, stats in self.splits.items():
            sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in stats.sizes.most_common(3))
            total = stats.pixels.sum() + stats.ignored
            ignored = f"{100 * stats.ignored / total:.2f}%" if total else "-"
            lines.append(f"| {split} | {self.counts[split]} | {sizes} | {ignored} |")
        splits = list(self.splits)
        lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        freqs = {split: self.frequencies(split) for split in splits}
        for name in self.class_names:
            lines.append(
                f"| {name} | " + " | ".join(f"{100 * freqs[s][name]:.2f}%" for s in splits) + " |"
            )
        if self.warnings:
            lines += ["", f"## {len(self.warnings)} warning(s)", *[f"- {w}" for w in self.warnings]]
        if self.problems:
            lines += ["", f"## {len(self.problems)} problem(s)", *[f"- {p}" for p in self.problems]]
        return "\n".join(lines)


def check_datamodule(
    datamodule: SegmentationDataModule, threads: int | None = None
) -> DatasetReport:
    """Decode every sample of every split at native size; collect sizes, class pixels and problems.

    A split that is absent (e.g. no ``test/`` folder) is skipped unless it is train or val.
    """
    info = datamodule.info
    report = DatasetReport(info.name, info.class_names)
    for split in datamodule.splits:
        try:
            samples = datamodule.samples(split)
        except (FileNotFoundError, ValueError) as err:
            if split in ("train", "val") or not isinstance(err, FileNotFoundError):
                report.problems.append(f"{split}: {err}")
            continue
        if not samples:
            report.problems.append(f"{split}: the split is empty")
            continue
        stats = SegmentationDataset(samples, info).scan(
            threads=threads, progress=f"check {info.name}/{split}"
        )
        report.problems += [f"{split}: {problem}" for problem in stats.problems]
        report.problems += [f"{split}: {problem}" for problem in _exif_problems(samples)]
        report.splits[split], report.counts[split] = stats, len(samples)
    return report


def _exif_problems(samples: Sequence[Sample]) -> list[str]:
    """Images with an EXIF orientation tag: a viewer shows them rotated, training reads the stored
    pixels."""
    found = []
    for sample in samples:
        try:
            with Image.open(sample.image) as image:
                orientation = image.getexif().get(_ORIENTATION, 1)
        except OSError:
            continue  # unreadable: the scan reported it
        if orientation != 1:
            found.append(
                f"{sample.image} has EXIF orientation {orientation}: viewers rotate it, training "
                "reads the stored pixels (as for its mask). If the mask was drawn on the rotated "
                "view, save the image rotated, without the tag"
            )
    return found
