"""Kill and resume, deterministic repeats, the non-finite guard, and sweeps that lose nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from segment.analysis.report import main as report_main
from segment.training import train
from tests.helpers import REPO, TINY_OVERRIDES, TINY_SYNTHETIC, run_script, sweep_jobs

# The lab U-Net (dropout draws random numbers), augmentation on, 6 steps per epoch.
RESUMABLE = [
    "model=unet_lab",
    *TINY_OVERRIDES,
    *TINY_SYNTHETIC,
    "trainer.max_epochs=4",
    "trainer.deterministic=true",
    "data.train_repeats=3",
    "seed=0",
]
EPOCH_METRICS = ("train/loss", "val/loss", "val/miou", "val/pixel_acc")


def _kill_at(folder: Path, epoch: int, batch: int) -> list[str]:
    """Overrides adding a callback that SIGKILLs the run once, at (epoch, batch); the resume keeps them."""
    return ["+callbacks.kill._target_=tests.helpers.KillAt", f"+callbacks.kill.epoch={epoch}",
            f"+callbacks.kill.batch={batch}", f"+callbacks.kill.marker={folder / 'killed-once'}"]  # fmt: skip


def _epoch_rows(run: Path) -> dict[int, dict[str, str]]:
    """The per-epoch validation rows of metrics.csv; fails if an epoch appears twice."""
    rows: dict[int, dict[str, str]] = {}
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            if row.get("val/loss"):
                epoch = int(row["epoch"])
                assert epoch not in rows, f"epoch {epoch} logged twice in {run}"
                rows[epoch] = row
    return rows


def _epoch_metrics(run: Path) -> dict[int, dict[str, str]]:
    """Every per-epoch metric (train and validation rows merged), as logged (strings: exact)."""
    merged: dict[int, dict[str, str]] = {}
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            for name in EPOCH_METRICS:
                if row.get(name):
                    merged.setdefault(int(row["epoch"]), {})[name] = row[name]
    return merged


@pytest.mark.slow
def test_killed_run_resumes_into_its_folder_and_matches_an_uninterrupted_run(tmp_path: Path, data_dir: Path) -> None:
    common = [*RESUMABLE, f"paths.data_dir={data_dir}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_script(["train.py", *common, f"hydra.run.dir={whole}"])

    # SIGKILL in the middle of epoch 3 (0-based 2): epochs 1 and 2 are checkpointed, epoch 3 is half done
    kill = _kill_at(tmp_path, epoch=2, batch=3)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    attempt = subprocess.run([sys.executable, "train.py", *common, *kill, f"hydra.run.dir={killed}"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert attempt.returncode == -9, attempt.stderr[-3000:]
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    assert sorted(_epoch_rows(killed)) == [0, 1]

    resumed = run_script(["train.py", *common, *kill, f"hydra.run.dir={killed}", "ckpt_path=last"])
    assert "resumed from epoch 2 (global step 12)" in resumed.stdout + resumed.stderr

    # one folder, every epoch exactly once, and bitwise the uninterrupted run's numbers
    assert sorted(_epoch_rows(killed)) == [0, 1, 2, 3]
    assert _epoch_metrics(killed) == _epoch_metrics(whole)
    record = json.loads((killed / "run.json").read_text())
    assert record["status"] == "completed" and record["resumed_from"].endswith("last.ckpt")
    # the threshold record and the best checkpoint continued across the kill
    ours, theirs = (json.loads((run / "thresholds.json").read_text()) for run in (killed, whole))
    assert [h["epoch"] for h in ours["history"]] == [1, 2, 3, 4]
    strip = {"seconds", "cpu_share"}
    assert [{k: v for k, v in h.items() if k not in strip} for h in ours["history"]] == [
        {k: v for k, v in h.items() if k not in strip} for h in theirs["history"]
    ]
    best = sorted(p.name for p in (killed / "checkpoints").glob("epoch*.ckpt"))
    assert best == sorted(p.name for p in (whole / "checkpoints").glob("epoch*.ckpt"))
    # TensorBoard: the killed attempt's later events are purged, one point per validation
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(killed / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("val/loss")]
    assert len(steps) == 4 and len(set(steps)) == 4


@pytest.mark.slow
def test_deterministic_runs_are_bitwise_identical(make_cfg, tmp_path: Path) -> None:
    results = []
    for name in ("first", "second"):
        cfg = make_cfg(*RESUMABLE[:-2], "trainer.max_epochs=2", "seed=3")  # without train_repeats and seed=0
        cfg.paths.output_dir = str(tmp_path / name)
        results.append(train(cfg))
    assert results[0] == results[1]
    assert _epoch_metrics(tmp_path / "first") == _epoch_metrics(tmp_path / "second")
    record = json.loads((tmp_path / "first" / "run.json").read_text())
    assert record["versions"]["torch"] == metadata.version("torch")
    assert record["git"]["commit"] is None or len(record["git"]["commit"]) == 40


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("model=unet_lab", "trainer.max_epochs=3", "+callbacks.poison._target_=tests.helpers.PoisonAt",
                   "+callbacks.poison.epoch=1")  # fmt: skip
    with pytest.raises(
        FloatingPointError, match=r"non-finite training loss at epoch 2, step 2 \(last finite loss: \d"
    ):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "non-finite training loss" in record["error"]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())


@pytest.mark.slow
def test_a_failing_job_spoils_no_other_and_a_rerun_skips_completed_jobs(tmp_path: Path, data_dir: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    # job 1's learning rate is rejected by the optimiser when training starts
    command = [sys.executable, "train.py", "--multirun", "model=unet_lab", "model.optimizer.lr=0.001,nan",
               *TINY_OVERRIDES, *TINY_SYNTHETIC, f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode != 0  # Hydra reports the failed job after running all of them
    jobs = sweep_jobs(sweep)
    assert sorted(jobs) == ["model.optimizer.lr=0.001", "model.optimizer.lr=nan"]
    good, bad = jobs["model.optimizer.lr=0.001"], jobs["model.optimizer.lr=nan"]
    done, failed = (json.loads((job / "run.json").read_text()) for job in (good, bad))
    assert done["status"] == "completed" and "val/loss" in done["metrics"]
    assert failed["status"] == "failed" and "Invalid learning rate: nan" in failed["error"]

    assert report_main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert f"| {bad.name} | 42 | failed | ValueError: Invalid learning rate: nan |" in report

    metrics = (good / "csv" / "metrics.csv").read_bytes()
    second = subprocess.run([*command, "skip_completed=true"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert "already completed; not training again" in second.stdout + second.stderr
    assert (good / "csv" / "metrics.csv").read_bytes() == metrics
    assert json.loads((good / "run.json").read_text())["status"] == "completed"
    assert json.loads((bad / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_skip_completed_continues_a_killed_run(tmp_path: Path, data_dir: Path) -> None:
    run = tmp_path / "run"
    common = ["train.py", "model=unet_lab", *TINY_OVERRIDES, *TINY_SYNTHETIC, "trainer.max_epochs=2",
              f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"]  # fmt: skip
    kill = _kill_at(tmp_path, epoch=1, batch=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    attempt = subprocess.run([sys.executable, *common, *kill], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert attempt.returncode == -9
    rerun = run_script([*common, *kill, "skip_completed=true"])
    assert "skip_completed: continuing the incomplete run" in rerun.stdout + rerun.stderr
    assert sorted(_epoch_rows(run)) == [0, 1]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
