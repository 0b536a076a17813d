"""Every option of every config group composes and builds what it promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning import Callback, Trainer
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from segment.build import build_callbacks, instantiate_each
from segment.callbacks import HyperparameterTable
from segment.data import SegmentationDataModule
from segment.data.dataset import DatasetStatistics
from segment.data.synthetic import SYNTHETIC_INFO
from segment.device.precision import resolve_precision
from segment.models import SegmentationModule
from segment.models.losses import resolve_class_weights
from tests.helpers import CONF_DIR, TINY_SMP, run_script
from tests.layouts import WRITERS


def _options() -> list[tuple[str, str]]:
    pairs = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        if group != ".":
            pairs.append((group, path.stem))
    return pairs


OPTIONS = _options()
# Groups merged into their parent node are overridden under their package name.
OVERRIDE_NAME = {"data/loader": "data/loader@data"}


def test_every_group_has_options() -> None:
    groups = {group for group, _ in OPTIONS}
    expected = {
        "data",
        "data/transforms",
        "data/loader",
        "model",
        "loss",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
    }
    expected |= {"callbacks", "paths", "hydra", "experiment", "debug"}
    assert expected <= groups


def _build_model(cfg) -> SegmentationModule:
    """As train.py builds it: a class-weighting method in the loss is resolved from label counts
    first."""
    n = SYNTHETIC_INFO.num_classes
    counts = DatasetStatistics(
        pixels=np.arange(1, n + 1) * 100, image_pixels=np.full(n, 100 * n * n)
    )
    loss = resolve_class_weights(OmegaConf.to_container(cfg.model.loss, resolve=True), counts)
    return instantiate(
        cfg.model, class_names=list(SYNTHETIC_INFO.class_names), ignore_index=255, loss=loss
    )


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(make_cfg, tmp_path, group: str, option: str) -> None:
    if group == "data" and option in WRITERS:
        cfg = make_cfg(*WRITERS[option](tmp_path / option))
    elif group == "trainer":
        # The trainer options set their own accelerator; the tiny preset would force the CPU.
        cfg = make_cfg(f"{group}={option}", *TINY_SMP, tiny=False)
    elif group == "scheduler" and option.startswith("warmup_") and option != "warmup_constant":
        # a schedule over the run's steps needs a trainer to count them; give the count here
        cfg = make_cfg(
            f"scheduler={option}", "model.scheduler.scheduler.total_steps=200", "model=unet_lab"
        )
    elif group in (
        "loss",
        "optimizer",
        "scheduler",
    ):  # what they build does not depend on the net: the smallest
        cfg = make_cfg(f"{group}={option}", "model=unet_lab")
    else:
        cfg = make_cfg(f"{OVERRIDE_NAME.get(group, group)}={option}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves

    if group in ("data", "data/transforms", "data/loader"):
        datamodule: SegmentationDataModule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup("fit")
        batch = next(iter(datamodule.train_dataloader()))
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 64, 96)
        assert batch["mask"].dtype == torch.int64 and batch["mask"].shape[1:] == (64, 96)
    elif group in (
        "model",
        "loss",
        "optimizer",
        "scheduler",
        "protocol",
    ):  # one training step of what it builds
        model = _build_model(cfg)
        images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
        target = torch.randint(0, SYNTHETIC_INFO.num_classes, (2, 64, 96))
        target[:, :4] = 255  # ignored pixels
        logits = model(images)
        assert logits.shape == (2, SYNTHETIC_INFO.num_classes, 64, 96)
        loss = model.criterion(logits.float(), target)
        assert loss.ndim == 0 and torch.isfinite(loss)
        config = model.configure_optimizers()
        loss.backward()
        config["optimizer"].step()
        if "lr_scheduler" in config:
            scheduler = config["lr_scheduler"]["scheduler"]
            scheduler.step(loss.item()) if config["lr_scheduler"].get(
                "monitor"
            ) else scheduler.step()
    elif group == "measurement":  # the study's measuring builds: thresholds counted after 2
        callbacks = instantiate_each(cfg.callbacks)
        trainer = instantiate(
            cfg.trainer, callbacks=callbacks, precision="32-true"
        )  # "auto": resolved at fit
        assert any(getattr(cb, "patience", 0) == 2 for cb in callbacks)
        if option == "images":  # every 96 images, at most 11,040, in the tiny preset's batches of 4
            assert (trainer.val_check_interval, trainer.check_val_every_n_epoch) == (24, None)
            assert trainer.max_steps == 2760
        else:  # validations 4x per epoch
            assert trainer.val_check_interval == 0.25
    elif group == "callbacks":
        assert all(isinstance(cb, Callback) for cb in instantiate_each(cfg.get("callbacks")))
    elif group == "logger":
        loggers = instantiate_each(cfg.logger)
        assert loggers and all(isinstance(lg, Logger) for lg in loggers)
    elif group in ("trainer", "debug", "experiment"):
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            pytest.skip("trainer=gpu composes; building it needs a CUDA device")
        precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)[0]
        assert isinstance(instantiate(cfg.trainer, precision=precision), Trainer)
    else:  # paths, hydra: where a run writes, under the folder given
        assert str(cfg.paths.output_dir).startswith(str(tmp_path)) and cfg.paths.log_dir


def test_scratch_and_pretrained_differ_only_in_initialisation(make_cfg) -> None:
    scratch = OmegaConf.to_container(make_cfg("model=unet_scratch", tiny=False).model)
    pretrained = OmegaConf.to_container(make_cfg("model=unet_vgg", tiny=False).model)
    assert pretrained["net"].pop("encoder_weights") == "imagenet"
    assert scratch["net"].pop("encoder_weights") is None
    assert scratch == pretrained


def test_compare_pretraining_sweeps_all_three_models_over_seeds(make_cfg) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=["experiment=compare_pretraining"], return_hydra_config=True
        )
    params = cfg.hydra.sweeper.params
    assert params.model == "unet_lab,unet_scratch,unet_vgg"
    assert len(str(params.seed).split(",")) >= 3
    # the study's protocol: a rate that does not depend on the run's length, several validations
    # per epoch
    assert (
        cfg.model.scheduler.scheduler._target_.endswith("LinearLR")
        and cfg.model.scheduler.interval == "step"
    )
    assert cfg.trainer.val_check_interval == 0.25 and cfg.callbacks.thresholds.patience == 2
    assert set(cfg.study.comparisons) == {"pretraining", "architecture", "lab's comparison"}


def test_lab_protocols_train_each_network_as_the_lab_did(make_cfg) -> None:
    """What the lab's two recipes build: optimiser, rate, schedule, clipping, batch, input scaling,
    no augmentation."""
    small_cfg, vgg_cfg = make_cfg("protocol=lab_small"), make_cfg("protocol=lab_vgg")
    small, vgg = _build_model(small_cfg), _build_model(vgg_cfg)
    assert type(small.net).__name__ == "LabUNet" and type(vgg.net).__name__ == "LabVGGUNet"
    small_opt = small.configure_optimizers()
    assert isinstance(small_opt["optimizer"], torch.optim.AdamW)
    assert (
        small_opt["optimizer"].defaults["lr"] == 1e-4
        and small_opt["optimizer"].defaults["weight_decay"] == 1e-4
    )
    plateau = small_opt["lr_scheduler"]["scheduler"]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau) and (
        plateau.factor,
        plateau.patience,
    ) == (0.5, 5)
    vgg_opt = vgg.configure_optimizers()
    assert (
        type(vgg_opt["optimizer"]) is torch.optim.Adam
        and vgg_opt["optimizer"].defaults["lr"] == 1e-4
    )
    clips = [
        instantiate(cfg.trainer, precision="32-true").gradient_clip_val
        for cfg in (small_cfg, vgg_cfg)
    ]
    assert clips == [1.0, None]
    frozen = [p.requires_grad for p in vgg.net.parameters()]
    assert not all(frozen) and any(frozen)  # the first VGG blocks are frozen
    assert (
        small.scale.flatten().tolist() == pytest.approx([1 / 255] * 3) and not small.shift.any()
    )  # [0, 1]
    assert [
        make_cfg(f"protocol={p}", tiny=False).data.batch_size for p in ("lab_small", "lab_vgg")
    ] == [6, 4]
    for cfg in (
        small_cfg,
        vgg_cfg,
    ):  # no augmentation: a training sample is the same every time it is drawn
        data = instantiate(cfg.data)
        data.prepare_data()
        data.setup("fit")
        first, again = data.train_dataset[0], data.train_dataset[0]
        assert torch.equal(torch.as_tensor(first["image"]), torch.as_tensor(again["image"]))


def test_help_lists_config_groups() -> None:
    out = run_script(["train.py", "--help"]).stdout
    for group in (
        "data",
        "model",
        "loss",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "debug",
    ):
        assert f"\n{group}: " in out, f"group {group!r} missing from --help"
    assert "unet_scratch, unet_vgg" in out


class AnyCallbackWithParams(Callback):
    """A third-party callback whose arguments happen to share the runtime values' names."""

    def __init__(self, params: dict | None = None, run_config: str | None = None) -> None:
        self.params, self.run_config = params, run_config


def test_runtime_values_go_only_to_classes_that_ask_for_them(make_cfg) -> None:
    """The hyperparameter table and the resolved config used to reach any class with a parameter
    of that name."""
    cfg = make_cfg(f"+callbacks.other._target_={__name__}.AnyCallbackWithParams", "seed=3")
    built = build_callbacks(cfg, ["seed=3"], {})
    other = next(c for c in built if isinstance(c, AnyCallbackWithParams))
    table = next(c for c in built if isinstance(c, HyperparameterTable))
    assert other.params is None and other.run_config is None
    assert table.params["seed"] == 3 and "seed: 3" in table.config
