"""Kill and resume, deterministic repeats, the non-finite guard, and sweeps that lose nothing."""

from __future__ import annotations

import csv
import json
import shlex
import signal
from importlib import metadata
from pathlib import Path

import pytest
import torch

from segment.analysis.report import main as report_main
from segment.training import train
from tests.helpers import TINY_OVERRIDES, TINY_SYNTHETIC, run_script

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
    """Overrides adding a callback that SIGKILLs the run once, at (epoch, batch)."""
    return [
        "+callbacks.kill._target_=tests.helpers.KillAt",
        f"+callbacks.kill.epoch={epoch}",
        f"+callbacks.kill.batch={batch}",
        f"+callbacks.kill.marker={folder / 'killed-once'}",
    ]


def _epoch_rows(run: Path) -> dict[int, dict[str, str]]:  # one validation per epoch
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


def _validation_rows(run: Path) -> dict[int, dict[str, str]]:
    """The validation rows of metrics.csv by global step; fails if a step appears twice."""
    rows: dict[int, dict[str, str]] = {}
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            if row.get("val/loss"):
                step = int(row["step"])
                assert step not in rows, f"step {step} logged twice in {run}"
                rows[step] = row
    return rows


@pytest.mark.slow
def test_killed_run_resumes_mid_epoch_with_loader_workers_and_matches_an_uninterrupted_run(
    tmp_path: Path, data_dir: Path
) -> None:
    """The defaults users get: a loader worker process (persistent), validation twice per epoch,
    last.ckpt after each; a SIGKILL after the first validation of epoch 2 loses only the batches
    since that validation."""
    common = [
        *(o for o in RESUMABLE if o != "data.num_workers=0"),
        "trainer.val_check_interval=0.5",
        f"paths.data_dir={data_dir}",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_script(["train.py", *common, f"hydra.run.dir={whole}"])

    kill = _kill_at(
        tmp_path, epoch=2, batch=4
    )  # 6 batches per epoch: validations after batches 3 and 6
    attempt = run_script(["train.py", *common, *kill, f"hydra.run.dir={killed}"], check=False)
    assert attempt.returncode == -9, attempt.stderr[-3000:]
    assert json.loads((killed / "run.json").read_text())["status"] == "running"
    assert sorted(_validation_rows(killed)) == [
        2,
        5,
        8,
        11,
        14,
    ]  # global step of each validation (0-based)
    last = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (
        2,
        15,
    )  # the validation mid-epoch 3, not the epoch's start

    # continued from the folder: the run's own overrides are saved in it; the kill callback's
    # _target_ is typed again (a saved _target_ outside the allow-list is refused), its marker keeps
    # it from killing twice
    resumed = run_script(["train.py", f"hydra.run.dir={killed}", "ckpt_path=last", *kill])
    output = resumed.stdout + resumed.stderr
    assert (
        f"continuing from {killed / 'checkpoints' / 'last.ckpt'}: epoch 2, global step 15" in output
    )

    # every validation exactly once, and bitwise the uninterrupted run's numbers
    assert _validation_rows(killed) == _validation_rows(whole)
    assert _epoch_metrics(killed) == _epoch_metrics(whole)
    record = json.loads((killed / "run.json").read_text())
    assert record["status"] == "completed" and record["attempts"][-1]["resumed_from"].endswith(
        "last.ckpt"
    )
    # the threshold record and the best checkpoint continued across the kill
    ours, theirs = (json.loads((run / "thresholds.json").read_text()) for run in (killed, whole))
    assert [h["epoch"] for h in ours["history"]] == [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]
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
    assert len(steps) == 8 and len(set(steps)) == 8


@pytest.mark.slow
def test_last_checkpoint_follows_every_validation_when_val_loss_gets_worse(
    make_cfg, tmp_path: Path
) -> None:
    """Gradient ascent: every validation is worse than the first, so no best checkpoint is written
    after it; last.ckpt still holds each validation's state (Lightning 2.6's save_last alone stopped
    at the first)."""
    seen: list[tuple[int, int, float]] = []
    cfg = make_cfg(
        "model=unet_lab",
        "optimizer=sgd",
        "+model.optimizer.maximize=true",
        "model.optimizer.lr=0.05",
        "trainer.max_epochs=3",
        "trainer.val_check_interval=0.5",
        "data.train_repeats=2",
        "+callbacks.spy._target_=tests.helpers.LastCheckpointSpy",
        f"+callbacks.spy.folder={tmp_path}",
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    history = json.loads((run / "thresholds.json").read_text())["history"]
    losses = [row["val/loss"] for row in history]
    assert losses == sorted(losses) and losses[0] < losses[-1]  # worse and worse
    seen = json.loads((tmp_path / "last_checkpoints.json").read_text())
    # after each validation, last.ckpt holds that validation's step (4 steps per epoch, 2
    # validations each)
    assert [step for step, _ in seen] == [row["step"] for row in history] == [2, 4, 6, 8, 10, 12]
    [best] = (run / "checkpoints").glob("epoch*.ckpt")
    assert best.name.startswith("epoch000-")  # the best stayed at the first validation


@pytest.mark.slow
def test_deterministic_runs_are_bitwise_identical(make_cfg, tmp_path: Path) -> None:
    results = []
    for name in ("first", "second"):
        cfg = make_cfg(
            *RESUMABLE[:-2], "trainer.max_epochs=2", "seed=3"
        )  # without train_repeats and seed=0
        cfg.paths.output_dir = str(tmp_path / name)
        results.append(train(cfg))
    assert results[0] == results[1]
    assert _epoch_metrics(tmp_path / "first") == _epoch_metrics(tmp_path / "second")
    record = json.loads((tmp_path / "first" / "run.json").read_text())
    assert record["versions"]["torch"] == metadata.version("torch")
    commit = record["attempts"][-1]["git"]["commit"]  # each attempt records the code it ran
    assert commit is None or len(commit) == 40


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    make_cfg, tmp_path: Path
) -> None:
    cfg = make_cfg(
        "model=unet_lab",
        "trainer.max_epochs=3",
        "+callbacks.poison._target_=tests.helpers.PoisonAt",
        "+callbacks.poison.epoch=1",
    )
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite training loss at epoch 2, step 2 \(last finite loss: \d",
    ):
        train(cfg)
    run = Path(cfg.paths.output_dir)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed" and "non-finite training loss" in record["error"]
    checkpoint = torch.load(
        run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert checkpoint["epoch"] == 0
    assert all(
        torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point()
    )


@pytest.mark.slow
def test_a_failing_job_spoils_no_other_and_a_rerun_skips_completed_jobs(
    tmp_path: Path, data_dir: Path, capsys
) -> None:
    sweep = tmp_path / "sweep"
    # job 1's learning rate is refused by the config check, before training
    command = [
        "train.py",
        "--multirun",
        "model=unet_lab",
        "model.optimizer.lr=0.001,nan",
        *TINY_OVERRIDES,
        *TINY_SYNTHETIC,
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}",
    ]
    first = run_script(command, check=False)
    assert first.returncode != 0  # Hydra reports the failed job after running all of them
    good, bad = (next(sweep.glob(f"*lr-{rate}*")) for rate in ("1e-3", "nan"))
    done, failed = (json.loads((job / "run.json").read_text()) for job in (good, bad))
    assert done["status"] == "completed" and "val/loss" in done["metrics"]
    message = "ConfigError: model.optimizer.lr=nan: must be above 0"
    assert failed["status"] == "failed" and failed["error"].startswith(message)
    assert not (bad / ".hydra").exists()  # refused before training: nothing but its record

    assert report_main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert f"| {bad.name} | 42 | failed | {message}" in report

    metrics = (good / "csv" / "metrics.csv").read_bytes()
    second = run_script([*command, "skip_completed=true"], check=False)
    assert "already completed; not training again" in second.stdout + second.stderr
    assert (good / "csv" / "metrics.csv").read_bytes() == metrics
    assert json.loads((good / "run.json").read_text())["status"] == "completed"
    assert json.loads((bad / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_continued_sweep_finds_its_jobs_under_their_older_names(
    tmp_path: Path, data_dir: Path
) -> None:
    """Job names left out a sweep's constants from one version on, so a sweep begun before (the
    committed study's ``image_size-128x160`` folders) and continued with skip_completed=true
    trained every job again into new folders."""
    sweep = tmp_path / "sweep"
    command = [
        "train.py",
        "--multirun",
        "model=unet_lab",
        "model.optimizer.lr=0.001",
        *TINY_OVERRIDES,
        *TINY_SYNTHETIC,
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}",
    ]
    run_script([*command, "seed=0"])
    [job] = [folder for folder in sweep.iterdir() if folder.is_dir()]
    older = job.rename(sweep / f"{job.name}__lr-1e-3__image_size-64x96")
    metrics = (older / "csv" / "metrics.csv").read_bytes()

    # extended: with the seed swept, its constants leave the names; seed 0 keeps its folder
    extended = run_script([*command, "seed=0,1", "skip_completed=true"])
    assert "already completed; not training again" in extended.stdout + extended.stderr
    assert (older / "csv" / "metrics.csv").read_bytes() == metrics
    jobs = sorted(folder.name for folder in sweep.iterdir() if folder.is_dir())
    assert len(jobs) == 2 and older.name in jobs, jobs
    [new] = [sweep / name for name in jobs if name != older.name]
    assert json.loads((new / "run.json").read_text())["seed"] == 1


@pytest.mark.slow
def test_skip_completed_continues_a_killed_run(tmp_path: Path, data_dir: Path) -> None:
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
    kill = _kill_at(tmp_path, epoch=1, batch=1)
    attempt = run_script([*common, *kill], check=False)
    assert attempt.returncode == -9
    rerun = run_script([*common, *kill, "skip_completed=true"])
    assert (
        f"continuing from {run / 'checkpoints' / 'last.ckpt'}: epoch "
        in rerun.stdout + rerun.stderr
    )
    assert sorted(_epoch_rows(run)) == [0, 1]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def _signal_at(folder: Path, epoch: int, batch: int, name: str, group: bool) -> list[str]:
    return [
        "+callbacks.stop._target_=tests.helpers.SignalAt",
        f"+callbacks.stop.epoch={epoch}",
        f"+callbacks.stop.batch={batch}",
        f"+callbacks.stop.marker={folder / 'signalled-once'}",
        f"+callbacks.stop.signal={name}",
        f"+callbacks.stop.group={str(group).lower()}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "group"),
    [("SIGTERM", True), ("SIGTERM", False), ("SIGINT", False)],
    ids=["SIGTERM to the process group", "SIGTERM to the training process", "SIGINT"],
)
def test_an_interrupted_run_is_recorded_as_such_and_continued(
    tmp_path: Path, data_dir: Path, name: str, group: bool
) -> None:
    """With loader workers (the default), a signal mid-epoch: exit 128 + signal, run.json says
    interrupted (with the signal), last.ckpt holds the last validation, and skip_completed continues
    the run to completion (once, for the cluster's preemption: the continuation reads the record,
    which is the same whichever signal wrote it)."""
    run = tmp_path / "run"
    common = [
        "train.py",
        *(o for o in RESUMABLE if o != "data.num_workers=0"),
        "trainer.max_epochs=2",
        "trainer.val_check_interval=0.5",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
        *_signal_at(tmp_path, epoch=1, batch=4, name=name, group=group),
    ]
    attempt = run_script(
        common, check=False
    )  # in a session of its own: the group signal reaches no test
    number = int(getattr(signal, name))
    assert attempt.returncode == 128 + number, attempt.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted" and record["error"] == f"interrupted by {name}"
    assert record["attempts"][-1]["signal"] == name
    # the command that continues it, as printed: the folder by its absolute path
    output = attempt.stdout + attempt.stderr
    assert f"Continue it: segment-train hydra.run.dir={run} ckpt_path=last" in output
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 9  # the validation after batch 3 of epoch 2 (6 batches per epoch)
    if group:
        run_script(
            [*common, "skip_completed=true"]
        )  # its marker keeps the callback from signalling twice
        record = json.loads((run / "run.json").read_text())
        assert record["status"] == "completed"
        assert [a["outcome"] for a in record["attempts"]] == ["interrupted", "completed"]


@pytest.mark.slow
def test_an_interrupted_sweep_stops_and_names_the_jobs_it_did_not_complete(
    tmp_path: Path, data_dir: Path
) -> None:
    sweep = tmp_path / "sweep"
    command = [
        "train.py",
        "-m",
        "seed=0,1",
        "model=unet_lab",
        *TINY_OVERRIDES,
        *TINY_SYNTHETIC,
        "trainer.max_epochs=2",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep}",
        *_signal_at(tmp_path, epoch=1, batch=0, name="SIGTERM", group=False),
    ]
    attempt = run_script(command, check=False)
    assert attempt.returncode == 128 + int(signal.SIGTERM)
    output = attempt.stdout + attempt.stderr
    [started] = [p.name for p in sweep.iterdir() if p.is_dir()]  # the second job never started
    assert (
        f"interrupted by SIGTERM: the sweep stops; 2 job(s) not completed: {started}, "
        "model-unet_lab__seed-1." in output
    )
    # the command it prints continues the sweep in its folder, as printed (bash's words)
    [printed] = [
        line.split("Continue it: ")[1] for line in output.splitlines() if "Continue it" in line
    ]
    words = shlex.split(printed)
    assert words[0] == "segment-train" and words[-2:] == [
        f"hydra.sweep.dir={sweep}",
        "skip_completed=true",
    ]
    run_script(["train.py", *words[1:]])
    jobs = [p for p in sweep.iterdir() if p.is_dir()]
    assert len(jobs) == 2 and all(
        json.loads((job / "run.json").read_text())["status"] == "completed" for job in jobs
    )
