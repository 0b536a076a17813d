"""Evaluate, predict with or export a checkpoint: ``python evaluate.py ckpt_path=... [mode=...]``.

See conf/evaluate.yaml for every option and README.md for examples.
"""

import hydra
from omegaconf import DictConfig

import segment  # noqa: F401  (registers the config resolvers)
from segment.evaluation import run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
