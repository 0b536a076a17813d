"""Scoring checkpoints, predicting unlabelled images, ONNX export."""

from segment.evaluation.inference import Predictor
from segment.evaluation.run import evaluate, export, load_checkpoint, predict, run

__all__ = ["Predictor", "evaluate", "export", "load_checkpoint", "predict", "run"]
