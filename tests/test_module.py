"""The LightningModule: normalisation, metrics, losses and checkpoint reloading."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segment.checkpoints import load_module
from segment.models import SegmentationModule
from segment.models.metrics import confusion_scores, iou_per_class

NAMES = ["road", "car", "pole", "sign"]


def _module(**overrides) -> SegmentationModule:
    config = dict(
        net={"_target_": "tests.helpers.TinyNet"},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        class_names=NAMES,
    )
    config.update(overrides)
    return SegmentationModule(**config)


def test_iou_from_a_hand_computed_confusion_matrix() -> None:
    # rows: truth, columns: prediction. Class 3 ("sign") is absent from both.
    confusion = torch.tensor([[8, 2, 0, 0], [1, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    confusion[2, 0] = 2  # class 2 ("pole") present in truth, never predicted
    iou = iou_per_class(confusion)
    assert iou[0].item() == pytest.approx(8 / (8 + 2 + 1 + 2))
    assert iou[1].item() == pytest.approx(3 / (3 + 1 + 2))
    assert iou[2].item() == 0.0
    assert math.isnan(iou[3].item())

    scores = confusion_scores(confusion, NAMES)
    # Absent classes are left out of the mean, not counted as 0 or 1.
    assert scores["miou"] == pytest.approx((8 / 13 + 3 / 6 + 0.0) / 3)
    assert scores["pixel_acc"] == pytest.approx(11 / 16)
    assert "iou/sign" not in scores and scores["iou/pole"] == 0.0


def test_forward_normalises_uint8_with_stored_buffers() -> None:
    module = _module(net={"_target_": "tests.helpers.Passthrough"}, channels_last=False)
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    mean, std = (
        torch.tensor(module.hparams.mean).view(1, 3, 1, 1),
        torch.tensor(module.hparams.std).view(1, 3, 1, 1),
    )
    expected = (images.float() / 255 - mean) / std
    torch.testing.assert_close(module(images), expected)
    assert {"scale", "shift"} <= set(module.state_dict())


def test_channels_last_changes_layout_not_values() -> None:
    torch.manual_seed(0)
    dense = _module(channels_last=False)
    nhwc = _module(channels_last=True)
    nhwc.load_state_dict(dense.state_dict())
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(nhwc(images), dense(images))
    assert nhwc.net.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_hparams_are_plain_containers() -> None:
    from omegaconf import OmegaConf

    module = _module(net=OmegaConf.create({"_target_": "tests.helpers.TinyNet"}))
    assert type(module.hparams.net) is dict
    assert module.hparams.class_names == NAMES


def test_from_checkpoint_never_downloads_encoder_weights(tmp_path, monkeypatch) -> None:
    """A checkpoint of a pretrained run rebuilds offline, with the trained weights."""
    smp_net = {
        "_target_": "segmentation_models_pytorch.Unet",
        "encoder_name": "vgg16",
        "encoder_weights": None,
    }
    trained = _module(net=smp_net)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01)
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams)}
    # As if trained with ImageNet weights: rebuilding from these hparams naively would download.
    checkpoint["hyper_parameters"]["net"] = {**smp_net, "encoder_weights": "imagenet"}
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr("segmentation_models_pytorch.encoders.hf_hub_download", no_network)
    restored = load_module(path)
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], tensor, msg=name)


def test_from_checkpoint_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"ckpt_path=.*missing.ckpt: no such checkpoint file"
    ):
        load_module(tmp_path / "missing.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(
        ValueError, match=r"other.pt is not a train.py checkpoint: it has no hyper_parameters"
    ):
        load_module(tmp_path / "other.pt")


def test_offline_imagenet_request_says_how_to_fix_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SEGMENT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    net = {
        "_target_": "segmentation_models_pytorch.Unet",
        "encoder_name": "vgg16",
        "encoder_weights": "imagenet",
    }
    with pytest.raises(
        RuntimeError, match=r"ImageNet VGG16 weights unavailable.*model.weights_fallback=true"
    ):
        _module(net=net, weights_fallback=False)


def test_other_smp_encoders_keep_smp_loading_with_a_clear_offline_error() -> None:
    net = {
        "_target_": "segmentation_models_pytorch.Unet",
        "encoder_name": "resnet18",
        "encoder_weights": "imagenet",
    }
    with pytest.raises(
        RuntimeError, match=r"could not obtain encoder weights 'imagenet' for 'resnet18'"
    ):
        _module(net=net)


def test_non_finite_loss_is_caught_at_the_next_check_with_its_step() -> None:
    module = _module(finite_check_every_n_steps=3)
    batch = {
        "image": torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
        "mask": torch.zeros(1, 4, 4, dtype=torch.long),
    }
    module.training_step(batch, 0)  # a finite loss, step 0
    good = float(module.finite.last_finite_loss)
    nn.init.constant_(module.net.conv.weight, float("nan"))
    module.training_step(
        batch, 1
    )  # step 0 again (no trainer: global_step stays 0) -> noted, not yet checked
    message = rf"non-finite training loss at epoch 1, step 0 \(last finite loss: {good:.6g}\)"
    with pytest.raises(FloatingPointError, match=message):
        module.on_validation_start()  # always checked before a validation (and its checkpoint)
    every_step = _module(finite_check_every_n_steps=1)
    nn.init.constant_(every_step.net.conv.weight, float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        every_step.training_step(batch, 0)


def test_validation_logs_plain_cross_entropy_whatever_the_loss() -> None:
    torch.manual_seed(0)
    batch = {
        "image": torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8),
        "mask": torch.randint(0, 4, (2, 8, 8)),
    }
    batch["mask"][:, :2] = 255
    ce = _module()
    dice = _module(
        loss={
            "_target_": "segment.models.SumOfLosses",
            "terms": [
                {"weight": 1.0, "loss": {"_target_": "segment.models.CrossEntropyLoss"}},
                {
                    "weight": 1.0,
                    "loss": {
                        "_target_": "segmentation_models_pytorch.losses.DiceLoss",
                        "mode": "multiclass",
                    },
                },
            ],
        }
    )
    dice.load_state_dict(ce.state_dict())
    for module in (ce, dice):
        module.validation_step(batch, 0)
    assert ce.val_scores.ce.compute() == pytest.approx(
        ce.val_scores.loss.compute().item(), rel=1e-6
    )  # CE: the same number
    assert dice.val_scores.ce.compute() == pytest.approx(
        ce.val_scores.ce.compute().item(), rel=1e-6
    )  # same weights, same CE
    assert (
        dice.val_scores.loss.compute() > dice.val_scores.ce.compute() + 0.01
    )  # the training loss adds the Dice term


def test_init_from_takes_a_checkpoints_weights_and_starts_afresh(make_cfg, tmp_path) -> None:
    """``model.init_from`` through the one build path: the module reads no checkpoint, the driver
    copies the weights in and records the path; a module given one itself refuses it."""
    from segment.build import build

    cfg = make_cfg("model=unet_lab", "trainer.precision=32-true")
    torch.manual_seed(0)
    source = build(cfg, logger=False).module
    path = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict(), "global_step": 120}, path)
    torch.manual_seed(1)
    fresh = build(cfg, logger=False).module
    torch.manual_seed(1)
    init = make_cfg("model=unet_lab", "trainer.precision=32-true", f"model.init_from={path}")
    assert init.model.init_from == str(path)
    started = build(init, logger=False).module
    for name, value in source.state_dict().items():
        torch.testing.assert_close(started.state_dict()[name], value)
    assert any(not torch.equal(fresh.state_dict()[n], v) for n, v in source.state_dict().items())
    assert started.hparams.init_from == str(path)  # recorded; the run starts at step 0
    with pytest.raises(ValueError, match=r"given to the module itself: it reads no checkpoint"):
        _module(init_from=str(path))


def test_a_schedule_over_null_total_steps_spans_this_runs_optimiser_steps(monkeypatch) -> None:
    from types import SimpleNamespace

    from lightning import LightningModule

    scheduler = {
        "scheduler": {
            "_target_": "segment.models.schedules.WarmupDecayLR",
            "_partial_": True,
            "total_steps": None,
            "warmup_steps": 2,
            "decay": "poly",
            "power": 1.0,
        },
        "interval": "step",
    }
    module = _module(scheduler=scheduler)
    trainer = SimpleNamespace(estimated_stepping_batches=10)  # what Lightning counts for the run
    monkeypatch.setattr(LightningModule, "trainer", property(lambda self: trainer))
    config = module.configure_optimizers()
    optimizer, lr = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr.step()
    # warmup over 2 steps, then a linear decay that reaches 0 exactly at the 10th step: the run's
    # end
    assert rates[2] == pytest.approx(0.1) and rates[9] == pytest.approx(0.1 / 8)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
