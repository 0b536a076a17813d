"""The LightningModule, its metrics and losses."""

from segment.models.lab_unet import LabUNet
from segment.models.losses import CrossEntropyDiceLoss
from segment.models.module import SegmentationModule

__all__ = ["CrossEntropyDiceLoss", "LabUNet", "SegmentationModule"]
