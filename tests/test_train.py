"""End-to-end runs of the training pipeline, in-process and through train.py."""

from __future__ import annotations

import csv
import glob
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from segment.training import train
from tests.helpers import REPO, TINY_OVERRIDES, TINY_SYNTHETIC, run_script, sweep_jobs


@pytest.mark.parametrize("model", ["unet_scratch", "unet_lab", "unet_lab_vgg"])
def test_fast_dev_run(make_cfg, model: str) -> None:
    metrics = train(make_cfg(f"model={model}", "debug=fdr"))
    assert {"val/loss", "val/ce", "val/miou", "val/pixel_acc", "train/loss"} <= metrics.keys()


def test_fast_dev_run_of_the_pretrained_arm_loads_its_weights(make_cfg, tmp_path: Path) -> None:
    """unet_vgg with the weights it asks for (here a VGG16 file), not random ones: the pretrained
    path runs."""
    import json

    import torch
    from hydra.utils import instantiate
    from segmentation_models_pytorch.encoders import get_encoder

    from segment.data.synthetic import SYNTHETIC_INFO

    torch.manual_seed(3)  # a freshly initialised encoder: weights another than the model's own
    weights = get_encoder("vgg16", weights=None).state_dict()
    torch.save(weights, tmp_path / "vgg16.pth")
    cfg = make_cfg(
        "model=unet_vgg", "debug=fdr", f"model.net.encoder_weights={tmp_path / 'vgg16.pth'}"
    )
    model = instantiate(cfg.model, class_names=list(SYNTHETIC_INFO.class_names), ignore_index=255)
    torch.testing.assert_close(
        model.net.encoder.state_dict()["features.28.weight"], weights["features.28.weight"]
    )
    assert {"val/loss", "val/miou"} <= train(cfg).keys()
    used = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())["encoder_weights_used"]
    assert used["source"] == "file" and used["detail"] == str(tmp_path / "vgg16.pth")


def test_any_smp_architecture_and_encoder(make_cfg) -> None:
    metrics = train(
        make_cfg("model=smp", "model.net.arch=FPN", "model.net.encoder_name=resnet34", "debug=fdr")
    )
    assert "val/miou" in metrics


def test_a_misspelt_net_key_names_the_nearest_before_anything_is_built(
    make_cfg, monkeypatch
) -> None:
    def no_data(*args, **kwargs):
        raise AssertionError("data was touched")

    monkeypatch.setattr("segment.data.datamodule.SegmentationDataModule.__init__", no_data)
    with pytest.raises(
        ValueError,
        match=r"model.net.encoder_depthh: segmentation_models_pytorch.create_model has "
        r"no argument 'encoder_depthh'; did you mean encoder_depth",
    ):
        train(make_cfg("model=smp", "+model.net.encoder_depthh=5"))


def _epoch_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open() as handle:
        return [row for row in csv.DictReader(handle) if row.get("val/loss")]


@pytest.mark.slow
def test_overfit_one_batch_lowers_val_loss_and_fills_the_dashboards(
    make_cfg, tmp_path: Path
) -> None:
    cfg = make_cfg(
        "debug=overfit",
        "model=unet_lab",
        "trainer.max_epochs=2",
        "data.train_repeats=8",
        "callbacks.mask_images.every_n_epochs=1",
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)

    rows = _epoch_rows(run / "csv" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[1]["val/loss"]) < float(rows[0]["val/loss"])
    for name in ("val/miou", "val/pixel_acc", "train/loss", "lr", "val/iou/road"):
        assert name in rows[0], name

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"val/loss", "val/miou", "train/loss"} <= set(events.Tags()["scalars"])
    images = events.Images("val/masks")
    assert len(images) == 2  # after each epoch
    # input | truth | prediction, 4 rows, under a title band and above a class legend
    assert images[0].width == 3 * 96 and images[0].height > 4 * 64 + 18 + 16

    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("epoch") for name in checkpoints), checkpoints


@pytest.mark.slow
def test_train_script_writes_a_complete_run_folder(tmp_path: Path, data_dir: Path) -> None:
    result = run_script(
        [
            "train.py",
            "debug=limit",
            "model=unet_lab",  # the run folder is the point: the smallest net
            "trainer.max_epochs=1",
            *TINY_OVERRIDES,
            *TINY_SYNTHETIC,
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.data_dir={data_dir}",
        ],
        fresh=True,  # the path users take: a new interpreter, its imports included
    )
    runs = list((tmp_path / "logs" / "debug" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "csv" / "metrics.csv").is_file()
    assert f"Run folder: {run}" in result.stderr + result.stdout
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["data"]["image_size"] == [64, 96]


@pytest.mark.slow
def test_multirun_writes_one_folder_per_job(tmp_path: Path, data_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    run_script(
        [
            "train.py",
            "--multirun",
            "seed=0,1",
            "model=unet_lab",  # the smallest net: this is about folders and commands, not the net
            # the loader users get (data.num_workers: a worker process), not the tests' in-process
            # one
            *[o for o in TINY_OVERRIDES if not o.startswith("data.num_workers=")],
            *TINY_SYNTHETIC,
            "+trainer.limit_train_batches=1",
            "+trainer.limit_val_batches=1",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    jobs = sweep_jobs(sweep)
    assert sorted(jobs) == ["seed=0", "seed=1"]
    seeds = [
        yaml.safe_load((jobs[key] / ".hydra" / "config.yaml").read_text())["seed"]
        for key in sorted(jobs)
    ]
    assert seeds == [0, 1]
    # named after what the sweep varies and its config-group choices, [A-Za-z0-9._-] only: the
    # sweep's constant keys (batch size, image size, ...) are left out
    job = jobs["seed=0"]
    assert job.name == "model-unet_lab__seed-0"
    assert glob.glob(str(job)) == [str(job)]  # no character class, no wildcard

    # pasted unquoted through a shell into the next commands: evaluate a checkpoint, a folder,
    # continue the run
    for ckpt in (job / "checkpoints" / "last.ckpt", job):
        out = tmp_path / f"eval-{ckpt.name}"
        run_script(
            _as_bash_reads(
                f"evaluate.py ckpt_path={ckpt} hydra.run.dir={out} paths.data_dir={data_dir} "
                "num_sheets=0"
            )
        )
        assert json.loads((out / "metrics.json").read_text())["num_images"] == 4
    # continuing the completed run by its folder: it is found, and it is already that long
    done = run_script(_as_bash_reads(f"train.py hydra.run.dir={job} ckpt_path=last"), check=False)
    assert done.returncode == 1 and "is already at 1 epochs" in done.stderr, done.stderr[-2000:]
    record = json.loads((job / "run.json").read_text())
    assert [a["outcome"] for a in record["attempts"]] == ["completed", "refused"]
    assert record["status"] == "completed"
    assert record["attempts"][1]["overrides"] == ["ckpt_path=last"]  # typed; the rest: the folder


def _as_bash_reads(line: str) -> list[str]:
    """The words bash makes of ``line`` typed unquoted (after splitting, globbing and every other
    expansion)."""
    words = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {line}"], cwd=REPO, capture_output=True, check=True
    )
    return words.stdout.decode().split("\0")[:-1]


def test_test_after_fit_scores_the_test_split_and_the_summary_prints_it(
    make_cfg, tmp_path: Path, caplog
) -> None:
    from tests.layouts import write_camvid

    cfg = make_cfg("model=unet_lab", "test_after_fit=true", *write_camvid(tmp_path / "camvid"))
    with caplog.at_level("INFO", logger="segment"):
        metrics = train(cfg)
    assert {"test/loss", "test/miou", "test/pixel_acc"} <= metrics.keys()
    summary = next(
        r.getMessage() for r in caplog.records if r.getMessage().startswith("Run folder:")
    )
    assert re.search(rf"test/loss\s+{metrics['test/loss']:.4f}", summary)
    assert re.search(rf"test/miou\s+{metrics['test/miou']:.4f}", summary)
    record = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert record["metrics"]["test/loss"] == pytest.approx(metrics["test/loss"])


def _summary(caplog) -> dict[str, str]:
    text = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Run folder:"))
    return {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in text.splitlines()[1:]
        if ":" in line
    }


@pytest.mark.slow
def test_the_summary_prints_commands_that_run_as_printed(
    hydra_train, tmp_path: Path, caplog
) -> None:
    """``trainer.max_epochs=<more>`` made bash say "syntax error near unexpected token"; a path
    with a space is quoted."""
    run = tmp_path / "my run"
    with caplog.at_level("INFO", logger="segment"):
        hydra_train("model=unet_lab", "scheduler=constant", f"hydra.run.dir={run}")
    lines = _summary(caplog)
    assert lines["dashboards"] == f"tensorboard --logdir '{run}'"
    words = (
        subprocess.run(
            ["bash", "-c", f"printf '%s\\0' {lines['evaluate']}"], capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")[:-1]
    )
    assert words[0] == "segment-evaluate" and Path(words[1].split("=", 1)[1]).is_file()
    elsewhere = tmp_path / "elsewhere"  # printed commands run from any folder
    elsewhere.mkdir()
    paste = lambda line: subprocess.run(  # noqa: E731
        ["bash", "-c", line], cwd=elsewhere, capture_output=True, text=True, timeout=600
    )
    done = paste(lines["train longer"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert (
        yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    )
    # the same line pasted again: the run is already that long; said without a traceback
    again = paste(lines["train longer"])
    output = again.stdout + again.stderr
    assert again.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert "is already at 2 epochs: trainer.max_epochs=2 trains nothing more" in output
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_the_summary_names_each_loggers_viewer_and_no_command_without_a_checkpoint(
    hydra_train, tmp_path: Path, caplog, monkeypatch
) -> None:
    with caplog.at_level("INFO", logger="segment"):
        hydra_train("model=unet_lab", "debug=fdr", "logger=[tensorboard,csv]")
    lines = _summary(caplog)
    # fast_dev_run logs nothing and keeps no checkpoint: no viewer, no command
    assert not {"dashboards", "evaluate", "train longer"} & set(lines)
    caplog.clear()
    with caplog.at_level("INFO", logger="segment"):
        hydra_train("model=unet_lab", "logger=[csv,mlflow]", f"hydra.run.dir={tmp_path / 'ml'}")
    store = _summary(caplog)["dashboards"].removeprefix("mlflow ui --backend-store-uri sqlite:///")
    assert Path(store).is_absolute() and Path(store).is_file()  # opens from any folder
    caplog.clear()
    # W&B writes no TensorBoard folder: a wandb-only run used to print `tensorboard --logdir`
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "wandb run"
    import wandb

    try:
        with caplog.at_level("INFO", logger="segment"):
            hydra_train("model=unet_lab", "logger=wandb", f"hydra.run.dir={run}")
    finally:
        wandb.finish()
    lines = _summary(caplog)
    assert lines["dashboards"] == f"wandb sync '{run}'/wandb"
    assert "tensorboard" not in caplog.text


@pytest.mark.slow
def test_the_run_flow_benchmark_counts_what_a_fresh_run_enters_before_fit() -> None:
    """benchmarks/run_flow.py: the project functions a fresh run enters before ``fit``, by file;
    the driver, the run folder's claim and the build are among them, fit itself is not."""
    done = run_script(["benchmarks/run_flow.py"], timeout=600)
    head, *files = done.stdout.strip().splitlines()
    found = re.fullmatch(
        r"(\d+) project code objects in (\d+) files before Trainer.fit; "
        r"(\d+) named functions in (\d+) files",
        head,
    )
    assert found, done.stdout[-2000:]
    listed = {}  # file -> (count, the functions named)
    for line in files:
        path, text = line.strip().split(": ", 1)
        count, names = text.split("  ", 1)
        listed[path] = (int(count), set(names.strip("()").split(", ")))
    assert int(found[3]) == sum(count for count, _ in listed.values())
    assert int(found[4]) == len(listed)
    assert all(count == len(names) for count, names in listed.values())
    assert "train" in listed["segment/training.py"][1]
    assert "RunFolder.claim" in listed["segment/run/folder.py"][1]
    assert "build" in listed["segment/build.py"][1]
    assert not any("training_step" in name for _, names in listed.values() for name in names)
