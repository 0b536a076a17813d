"""The threshold tracker on scripted loss curves, and the lab's small U-Net."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader

from segment.callbacks import ThresholdTracker
from segment.models import LabUNet
from segment.training import train


class _Scripted(LightningModule):
    """Logs a given val/loss and val/miou sequence, one value per epoch."""

    def __init__(self, losses: list[float], mious: list[float]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.losses, self.mious = losses, mious

    def training_step(self, batch, batch_idx):
        return (self.weight * batch["image"].float().mean()).sum()

    def validation_step(self, batch, batch_idx) -> None:
        self.log("val/loss", self.losses[self.current_epoch])
        self.log("val/miou", self.mious[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _run(tmp_path: Path, losses, mious, **tracker_args) -> tuple[ThresholdTracker, Trainer]:
    batches = [{"image": torch.ones(2, 3, 4, 4)} for _ in range(3)]  # 3 steps of 2 images per epoch
    tracker = ThresholdTracker(**tracker_args)
    trainer = Trainer(
        max_epochs=len(losses), default_root_dir=tmp_path, callbacks=[tracker], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    loader = DataLoader(batches, batch_size=None)
    trainer.fit(_Scripted(losses, mious), train_dataloaders=loader, val_dataloaders=loader)
    return tracker, trainer


def test_first_epochs_reached_are_recorded(tmp_path: Path) -> None:
    tracker, _ = _run(
        tmp_path, losses=[1.2, 0.9, 0.7, 0.8, 0.45], mious=[0.1, 0.35, 0.3, 0.55, 0.5],
        val_loss=[1.0, 0.7, 0.5], val_miou=[0.3, 0.5, 0.6],
    )  # fmt: skip
    epochs = {name: (point or {}).get("epoch") for name, point in tracker.reached.items()}
    # <= for the loss (0.7 counts at exactly 0.7), >= for mIoU; 0.6 mIoU is never reached
    assert epochs == {
        "val_loss<=1": 2, "val_loss<=0.7": 3, "val_loss<=0.5": 5,
        "val_miou>=0.3": 2, "val_miou>=0.5": 4, "val_miou>=0.6": None,
    }  # fmt: skip
    point = tracker.reached["val_loss<=0.7"]
    assert point["step"] == 9 and point["images_seen"] == 18 and point["value"] == pytest.approx(0.7)
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved["thresholds"]["val_miou>=0.6"] is None
    assert saved["thresholds"]["val_loss<=1"]["epoch"] == 2


def test_patience_credits_the_start_of_a_streak(tmp_path: Path) -> None:
    # 0.9 dips under 1.0 once, bounces back, then holds from epoch 4 on
    tracker, _ = _run(tmp_path, losses=[1.2, 0.9, 1.1, 0.95, 0.9, 0.8], mious=[0] * 6, val_loss=[1.0], val_miou=[],
                      patience=2)  # fmt: skip
    assert tracker.reached["val_loss<=1"]["epoch"] == 4
    tracker, _ = _run(tmp_path, losses=[1.2, 0.9, 1.1, 1.05], mious=[0] * 4, val_loss=[1.0], val_miou=[], patience=2)
    assert tracker.reached["val_loss<=1"] is None


def test_stop_when_reached_ends_training(tmp_path: Path) -> None:
    tracker, trainer = _run(
        tmp_path, losses=[1.2, 0.8, 0.6, 0.5, 0.4], mious=[0] * 5, val_loss=[1.0, 0.7], val_miou=[],
        stop_when_reached="val_loss<=0.7",
    )  # fmt: skip
    assert tracker.reached["val_loss<=0.7"]["epoch"] == 3
    assert trainer.current_epoch == 3  # three epochs ran, not five


def test_unknown_stop_threshold_is_named() -> None:
    with pytest.raises(ValueError, match=r"stop_when_reached='val_loss<=0.3'; expected one of \['val_loss<=1'"):
        ThresholdTracker(val_loss=[1.0], val_miou=[0.5], stop_when_reached="val_loss<=0.3")


def test_lab_unet_shapes_and_size() -> None:
    net = LabUNet(classes=11)
    assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 11, 64, 96)
    parameters = sum(p.numel() for p in net.parameters())
    assert 0.3e6 < parameters < 1.5e6, parameters  # small next to the 23.7 M of the VGG16 U-Net
    assert sum(isinstance(m, torch.nn.Dropout2d) for m in net.modules()) == 5


@pytest.mark.slow
def test_unet_lab_trains_through_train_py_and_writes_thresholds(make_cfg) -> None:
    cfg = make_cfg("model=unet_lab", "debug=limit", "trainer.max_epochs=2", "callbacks.thresholds.val_loss=[100.0]")
    metrics = train(cfg)
    assert metrics["val/loss"] < 100
    record = json.loads((Path(cfg.paths.output_dir) / "thresholds.json").read_text())
    assert record["thresholds"]["val_loss<=100"]["epoch"] == 1
