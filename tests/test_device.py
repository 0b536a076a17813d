"""The prepared GPU run, proven on the CPU: the pack, the install from its wheels, the one
command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from safetensors import safe_open

from segment.device.pack import BUDGET, MISSING_THERE, pack_camvid
from tests.helpers import CAMVID_ROOT, REPO
from tests.layouts import write_camvid

needs_camvid = pytest.mark.skipif(
    not (CAMVID_ROOT / "train").is_dir(), reason=f"no CamVid at {CAMVID_ROOT}"
)


def test_packed_camvid_keeps_the_masks_exact(tmp_path: Path) -> None:
    write_camvid(tmp_path / "camvid")
    smooth = np.dstack(
        [*np.meshgrid(np.linspace(0, 255, 96), np.linspace(0, 255, 64)), np.full((64, 96), 128.0)]
    )
    cv2.imwrite(str(tmp_path / "camvid" / "train" / "0001TP_000000.png"), smooth.astype(np.uint8))
    count = pack_camvid(tmp_path / "camvid", tmp_path / "packed", quality=90)
    assert count == 6  # train 3, val 2, test 1
    for mask in (tmp_path / "camvid").glob("*annot/*.png"):
        packed = tmp_path / "packed" / mask.parent.name / mask.name
        assert packed.read_bytes() == mask.read_bytes()  # byte for byte: labels cannot change
    image = cv2.imread(str(tmp_path / "packed" / "train" / "0001TP_000000.jpg"))
    original = cv2.imread(str(tmp_path / "camvid" / "train" / "0001TP_000000.png"))
    assert image.shape == original.shape and np.abs(image.astype(int) - original).mean() < 12


@needs_camvid
@pytest.mark.slow
def test_pack_and_the_device_command_dry_run(tmp_path: Path) -> None:
    """What CI can prove of the GPU check: pack (wheels for this Python), install them into a
    temporary site folder, and run benchmarks/device_study.sh --dry-run on the CPU with a handful
    of images."""
    pack = tmp_path / "pack"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segment.device",
            "pack",
            f"--output={pack}",
            f"--camvid={CAMVID_ROOT}",
            f"--python-version={sys.version_info.major}.{sys.version_info.minor}",
            "--max-images=6",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| **total** |" in result.stdout and "(the highest that fits 64 MiB)" in result.stdout
    manifest = json.loads((pack / "manifest.json").read_text())
    wheels = {name.split("-")[0].lower().replace("_", "-") for name in manifest["wheels"]}
    assert wheels == {name.replace("_", "-") for name in MISSING_THERE}
    assert sum(manifest["bytes"].values()) < BUDGET
    with safe_open(str(pack / "weights" / "hed_vgg16_bsds500_folded.safetensors"), "pt") as weights:
        assert "float16" in weights.metadata()["note"]
        assert str(weights.get_tensor("features.0.weight").dtype) == "torch.float16"

    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", "benchmarks/device_study.sh", "--dry-run"],
        cwd=REPO,
        timeout=900,
        env={**env, "PACK": str(pack), "OUT": str(out), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    log = (out / "device_log.txt").read_text()
    assert run.returncode == 0, log[-3000:] + run.stderr[-2000:]
    assert f"from the pack: {tempfile_site(log)}" in log  # smp imported from the installed wheels
    throughput = json.loads((out / "throughput.json").read_text())
    assert any("MFU" in row["note"] for row in throughput["rows"])
    report = (out / "study_report.md").read_text()
    assert (
        "## Every comparison at the headline levels" in report and "4 usable runs of 4" in report
    )  # two parts, two jobs at once each
    quality = json.loads((out / "quality_metrics.json").read_text())
    assert (
        quality["encoder_weights_used"]["source"] == "hed-bsds500"
        and "float16" in (quality["encoder_weights_used"]["detail"])
    )
    assert len(list(out.iterdir())) <= 8


def test_a_pack_for_another_python_is_named_with_the_fix(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    (pack / "wheels").mkdir(parents=True)
    (pack / "camvid").mkdir()
    (pack / "manifest.json").write_text(json.dumps({"python_version": "3.9"}))
    run = subprocess.run(
        ["bash", "benchmarks/device_study.sh", "--dry-run"],
        cwd=REPO,
        timeout=120,
        env={
            **os.environ,
            "PACK": str(pack),
            "OUT": str(tmp_path / "out"),
            "PYTHON": sys.executable,
        },
        capture_output=True,
        text=True,
    )
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert run.returncode == 1
    assert (
        f"the pack holds wheels for Python 3.9, this machine runs Python {here}: pack again with "
        f"python -m segment.device pack --camvid <CamVid> --python-version {here}"
    ) in run.stdout


def tempfile_site(log: str) -> str:
    """The temporary site folder the script installed the wheels into, as its log says."""
    line = next(line for line in log.splitlines() if "wheels installed into" in line)
    return (
        line.split("wheels installed into ", 1)[1].split(";", 1)[0] + "/segmentation_models_pytorch"
    )


@pytest.mark.slow
@needs_camvid
def test_the_default_pack_fits_its_budget_and_says_the_quality_it_chose(tmp_path: Path) -> None:
    """``python -m segment.device pack`` as the README gives it: all of CamVid, wheels for the GPU
    machine's Python, the weights and this working tree within 64 MiB (it once failed at 66.1)."""
    pack = tmp_path / "pack"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "segment.device",
            "pack",
            f"--camvid={CAMVID_ROOT}",
            f"--output={pack}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    manifest = json.loads((pack / "manifest.json").read_text())
    assert sum(manifest["bytes"].values()) <= BUDGET and manifest["camvid_samples"] >= 468
    assert f"JPEG quality {manifest['jpeg_quality']} (the highest that fits 64 MiB)" in done.stdout
