"""What evaluation computes and writes, given a trained module: scores and figures on a split,
masks for new images, ONNX (:mod:`~segment.evaluation.scoring`); the predictor they share. The
command that finds and rebuilds the checkpoint is :mod:`segment.evaluating`."""

from segment.evaluation.inference import Predictor

__all__ = ["Predictor"]
