"""Train a segmentation model: ``python train.py [group=option ...] [key=value ...]``.

See ``python train.py --help`` for the config groups and README.md for examples.
"""

import sys

import hydra
from omegaconf import DictConfig

import segment  # noqa: F401  (registers the config resolvers)
from segment.config import misspelt
from segment.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # What a Hydra sweeper (e.g. Optuna) optimises.
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exit:  # Hydra printed its error; name a misspelt key's nearest one
        for hint in misspelt(sys.argv[1:]) if exit.code else ():
            print(hint, file=sys.stderr)
        raise
