"""Validate a dataset and summarise it: ``python -m segment.data check data=<name> [overrides]``."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from segment.data.datamodule import SegmentationDataModule
from segment.data.dataset import SegmentationDataset

__all__ = ["DatasetReport", "check_datamodule", "main"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class DatasetReport:
    """What :func:`check_datamodule` found."""

    name: str
    class_names: Sequence[str]
    counts: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, Counter] = field(default_factory=dict)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def frequencies(self, split: str) -> dict[str, float]:
        """Share of labelled (non-ignored) pixels per class in ``split``."""
        total = self.pixels[split].sum()
        return {
            name: float(n / total) if total else 0.0
            for name, n in zip(self.class_names, self.pixels[split], strict=True)
        }

    def to_markdown(self) -> str:
        lines = [
            f"# {self.name}",
            "",
            "| split | samples | image sizes (HxW: count) | ignored pixels |",
            "|---|---|---|---|",
        ]
        for split, count in self.counts.items():
            sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in self.sizes[split].most_common(3))
            total = self.pixels[split].sum() + self.ignored[split]
            ignored = f"{100 * self.ignored[split] / total:.2f}%" if total else "-"
            lines.append(f"| {split} | {count} | {sizes} | {ignored} |")
        splits = list(self.counts)
        lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        freqs = {split: self.frequencies(split) for split in splits}
        for name in self.class_names:
            lines.append(f"| {name} | " + " | ".join(f"{100 * freqs[s][name]:.2f}%" for s in splits) + " |")
        if self.problems:
            lines += ["", f"## {len(self.problems)} problem(s)", *[f"- {p}" for p in self.problems]]
        return "\n".join(lines)


def check_datamodule(datamodule: SegmentationDataModule, threads: int | None = None) -> DatasetReport:
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
        dataset = SegmentationDataset(samples, info)
        pixels = np.zeros(info.num_classes, np.int64)
        ignored, sizes = 0, Counter()

        def inspect(index: int, dataset=dataset) -> tuple[tuple[int, int], np.ndarray] | str:
            try:
                image, mask = dataset.decode(index)
            except (OSError, ValueError) as err:
                return str(err)
            return image.shape[:2], np.bincount(mask.ravel(), minlength=256)

        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
            for result in pool.map(inspect, range(len(dataset))):
                if isinstance(result, str):
                    report.problems.append(f"{split}: {result}")
                    continue
                size, counts = result
                sizes[size] += 1
                pixels += counts[: info.num_classes]
                ignored += int(counts[info.ignore_index]) if info.ignore_index < 256 else 0
        report.counts[split] = len(samples)
        report.sizes[split] = sizes
        report.pixels[split] = pixels
        report.ignored[split] = ignored
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``check [hydra overrides]``; prints the report; exit code 1 on any problem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check":
        print("usage: python -m segment.data check data=<name> [key=value ...]", file=sys.stderr)
        return 2
    cwd = os.getcwd()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={cwd}", f"paths.output_dir={cwd}", *argv[1:]])
    datamodule: SegmentationDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    report = check_datamodule(datamodule)
    print(report.to_markdown())
    if report.problems:
        print(f"\n{len(report.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"\n{report.name}: no problems in {sum(report.counts.values())} samples")
    return 0
