"""A run's life, tested by its effects: what a refused or failed attempt leaves, what a run folder's
own files may do, how every stop signal ends a run, and what a resume makes of the logs, whenever
the kill came.

In-process runs (``hydra_train``) where the process boundary is not the point; fresh interpreters
for kills and signals.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segment.checkpoints import CheckpointError
from segment.run.decision import RunFolderError
from tests.helpers import REPO, TINY_OVERRIDES, TINY_SYNTHETIC, run_script
from tests.layouts import stripes, write_camvid, write_image, write_mask

FAST = ["model=unet_lab", "trainer.max_epochs=1", "scheduler=constant"]


def _record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _hydra_files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / ".hydra").iterdir())}


def test_a_resume_refused_for_other_data_changes_nothing_and_the_run_continues_later(
    hydra_train, tmp_path: Path
) -> None:
    """(a) The refusal used to rewrite .hydra/ first, so the folder-only resume was refused for
    ever."""
    first, other = tmp_path / "a" / "camvid", tmp_path / "b" / "camvid"
    write_camvid(first), write_camvid(other)
    # one training sample more: other data by any fingerprint
    write_image(other / "train" / "0001TP_000003.png", seed=3)
    write_mask(other / "trainannot" / "0001TP_000003.png", stripes([0, 5]))
    hydra_train(*FAST, "data=camvid", f"data.root={first}")
    run = tmp_path / "run"
    before = _hydra_files(run)
    with pytest.raises(RunFolderError, match="trained on other data"):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2", f"data.root={other}")
    assert _hydra_files(run) == before and _record(run)["status"] == "completed"
    assert _record(run)["attempts"][-1]["outcome"] == "refused"
    hydra_train("ckpt_path=last", "trainer.max_epochs=2")  # the folder's own overrides: data A
    assert _record(run)["status"] == "completed"
    assert json.loads((run / "thresholds.json").read_text())["history"][-1]["epoch"] == 2


def test_a_run_folder_cannot_run_code(hydra_train, tmp_path: Path) -> None:
    """(b) Lines appended to .hydra/overrides.yaml used to build any _target_ when the run was
    continued."""
    hydra_train(*FAST)
    run, victim = tmp_path / "run", tmp_path / "precious.txt"
    victim.write_text("keep me")
    with (run / ".hydra" / "overrides.yaml").open("a") as file:
        file.write(f"- +logger.x._target_=builtins.open\n- +logger.x._args_=[{victim},w]\n")
    with pytest.raises(
        CheckpointError, match=r"a saved override may not hold _target_ \(only model and data"
    ):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    assert victim.read_text() == "keep me"
    (run / ".hydra" / "overrides.yaml").write_text("- seed=${oc.env:HOME}\n")
    with pytest.raises(CheckpointError, match="may not hold interpolations"):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    assert _record(run)["status"] == "completed"


def test_a_completed_run_stays_completed_when_continuing_it_fails_before_training(
    hydra_train, tmp_path: Path
) -> None:
    """(c) A logger that cannot be built, after the claim, used to mark a completed run failed."""
    hydra_train(*FAST)
    run = tmp_path / "run"
    metrics = _record(run)["metrics"]
    with pytest.raises(Exception, match="save_dir"):
        hydra_train(
            "ckpt_path=last",
            "trainer.max_epochs=2",
            "+logger.broken._target_=lightning.pytorch.loggers.CSVLogger",
        )
    record = _record(run)
    assert record["status"] == "completed" and record["metrics"] == metrics
    assert record["attempts"][-1]["outcome"] == "failed"
    assert hydra_train(*FAST, "skip_completed=true") == metrics  # still skipped as completed


def test_a_schedule_that_follows_the_run_length_refuses_a_longer_resume(
    hydra_train, tmp_path: Path
) -> None:
    """(d) warmup_poly's total_steps: null resolves alike for any length, so the longer run used to
    train."""
    hydra_train(
        "model=unet_lab",
        "trainer.max_epochs=1",
        "scheduler=warmup_poly",
        "model.scheduler.scheduler.warmup_steps=1",
    )
    with pytest.raises(RunFolderError, match=r"trainer.max_epochs: 1 -> 2 \(the schedule follows"):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    assert _record(tmp_path / "run")["status"] == "completed"


def test_a_run_killed_before_its_first_validation_starts_afresh(
    hydra_train, tmp_path: Path
) -> None:
    """(e) No checkpoint yet: ckpt_path=last used to refuse, advising the command just typed."""
    hydra_train(*FAST)
    run = tmp_path / "run"
    record = _record(run)
    for path in (run / "checkpoints").glob("*.ckpt"):
        path.unlink()
    (run / "run.json").write_text(
        json.dumps({**record, "status": "running"})
    )  # as a SIGKILL leaves it
    hydra_train("ckpt_path=last")
    assert _record(run)["status"] == "completed"
    assert _record(run)["attempts"][-1]["action"] == "fresh"
    [archived] = (run / "archive").iterdir()
    assert json.loads((archived / "run.json").read_text())["status"] == "running"


# train.py with Hydra's ${now:...} stopped at one second: two launches share the timestamp
_FROZEN_CLOCK = """
import datetime, runpy, sys
import hydra.core.utils

class Frozen(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 12, 6, 10, 0, 0)

hydra.core.utils.datetime = Frozen
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_runs_launched_in_the_same_second_get_folders_of_their_own(
    tmp_path: Path, data_dir: Path
) -> None:
    """(f) Two runs started in the same second got one timestamped folder; the second was
    refused."""
    command = [
        *("model=unet_lab", "debug=fdr", *TINY_OVERRIDES, *TINY_SYNTHETIC),
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", _FROZEN_CLOCK, *command],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [start.communicate(timeout=300)[0] for start in starts]
    assert [start.returncode for start in starts] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    runs = sorted((tmp_path / "logs" / "debug" / "runs").iterdir())  # debug=fdr's task name
    assert [run.name for run in runs] == ["2026-12-06_10-00-00", "2026-12-06_10-00-00-2"]
    assert all(_record(run)["status"] == "completed" for run in runs)


def test_result_files_are_written_with_the_umask_like_any_other(
    hydra_train, tmp_path: Path
) -> None:
    """(g) mkstemp's 0600 made run.json and checkpoints unreadable to colleagues."""
    old = os.umask(0o022)
    try:
        hydra_train(*FAST)
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for path in (
        run / "run.json",
        run / "thresholds.json",
        run / "checkpoints" / "last.ckpt",
        run / ".hydra" / "config.yaml",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def _stop_command(
    tmp_path: Path, data_dir: Path, when: str, name: str, workers: int = 1
) -> list[str]:
    return [
        "train.py",
        "model=unet_lab",
        *TINY_OVERRIDES,
        *TINY_SYNTHETIC,
        f"data.num_workers={workers}",
        "trainer.max_epochs=3",
        "scheduler=constant",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.stop._target_=tests.helpers.StopAt",
        f"+callbacks.stop.when={when}",
        f"+callbacks.stop.signal={name}",
        f"+callbacks.stop.stamp={tmp_path / 'sent'}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("when", "name"),
    [
        ("after_first_checkpoint", "SIGTERM"),
        ("mid_epoch", "SIGTERM"),
        ("in_validation", "SIGTERM"),
        ("mid_epoch", "SIGHUP"),
        ("mid_epoch", "SIGINT"),
    ],
)
def test_every_stop_signal_ends_the_run_within_seconds_and_is_recorded(
    tmp_path: Path, data_dir: Path, when: str, name: str
) -> None:
    """(h, i) With a persistent loader worker (the default), SIGTERM right after the first
    checkpoint used to leave the process waiting at exit for a worker that ignored it; SIGHUP (a
    closed terminal) left no record."""
    done = run_script(
        _stop_command(tmp_path, data_dir, when, name), check=False, fresh=True, timeout=240
    )
    ended = time.time()
    assert done.returncode == 128 + int(getattr(signal, name)), done.stderr[-3000:]
    assert (
        ended - float((tmp_path / "sent").read_text()) < 15
    )  # seconds from the signal to the exit
    record = _record(tmp_path / "run")
    assert record["status"] == "interrupted" and record["error"] == f"interrupted by {name}"
    assert record["attempts"][-1]["signal"] == name
    # no loader worker outlived it (a forked worker has its parent's command line)
    left = subprocess.run(
        ["pgrep", "-f", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True
    )
    assert not left.stdout.strip()


def _rows(run: Path, column: str) -> list[tuple[int, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        return [(int(r["step"]), r[column]) for r in csv.DictReader(file) if r.get(column)]


@pytest.mark.slow
def test_a_kill_between_a_validation_and_its_checkpoint_logs_each_validation_once(
    tmp_path: Path, data_dir: Path
) -> None:
    """(j) The killed attempt's last validation row was kept beside the resumed attempt's
    repetition."""
    run = tmp_path / "run"
    kill = [
        "+callbacks.kill._target_=tests.helpers.KillAfterValidation",
        "+callbacks.kill.epoch=1",
        f"+callbacks.kill.marker={tmp_path / 'killed-once'}",
    ]
    common = [
        "train.py",
        "model=unet_lab",
        *TINY_OVERRIDES,
        # one batch an epoch: the killed validation's step is then the last checkpoint's, which
        # the old rule (rows with step <= the checkpoint's) kept
        "data.num_train=4",
        "data.num_val=4",
        "trainer.max_epochs=3",
        "scheduler=constant",
        "data.train_repeats=1",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
        "trainer.log_every_n_steps=1",
        *kill,
    ]
    assert run_script(common, check=False, fresh=True).returncode == -9
    assert len(_rows(run, "val/loss")) == 2  # the second validation's row reached the file
    run_script([*common, "ckpt_path=last"], fresh=True)
    steps = [step for step, _ in _rows(run, "val/loss")]
    assert len(steps) == 3 and len(set(steps)) == 3, steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == steps


@pytest.mark.slow
def test_a_kill_at_an_epochs_end_resumes_exactly(tmp_path: Path, data_dir: Path) -> None:
    """(k) Resumed from a checkpoint written at an epoch's end, the loader worker's first batches
    were epoch 0's: the run drifted from the uninterrupted one from the next epoch on."""
    common = [
        "train.py",
        "model=unet_lab",
        *TINY_OVERRIDES,
        *TINY_SYNTHETIC,
        "data.num_workers=1",
        "trainer.max_epochs=3",
        "scheduler=constant",
        f"paths.data_dir={data_dir}",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_script([*common, f"hydra.run.dir={whole}"])
    kill = [
        "+callbacks.kill._target_=tests.helpers.KillAt",
        "+callbacks.kill.epoch=2",
        "+callbacks.kill.batch=0",
        f"+callbacks.kill.marker={tmp_path / 'killed-once'}",
    ]
    assert (
        run_script([*common, *kill, f"hydra.run.dir={killed}"], check=False, fresh=True).returncode
        == -9
    )
    run_script([*common, *kill, f"hydra.run.dir={killed}", "ckpt_path=last"], fresh=True)
    assert _rows(killed, "train/loss") == _rows(whole, "train/loss")
    assert _rows(killed, "val/loss") == _rows(whole, "val/loss")


def test_temporary_files_of_killed_writes_are_removed_when_the_run_continues(
    hydra_train, tmp_path: Path
) -> None:
    """(l) Only checkpoints/ was cleaned: .thresholds.json.<random>.partial stayed for ever."""
    hydra_train(*FAST)
    run = tmp_path / "run"
    left = [
        run / ".thresholds.json.k2j4.partial",
        run / ".run.json.x9.partial",
        run / "masks" / ".step_0000002.png.abc.partial",
        run / "checkpoints" / ".last.ckpt.q.partial",
    ]
    for path in left:
        path.write_bytes(b"half")
    hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    assert not [path for path in left if path.exists()]
    assert not list(run.rglob("*.partial"))


def test_a_run_with_renamed_files_is_read_under_its_own_names(hydra_train, tmp_path: Path) -> None:
    """One layout, from the config, saved in the record: renaming the CSV log or the thresholds file
    used to break archiving and the report."""
    from segment.analysis.runs import load_run

    renamed = ["logger.csv.name=table", "+callbacks.thresholds.filename=levels.json"]
    hydra_train(*FAST, *renamed)
    run = tmp_path / "run"
    assert (run / "levels.json").is_file() and (run / "table" / "metrics.csv").is_file()
    found = load_run(run)
    assert found.usable and found.validations and found.train_loss
    hydra_train(*FAST, *renamed, "overwrite=true")  # archived under the same names
    [archived] = (run / "archive").iterdir()
    assert (archived / "levels.json").is_file() and (archived / "table" / "metrics.csv").is_file()


def test_masks_rewritten_under_their_names_refuse_the_resume(hydra_train, tmp_path: Path) -> None:
    """The data fingerprint sees content: two masks rewritten under the same names used to pass."""
    root = tmp_path / "camvid"
    write_camvid(root)
    hydra_train(*FAST, "data=camvid", f"data.root={root}")
    for name in sorted((root / "trainannot").iterdir())[:2]:
        write_mask(name, stripes([1, 4]))
    with pytest.raises(RunFolderError, match="trained on other data"):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    assert _record(tmp_path / "run")["status"] == "completed"


def test_a_non_finite_validation_stops_the_run_as_failed_and_keeps_no_nan_best(
    hydra_train, tmp_path: Path
) -> None:
    """A rate of 1e6 gave val/loss NaN from epoch 1 while training went on, BatchNorm buffers of inf
    in last.ckpt and epoch000-val_lossnan.ckpt as the "best"."""
    poison = [
        "+callbacks.poison._target_=tests.helpers.OverflowBatchNormAt",
        "+callbacks.poison.epoch=1",
    ]
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite validation at epoch 2.*non-finite "
        r"buffers .*The last finite checkpoint: .*last.ckpt",
    ):
        hydra_train("model=unet_lab", "trainer.max_epochs=3", "scheduler=constant", *poison)
    run = tmp_path / "run"
    record = _record(run)
    assert record["status"] == "failed" and "non-finite validation" in record["error"]
    assert not [p.name for p in (run / "checkpoints").glob("*nan*")]
    import torch

    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0 and all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


@pytest.mark.parametrize(("at", "status"), [("train_start", "completed"), ("batch", "failed")])
def test_a_failed_continuation_changes_the_status_only_if_it_changed_the_run(
    hydra_train, tmp_path: Path, at: str, status: str
) -> None:
    """(m) A completed run whose continuation failed inside fit, before it logged a row or wrote a
    checkpoint, was marked failed: its folder still holds the completed run. One that trained a
    batch (and logged it) is failed."""
    run = tmp_path / "run"
    fail = [
        "+callbacks.fail._target_=tests.helpers.FailAt",
        f"+callbacks.fail.at={at}",
        "+callbacks.fail.epoch=1",
        "+callbacks.fail.batch=1",
        f"+callbacks.fail.marker={tmp_path / 'failed-once'}",
    ]
    hydra_train(*FAST, "trainer.log_every_n_steps=1", *fail)
    before, last = _record(run), (run / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(RuntimeError, match=f"FailAt: {at}"):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2", *fail)
    after = _record(run)
    assert after["status"] == status
    assert [a["outcome"] for a in after["attempts"]] == ["completed", "failed"]
    if status == "completed":
        kept = ("metrics", "error", "ended", "started", "seed")
        assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
        assert (run / "checkpoints" / "last.ckpt").read_bytes() == last


def _well_formed(run: Path) -> None:
    """Every line of metrics.csv is a whole row (a kill cuts the line it writes short)."""
    text = (run / "csv" / "metrics.csv").read_text()
    lines = text.splitlines()
    assert text.endswith("\n") and all(
        len(next(csv.reader([line]))) == len(lines[0].split(",")) for line in lines
    ), text


def _once(run: Path, column: str, count: int) -> None:
    steps = [step for step, _ in _rows(run, column)]
    assert len(steps) == len(set(steps)) == count, (column, steps)


def test_each_epochs_training_loss_is_logged_once_with_several_validations_an_epoch(
    hydra_train, tmp_path: Path
) -> None:
    """(n) With two validations an epoch (the study's setting), the checkpoint of an epoch's last
    validation precedes the epoch's end, which Lightning runs again on resume: the epoch's
    train/loss row, kept and logged again, was twice in metrics.csv after an epoch-end kill and
    after a continuation that trained nothing more, and the completed run was continued for
    nothing."""
    run = tmp_path / "run"
    hydra_train(*FAST, "trainer.val_check_interval=0.5", "trainer.log_every_n_steps=1")
    hydra_train("ckpt_path=last", "trainer.max_epochs=2")  # the log as an epoch-end kill leaves it
    _once(run, "train/loss", 2)
    with pytest.raises(RunFolderError, match="is already at 2 epochs"):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    # killed after its last checkpoint: the continuation trains nothing more
    (run / "run.json").write_text(json.dumps({**_record(run), "status": "running"}))
    hydra_train("ckpt_path=last")
    assert _record(run)["status"] == "completed"
    _once(run, "train/loss", 2)
    _once(run, "val/loss", 4)
    _well_formed(run)


def test_a_log_row_a_kill_cut_short_is_written_again_from_the_checkpoint(
    hydra_train, tmp_path: Path
) -> None:
    """(o) A kill while a validation's row was appended leaves the line cut short; cut before its
    step, the continuation was refused ("step=None is not a number") for a row the resumed run
    writes again."""
    run = tmp_path / "run"
    fail = [  # the second validation logged, its checkpoint not written: as a kill leaves it
        "+callbacks.fail._target_=tests.helpers.FailAt",
        "+callbacks.fail.at=validation_end",
        "+callbacks.fail.step=2",
        f"+callbacks.fail.marker={tmp_path / 'failed-once'}",
    ]
    twice = ["trainer.val_check_interval=0.5", "trainer.log_every_n_steps=1"]
    with pytest.raises(RuntimeError, match="FailAt: validation_end"):
        hydra_train(*FAST, *twice, *fail)
    metrics = run / "csv" / "metrics.csv"
    text = metrics.read_text()
    last = text.splitlines()[-1]
    assert last.split(",")[-1] and len(_rows(run, "val/loss")) == 2  # the second validation's row
    metrics.write_text(text[: text.rindex(last) + last.index(",") + 1])  # "0," of "0,,1,..."
    hydra_train("ckpt_path=last", *fail)
    _once(run, "val/loss", 2)
    _once(run, "train/loss", 1)
    _well_formed(run)


def test_a_log_cut_short_before_the_checkpoint_is_refused_naming_the_line(tmp_path: Path) -> None:
    """(p) A kill while Lightning rewrote the whole log in place (a new column) left it cut short
    inside the rows the checkpoint counted: the cut row was kept, its values and those of the rows
    after it lost without a word."""
    from segment.run.loggers.csv_logs import CSVLogger

    folder = tmp_path / "csv" / "version_0"
    folder.mkdir(parents=True)
    text = b"epoch,step,val/loss\r\n0,0,1.5\r\n0,1,1.2\r\n0,2,1."
    (folder / "metrics.csv").write_bytes(text)
    with pytest.raises(ValueError, match=r"metrics.csv, line 4 is cut short .* Delete that line"):
        CSVLogger(
            save_dir=str(tmp_path),
            name="csv",
            version="version_0",
            log_position={"rows": 5, "step": 4, "global_step": 5},
        )
    assert (folder / "metrics.csv").read_bytes() == text  # untouched


def test_a_kill_while_the_log_gains_a_column_keeps_its_rows(tmp_path: Path, monkeypatch) -> None:
    """(q) Lightning rewrites metrics.csv when a column appears (train/loss after an epoch's first
    validations), in place: a kill during the rewrite left it cut short, rows lost."""
    from segment.run.loggers.csv_logs import CSVLogger

    class Killed(BaseException):
        pass

    def killed(self, rows) -> None:
        raise Killed

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="version_0")
    for step, loss in enumerate((1.5, 1.2)):
        logger.log_metrics({"val/loss": loss}, step=step)
        logger.save()
    path = Path(logger.log_dir) / "metrics.csv"
    before = path.read_text()
    logger.log_metrics({"train/loss": 2.0}, step=1)
    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(Killed):
        logger.save()
    assert path.read_text() == before


def test_a_run_its_time_limit_ended_is_stopped_and_continued_not_skipped(
    hydra_train, tmp_path: Path
) -> None:
    """A trainer.max_time stop used to be recorded completed: skip_completed then skipped it."""
    limit = ["model=unet_lab", "scheduler=constant", "trainer.max_epochs=500"]
    hydra_train(*limit, "+trainer.max_time=00:00:00:03")
    record = _record(tmp_path / "run")
    assert (record["status"], record["error"]) == ("stopped", "stopped: max_time")
    assert record["attempts"][-1]["outcome"] == "stopped"
    hydra_train(*limit, "+trainer.max_time=00:00:00:03", "skip_completed=true")
    assert _record(tmp_path / "run")["attempts"][-1]["action"] == "continue"
