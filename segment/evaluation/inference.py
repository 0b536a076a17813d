"""Full-resolution inference: padding, resizing, sliding windows and flip averaging."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from segment.models import SegmentationModule

__all__ = ["Predictor"]


class Predictor:
    """Logits at the input's own size for any image size, batched.

    Modes, in order of precedence:

    - ``window`` ``(h, w)``: sliding-window inference with ``window_stride`` overlap, the
      logits of overlapping tiles averaged (for images much larger than the training crops);
    - ``input_size`` ``(h, w)``: resize the input, predict, resize the logits back
      bilinearly (then argmax) -- evaluation at the training resolution;
    - neither: pad to a multiple of the net's downsampling with the mean colour and crop the logits.

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
        self.multiple = module.size_multiple
        self.input_size = _size("input_size", input_size, self.multiple)
        self.window = _size("sliding_window.size", window, self.multiple)
        if window_stride is not None and self.window is None:
            raise ValueError("sliding_window.stride needs sliding_window.size")
        if window_stride is not None:
            stride = tuple(int(v) for v in window_stride)
            if len(stride) != 2 or any(
                v < 1 or v > w for v, w in zip(stride, self.window, strict=False)
            ):
                raise ValueError(
                    f"sliding_window.stride={list(window_stride)}: two steps between 1 and the "
                    f"window size {list(self.window)}, e.g. stride: "
                    f"{[w // 2 for w in self.window]} (half-window overlap)"
                )
            self.window_stride = stride
        else:
            self.window_stride = tuple(max(1, s // 2) for s in self.window) if self.window else None
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
            resized = F.interpolate(
                images.float(), size=self.input_size, mode="bilinear", antialias=True
            )
            return F.interpolate(
                self._forward(resized), size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        return self._padded(images)

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        try:
            with self._autocast():
                return self.module(images).float()
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not isinstance(error, torch.OutOfMemoryError) and "memory" not in str(error).lower():
                raise
            height, width = images.shape[-2:]
            raise MemoryError(
                f"out of memory predicting {images.shape[0]} image(s) of {height}x{width} at once "
                f"({str(error).splitlines()[0][:200]}). Use sliding windows, e.g. "
                "'sliding_window={size:[512,512],stride:[384,384]}', or resize: "
                "input_size=[h,w], or batch_size=1"
            ) from error

    def _padded(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h or pad_w:
            canvas = torch.empty(
                (*images.shape[:2], height + pad_h, width + pad_w),
                dtype=images.dtype,
                device=images.device,
            )
            canvas[:] = torch.tensor(self.fill, dtype=images.dtype, device=images.device).view(
                1, 3, 1, 1
            )
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
                    total = torch.zeros(
                        (images.shape[0], logits.shape[1], height, width), device=images.device
                    )
                total[..., top : top + wh, left : left + ww] += logits
                count[..., top : top + wh, left : left + ww] += 1
        return total / count


def _size(key: str, size: Sequence[int] | None, multiple: int) -> tuple[int, int] | None:
    """A ``[h, w]`` option checked: two positive multiples of the net's downsampling, or an error
    naming a fix."""
    if not size:
        return None
    values = tuple(int(v) for v in size)
    if len(values) != 2 or any(v < multiple or v % multiple for v in values):
        fixed = [max(multiple, -(-v // multiple) * multiple) for v in values]
        raise ValueError(
            f"{key}={list(size)}: height and width must be positive multiples of {multiple} (the "
            f"net downsamples {multiple}x); try {key}={fixed}"
        )
    return values
