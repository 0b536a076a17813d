"""The LightningModule, its metrics and losses."""

from segment.models.losses import CrossEntropyDiceLoss
from segment.models.module import SegmentationModule

__all__ = ["CrossEntropyDiceLoss", "SegmentationModule"]
