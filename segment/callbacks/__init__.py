"""Lightning callbacks: dashboards, thresholds and encoder freezing."""

from segment.callbacks.freezing import EncoderFreezing
from segment.callbacks.mask_images import MaskImageLogger, MaskSnapshots
from segment.callbacks.thresholds import ThresholdTracker

__all__ = ["EncoderFreezing", "MaskImageLogger", "MaskSnapshots", "ThresholdTracker"]
