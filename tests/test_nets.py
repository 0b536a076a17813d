"""The lab's two networks as the lab built them, and what input sizes each net takes."""

from __future__ import annotations

import pytest
import torch
from segmentation_models_pytorch import Unet

from segment.models import LabUNet, LabVGGUNet
from segment.models.nets import size_multiple


def test_lab_unet_shapes_and_size() -> None:
    net = LabUNet(classes=11)
    assert net(torch.zeros(2, 3, 64, 96)).shape == (2, 11, 64, 96)
    parameters = sum(p.numel() for p in net.parameters())
    assert 0.3e6 < parameters < 1.5e6, parameters  # small next to the 23.7 M of the VGG16 U-Net
    # the lab's net: Dropout2d(0.3) after each of its 10 block convolutions, all with a bias
    assert sum(isinstance(m, torch.nn.Dropout2d) and m.p == 0.3 for m in net.modules()) == 10
    block_convs = [
        m
        for name, m in net.named_modules()
        if isinstance(m, torch.nn.Conv2d) and not name.startswith("head")
    ]
    assert len(block_convs) == 10 and all(conv.bias is not None for conv in block_convs)


def _training_gflop(net: torch.nn.Module, size: tuple[int, int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, *size)).sum().backward()
    return counter.get_total_flops() / 1e9


def test_lab_vgg_unet_is_the_lab_network() -> None:
    torch.manual_seed(0)
    net = LabVGGUNet(classes=11)
    logits = net(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, 11, 64, 96) and (logits >= 0).all()  # the lab's head ends in a ReLU
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    # blocks 1-2 (conv1_x, conv2_x) frozen, 3-4 trained, conv5 absent
    frozen = {name for name, p in net.encoder.named_parameters() if not p.requires_grad}
    assert frozen == {f"features.{i}.{kind}" for i in (0, 2, 5, 7) for kind in ("weight", "bias")}
    assert len(net.encoder.features) == 24
    # training cost per image as counted for the study (269 GFLOP at 192x256); FLOPs scale with
    # pixels
    assert _training_gflop(net, (64, 96)) * (192 * 256) / (64 * 96) == pytest.approx(269, rel=0.01)
    assert _training_gflop(LabUNet(classes=11), (64, 96)) * 8 == pytest.approx(31.4, rel=0.01)
    corrected = LabVGGUNet(classes=11, final_relu=False)
    assert (corrected(torch.randn(1, 3, 32, 32)) < 0).any()


def test_each_net_says_what_its_input_must_be_a_multiple_of() -> None:
    assert size_multiple(LabUNet(classes=3)) == 4 and size_multiple(LabVGGUNet(classes=3)) == 16
    assert size_multiple(Unet("vgg16", encoder_weights=None, classes=3)) == 32
    assert (
        size_multiple(
            Unet(
                "resnet18",
                encoder_weights=None,
                encoder_depth=3,
                classes=3,
                decoder_channels=(64, 32, 16),
            )
        )
        == 8
    )
    net = LabUNet(classes=3)
    assert net(torch.zeros(1, 3, 36, 44)).shape == (
        1,
        3,
        36,
        44,
    )  # multiples of 4 are enough for it
    with pytest.raises(RuntimeError):
        net(torch.zeros(1, 3, 34, 44))


@pytest.mark.parametrize(
    "config",
    [
        {"_target_": "segment.models.LabUNet"},
        {"_target_": "segment.models.LabVGGUNet", "encoder_weights": None},
        {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "vgg16"},
        {
            "_target_": "segmentation_models_pytorch.Unet",
            "encoder_depth": 4,
            "decoder_channels": [64, 32, 16, 8],
        },
        {"_target_": "segmentation_models_pytorch.FPN", "encoder_name": "resnet18"},
        {"_target_": "segmentation_models_pytorch.DeepLabV3", "encoder_name": "resnet18"},
    ],
    ids=["lab", "lab_vgg", "unet_vgg16", "unet_depth4", "fpn", "deeplabv3"],
)
def test_the_config_alone_tells_the_input_multiple_of_the_net_it_builds(config: dict) -> None:
    """The schema refuses an image size before any data is read, from the config alone: it must
    say what the built net says."""
    from hydra.utils import instantiate

    from segment.config.schema import input_multiple

    smp = config["_target_"].startswith("segmentation_models_pytorch")
    net = instantiate({**config, "classes": 3, **({"encoder_weights": None} if smp else {})})
    assert input_multiple(config) == size_multiple(net)
