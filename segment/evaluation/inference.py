"""Full-resolution inference: padding, resizing, sliding windows and flip averaging."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from segment.models import SegmentationModule

__all__ = ["Predictor"]

_STRIDE = 32  # a U-Net with five poolings needs inputs divisible by 32


class Predictor:
    """Logits at the input's own size for any image size, batched.

    Modes, in order of precedence:

    - ``window`` ``(h, w)``: sliding-window inference with ``window_stride`` overlap, the
      logits of overlapping tiles averaged (for images much larger than the training crops);
    - ``input_size`` ``(h, w)``: resize the input, predict, resize the logits back
      bilinearly (then argmax) -- evaluation at the training resolution;
    - neither: pad to a multiple of 32 with the mean colour and crop the logits.

    Args:
        module: The trained module (put in eval mode here).
        precision: ``bf16-mixed`` for bf16 autocast, anything else for fp32.
        input_size: See above.
        window: See above.
        window_stride: Tile step; defaults to half the window.
        flip: Average the logits of the image and of its mirror image (test-time augmentation).
    """

    def __init__(
        self,
        module: SegmentationModule,
        precision: str = "32-true",
        input_size: Sequence[int] | None = None,
        window: Sequence[int] | None = None,
        window_stride: Sequence[int] | None = None,
        flip: bool = False,
    ) -> None:
        self.module = module.eval()
        self.device = next(module.parameters()).device
        self.precision = precision
        self.input_size = tuple(input_size) if input_size else None
        self.window = tuple(window) if window else None
        if self.window and any(s % _STRIDE for s in self.window):
            raise ValueError(f"sliding_window.size={list(self.window)} must be multiples of {_STRIDE}")
        self.window_stride = (
            tuple(window_stride)
            if window_stride
            else (tuple(max(1, s // 2) for s in self.window) if self.window else None)
        )
        self.flip = flip
        # The mean colour: padding with it normalises to ~0, the least surprising border.
        self.fill = [round(255 * m) for m in module.hparams.mean]

    def _autocast(self):
        if self.precision.startswith("bf16"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, C, H, W)`` float32 logits."""
        images = images.to(self.device, non_blocking=True)
        out = self._predict(images)
        if self.flip:
            out = (out + self._predict(images.flip(-1)).flip(-1)) / 2
        return out

    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        if self.window:
            return self._sliding(images)
        if self.input_size:
            resized = F.interpolate(images.float(), size=self.input_size, mode="bilinear", antialias=True)
            return F.interpolate(self._forward(resized), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self._padded(images)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.module(images).float()

    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % _STRIDE, -width % _STRIDE
        if pad_h or pad_w:
            canvas = torch.empty(
                (*images.shape[:2], height + pad_h, width + pad_w), dtype=images.dtype, device=images.device
            )
            canvas[:] = torch.tensor(self.fill, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            canvas[..., :height, :width] = images
            images = canvas
        return self._forward(images)[..., :height, :width]

    def _sliding(self, images: torch.Tensor) -> torch.Tensor:
        (wh, ww), (sh, sw) = self.window, self.window_stride
        height, width = images.shape[-2:]
        rows = sorted({*range(0, max(height - wh, 0) + 1, sh), max(height - wh, 0)})
        cols = sorted({*range(0, max(width - ww, 0) + 1, sw), max(width - ww, 0)})
        total, count = None, torch.zeros((1, 1, height, width), device=images.device)
        for top in rows:
            for left in cols:
                tile = images[..., top : top + wh, left : left + ww]
                logits = self._padded(tile)
                if total is None:
                    total = torch.zeros((images.shape[0], logits.shape[1], height, width), device=images.device)
                total[..., top : top + wh, left : left + ww] += logits
                count[..., top : top + wh, left : left + ww] += 1
        return total / count
