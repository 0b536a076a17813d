"""Build ``.device_pack/``: what the GPU machine lacks, within what travels (64 MiB with the
working tree).

- ``wheels/``: manylinux wheels of exactly the packages the machine lacks, at the versions
  installed here (one pure-Python wheel built here for ``antlr4-python3-runtime``, which has only
  an sdist on the index);
- ``camvid/``: CamVid in its SegNet layout, images as JPEG (``--quality``), masks copied
  byte for byte (PNG, lossless: checked by decoding both);
- ``weights/``: HED's converted VGG16 encoder in float16 (half the bytes; the record of
  every run that loads it says so), found by the resolver through ``SEGMENT_CACHE_DIR``;
- ``manifest.json``: versions, sizes and what was done.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
from safetensors.torch import save
from tqdm import tqdm

from segment.files import sha256, write_atomic
from segment.models.hed import HED_CONVERTED, hed_state_dict

__all__ = ["BUDGET", "MISSING_THERE", "PackReport", "PackTooLarge", "main", "pack"]

BUDGET = 64 * 2**20  # what travels by default: the working tree plus the pack
QUALITIES = (90, 85, 80, 75, 70, 60, 50, 40)  # JPEG qualities tried, best first
# Python distributions an air-gapped GPU machine with a stock CUDA PyTorch image (torch, lightning,
# torchmetrics, tensorboard, timm) lacks: ours and their dependencies. typing-extensions travels
# too: pydantic needs a newer one than some images hold, and a newer one serves every other package.
MISSING_THERE = (
    "segmentation-models-pytorch",
    "albumentations",
    "albucore",
    "stringzilla",
    "simsimd",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "hydra-core",
    "omegaconf",
    "antlr4-python3-runtime",
    "hydra-joblib-launcher",
)
SDIST_ONLY = ("antlr4-python3-runtime",)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
SPLITS = ("train", "val", "test")


@dataclass
class PackReport:
    """Sizes in bytes of what travels, by part."""

    parts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def table(self) -> str:
        lines = ["| part | MiB |", "|---|---|"]
        lines += [f"| {name} | {size / 2**20:.1f} |" for name, size in self.parts.items()]
        lines.append(f"| **total** | **{self.total / 2**20:.1f}** |")
        return "\n".join(lines)


def _size(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def _working_tree_size(repo: Path, pack_dir: Path) -> int:
    """Bytes of tracked and untracked-but-not-ignored files: what travels besides the pack."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    files = [repo / name for name in listed if name and (repo / name).is_file()]
    return sum(f.stat().st_size for f in files if pack_dir not in f.parents)


def _pip_commands(target: Path, python_version: str, pins: list[str]) -> list[list[str]]:
    """One ``pip wheel`` for the sdist-only ``pins``, one ``pip download`` (binary wheels for the
    device's platforms and ``python_version``) for the others, into ``target``."""
    built = [pin for pin in pins if pin.split("==")[0] in SDIST_ONLY]
    downloaded = [pin for pin in pins if pin.split("==")[0] not in SDIST_ONLY]
    pip = [sys.executable, "-m", "pip"]
    commands = []
    if built:
        commands.append([*pip, "wheel", "--no-deps", "-q", "-w", str(target), *built])
    if downloaded:
        platform = ["--python-version", python_version, "--implementation", "cp"]
        platform += [f"--platform={p}" for p in PLATFORMS]
        commands.append(
            [
                *pip,
                "download",
                "--no-deps",
                "-q",
                "--only-binary=:all:",
                *platform,
                "-d",
                str(target),
            ]
            + downloaded
        )
    return commands


def fetch_wheels(
    target: Path, python_version: str, names: tuple[str, ...] = MISSING_THERE
) -> list[Path]:
    """Download (or, sdist-only, build) one wheel per distribution, at the version installed
    here: one pip call for all the binary wheels and one for the builds (pip's start and index
    lookups, not the files, cost the time)."""
    target.mkdir(parents=True, exist_ok=True)
    have = [p.name.lower() for p in target.glob("*.whl")]
    versions = {name: metadata.version(name) for name in names}
    missing = [
        name
        for name, version in versions.items()
        if not any(
            wheel.startswith(f"{name.replace('-', '_').lower()}-{version}-") for wheel in have
        )
    ]
    commands = _pip_commands(target, python_version, [f"{n}=={versions[n]}" for n in missing])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pins = " ".join(c for c in command if "==" in c)
            raise RuntimeError(
                f"could not fetch {pins} for Python {python_version}: "
                f"{result.stderr.strip()[-400:]}"
            )
    return sorted(target.glob("*.whl"))


def pack_camvid(source: Path, target: Path, quality: int, max_images: int | None = None) -> int:
    """CamVid's splits with JPEG images and byte-identical PNG masks; returns the number of
    samples."""
    if not (source / "train").is_dir():
        raise FileNotFoundError(
            f"--camvid {source}: no train/ folder (SegNet layout: train/ trainannot/ val/ ...)"
        )
    count = 0
    for split in SPLITS:
        if not (source / split).is_dir():
            continue
        images = sorted((source / split).glob("*.png"))[:max_images]
        (target / split).mkdir(parents=True, exist_ok=True)
        (target / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for image in tqdm(images, f"pack camvid/{split}", unit="image"):
            mask = source / f"{split}annot" / image.name
            ok, encoded = cv2.imencode(
                ".jpg",
                cv2.imread(str(image), cv2.IMREAD_COLOR),
                [cv2.IMWRITE_JPEG_QUALITY, quality],
            )
            if not ok:
                raise OSError(f"could not encode {image} as JPEG")
            write_atomic(target / split / f"{image.stem}.jpg", encoded.tobytes())
            shutil.copyfile(mask, target / f"{split}annot" / mask.name)
            copied = cv2.imread(str(target / f"{split}annot" / mask.name), cv2.IMREAD_UNCHANGED)
            if not np.array_equal(copied, cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)):
                raise RuntimeError(f"the packed mask of {mask} differs from it")
            count += 1
    return count


def pack_weights(target: Path) -> Path:
    """HED's converted VGG16 encoder in float16, where the resolver looks when
    SEGMENT_CACHE_DIR=<pack>."""
    state, source = hed_state_dict()
    half = {key: value.half() for key, value in state.items()}
    target.mkdir(parents=True, exist_ok=True)
    path = target / HED_CONVERTED
    note = (
        f"float16 copy of {source.name} (sha256 {sha256(source)[:12]}), halved for transport to "
        "the GPU machine"
    )
    write_atomic(path, save(half, metadata={"note": note}))
    write_atomic(path.with_suffix(".sha256"), sha256(path) + "\n")
    return path


class PackTooLarge(RuntimeError):
    """Nothing fits the budget, not even CamVid at the lowest JPEG quality."""


def pack(
    output: Path,
    camvid: Path,
    python_version: str = "3.12",
    quality: int | None = None,
    max_images: int | None = None,
    repo: Path | None = None,
    budget: int = BUDGET,
) -> PackReport:
    """Build the pack in ``output``: wheels, weights and (given ``repo``) the working tree are
    sized first; CamVid then takes ``quality``, or the highest of :data:`QUALITIES` that fits what
    is left of ``budget`` (estimated on every eighth image, checked after packing)."""
    output, report = Path(output), PackReport()
    wheels = fetch_wheels(output / "wheels", python_version)
    report.parts["wheels"] = sum(w.stat().st_size for w in wheels)
    report.parts["weights"] = _size(pack_weights(output / "weights"))
    if repo is not None:
        report.parts["working tree"] = _working_tree_size(repo, output.resolve())
    samples, chosen = _pack_camvid_fitting(
        Path(camvid), output, quality, max_images, report, budget
    )
    how = "as asked" if quality is not None else f"the highest that fits {budget / 2**20:.0f} MiB"
    report.notes = [
        f"{samples} CamVid samples, JPEG quality {chosen} ({how}), masks byte-identical",
        f"{len(wheels)} wheels for Python {python_version}",
        "VGG16 (HED) encoder in float16",
    ]
    manifest = {
        "wheels": [w.name for w in wheels],
        "camvid_samples": samples,
        "jpeg_quality": chosen,
        "python_version": python_version,
        "bytes": report.parts,
        "budget": budget,
        "notes": report.notes,
    }
    write_atomic(output / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return report


def _pack_camvid_fitting(
    camvid: Path,
    output: Path,
    quality: int | None,
    max_images: int | None,
    report: PackReport,
    budget: int,
) -> tuple[int, int]:
    """Pack CamVid at ``quality``, or the highest of :data:`QUALITIES` that fits what is left of
    ``budget`` after ``report``'s parts; its size goes into ``report``. Returns the samples packed
    and the quality."""
    room = budget - report.total
    choices = [quality] if quality is not None else list(QUALITIES)
    choices = [
        q for q in choices if quality is not None or _estimate(camvid, q, max_images) <= room
    ]
    for chosen in choices:
        shutil.rmtree(output / "camvid", ignore_errors=True)
        samples = pack_camvid(camvid, output / "camvid", chosen, max_images)
        report.parts["camvid"] = _size(output / "camvid")
        if report.total <= budget or quality is not None:
            break
    else:
        sizes = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in report.parts.items())
        raise PackTooLarge(
            f"nothing fits {budget / 2**20:.0f} MiB: {sizes}, and CamVid at JPEG quality "
            f"{QUALITIES[-1]} would not fit the rest; raise --budget or pack fewer images "
            "(--max-images)"
        )
    return samples, chosen


def _estimate(camvid: Path, quality: int, max_images: int | None) -> int:
    """Bytes CamVid would take at ``quality``: every eighth image encoded, the masks as they are."""
    total = 0
    for split in SPLITS:
        images = sorted((Path(camvid) / split).glob("*.png"))[:max_images]
        sample = images[::8]
        for image in sample:
            encoded = cv2.imencode(
                ".jpg",
                cv2.imread(str(image), cv2.IMREAD_COLOR),
                [cv2.IMWRITE_JPEG_QUALITY, quality],
            )[1]
            total += len(encoded) * len(images) // max(len(sample), 1)
        total += sum((Path(camvid) / f"{split}annot" / i.name).stat().st_size for i in images)
    return total


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m segment.device", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("pack", help="build .device_pack/ (wheels, CamVid, weights)")
    build.add_argument(
        "--camvid",
        type=Path,
        required=True,
        help="CamVid in its SegNet layout (train/ trainannot/ val/ valannot/)",
    )
    build.add_argument("--output", type=Path, default=Path(".device_pack"))
    build.add_argument(
        "--python-version", default="3.12", help="of the GPU machine (3.11 for a dry run here)"
    )
    build.add_argument(
        "--quality",
        type=int,
        default=None,
        help="JPEG quality of the packed images (default: the highest that fits)",
    )
    build.add_argument(
        "--budget",
        type=float,
        default=BUDGET / 2**20,
        help="MiB that may travel: the pack and the working tree (default 64)",
    )
    build.add_argument(
        "--max-images", type=int, default=None, help="per split (a dry run packs a handful)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m segment.device pack``: build the pack, print its size, refuse when over
    budget."""
    args = _parser().parse_args(argv)
    repo = Path.cwd()
    try:
        report = pack(
            args.output,
            args.camvid,
            args.python_version,
            args.quality,
            args.max_images,
            repo,
            int(args.budget * 2**20),
        )
    except (OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.table())
    print("; ".join(report.notes))
    if report.total > args.budget * 2**20:  # a quality given by hand
        print(
            f"error: {report.total / 2**20:.1f} MiB would travel, over the {args.budget:.0f} MiB "
            "budget: leave out --quality to have it chosen",
            file=sys.stderr,
        )
        return 1
    print(
        f"{args.output}: ready; copy it, with this checkout, to the GPU machine and run "
        "`bash benchmarks/device_study.sh` there (docs/gpu.md)"
    )
    return 0
