"""Seconds until ``val/loss`` <= a threshold: train.py's path vs. a lab-style fp32 loop, same data.

    python benchmarks/time_to_threshold.py data=camvid data.root=../shared/data/camvid
    model=unet_vgg

Both start from the same seed, weights, data, optimiser and schedule and validate after every epoch;
the clock covers training and validation (not start-up). The lab-style loop is fp32, contiguous
memory, in-process loading without a cache.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from lightning import Callback
from train_throughput import _build, _compose  # the sibling script


class _StopAtThreshold(Callback):
    def __init__(self, threshold: float) -> None:
        self.threshold, self.start, self.result = threshold, 0.0, None

    def on_train_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        # Not on_validation_epoch_end: callbacks run that hook before the module logs val/loss.
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None or self.result is not None:
            return
        if float(loss) <= self.threshold:
            self.result = (time.perf_counter() - self.start, trainer.current_epoch + 1, float(loss))
            trainer.should_stop = True


def ours(cfg, threshold: float, max_epochs: int):
    L.seed_everything(cfg.seed, workers=True)
    stopper = _StopAtThreshold(threshold)
    built = _build(cfg, (stopper,), max_epochs=max_epochs)
    built.trainer.fit(built.module, datamodule=built.datamodule)
    return stopper.result


def lab_style(cfg, threshold: float, max_epochs: int):
    L.seed_everything(cfg.seed, workers=True)
    built = _build(cfg)
    datamodule, module = built.datamodule, built.module
    optimizer = module.configure_optimizers()["optimizer"]
    start = time.perf_counter()
    for epoch in range(max_epochs):
        module.train()
        for batch in datamodule.train_dataloader():
            loss = module.criterion(module(batch["image"]), batch["mask"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        module.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in datamodule.val_dataloader():
                total += (
                    module.criterion(module(batch["image"]), batch["mask"]).item()
                    * batch["image"].shape[0]
                )
                count += batch["image"].shape[0]
        if total / count <= threshold:
            return time.perf_counter() - start, epoch + 1, total / count
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threshold", type=float, default=1.0)
    parser.add_argument("--max-epochs", type=int, default=6)
    args, overrides = parser.parse_known_args()
    # No schedule: both runs must see the same learning rate whatever epoch they stop at.
    overrides = [*overrides, "scheduler=constant"]
    cfg = _compose(overrides)
    lab_cfg = _compose(
        [*overrides, "model.channels_last=false", "data.cache=false", "data.num_workers=0"]
    )
    print(f"# time to val/loss <= {args.threshold}: {' '.join(overrides)}\n")
    print("| path | seconds | epochs | val/loss then |\n|---|---|---|---|")
    results = {}
    for name, run, config in (
        ("train.py (Lightning, bf16, channels_last)", ours, cfg),
        ("lab-style fp32 loop", lab_style, lab_cfg),
    ):
        result = run(config, args.threshold, args.max_epochs)
        results[name] = result
        cells = (
            f"{result[0]:.0f} | {result[1]} | {result[2]:.3f}"
            if result
            else f"not reached in {args.max_epochs} | - | -"
        )
        print(f"| {name} | {cells} |", flush=True)
    first, second = results.values()
    if first and second:
        print(f"\nspeed-up: {second[0] / first[0]:.2f}x")


if __name__ == "__main__":
    main()
