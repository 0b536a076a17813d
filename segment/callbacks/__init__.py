"""Lightning callbacks: dashboards and run bookkeeping."""

from segment.callbacks.mask_images import MaskImageLogger

__all__ = ["MaskImageLogger"]
