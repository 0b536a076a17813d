"""Evaluate, predict with or export a checkpoint: ``python evaluate.py ckpt_path=... [mode=...]``
(installed: ``segment-evaluate``, from any folder).

See conf/evaluate.yaml for every option and README.md for examples.
"""

from segment.cli import evaluate

if __name__ == "__main__":
    evaluate()
