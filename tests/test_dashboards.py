"""What a researcher sees: the HPARAMS table, the config tree, mask panels with titles and legends,
and every logger the extras install (TensorBoard, CSV, MLflow, Weights & Biases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from segment.data.labels import annotated
from segment.training import train
from tests.helpers import TINY_OVERRIDES, TINY_SYNTHETIC, run_script


def _hparams(run: Path) -> tuple[list[str], list[str], dict]:
    """The HPARAMS tab's columns of a run, as TensorBoard's server reads and orders them:
    hyperparameter names, metric tags, and the values."""
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.plugins.hparams import backend_context

    events = plugin_event_accumulator.EventAccumulator(
        str(run / "tensorboard")
    )  # what the server reads with
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    backend_context._sort_and_reduce_to_hparams_limit(experiment)  # the order the HPARAMS tab shows
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    values = {
        name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for name, value in start.hparams.items()
    }
    return (
        [h.name for h in experiment.hparam_infos],
        [m.name.tag for m in experiment.metric_infos],
        values,
    )


@pytest.mark.slow
def test_the_hparams_table_puts_the_overrides_first_each_key_once_with_scores(
    tmp_path: Path, data_dir: Path
) -> None:
    sweep = tmp_path / "sweep"
    run_script(
        [
            "train.py",
            "-m",
            "model=unet_lab",
            "seed=3,4",
            "model.optimizer.lr=0.002",
            "tags=[baseline,tiny]",
            *TINY_OVERRIDES,
            *TINY_SYNTHETIC,
            "trainer.max_epochs=2",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    [run] = [p for p in sweep.iterdir() if p.is_dir() and "seed-3" in p.name]
    names, metrics, values = _hparams(run)
    assert names[0] == "seed" and len(names) == len(
        set(names)
    )  # what the sweep varies first, each key once
    assert "lr" in names and not any(
        name.startswith(("model.optimizer", "data.", "trainer.")) for name in names
    )
    assert (
        values["lr"] == pytest.approx(0.002)
        and values["model"] == "unet_lab"
        and values["tags"] == "baseline,tiny"
    )
    assert values["encoder_weights"] == "none" and values["precision"] in ("bf16-mixed", "32-true")
    for kind in ("final", "best"):
        assert {f"{kind}/val/loss", f"{kind}/val/miou", f"{kind}/val/pixel_acc"} <= set(metrics)
    assert {"thresholds/val_loss<=1", "thresholds/val_miou>=0.3"} <= set(metrics)
    assert not any(tag.endswith(("/images_seen", "/seconds")) for tag in metrics)  # each level once
    # one TensorBoard run per job: every event file in the run's own folder, no sub-run
    files = list((run / "tensorboard").rglob("events.out.tfevents*"))
    assert files and {f.parent for f in files} == {run / "tensorboard"}
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "val/loss" in tags and "epoch" not in tags  # no single-point epoch card
    [final], [best] = events.Scalars("final/val/loss"), events.Scalars("best/val/loss")
    assert final.value == pytest.approx(
        json.loads((run / "run.json").read_text())["metrics"]["val/loss"]
    )
    assert best.value == pytest.approx(min(e.value for e in events.Scalars("val/loss")))
    assert final.step == best.step == events.Scalars("val/loss")[-1].step + 1
    assert json.loads((run / "run.json").read_text())["tags"] == ["baseline", "tiny"]


def test_a_mask_sheet_has_column_titles_and_a_class_legend() -> None:
    sheet = np.zeros((64, 3 * 96, 3), np.uint8)
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    out = annotated(sheet, ["input", "truth", "prediction"], ["road", "car", "sky"], palette)
    assert out.shape[1] == sheet.shape[1] and out.shape[0] > 64 + 30
    header, legend = out[:18], out[18 + 64 :]
    assert (header < 128).any() and (header == 255).mean() > 0.8  # dark title text on white
    for color in palette:  # one swatch per class
        assert (legend == color).all(axis=-1).sum() >= 100


def test_weights_and_biases_gets_masks_as_overlays_with_class_labels(
    monkeypatch, tmp_path: Path
) -> None:
    import wandb  # the dev extra installs it: a missing logger fails here rather than skipping

    from segment.run.loggers.wandb import WandbLogger

    logged = []

    class Run:
        def log(self, data):
            logged.append(data)

    monkeypatch.setattr(WandbLogger, "experiment", property(lambda self: Run()))
    images = np.zeros((2, 8, 8, 3), np.uint8)
    truths = np.zeros((2, 8, 8), np.int64)
    object.__new__(WandbLogger).log_masks(
        "val/masks",
        np.zeros((8, 24, 3), np.uint8),
        5,
        (images, truths, truths + 1, ["road", "car"]),
    )
    [entry] = logged
    assert entry["trainer/global_step"] == 5 and len(entry["val/masks"]) == 2
    overlay = entry["val/masks"][0]
    assert isinstance(overlay, wandb.Image) and set(overlay._masks) == {"prediction", "truth"}
    assert overlay._masks["prediction"]._val["class_labels"] == {0: "road", 1: "car"}


@pytest.mark.slow
def test_mlflow_logs_a_run_into_its_sqlite_store(make_cfg, tmp_path: Path) -> None:
    import mlflow

    logs = tmp_path / "logs"
    cfg = make_cfg(
        "model=unet_lab",
        "logger=[csv,mlflow]",
        f"paths.log_dir={logs}",
        "tags=[baseline,tiny]",
        "logger.mlflow.log_model=true",
        "trainer.max_epochs=2",
    )
    train(cfg)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{logs}/mlflow.db")
    [experiment] = [e for e in client.search_experiments() if e.name == "train"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["optimizer"] == "AdamW" and "val/loss" in run.data.metrics
    assert "final/val/loss" in run.data.metrics
    assert {"baseline", "tiny"} <= set(run.data.tags) and "tags" not in run.data.params
    [artifact] = [a.path for a in client.list_artifacts(run.info.run_id) if a.path == "config.yaml"]
    config = yaml.safe_load(open(client.download_artifacts(run.info.run_id, artifact)))
    assert config["model"]["optimizer"]["_target_"] == "torch.optim.AdamW"
    # log_model: the best checkpoint by val/loss under best/, the newest under latest/
    [best] = [a.path for a in client.list_artifacts(run.info.run_id, "best")]
    [latest] = [a.path for a in client.list_artifacts(run.info.run_id, "latest")]
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    kept = [p.name for p in checkpoints.glob("epoch*.ckpt")]
    assert [best] == [f"best/{name}" for name in kept] and latest == "latest/last.ckpt"
    uploaded = client.download_artifacts(run.info.run_id, best)
    assert Path(uploaded).read_bytes() == (checkpoints / kept[0]).read_bytes()


@pytest.mark.slow
def test_weights_and_biases_gets_the_config_the_tags_and_the_checkpoint_asked_for(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    """W&B got scalars and masks, but no config and no model."""
    import wandb
    from wandb.sdk.wandb_run import Run

    logged = []
    log_artifact = Run.log_artifact

    def spy(self, artifact, *args, **kwargs):
        logged.append((artifact.type, sorted(artifact.manifest.entries)))
        return log_artifact(self, artifact, *args, **kwargs)

    monkeypatch.setattr(Run, "log_artifact", spy)
    monkeypatch.setenv("WANDB_SILENT", "true")
    # Lightning refuses log_model in the logger's offline mode; W&B's own stays offline here
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(
        "model=unet_lab",
        "logger=wandb",
        "tags=[baseline,tiny]",
        "logger.wandb.offline=false",
        "logger.wandb.log_model=true",
    )
    try:
        train(cfg)
        run = wandb.run
        assert run.config["config"]["model"]["optimizer"]["_target_"] == "torch.optim.AdamW"
        assert {"baseline", "tiny"} <= set(run.tags)
        assert ("model", ["model.ckpt"]) in logged  # the checkpoint, as the logger's option says
    finally:
        wandb.finish()


def test_the_config_tree_is_printed_when_training_starts(make_cfg, capsys) -> None:
    train(make_cfg("model=unet_lab", "debug=fdr"))
    out = capsys.readouterr().out
    assert (
        "config" in out and "├── data" in out and "└── " in out and "_target_: segment.data" in out
    )


def test_a_logger_added_in_one_module_gets_the_masks_the_run_its_scores_and_its_folder(
    hydra_train, tmp_path: Path, caplog
) -> None:
    """tests.helpers.NotebookLogger and one override: no other file of the project names it. It
    gets the mask panel, the run's hyperparameters with its columns and tags, the final and best
    scores, its line in the summary, and its folder moved aside with the run when it is
    replaced."""
    notebook = [
        "+logger.notebook._target_=tests.helpers.NotebookLogger",
        "+logger.notebook.save_dir=${paths.output_dir}",
        "tags=[tiny]",
    ]
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="segment.training"):
        hydra_train(*notebook)
    written = (run / "notebook" / "notes.jsonl").read_text()
    notes = [json.loads(line) for line in written.splitlines()]
    kinds = {note["kind"]: note for note in notes}
    assert kinds["masks"]["tag"] == "val/masks" and kinds["masks"]["classes"]
    assert "final/val/loss" in kinds["run"]["columns"] and kinds["run"]["tags"] == ["tiny"]
    assert {"final/val/loss", "best/val/miou"} <= set(kinds["scores"]["scores"])
    assert f"dashboards:      cat {run / 'notebook' / 'notes.jsonl'}" in caplog.text
    hydra_train(*notebook, "overwrite=true")
    [archived] = (run / "archive").iterdir()
    assert (archived / "notebook" / "notes.jsonl").read_text() == written
