"""The threshold tracker on scripted loss curves: the one crossing rule, shared with the study
report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader

from segment.callbacks import ThresholdTracker
from segment.training import train


class _Scripted(LightningModule):
    """Logs a given val/loss, val/miou (and val/ce) sequence, one value per validation."""

    def __init__(
        self, losses: list[float], mious: list[float], ce: list[float] | None = None
    ) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.losses, self.mious, self.ce = losses, mious, ce
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return (self.weight * batch["image"].float().mean()).sum()

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val/loss", self.losses[self.validations])
        self.log("val/miou", self.mious[self.validations])
        if self.ce is not None:
            self.log("val/ce", self.ce[self.validations])

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _run(
    tmp_path: Path,
    losses,
    mious,
    ce=None,
    steps: int = 3,
    val_every: int | None = None,
    epochs: int | None = None,
    across_epochs: bool = False,
    **tracker_args,
) -> tuple[ThresholdTracker, Trainer]:
    batches = [
        {"image": torch.ones(2, 3, 4, 4)} for _ in range(steps)
    ]  # `steps` steps of 2 images per epoch
    tracker = ThresholdTracker(**tracker_args)
    trainer = Trainer(
        max_epochs=epochs or len(losses),
        default_root_dir=tmp_path,
        callbacks=[tracker],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=val_every,
        # validation every `val_every` steps of the whole run, not of each epoch
        check_val_every_n_epoch=None if across_epochs else 1,
        accelerator="cpu",
    )
    loader = DataLoader(batches, batch_size=None)
    trainer.fit(_Scripted(losses, mious, ce), train_dataloaders=loader, val_dataloaders=loader)
    return tracker, trainer


def test_first_epochs_reached_are_recorded(tmp_path: Path) -> None:
    tracker, _ = _run(
        tmp_path,
        losses=[1.2, 0.9, 0.7, 0.8, 0.45],
        mious=[0.1, 0.35, 0.3, 0.55, 0.5],
        val_loss=[1.0, 0.7, 0.5],
        val_miou=[0.3, 0.5, 0.6],
    )
    epochs = {name: (point or {}).get("epoch") for name, point in tracker.reached.items()}
    # <= for the loss (0.7 counts at exactly 0.7), >= for mIoU; 0.6 mIoU is never reached
    assert epochs == {
        "val_loss<=1": 2,
        "val_loss<=0.7": 3,
        "val_loss<=0.5": 5,
        "val_miou>=0.3": 2,
        "val_miou>=0.5": 4,
        "val_miou>=0.6": None,
    }
    point = tracker.reached["val_loss<=0.7"]
    assert (
        point["step"] == 9 and point["images_seen"] == 18 and point["value"] == pytest.approx(0.7)
    )
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    by_name = {t["name"]: t for t in saved["thresholds"]}
    assert by_name["val_miou>=0.6"] == {
        "metric": "val/miou",
        "mode": "max",
        "level": 0.6,
        "name": "val_miou>=0.6",
        "reached": None,
    }
    assert (
        by_name["val_loss<=1"]["reached"]["epoch"] == 2
        and by_name["val_loss<=1"]["metric"] == "val/loss"
    )
    assert [row["epoch"] for row in saved["history"]] == [1, 2, 3, 4, 5]
    assert [row["val/loss"] for row in saved["history"]] == pytest.approx(
        [1.2, 0.9, 0.7, 0.8, 0.45]
    )
    assert all(0 < row["cpu_share"] for row in saved["history"])


def test_patience_credits_the_start_of_a_streak(tmp_path: Path) -> None:
    # 0.9 dips under 1.0 once, bounces back, then holds from epoch 4 on
    tracker, _ = _run(
        tmp_path,
        losses=[1.2, 0.9, 1.1, 0.95, 0.9, 0.8],
        mious=[0] * 6,
        val_loss=[1.0],
        val_miou=[],
        patience=2,
    )
    assert tracker.reached["val_loss<=1"]["epoch"] == 4
    tracker, _ = _run(
        tmp_path,
        losses=[1.2, 0.9, 1.1, 1.05],
        mious=[0] * 4,
        val_loss=[1.0],
        val_miou=[],
        patience=2,
    )
    assert tracker.reached["val_loss<=1"] is None


def test_stop_when_reached_ends_training(tmp_path: Path) -> None:
    tracker, trainer = _run(
        tmp_path,
        losses=[1.2, 0.8, 0.6, 0.5, 0.4],
        mious=[0] * 5,
        val_loss=[1.0, 0.7],
        val_miou=[],
        stop_when_reached="val_loss<=0.7",
    )
    assert tracker.reached["val_loss<=0.7"]["epoch"] == 3
    assert trainer.current_epoch == 3  # three epochs ran, not five


def test_unknown_stop_threshold_is_named() -> None:
    with pytest.raises(
        ValueError, match=r"stop_when_reached='val_loss<=0.3'; expected one of \['val_loss<=1'"
    ):
        ThresholdTracker(val_loss=[1.0], val_miou=[0.5], stop_when_reached="val_loss<=0.3")


def test_several_validations_per_epoch_give_fractional_epochs(tmp_path: Path) -> None:
    # 4 steps per epoch, validated every 2: epochs 0.5, 1.0, 1.5, 2.0; the loss dips at 1.0, holds
    # from 1.5
    tracker, _ = _run(
        tmp_path,
        losses=[1.2, 0.9, 1.1, 0.95, 0.9, 0.8],
        mious=[0] * 6,
        val_loss=[1.0],
        val_miou=[],
        patience=2,
        steps=4,
        val_every=2,
        epochs=3,
    )
    assert [row["epoch"] for row in tracker.history] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    point = tracker.reached["val_loss<=1"]
    assert (point["epoch"], point["step"], point["images_seen"]) == (2.0, 8, 16)


@pytest.mark.parametrize(
    ("val_every", "epochs"), [(12, [2.0, 4.0, 6.0]), (9, [1.5, 3.0, 4.5])], ids=["12", "9"]
)
def test_validation_every_n_steps_across_epochs_keeps_fractional_epochs_right(
    tmp_path: Path, val_every: int, epochs: list[float]
) -> None:
    """The image grid (measurement=images): 6 steps of 2 images per epoch, validated every
    `val_every` steps of the run, across epoch boundaries."""
    tracker, _ = _run(
        tmp_path,
        losses=[1.2, 0.9, 0.8],
        mious=[0] * 3,
        val_loss=[1.0],
        val_miou=[],
        steps=6,
        val_every=val_every,
        epochs=int(epochs[-1]) + 1,
        across_epochs=True,
    )
    steps = [val_every * (i + 1) for i in range(3)]
    assert [row["epoch"] for row in tracker.history] == epochs
    assert [row["step"] for row in tracker.history] == steps
    assert [row["images_seen"] for row in tracker.history] == [2 * step for step in steps]
    point = tracker.reached["val_loss<=1"]  # in epochs, steps and images alike
    assert (point["epoch"], point["step"], point["images_seen"]) == (
        epochs[1],
        steps[1],
        4 * val_every,
    )


def test_loss_thresholds_can_apply_to_plain_cross_entropy(tmp_path: Path) -> None:
    tracker, _ = _run(
        tmp_path,
        losses=[1.2, 0.9],
        mious=[0, 0],
        ce=[0.8, 0.6],
        val_loss=[0.7],
        val_miou=[],
        loss_metric="val/ce",
    )
    assert list(tracker.reached) == ["val_ce<=0.7"] and tracker.reached["val_ce<=0.7"]["epoch"] == 2
    with pytest.raises(ValueError, match=r"thresholds.loss_metric='val/dice'; expected one of"):
        ThresholdTracker(loss_metric="val/dice")


def test_the_tracker_and_the_report_credit_the_same_crossing(tmp_path: Path) -> None:
    """One rule: the report reads thresholds.json's history and crosses it with the tracker's own
    function."""
    from segment.analysis.runs import Run

    tracker, _ = _run(
        tmp_path,
        losses=[1.2, 0.9, 1.1, 0.95, 0.9, 0.8],
        mious=[0.1, 0.35, 0.2, 0.4, 0.45, 0.5],
        val_loss=[1.0, 0.9],
        val_miou=[0.3, 0.4],
        patience=2,
        steps=4,
        val_every=2,
        epochs=3,
    )
    history = json.loads((tmp_path / "thresholds.json").read_text())["history"]
    run = Run(tmp_path, {}, {}, {}, 0, "completed", validations=history, patience=2)
    for threshold in tracker.thresholds:
        crossing = run.crossing(threshold.metric, threshold.mode, threshold.level)
        point = tracker.reached[threshold.name]
        assert crossing.reached == (point is not None), threshold.name
        assert point is None or (crossing.time, crossing.step) == (point["epoch"], point["step"]), (
            threshold.name
        )


@pytest.mark.slow
def test_unet_lab_trains_through_train_py_and_writes_thresholds(make_cfg) -> None:
    cfg = make_cfg(
        "model=unet_lab",
        "debug=limit",
        "trainer.max_epochs=2",
        "callbacks.thresholds.val_loss=[100.0]",
    )
    metrics = train(cfg)
    assert metrics["val/loss"] < 100
    record = json.loads((Path(cfg.paths.output_dir) / "thresholds.json").read_text())
    [loss_100] = [t for t in record["thresholds"] if t["name"] == "val_loss<=100"]
    assert loss_100["reached"]["epoch"] == 1
