"""The lab study's small scratch U-Net, rebuilt from its description (the architecture baseline)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LabUNet"]


def _double_conv(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """(3x3 conv, BatchNorm, ReLU) twice, then Dropout2d."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
    )


class LabUNet(nn.Module):
    """Two pooling levels, 32/64/128 channels, transposed-conv upsampling, a conv + 1x1 head.

    Args:
        classes: Output channels (one logit per class).
        in_channels: Input channels.
        channels: Widths of the three levels.
        dropout: Dropout2d rate after every double convolution.
    """

    def __init__(
        self, classes: int, in_channels: int = 3, channels: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.3
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.down1 = _double_conv(in_channels, c1, dropout)
        self.down2 = _double_conv(c1, c2, dropout)
        self.bottom = _double_conv(c2, c3, dropout)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(c3, c2, kernel_size=2, stride=2)
        self.dec2 = _double_conv(2 * c2, c2, dropout)
        self.up1 = nn.ConvTranspose2d(c2, c1, kernel_size=2, stride=2)
        self.dec1 = _double_conv(2 * c1, c1, dropout)
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
