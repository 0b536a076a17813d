"""Datasets, label metadata and LightningDataModules.

The names below are imported when first used, so that ``segment.data.labels`` (the class names the
study report reads) comes without Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "SegmentationDataModule": "datamodule",
    "Sample": "dataset",
    "SegmentationDataset": "dataset",
    "pair_files": "dataset",
    "BDD100KDataModule": "formats",
    "CamVidDataModule": "formats",
    "CityscapesDataModule": "formats",
    "FolderDataModule": "formats",
    "GTA5DataModule": "formats",
    "KittiRoadDataModule": "formats",
    "SyntheticDataModule": "formats",
    "DatasetInfo": "labels",
    "LabelError": "labels",
    "colorize": "labels",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'segment.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"segment.data.{_HOMES[name]}"), name)
