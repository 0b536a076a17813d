"""Lightning callbacks: dashboards, thresholds, the hyperparameter table and encoder freezing."""

from segment.callbacks.freezing import EncoderFreezing
from segment.callbacks.hparams import HyperparameterTable
from segment.callbacks.mask_images import MaskImageLogger, MaskSnapshots
from segment.callbacks.thresholds import ThresholdTracker

__all__ = [
    "EncoderFreezing",
    "HyperparameterTable",
    "MaskImageLogger",
    "MaskSnapshots",
    "ThresholdTracker",
]
