"""A run folder belongs to one run: never silently reused, locked while training, its status never
changed by an attempt it refused, every attempt on record, resumed only under the same config and
data, and resumable from whatever checkpoint survived."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

from segment.run.decision import RunFolderError
from segment.run.folder import archive
from segment.run.layout import RunLayout
from segment.run.record import RecordError, read_record
from segment.training import train
from tests.helpers import REPO, TINY_OVERRIDES, TINY_SYNTHETIC, run_script
from tests.layouts import stripes, write_camvid, write_image, write_mask

FAST = ["model=unet_lab", "trainer.max_epochs=1"]


@pytest.fixture
def finished(make_cfg) -> Path:
    """A completed tiny run in tmp_path/run."""
    cfg = make_cfg(*FAST, "seed=1")
    train(cfg)
    return Path(cfg.paths.output_dir)


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run but its lock and its record (which lists every attempt, refused ones
    too)."""
    files = (
        p for p in sorted(run.rglob("*")) if p.is_file() and p.name not in (".lock", "run.json")
    )
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def _record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_a_finished_run_folder_is_never_silently_reused(make_cfg, finished: Path) -> None:
    before, record = _snapshot(finished), _record(finished)
    with pytest.raises(
        RunFolderError,
        match=r"already holds a completed run started .* \(seed 1, val/loss [\d.]+\); "
        r"it is never silently reused. To continue that run: ckpt_path=last",
    ):
        train(make_cfg(*FAST, "seed=2", "model.optimizer.lr=0.01"))
    assert (
        _snapshot(finished) == before
    )  # the first run's files, .hydra/ included, are as they were
    after = _record(finished)
    assert {k: after[k] for k in ("status", "metrics", "seed")} == {
        k: record[k] for k in ("status", "metrics", "seed")
    }
    assert [a["outcome"] for a in after["attempts"]] == ["completed", "refused"]
    assert "never silently reused" in after["attempts"][-1]["error"]


def test_overwrite_archives_the_earlier_run_first(make_cfg, finished: Path) -> None:
    before = {**_snapshot(finished), "run.json": (finished / "run.json").read_bytes()}
    train(make_cfg(*FAST, "seed=2", "overwrite=true"))
    [archive] = (finished / "archive").iterdir()
    for name in (
        "run.json",
        "thresholds.json",
        "csv/metrics.csv",
        "checkpoints/last.ckpt",
        ".hydra/config.yaml",
    ):
        assert (archive / name).read_bytes() == before[name], name
    assert _record(finished)["seed"] == 2
    assert yaml.safe_load((finished / ".hydra" / "config.yaml").read_text())["seed"] == 2
    assert not list(
        (finished / "checkpoints").glob("last-v*.ckpt")
    )  # no second "last" beside the old one


def _outside(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_archiving_moves_links_as_links_and_changes_nothing_outside(tmp_path: Path) -> None:
    """overwrite=true's archive used to truncate a linked train.log's target, outside the run
    folder; a linked log, result file or result folder now moves into the archive as a link."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    (outside / "csv").mkdir(parents=True)
    (outside / "csv" / "metrics.csv").write_text("epoch,step\n0,1\n")
    (outside / "train.log").write_text("another run's log\n")
    (outside / "thresholds.json").write_text("{}")
    run.mkdir()
    (run / "run.json").write_text("{}")
    for name in ("train.log", "thresholds.json", "csv"):
        (run / name).symlink_to(outside / name)
    before = _outside(outside)
    target = archive(run, RunLayout(), "2024-01-01T00:00:00")
    assert _outside(outside) == before
    for name in ("train.log", "thresholds.json", "csv"):
        assert (target / name).readlink() == outside / name and not (run / name).is_symlink()
    assert (target / "run.json").read_text() == "{}"


def test_archiving_never_writes_through_a_linked_archive_folder(tmp_path: Path) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "archive").symlink_to(outside)
    with contextlib.suppress(RunFolderError):
        archive(run, RunLayout(), "2024-01-01T00:00:00")
    assert not any(outside.iterdir()) and (run / "run.json").read_text() == "{}"
    with pytest.raises(
        RunFolderError, match=r"archive is a symbolic link: .*replace it by a folder"
    ):
        archive(run, RunLayout(), "2024-01-01T00:00:00")


@pytest.mark.parametrize(
    "layout", [{"csv": "../csv"}, {"log": "/var/log/train.log"}, {"masks": ""}, {"hydra": 3}]
)
def test_a_record_whose_layout_leaves_its_folder_is_refused_naming_the_file(
    tmp_path: Path, layout: dict
) -> None:
    """Every reader takes the run's file names from its record: one naming a file outside the run
    folder is refused where the record is read, naming the file and the entry."""
    (tmp_path / "run.json").write_text(json.dumps({"status": "completed", "layout": layout}))
    [(key, value)] = layout.items()
    with pytest.raises(
        RecordError,
        # a wrong type is named by the record's schema, a path outside the folder by the layout
        match=rf"run\.json: layout(\.{key}: 3 \(input should be a valid string|"
        rf" {key}={re.escape(repr(value))} \(from [\w. ]+\) is not a path in the run folder)",
    ):
        read_record(tmp_path)


def test_a_config_that_puts_a_run_file_outside_its_folder_is_refused(make_cfg) -> None:
    cfg = make_cfg("callbacks.last_checkpoint.dirpath=/elsewhere/checkpoints")
    with pytest.raises(
        ValueError,
        match=r"layout checkpoints='/elsewhere/checkpoints' \(from "
        r"callbacks.last_checkpoint.dirpath\) is not a path in the run folder",
    ):
        RunLayout.from_config(cfg)


def test_a_refused_attempt_never_changes_the_status_of_the_run_it_refused(
    make_cfg, finished: Path
) -> None:
    record = _record(finished)
    with pytest.raises(ValueError, match=r"model.optimizer.lr='fast': expected float"):
        train(make_cfg(*FAST, "seed=1", "ckpt_path=last", "model.optimizer.lr=fast"))
    after = _record(finished)
    assert after["status"] == "completed" and after["metrics"] == record["metrics"]
    assert after["attempts"][-1]["outcome"] == "refused"
    assert "model.optimizer.lr='fast'" in after["attempts"][-1]["error"]
    # and a sweep rerun with skip_completed still skips it
    assert train(make_cfg(*FAST, "seed=1", "skip_completed=true")) == record["metrics"]


def test_a_refused_resume_of_a_killed_run_leaves_it_to_be_continued(
    make_cfg, finished: Path
) -> None:
    """The killed run (status running, a checkpoint) survives a resume refused for a changed config,
    and skip_completed then continues it from its checkpoint instead of archiving it."""
    record = _record(finished)
    (finished / "run.json").write_text(
        json.dumps({**record, "status": "running"})
    )  # as a SIGKILL leaves it
    with pytest.raises(RunFolderError, match=r"differs in:\n  model.optimizer.lr: 0.001 -> 0.5"):
        train(make_cfg(*FAST, "seed=1", "ckpt_path=last", "model.optimizer.lr=0.5"))
    assert _record(finished)["status"] == "running"
    train(make_cfg(*FAST, "seed=1", "skip_completed=true"))
    after = _record(finished)
    assert after["status"] == "completed" and not (finished / "archive").exists()
    assert after["attempts"][-1]["resumed_from"].endswith("last.ckpt")
    assert [a["outcome"] for a in after["attempts"]] == ["completed", "refused", "completed"]


def test_a_resume_under_a_changed_config_is_refused_naming_the_keys(
    make_cfg, finished: Path
) -> None:
    before = _snapshot(finished)
    with pytest.raises(
        RunFolderError,
        match=r"differs in:\n  model.optimizer.lr: 0.001 -> 0.5\n  "
        r"model.scheduler.scheduler.T_max: 1 -> 3\n  trainer.max_epochs: "
        r"1 -> 3 \(the schedule follows the run's length: cosine, "
        r"warmup_poly and warmup_cosine cannot train longer",
    ):
        train(
            make_cfg(
                *FAST, "seed=1", "ckpt_path=last", "model.optimizer.lr=0.5", "trainer.max_epochs=3"
            )
        )
    assert _snapshot(finished) == before


def test_a_resume_may_train_longer_under_a_schedule_that_ignores_the_length(
    make_cfg, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="segment")
    cfg = make_cfg(*FAST, "scheduler=warmup_constant")
    train(cfg)
    train(make_cfg(*FAST, "scheduler=warmup_constant", "trainer.max_epochs=2", "ckpt_path=last"))
    run = Path(cfg.paths.output_dir)
    assert (
        f"continuing from {run / 'checkpoints' / 'last.ckpt'}: epoch 0, global step 2"
        in caplog.text
    )
    record = _record(run)
    assert record["status"] == "completed" and record["attempts"][-1]["resumed_from"].endswith(
        "last.ckpt"
    )
    assert (
        yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    )  # what ran
    history = json.loads((run / "thresholds.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1.0, 2.0]


def test_a_second_run_in_a_locked_folder_is_refused_naming_the_holder(make_cfg) -> None:
    cfg = make_cfg(*FAST)
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True)
    holder = {
        "status": "running",
        "attempts": [{"pid": 4242, "host": "node7", "started": "2026-12-01T10:00:00"}],
    }
    (run / "run.json").write_text(json.dumps(holder))
    with (
        FileLock(run / ".lock"),
        pytest.raises(RunFolderError, match=r"is in use by pid 4242 on node7 since"),
    ):
        train(cfg)
    assert _record(run) == holder  # the holder's record is not touched


def test_a_resume_or_skip_on_other_data_is_refused(make_cfg, tmp_path: Path) -> None:
    """A run trained on 3 images, continued or skipped with data.root pointing at 4 (data.root may
    change: the data may move): refused, naming both fingerprints; a moved copy of the same files is
    accepted."""
    first, other, moved = (
        tmp_path / "a" / "camvid",
        tmp_path / "b" / "camvid",
        tmp_path / "c" / "camvid",
    )
    write_camvid(first), write_camvid(other), write_camvid(moved)
    write_image(other / "train" / "0001TP_000009.png", seed=9)
    write_mask(other / "trainannot" / "0001TP_000009.png", stripes([0, 3]))
    common = [*FAST, "scheduler=constant", "data=camvid"]
    cfg = make_cfg(*common, f"data.root={first}")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    fingerprint = _record(run)["data"]
    refusal = (
        r"trained on other data than data.root now holds "
        r"\({'dataset': 'camvid', 'train': 3, .* 'train': 4"
    )
    with pytest.raises(RunFolderError, match=refusal):
        train(make_cfg(*common, f"data.root={other}", "trainer.max_epochs=2", "ckpt_path=last"))
    with pytest.raises(RunFolderError, match=refusal + r".*refusing to skip it as completed"):
        train(make_cfg(*common, f"data.root={other}", "skip_completed=true"))
    assert _record(run)["status"] == "completed"
    train(
        make_cfg(*common, f"data.root={moved}", "trainer.max_epochs=2", "ckpt_path=last")
    )  # the same files
    assert _record(run)["data"] == fingerprint and _record(run)["status"] == "completed"


@pytest.mark.slow
def test_killed_between_two_checkpoint_writes_resumes_from_the_newest(
    tmp_path: Path, data_dir: Path
) -> None:
    run = tmp_path / "run"
    common = [
        "train.py",
        "model=unet_lab",
        *TINY_OVERRIDES,
        *TINY_SYNTHETIC,
        "trainer.max_epochs=2",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
    ]
    # SIGKILL when Lightning asks for last.ckpt, after the best checkpoint of epoch 1 was written
    # (once)
    kill = [
        "trainer.plugins=[{_target_:tests.helpers.KillBeforeLast,"
        f"marker:{tmp_path / 'killed-once'}}}]"
    ]
    attempt = run_script([*common, *kill], check=False)
    assert attempt.returncode == -9, attempt.stderr[-2000:]
    [best] = [p.name for p in (run / "checkpoints").glob("*.ckpt")]
    assert best.startswith("epoch000-")  # no last.ckpt
    # its own overrides, saved; the plugin's _target_ is typed again (a saved one is refused as
    # data)
    resumed = run_script(["train.py", f"hydra.run.dir={run}", "ckpt_path=last", *kill])
    assert f"continuing from {run / 'checkpoints' / best}: epoch 0, global step 2" in (
        resumed.stdout + resumed.stderr
    )
    assert _record(run)["status"] == "completed"
    assert (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")[
            "epoch"
        ]
        == 1
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", r"run.json holds a list, not a run record; move it aside"),
        (
            '{"status": "runn',
            r"run.json is unreadable \(.*\); move it aside \(its run is then continued from its "
            r"newest",
        ),
    ],
)
def test_a_damaged_run_record_is_named_with_the_fix_and_left_as_it_is(
    finished: Path, make_cfg, content: str, message: str
) -> None:
    (finished / "run.json").write_text(content)
    before = _snapshot(finished)
    with pytest.raises(RunFolderError, match=message):
        train(make_cfg(*FAST, "seed=1", "skip_completed=true"))
    assert (finished / "run.json").read_text() == content and _snapshot(finished) == before


def test_a_non_numeric_step_in_metrics_csv_is_named_with_its_line(tmp_path: Path) -> None:
    from segment.run.loggers.csv_logs import CSVLogger

    folder = tmp_path / "csv" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,step,val/loss\n0,3,1.5\n0,six,1.2\n")
    with pytest.raises(
        ValueError, match=r"metrics.csv, line 3: step='six' is not a number; correct or delete"
    ):
        CSVLogger(save_dir=str(tmp_path), name="csv", version="version_0", log_position={"step": 5})
    assert (folder / "metrics.csv").read_text().endswith("0,six,1.2\n")  # untouched


@pytest.mark.slow
def test_a_read_only_run_folder_is_refused_naming_it(tmp_path: Path, data_dir: Path) -> None:
    """A run into a folder it cannot write (here a read-only mount; a folder of another user
    alike) ended in a traceback; it is refused, naming the folder and the key to change."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("kept")
    script = (
        f"mount --bind -o ro {run} {run} && exec {sys.executable} train.py model=unet_lab "
        f"{' '.join(TINY_OVERRIDES)} paths.data_dir={data_dir} hydra.run.dir={run}"
    )
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("needs unshare -m (a mount namespace) for a read-only folder")
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"cannot write to the run folder {run}: Read-only file system" in done.stderr
    assert "hydra.run.dir" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
