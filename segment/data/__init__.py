"""Datasets, label metadata and LightningDataModules."""

from segment.data.datamodule import SegmentationDataModule
from segment.data.dataset import Sample, SegmentationDataset, pair_files
from segment.data.formats import (
    BDD100KDataModule,
    CamVidDataModule,
    CityscapesDataModule,
    FolderDataModule,
    GTA5DataModule,
    KittiRoadDataModule,
    SyntheticDataModule,
)
from segment.data.labels import DatasetInfo, LabelError, colorize

__all__ = [
    "BDD100KDataModule",
    "CamVidDataModule",
    "CityscapesDataModule",
    "DatasetInfo",
    "FolderDataModule",
    "GTA5DataModule",
    "KittiRoadDataModule",
    "LabelError",
    "Sample",
    "SegmentationDataModule",
    "SegmentationDataset",
    "SyntheticDataModule",
    "colorize",
    "pair_files",
]
