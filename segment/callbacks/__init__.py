"""Lightning callbacks: dashboards and training schedules."""

from segment.callbacks.freezing import EncoderUnfreeze
from segment.callbacks.mask_images import MaskImageLogger, MaskSnapshots
from segment.callbacks.thresholds import ThresholdTracker

__all__ = ["EncoderUnfreeze", "MaskImageLogger", "MaskSnapshots", "ThresholdTracker"]
