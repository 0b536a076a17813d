"""Train a segmentation model: ``python train.py [group=option ...] [key=value ...]`` (installed:
``segment-train``, from any folder).

See ``python train.py --help`` for the config groups and README.md for examples.
"""

from segment.cli import train

if __name__ == "__main__":
    train()
