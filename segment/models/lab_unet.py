"""The lab study's two networks, rebuilt from its description: a small U-Net and a VGG16 U-Net.

Both map ``(B, 3, H, W)`` normalised images to ``(B, classes, H, W)`` logits and are driven by the
same :class:`~segment.models.SegmentationModule` as the smp U-Nets.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import vgg16

__all__ = ["LabUNet", "LabVGGUNet", "VGG16_STAGE_LAYERS"]


def _lab_double_conv(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """(3x3 conv with bias, BatchNorm, ReLU, Dropout2d) twice: the small U-Net's block."""
    layers: list[nn.Module] = []
    for channels_in in (in_channels, out_channels):
        layers += [
            nn.Conv2d(channels_in, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        ]
    return nn.Sequential(*layers)


class LabUNet(nn.Module):
    """The lab's small scratch U-Net: two poolings, 32/64/128 channels, transposed-conv upsampling.

    Five double-conv blocks (10 convolutions with bias, each followed by BatchNorm, ReLU and
    Dropout2d), then a 3x3 conv + BatchNorm + ReLU and a 1x1 conv head.

    Args:
        classes: Output channels (one logit per class).
        in_channels: Input channels.
        channels: Widths of the three levels.
        dropout: Dropout2d rate after every convolution of the blocks.
    """

    size_multiple = 4  # two poolings: input height and width must be multiples of 4

    def __init__(
        self,
        classes: int,
        in_channels: int = 3,
        channels: tuple[int, int, int] = (32, 64, 128),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = _lab_double_conv(in_channels, c1, dropout)
        self.down2 = _lab_double_conv(c1, c2, dropout)
        self.bottom = _lab_double_conv(c2, c3, dropout)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(c3, c2, kernel_size=2, stride=2)
        self.dec2 = _lab_double_conv(2 * c2, c2, dropout)
        self.up1 = nn.ConvTranspose2d(c2, c1, kernel_size=2, stride=2)
        self.dec1 = _lab_double_conv(2 * c1, c1, dropout)
        self.head = nn.Sequential(
            nn.Conv2d(c1, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` with H, W divisible by 4 -> ``(B, classes, H, W)`` logits."""
        skip1 = self.down1(x)
        skip2 = self.down2(self.pool(skip1))
        bottom = self.bottom(self.pool(skip2))
        x = self.dec2(torch.cat([self.up2(bottom), skip2], dim=1))
        x = self.dec1(torch.cat([self.up1(x), skip1], dim=1))
        return self.head(x)


# torchvision's VGG16 ``features`` indices of the four blocks the lab's VGG U-Net uses, each
# ending in its max-pool (conv5 is not used): conv1_x, conv2_x, conv3_x, conv4_x.
VGG16_STAGE_LAYERS = ((0, 5), (5, 10), (10, 17), (17, 24))


def _vgg16_encoder(frozen_blocks: int) -> nn.Module:
    """VGG16's first four blocks, the first ``frozen_blocks`` of them frozen; named like
    torchvision's (``features.<index>``), so ImageNet/HED state dicts load unchanged. Its weights
    come from the resolver (ImageNet or HED)."""
    encoder = nn.Module()
    encoder.features = vgg16(weights=None).features[:24]
    for block in range(frozen_blocks):
        start, end = VGG16_STAGE_LAYERS[block]
        for layer in list(encoder.features)[start:end]:
            layer.requires_grad_(False)
    return encoder


def _plain_double_conv(
    in_channels: int, out_channels: int, final_relu: bool = True
) -> nn.Sequential:
    """(3x3 conv, ReLU) twice, no BatchNorm: the VGG U-Net's decoder block."""
    layers = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
    ]
    if final_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LabVGGUNet(nn.Module):
    """The lab's VGG16 U-Net: torchvision VGG16 blocks 1-4 as the encoder, no BatchNorm anywhere.

    Encoder: VGG16 ``features[:24]``, four blocks (conv1_x ... conv4_x) each followed by its
    max-pool; the skips are taken before the pools; the first ``frozen_blocks`` blocks get no
    gradient. Bottleneck at 1/16: conv 512->1024, ReLU, Dropout(0.1), conv 1024->1024, ReLU.
    Decoder: transposed conv x2 + conv4 skip -> 512; bilinear x2 + conv3 -> 256; transposed conv x2
    + conv2 -> 128; bilinear x2 + conv1 -> 64 (each a double 3x3 conv + ReLU); then
    ConvTranspose(64->64, k2, s1) + ReLU, a bilinear resize back to the input size, and a final
    double conv 64->classes.

    The lab's final double conv ends in a ReLU, so its logits are never negative;
    ``final_relu=true`` keeps that (the faithful default), ``false`` is the corrected head.

    Args:
        classes: Output channels.
        frozen_blocks: Encoder blocks (from the input) that are not trained (the lab froze 2).
        final_relu: ReLU after the last convolution (see above).
        dropout: Dropout rate in the bottleneck.
        encoder_weights: Only None here: the net starts random. In a model config this key
            names the pretrained source (``imagenet``, ``hed``, a file), which
            :func:`segment.models.nets.build_net` resolves, records and loads into
            ``encoder.features`` (torchvision's VGG16 names), as for smp's VGG16 encoders.
    """

    size_multiple = 16  # four poolings

    def __init__(
        self,
        classes: int,
        frozen_blocks: int = 2,
        final_relu: bool = True,
        dropout: float = 0.1,
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        if encoder_weights is not None:
            raise ValueError(
                f"LabVGGUNet(encoder_weights={encoder_weights!r}): build it through "
                "SegmentationModule (model=unet_lab_vgg), which resolves and records the weights"
            )
        if not 0 <= frozen_blocks <= 4:
            raise ValueError(
                f"model.net.frozen_blocks={frozen_blocks}: the encoder has 4 blocks (0-4 frozen)"
            )
        self.encoder, self.frozen_blocks = _vgg16_encoder(frozen_blocks), frozen_blocks
        self.bottleneck = nn.Sequential(
            nn.Conv2d(512, 1024, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(1024, 1024, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.up4 = nn.ConvTranspose2d(1024, 1024, kernel_size=2, stride=2)
        self.dec4 = _plain_double_conv(1024 + 512, 512)
        self.dec3 = _plain_double_conv(512 + 256, 256)
        self.up2 = nn.ConvTranspose2d(256, 256, kernel_size=2, stride=2)
        self.dec2 = _plain_double_conv(256 + 128, 128)
        self.dec1 = _plain_double_conv(128 + 64, 64)
        self.refine = nn.Sequential(
            nn.ConvTranspose2d(64, 64, kernel_size=2, stride=1), nn.ReLU(inplace=True)
        )
        self.head = _plain_double_conv(64, classes, final_relu=final_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` with H, W divisible by 16 -> ``(B, classes, H, W)`` logits."""
        size = x.shape[-2:]
        skips = []
        for start, end in VGG16_STAGE_LAYERS:
            for layer in list(self.encoder.features)[start : end - 1]:
                x = layer(x)
            skips.append(x)  # before the block's pool
            x = self.encoder.features[end - 1](x)
        conv1, conv2, conv3, conv4 = skips
        x = self.bottleneck(x)
        x = self.dec4(torch.cat([self.up4(x), conv4], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.dec3(torch.cat([x, conv3], dim=1))
        x = self.dec2(torch.cat([self.up2(x), conv2], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.dec1(torch.cat([x, conv1], dim=1))
        x = F.interpolate(self.refine(x), size=size, mode="bilinear", align_corners=True)
        return self.head(x)
