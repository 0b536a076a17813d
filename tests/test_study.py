"""The study: a tiny 3-model x 2-seed sweep, its report and figures, and the bootstrap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segment.analysis import bootstrap_ratio, load_runs, mean_std
from segment.analysis.report import main as report_main
from tests.helpers import TINY_OVERRIDES, TINY_SYNTHETIC, run_script

FIGURES = [
    "loss_curves.png",
    "miou_curves.png",
    "val_loss_vs_seconds.png",
    "epochs_to_threshold.png",
    "calibration.png",
    "masks_at_thresholds.png",
]


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        slow, fast = rng.uniform(5, 15, size=3), rng.uniform(1, 6, size=3)
        point, low, high = bootstrap_ratio(slow, fast)
        assert point == pytest.approx(slow.mean() / fast.mean())
        assert low <= point <= high
    # no spread, no interval
    assert bootstrap_ratio([6, 6, 6], [2, 2, 2]) == pytest.approx((3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_ratio([], [1.0])


def test_mean_std_of_few_values() -> None:
    assert mean_std([2.0]) == (2.0, 0.0)
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))
    assert all(np.isnan(mean_std([])))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, str]:
    """``experiment=compare_pretraining`` at 2 seeds, 2 epochs, tiny images: 6 fast runs."""
    folder = tmp_path_factory.mktemp("study") / "sweep"
    result = run_script(
        [
            "train.py",
            "--multirun",
            "experiment=compare_pretraining",
            "seed=0,1",
            *TINY_OVERRIDES,
            *TINY_SYNTHETIC,
            "trainer.max_epochs=2",
            # a loose threshold every run reaches, and one none reaches
            "callbacks.thresholds.val_loss=[1000,0.01]",
            "callbacks.thresholds.val_miou=[0.0,0.99]",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={folder}",
        ],
        timeout=900,
    )
    return folder, result.stdout


@pytest.mark.slow
def test_sweep_writes_the_report_and_prints_the_headline(sweep: tuple[Path, str]) -> None:
    folder, stdout = sweep
    runs = load_runs(folder)
    assert [(run.model, run.seed, run.status) for run in runs] == [
        (model, seed, "completed") for model in ("unet_lab", "unet_scratch", "unet_vgg") for seed in (0, 1)
    ]
    assert all(sorted(run.epochs) == [1, 2] for run in runs)
    # the Hydra callback printed the headline: every model, 2 seeds each, the loose threshold in epoch 1
    assert "epochs to val_loss<=1000" in stdout
    for model in ("unet_lab", "unet_scratch", "unet_vgg"):
        assert f"| {model} | 2 | 1.0 +- 0.0 (2/2) | not reached |" in stdout
    report = (folder / "report.md").read_text()
    assert "| pretraining | unet_scratch / unet_vgg | val_loss<=1000 | 1.00x | [1.00, 1.00] |" in report
    assert "| pretraining | unet_scratch / unet_vgg | val_loss<=0.01 | n/a |" in report
    assert "None: every run completed." in report
    for figure in FIGURES:
        assert (folder / figure).stat().st_size > 1000, figure
        assert f"]({figure})" in report


@pytest.mark.slow
def test_report_command_lists_a_failed_and_a_killed_run(sweep: tuple[Path, str], tmp_path: Path, capsys) -> None:
    folder, _ = sweep
    # a copy of the sweep in which one run failed and one was killed before finishing
    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy)
    record = json.loads((copy / "0" / "run.json").read_text())
    (copy / "0" / "run.json").write_text(json.dumps({**record, "status": "failed", "error": "FloatingPointError: nan"}))
    record = json.loads((copy / "1" / "run.json").read_text())
    (copy / "1" / "run.json").write_text(json.dumps({**record, "status": "running"}))
    assert report_main([str(copy)]) == 0
    report = (copy / "report.md").read_text()
    assert "| 0 | unet_lab | 0 | failed | FloatingPointError: nan |" in report
    assert "| 1 | unet_scratch | 0 | incomplete |" in report  # job 1: seed 0 (outermost), second model
    assert "4 usable runs of 6" in report
    assert "Report:" in capsys.readouterr().out


def test_report_command_on_a_folder_without_runs(tmp_path: Path, capsys) -> None:
    assert report_main([str(tmp_path)]) == 1
    assert "holds no run folders" in capsys.readouterr().err
    assert report_main([str(tmp_path / "missing")]) == 1
    assert "no such sweep folder" in capsys.readouterr().err
