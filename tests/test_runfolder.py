"""A run folder belongs to one run: never silently reused, locked while training, its record never
downgraded, resumed only under the same config, and resumable from whatever checkpoint survived."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segment.runfolder import RunFolder, RunFolderError
from segment.training import train
from tests.helpers import REPO, TINY_OVERRIDES, TINY_SYNTHETIC, run_script

FAST = ["model=unet_lab", "trainer.max_epochs=1"]


def _hydra_config(folder: Path, text: str) -> None:
    """What Hydra does before train() runs: write the new run's config into the folder."""
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "config.yaml").write_text(text)


@pytest.fixture
def finished(make_cfg) -> Path:
    """A completed tiny run in tmp_path/run, with its config saved as Hydra saves it."""
    cfg = make_cfg(*FAST, "seed=1")
    run = Path(cfg.paths.output_dir)
    _hydra_config(run, "seed: 1\n")
    train(cfg)
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    files = (p for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def test_a_finished_run_folder_is_never_silently_reused(make_cfg, finished: Path) -> None:
    before = _snapshot(finished)
    _hydra_config(finished, "seed: 2\n")  # Hydra overwrites the config before train() can refuse
    with pytest.raises(RunFolderError, match=r"already holds a completed run started .* \(seed 1, val/loss [\d.]+\); "
                                             r"it is never silently reused. To continue that run: ckpt_path=last"):
        train(make_cfg(*FAST, "seed=2", "model.optimizer.lr=0.01"))
    assert _snapshot(finished) == before  # the first run's files, its config included, are as they were


def test_overwrite_archives_the_earlier_run_first(make_cfg, finished: Path) -> None:
    before = _snapshot(finished)
    _hydra_config(finished, "seed: 2\n")
    train(make_cfg(*FAST, "seed=2", "overwrite=true"))
    [archive] = (finished / "archive").iterdir()
    for name in ("run.json", "thresholds.json", "csv/metrics.csv", "checkpoints/last.ckpt", ".hydra/config.yaml"):
        assert (archive / name).read_bytes() == before[name], name
    assert json.loads((finished / "run.json").read_text())["seed"] == 2
    assert not list((finished / "checkpoints").glob("last-v*.ckpt"))  # no second "last" beside the old one


def test_a_failed_attempt_never_downgrades_a_completed_record(make_cfg, finished: Path) -> None:
    record = json.loads((finished / "run.json").read_text())
    with pytest.raises(ValueError, match=r"model.optimizer.lr='fast': expected float"):
        train(make_cfg(*FAST, "seed=1", "ckpt_path=last", "model.optimizer.lr=fast"))
    after = json.loads((finished / "run.json").read_text())
    assert after["status"] == "completed" and after["metrics"] == record["metrics"]
    assert "model.optimizer.lr='fast'" in after["failed_attempts"][0]["error"]
    # and a sweep rerun with skip_completed still skips it
    assert train(make_cfg(*FAST, "seed=1", "skip_completed=true")) == record["metrics"]


def test_a_resume_under_a_changed_config_is_refused_naming_the_keys(make_cfg, finished: Path) -> None:
    before = _snapshot(finished)
    with pytest.raises(RunFolderError, match=r"differs in:\n  model.optimizer.lr: 0.001 -> 0.5\n  "
                                             r"model.scheduler.scheduler.T_max: 1 -> 3"):
        train(make_cfg(*FAST, "seed=1", "ckpt_path=last", "model.optimizer.lr=0.5", "trainer.max_epochs=3"))
    assert _snapshot(finished) == before


def test_a_resume_may_train_longer_under_a_schedule_that_ignores_the_length(make_cfg) -> None:
    cfg = make_cfg(*FAST, "scheduler=warmup_constant")
    train(cfg)
    train(make_cfg(*FAST, "scheduler=warmup_constant", "trainer.max_epochs=2", "ckpt_path=last"))
    run = Path(cfg.paths.output_dir)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["resumed_from"].endswith("last.ckpt")
    assert record["config"]["trainer"]["max_epochs"] == 2  # what ran is what is recorded
    history = json.loads((run / "thresholds.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1.0, 2.0]


def test_a_second_run_in_a_locked_folder_is_refused_naming_the_holder(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(*FAST)
    with RunFolder(cfg.paths.output_dir).locked():
        with pytest.raises(RunFolderError, match=rf"is in use by pid {os.getpid()} on "):
            train(cfg)
    assert not (Path(cfg.paths.output_dir) / "run.json").exists()  # the holder's record is not touched
    train(cfg)  # released: the folder is free again


@pytest.mark.slow
def test_killed_between_two_checkpoint_writes_resumes_from_the_newest(tmp_path: Path, data_dir: Path) -> None:
    run = tmp_path / "run"
    common = ["train.py", "model=unet_lab", *TINY_OVERRIDES, *TINY_SYNTHETIC, "trainer.max_epochs=2",
              f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"]  # fmt: skip
    # SIGKILL when Lightning asks for last.ckpt, after the best checkpoint of epoch 1 was written (once)
    kill = [f"trainer.plugins=[{{_target_:tests.helpers.KillBeforeLast,marker:{tmp_path / 'killed-once'}}}]"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    attempt = subprocess.run([sys.executable, *common, *kill], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert attempt.returncode == -9, attempt.stderr[-2000:]
    [best] = [p.name for p in (run / "checkpoints").glob("*.ckpt")]
    assert best.startswith("epoch000-")  # no last.ckpt
    resumed = run_script([*common, *kill, "ckpt_path=last"])
    assert "resumed from epoch 1 (global step 2)" in resumed.stdout + resumed.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["epoch"] == 1
