"""HED's edge network rebuilt in PyTorch from the converted weights: the proof that the conversion
is right."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class HEDNet(nn.Module):
    """HED's edge network rebuilt in PyTorch, to prove the conversion right.

    VGG16's 13 convolutions, a 1x1 side output after each block (upsampled bilinearly to the input
    size) and a 1x1 fusion of the five. Input: Caffe preprocessing (BGR minus
    :data:`CAFFE_MEAN_BGR`), ``(B, 3, H, W)`` with H, W multiples of 16.
    """

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        self.encoder = get_encoder("vgg16", weights=None)
        self.encoder.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in (64, 128, 256, 512, 512))
        self.fuse = nn.Conv2d(5, 1, 1)
        for k, side in enumerate(self.sides, start=1):
            side.weight.data, side.bias.data = state[f"dsn{k}.weight"], state[f"dsn{k}.bias"]
        self.fuse.weight.data, self.fuse.bias.data = state["fuse.weight"], state["fuse.bias"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Edge probability ``(B, 1, H, W)`` in ``[0, 1]``."""
        size = x.shape[-2:]
        features, outputs = x, []
        for layer in self.encoder.features[:-1]:  # HED stops before VGG's fifth pooling
            if isinstance(layer, nn.MaxPool2d):
                outputs.append(features)
            features = layer(features)
        outputs.append(features)
        sides = [
            nn.functional.interpolate(side(f), size=size, mode="bilinear", align_corners=False)
            for side, f in zip(self.sides, outputs, strict=True)
        ]
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))
