"""Every bad input we know of, through ``train()`` as train.py runs it: the error names the culprit.

Config mistakes must surface before any data is read: those cases point data.root at a folder that
does not exist, so reaching the data would raise a different error.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from segment.run.decision import RunFolderError
from segment.training import train
from tests.layouts import H, W, write_camvid, write_image, write_mask


def _nowhere(root: Path) -> list[str]:
    return ["data=camvid", f"data.root={root / 'nowhere'}"]


def _camvid(break_it: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        overrides = write_camvid(root)
        break_it(root)
        return overrides

    return setup


def _truncate_a_jpeg(root: Path) -> None:
    """A JPEG cut at half its bytes (a copy that stopped): libjpeg decodes the half it has."""
    png = root / "train" / "0001TP_000001.png"
    image = cv2.imread(str(png))
    png.unlink()
    jpeg = png.with_suffix(".jpg")
    cv2.imwrite(str(jpeg), image)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])


def _remove_split(root: Path) -> None:
    for mask in (root / "valannot").iterdir():
        mask.unlink()
    (root / "valannot").rmdir()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _text_checkpoint(root: Path) -> list[str]:
    (root / "notes.ckpt").write_text("epoch: 3\nnot a checkpoint\n")
    return [f"ckpt_path={root / 'notes.ckpt'}"]


def _random_checkpoint(root: Path) -> list[str]:
    (root / "noise.ckpt").write_bytes(random.Random(0).randbytes(3000))
    return [f"model.init_from={root / 'noise.ckpt'}"]


def _color_folder(root: Path, palette: str) -> list[str]:
    """A folder dataset with colour masks (red, green) and the given palette."""
    for split, count in (("Train", 2), ("Test", 1)):
        for i in range(count):
            write_image(root / "Images" / split / f"f{i}.png", seed=i)
            rgb = np.zeros((H, W, 3), np.uint8)
            rgb[:, : W // 2] = (255, 0, 0)
            rgb[:, W // 2 :] = (0, 255, 0)
            write_mask(root / "Masks" / split / f"f{i}.png", rgb)
    return [
        "data=folder",
        f"data.images_dir={root / 'Images' / 'Train'}",
        f"data.masks_dir={root / 'Masks' / 'Train'}",
        f"data.val_images_dir={root / 'Images' / 'Test'}",
        f"data.val_masks_dir={root / 'Masks' / 'Test'}",
        "data.class_names=[road,car,sky]",
        "data.mask_format=color",
        f"data.palette={palette}",
    ]


# (case, data setup -> overrides, more overrides, error type, message pattern)
CASES = [
    # config: misspelt, mistyped, unknown, inconsistent
    (
        "misspelt key",
        _nowhere,
        ["+trainer.max_epoch=3"],
        ValueError,
        r"trainer.max_epoch: lightning.pytorch.Trainer has no argument 'max_epoch'; did you mean "
        r"max_epochs",
    ),
    (
        "misspelt override",
        _nowhere,
        ["trainer.max_epoch=3"],
        Exception,
        r"Could not override 'trainer.max_epoch'",
    ),
    (
        "misspelt data key",
        _nowhere,
        ["+data.batch_sise=4"],
        ValueError,
        r"data.batch_sise: segment.data.CamVidDataModule has no argument 'batch_sise'; did you "
        r"mean "
        r"batch_size",
    ),
    (
        "wrong type",
        _nowhere,
        ["trainer.max_epochs=ten"],
        ValueError,
        r"trainer.max_epochs='ten': expected int or null",
    ),
    (
        "wrong type, nested",
        _nowhere,
        ["model.optimizer.lr=fast"],
        ValueError,
        r"model.optimizer.lr='fast': expected float",
    ),
    (
        "wrong top-level type",
        _nowhere,
        ["seed=abc"],
        Exception,
        r"Error merging override seed=abc",
    ),  # the cause says: could not be converted to Integer
    (
        "unknown model",
        _nowhere,
        ["model=unet_vgx"],
        Exception,
        r"Could not find 'model/unet_vgx'[\s\S]*unet_lab[\s\S]*unet_scratch[\s\S]*unet_vgg",
    ),
    (
        "unknown dataset",
        _nowhere,
        ["data=camvd"],
        Exception,
        r"Could not find 'data/camvd'[\s\S]*camvid",
    ),
    (
        "image size not a multiple of the net's",
        _camvid(lambda root: None),
        ["data.image_size=[100,128]"],
        Exception,
        r"data.image_size=\[100, 128\]: this net downsamples 32x, .* try data.image_size=\[128, "
        r"128\]",
    ),
    (
        "a learning rate of 0 (trains nothing)",
        _nowhere,
        ["model.optimizer.lr=0"],
        ValueError,
        r"model.optimizer.lr=0: must be above 0 \(0 trains nothing\)",
    ),
    (
        "a learning rate past float32",
        _nowhere,
        ["model.optimizer.lr=1e39"],
        ValueError,
        r"model.optimizer.lr=1e\+39: must be above 0 .* below 3.4e38",
    ),
    (
        "an image grid that is not whole batches",
        _nowhere,
        ["measurement=images", "scheduler=warmup_constant", "measurement.val_every_images=90"],
        ValueError,
        r"trainer.val_check_interval: measurement.val_every_images=90 is not a whole number of "
        r"optimiser steps: a step takes 4 images \(data.batch_size=4 x 1 device\(s\)\); give a "
        r"multiple of 4: measurement.val_every_images=88 or measurement.val_every_images=92",
    ),
    (
        "a cosine schedule over a run counted in steps",
        _nowhere,
        ["measurement=images", "trainer.max_epochs=-1"],
        ValueError,
        r"model.scheduler.scheduler.T_max=-1: the cosine schedule decays over 1 or more epochs "
        r".*scheduler=warmup_constant",
    ),
    (
        "a training subset of no images",
        _nowhere,
        ["data.train_size=0"],
        Exception,
        r"data.train_size=0: must be >= 1",
    ),
    (
        "zero epochs",
        _nowhere,
        ["trainer.max_epochs=0"],
        ValueError,
        r"trainer.max_epochs=0: trains \(or validates\) nothing and keeps no checkpoint",
    ),
    (
        "no validation",
        _nowhere,
        ["trainer.val_check_interval=0"],
        ValueError,
        r"trainer.val_check_interval=0: trains \(or validates\) nothing",
    ),
    (
        "no training batches",
        _nowhere,
        ["+trainer.limit_train_batches=0"],
        ValueError,
        r"trainer.limit_train_batches=0: trains \(or validates\) nothing",
    ),
    (
        "a truncated JPEG",
        _camvid(_truncate_a_jpeg),
        [],
        ValueError,
        r"1 of 3 camvid samples are unusable:\s+\S+0001TP_000001.jpg is a truncated JPEG \(no "
        r"end-of-image marker\)",
    ),
    (
        "classes given to the net",
        _nowhere,
        ["+model.net.classes=5"],
        ValueError,
        r"model.net.classes: the number of classes comes from the dataset",
    ),
    (
        "negative clipping",
        _nowhere,
        ["trainer.gradient_clip_val=-1"],
        ValueError,
        r"trainer.gradient_clip_val=-1: must be > 0",
    ),
    (
        "fp16 on a CPU",
        _nowhere,
        ["trainer.precision=16-mixed"],
        ValueError,
        r"trainer.precision=16-mixed cannot train on a CPU .* use trainer.precision=bf16-mixed or "
        r"32-true",
    ),
    (
        "half-precision weights on a CPU",
        _nowhere,
        ["trainer.precision=bf16-true"],
        ValueError,
        r"trainer.precision=bf16-true cannot train on a CPU",
    ),
    (
        "encoder rate without an encoder",
        _camvid(lambda root: None),
        ["model=unet_lab", "model.encoder_lr_mult=0.1"],
        Exception,
        r"model.encoder_lr_mult=0.1: LabUNet has no encoder",
    ),
    (
        "thresholds out of order",
        _nowhere,
        ["callbacks.thresholds.val_loss=[0.5,1.0]"],
        Exception,
        r"thresholds.val_loss=\[0.5, 1.0\]: must be strictly decreasing",
    ),
    (
        "unknown stop threshold",
        _nowhere,
        ['callbacks.thresholds.stop_when_reached="val_loss<=0.3"'],
        Exception,
        r"stop_when_reached='val_loss<=0.3'; expected one of",
    ),
    # checkpoints
    (
        "resume without a checkpoint",
        _camvid(lambda root: None),
        ["ckpt_path=last"],
        RuntimeError,
        r"ckpt_path=last: nothing to continue \(no run record, no checkpoint\). To continue a",
    ),
    (
        "missing checkpoint file",
        _camvid(lambda root: None),
        ["ckpt_path=/nowhere/x.ckpt"],
        FileNotFoundError,
        r"ckpt_path=/nowhere/x.ckpt: no such checkpoint file",
    ),
    (
        "missing init_from",
        _camvid(lambda root: None),
        ["model.init_from=/nowhere/x.ckpt"],
        Exception,
        r"model.init_from=/nowhere/x.ckpt: no such checkpoint file",
    ),
    # data
    (
        "missing dataset root",
        _nowhere,
        [],
        FileNotFoundError,
        r"CamVid not found at data.root=.*nowhere",
    ),
    (
        "missing split folder",
        _camvid(_remove_split),
        [],
        FileNotFoundError,
        r"folder not found: .*valannot",
    ),
    (
        "image without mask",
        _camvid(lambda root: write_image(root / "train" / "extra.png", seed=9)),
        [],
        ValueError,
        r"1 image\(s\) .*train without a mask: \['extra'\]",
    ),
    (
        "mask without image",
        _camvid(lambda root: (root / "val" / "0001TP_000001.png").unlink()),
        [],
        ValueError,
        r"1 mask\(s\) .*valannot without an image: \['0001TP_000001'\]",
    ),
    (
        "corrupt image",
        _camvid(lambda root: _truncate(root / "train" / "0001TP_000001.png")),
        [],
        ValueError,
        r"cannot read image .*0001TP_000001.png",
    ),
    (
        "mask of another size",
        _camvid(
            lambda root: write_mask(
                root / "trainannot" / "0001TP_000002.png", np.zeros((H, W + 5), np.uint8)
            )
        ),
        [],
        ValueError,
        r"mask .*0001TP_000002.png is 64x101 but its image .* is 64x96",
    ),
    (
        "undeclared label value",
        _camvid(
            lambda root: write_mask(
                root / "valannot" / "0001TP_000000.png", np.full((H, W), 17, np.uint8)
            )
        ),
        [],
        ValueError,
        r"0001TP_000000.png: mask values \[17\] are not classes of 'camvid'",
    ),
    # silent wrong data, refused
    (
        "a training subset larger than the split",
        _camvid(lambda root: None),
        ["data.train_size=50"],
        ValueError,
        r"data.train_size=50: the camvid training split has only \d+ samples; give "
        r"data.train_size <= \d+, or null for all",
    ),
    (
        "two files of one sample",
        _camvid(lambda root: write_image(root / "train" / "0001TP_000001.jpg", seed=5)),
        [],
        ValueError,
        r"0001TP_000001.jpg and .*0001TP_000001.png have the same name|"
        r"0001TP_000001.png and .*0001TP_000001.jpg have the same name",
    ),
    (
        "JPEG masks",
        _camvid(
            lambda root: (root / "trainannot" / "0001TP_000002.png").rename(
                root / "trainannot" / "0001TP_000002.jpg"
            )
        ),
        [],
        ValueError,
        r"1 mask\(s\) in .*trainannot are JPEG files, e.g. .*0001TP_000002.jpg: JPEG compression "
        r"changes label values",
    ),
    (
        "one colour for two classes",
        lambda root: _color_folder(root, "[[255,0,0],[0,255,0],[255,0,0]]"),
        [],
        Exception,
        r"data.palette: colour \[255, 0, 0\] is given to both 'road' and 'sky'",
    ),
    (
        "validation masks without a label",
        _camvid(
            lambda root: [
                write_mask(mask, np.full((H, W), 11, np.uint8))
                for mask in (root / "valannot").iterdir()
            ]
        ),
        [],
        ValueError,
        r"camvid: no validation mask has a labelled pixel \(every pixel is void, ignored\)",
    ),
    # unusable checkpoints, named, never unpickled
    (
        "text file as a checkpoint",
        lambda root: [*write_camvid(root), *_text_checkpoint(root)],
        [],
        ValueError,
        r"ckpt_path=.*notes.ckpt is not a checkpoint: not a torch archive",
    ),
    (
        "random bytes as init_from",
        lambda root: [*write_camvid(root), *_random_checkpoint(root)],
        [],
        Exception,
        r"model.init_from=.*noise.ckpt is not a checkpoint: not a torch archive",
    ),
]


@pytest.mark.parametrize(
    ("setup", "overrides", "error", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_fails_with_a_message_naming_it(
    make_cfg, tmp_path: Path, setup, overrides, error, message
) -> None:
    try:
        cfg = make_cfg(*setup(tmp_path / "data"), *overrides)
    except Exception as rejected:  # Hydra refuses it while composing: nothing ran
        assert isinstance(rejected, error) and re.search(message, str(rejected)), rejected
        return
    with pytest.raises(error, match=message):
        train(cfg)
    # train() ran: the failure is on record in the run folder, with its message
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["status"] == "failed" and re.search(message, saved["error"])


def test_unwritable_run_folder_is_named(make_cfg, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = make_cfg()
    cfg.paths.output_dir = str(blocker / "run")
    with pytest.raises(
        RunFolderError, match=r"cannot write to the run folder .*a_file/run: .* writable folder"
    ):
        train(cfg)
    assert blocker.read_text() == "not a folder"


def test_a_misspelt_key_is_named_with_the_nearest_one_with_or_without_a_plus() -> None:
    """Hydra says only "Key 'lrr' is not in struct"."""
    from tests.helpers import run_script

    done = run_script(["train.py", "model.optimizer.lrr=0.1"], check=False)
    assert done.returncode == 1
    assert "model.optimizer.lrr: did you mean model.optimizer.lr?" in done.stderr


@pytest.mark.parametrize(
    ("typed", "hint"),
    [
        ("model=unet_vg", "model=unet_vg: did you mean model=unet_vgg? (model options: "),
        ("modle=unet_vgg", "modle: did you mean model?"),
    ],
)
def test_a_misspelt_option_or_top_level_key_is_named_with_the_nearest_one(
    typed: str, hint: str
) -> None:
    from tests.helpers import run_script

    done = run_script(["train.py", typed], check=False)
    assert done.returncode == 1 and hint in done.stderr, done.stderr[-2000:]


def test_an_image_size_the_net_cannot_take_is_refused_before_any_image_is_read(
    hydra_train, tmp_path: Path
) -> None:
    """It was refused after the whole dataset had been rendered (357 s for CamVid at its size)."""
    data = tmp_path / "untouched"
    data.mkdir()
    with pytest.raises(
        ValueError,
        match=r"data.image_size=\[100, 130\]: this net downsamples 32x, so height and width must "
        r"be multiples of 32; try data.image_size=\[128, 160\]",
    ):
        hydra_train("model=unet_scratch", "data.image_size=[100,130]", f"paths.data_dir={data}")
    assert not any(data.iterdir())  # nothing rendered, nothing read


def test_a_gpu_trainer_without_a_gpu_and_evaluate_without_a_checkpoint_are_said_plainly(
    make_cfg, tmp_path: Path
) -> None:
    import torch
    from hydra import compose, initialize_config_dir

    from segment.config.compose import config_dir
    from segment.evaluating import run

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"accelerator=gpu \(trainer=gpu\) needs a CUDA GPU"):
            cfg = make_cfg("trainer=gpu")
            cfg.trainer.accelerator = "gpu"  # the tiny preset trains on the CPU
            train(cfg)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"paths.root_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"ckpt_path is required: the checkpoint to use"):
        run(cfg)
