"""Scaling out on existing engines: DDP on 2 CPU processes, joblib and submitit launchers,
Optuna."""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning import Trainer

from segment.checkpoints import load_module
from tests.helpers import CONF_DIR, TINY_OVERRIDES, TINY_SYNTHETIC, run_script, sweep_jobs

FAST = ["model=unet_lab", *TINY_OVERRIDES, *TINY_SYNTHETIC]
# The launchers and DDP run with the loader users get (data.num_workers: 1 worker process), not the
# tests' in-process loading: a DataLoader worker inside a launcher's worker is what used to fail.
DEFAULT_LOADER = [o for o in FAST if not o.startswith("data.num_workers=")]


def _last_val_row(run: Path) -> dict[str, str]:
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("val/loss")][-1]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_one_run_folder_with_synced_metrics(
    make_cfg, tmp_path: Path, data_dir: Path
) -> None:
    logs = tmp_path / "logs"
    run_script(
        [
            "train.py",
            "trainer=ddp",
            "trainer.devices=2",
            *DEFAULT_LOADER,
            f"paths.data_dir={data_dir}",
            f"paths.log_dir={logs}",
        ],
        timeout=600,
    )
    runs = list((logs / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # no folder per rank
    run = runs[0]
    assert len(list(logs.rglob("thresholds.json"))) == 1 and len(list(logs.rglob("run.json"))) == 1
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert config["trainer"]["strategy"]["_target_"].endswith("DDPStrategy")

    # the validation metrics DDP logged (each rank saw half the set) = one process validating the
    # same weights
    logged = _last_val_row(run)
    module = load_module(run / "checkpoints" / "last.ckpt")
    datamodule = instantiate(make_cfg(*FAST).data)
    precision = config["trainer"]["precision"]  # resolved: what ran
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    [single] = trainer.validate(module, datamodule=datamodule, verbose=False)
    for name in ("val/loss", "val/miou", "val/pixel_acc"):
        assert float(logged[name]) == pytest.approx(single[name], rel=1e-3, abs=1e-4), name


def _interval(run: Path) -> tuple[datetime, datetime]:
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed"
    return datetime.fromisoformat(record["started"]), datetime.fromisoformat(record["ended"])


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_at_once(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    longer = [
        o for o in DEFAULT_LOADER if not o.startswith("trainer.max_epochs=")
    ]  # jobs of seconds, not one
    run_script(
        [
            "train.py",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "seed=0,1",
            *longer,
            "trainer.max_epochs=4",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=600,
    )
    jobs = sweep_jobs(sweep)
    assert sorted(jobs) == ["seed=0", "seed=1"]
    (start0, end0), (start1, end1) = _interval(jobs["seed=0"]), _interval(jobs["seed=1"])
    assert start1 < end0 and start0 < end1  # the two jobs overlapped in time
    pids = {
        json.loads((job / "run.json").read_text())["attempts"][-1]["pid"] for job in jobs.values()
    }
    assert len(pids) == 2


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            [],
            ["--nodes=1", "--gpus-per-node=1", "--ntasks-per-node=1"],
        ),  # the README row, as written
        (
            ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            ["--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4"],
        ),
    ],
)
def test_the_slurm_launcher_submits_what_the_config_asks(
    tmp_path: Path, monkeypatch, overrides, expected
) -> None:
    """The launcher as Hydra runs it, up to ``sbatch`` (a stand-in that keeps the script it was
    given)."""
    import submitit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\necho "Submitted batch job 4242"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that it exists
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(submitit.Job, "results", lambda self: [None])  # no cluster to wait for
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        slurm = [
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ]
        cfg = compose("train", overrides=[*slurm, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        launcher = instantiate(cfg.hydra.launcher)
        launcher.config, launcher.task_function, launcher.hydra_context = cfg, None, None
        launcher.launch([["seed=0"]], initial_job_idx=0)
    finally:
        HydraConfig.instance().cfg = None  # in-process runs of later tests must not see this config
    script = (tmp_path / "job.sh").read_text()
    for line in [*expected, "--partition=gpu", "--time=240", "--cpus-per-task=8", "--mem=64GB"]:
        assert f"#SBATCH {line}\n" in script, (line, script)


@pytest.mark.slow
def test_submitit_local_executor_runs_a_job(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    run_script(
        [
            "train.py",
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            *DEFAULT_LOADER,
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=600,
    )
    [job] = sweep_jobs(sweep).values()
    _interval(job)
    assert list((sweep / ".submitit").rglob("*_result.pkl"))


@pytest.mark.slow
def test_optuna_search_runs_three_trials_and_reports_the_best(
    tmp_path: Path, data_dir: Path
) -> None:
    sweep = tmp_path / "sweep"
    # a batch size on the command line would take it out of the search; 32 images: 2 batches of 16
    searched = [o for o in FAST if not o.startswith("data.batch_size=")] + ["data.num_train=32"]
    run_script(
        [
            "train.py",
            "-m",
            "hparams_search=optuna_lr",
            "hydra.sweeper.n_trials=3",
            *searched,
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=600,
    )
    trials = sorted(p.name for p in sweep.iterdir() if (p / "run.json").is_file())
    assert len(trials) == 3, (
        trials
    )  # one folder per trial, named after its learning rate and batch size
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    mious = [
        json.loads((sweep / t / "run.json").read_text())["metrics"]["val/miou"] for t in trials
    ]
    assert results["best_value"] == pytest.approx(max(mious))
    assert set(results["best_params"]) == {"model.optimizer.lr", "data.batch_size"}
    batch_sizes = {
        yaml.safe_load((sweep / t / ".hydra" / "config.yaml").read_text())["data"]["batch_size"]
        for t in trials
    }
    assert batch_sizes <= {4, 8, 16}


@pytest.mark.slow
def test_optuna_search_goes_on_past_a_diverged_trial_and_a_repeated_one(
    tmp_path: Path, data_dir: Path
) -> None:
    """A NaN metric, or a configuration proposed twice (its folder then held a completed run),
    used to end the whole search at that trial."""
    sweep = tmp_path / "sweep"
    searched = [o for o in FAST if not o.startswith("data.batch_size=")] + ["data.num_train=8"]
    run_script(
        [
            "train.py",
            "-m",
            "hparams_search=optuna_lr",
            "hydra.sweeper.n_trials=4",
            "optimized_metric=val/loss",
            "hydra.sweeper.direction=minimize",
            'hydra.sweeper.params={model.optimizer.lr:"choice(0.001,1e20)",'
            'data.batch_size:"choice(8)"}',
            *searched,
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=600,
    )
    trials = [p for p in sweep.iterdir() if (p / "run.json").is_file()]
    records = [json.loads((t / "run.json").read_text()) for t in trials]
    losses = [r["metrics"].get("val/loss", math.nan) for r in records]  # a failed trial: none
    assert len(trials) == 2 and sum(not math.isfinite(loss) for loss in losses) == 1, records
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["model.optimizer.lr"] == 0.001
