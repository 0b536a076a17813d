"""Class metadata (names, palette, ignore index) and label decoding, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DatasetInfo", "LabelError", "colorize"]


class LabelError(ValueError):
    """A mask holds values that the dataset does not declare."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a dashboard need to know about a dataset's labels.

    Attributes:
        name: Short dataset name, used in logs.
        class_names: One name per training class; index ``i`` is class id ``i``.
        palette: One RGB colour per class, for drawing masks.
        ignore_index: Label value that the loss and metrics skip (void, padding).
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} palette colours"
            )
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f"{self.name}: ignore_index {self.ignore_index} collides with class "
                f"{self.class_names[self.ignore_index]!r}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def lookup_table(self) -> np.ndarray:
        """Identity map for stored class-index masks: ``table[raw] -> train id``.

        Valid ids map to themselves, ``ignore_index`` to itself, every other byte to -1 so
        that :func:`decode_mask` can name the values a mask should not contain.
        """
        table = np.full(256, -1, dtype=np.int16)
        table[: self.num_classes] = np.arange(self.num_classes)
        if 0 <= self.ignore_index < 256:
            table[self.ignore_index] = self.ignore_index
        return table

    def decode_mask(self, raw: np.ndarray, source: str | Path = "<array>") -> np.ndarray:
        """Map a raw uint8 mask to train ids, raising :class:`LabelError` on undeclared values.

        Args:
            raw: ``(H, W)`` uint8 mask as stored on disk.
            source: File the mask came from, named in the error.

        Returns:
            ``(H, W)`` uint8 mask of class ids and ``ignore_index``.
        """
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise LabelError(
                f"{source}: expected a single-channel 8-bit class-index mask, "
                f"got shape {raw.shape} dtype {raw.dtype}"
            )
        mapped = self.lookup_table()[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0]).tolist()
            raise LabelError(
                f"{source}: mask values {bad} are not classes of {self.name!r} "
                f"(valid: 0..{self.num_classes - 1} and ignore {self.ignore_index})"
            )
        return mapped.astype(np.uint8)


def colorize(mask: np.ndarray, palette: np.ndarray | tuple, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Paint a class-index mask with a palette.

    Args:
        mask: ``(..., H, W)`` integer class ids; ids beyond the palette (the ignore index)
            get ``ignore_color``.
        palette: ``(C, 3)`` uint8 RGB colours.
        ignore_color: Colour for ignored pixels.

    Returns:
        ``(..., H, W, 3)`` uint8 RGB image.
    """
    palette = np.asarray(palette, dtype=np.uint8)
    table = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
    table[: len(palette)] = palette
    return table[np.asarray(mask).astype(np.int64).clip(0, 255)]
