"""The LightningModule, its nets, metrics and losses."""

from segment.models.lab_unet import LabUNet, LabVGGUNet
from segment.models.losses import CrossEntropyLoss, SumOfLosses
from segment.models.module import SegmentationModule

__all__ = ["CrossEntropyLoss", "LabUNet", "LabVGGUNet", "SegmentationModule", "SumOfLosses"]
