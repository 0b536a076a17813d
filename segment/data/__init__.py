"""Datasets, label metadata and LightningDataModules."""

from segment.data.datamodule import SegmentationDataModule, SyntheticDataModule
from segment.data.dataset import Sample, SegmentationDataset, pair_by_stem
from segment.data.labels import DatasetInfo, LabelError, colorize

__all__ = [
    "DatasetInfo",
    "LabelError",
    "Sample",
    "SegmentationDataModule",
    "SegmentationDataset",
    "SyntheticDataModule",
    "colorize",
    "pair_by_stem",
]
