"""Training-loader throughput (images/s, train augmentations on) with and without the RAM cache.

    python benchmarks/data_throughput.py data=camvid data.root=../shared/data/camvid --workers 0 2

Any Hydra override selects the dataset and loader settings. Each configuration runs one warm-up
batch (worker start-up, first decode) and then times full passes over the training set; setup time
(verification or cache fill) is reported separately.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from segment.build import build_data
from segment.config.compose import compose_train


def measure(overrides: list[str], epochs: int) -> tuple[float, float, int]:
    """Return (setup seconds, median images/s over ``epochs`` passes, images per pass)."""
    datamodule = build_data(compose_train(overrides))
    start = time.perf_counter()
    datamodule.setup("fit")
    setup_seconds = time.perf_counter() - start
    loader = datamodule.train_dataloader()
    rates = []
    for _ in range(epochs + 1):
        iterator = iter(loader)
        next(iterator)  # warm-up: workers start, first batch decodes
        start, images = time.perf_counter(), 0
        for batch in iterator:
            images += batch["image"].shape[0]
        rates.append(images / (time.perf_counter() - start))
    return setup_seconds, statistics.median(rates[1:]), len(datamodule.train_dataset)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="timed passes per configuration")
    args, overrides = parser.parse_known_args()
    print(
        f"# loader throughput: {' '.join(overrides) or 'defaults'} ({os.cpu_count()} CPU cores)\n"
    )
    print("| cache | workers | setup s | images/s |")
    print("|---|---|---|---|")
    for cache in (False, True):
        for workers in args.workers:
            setup, rate, _ = measure(
                [*overrides, f"data.cache={cache}", f"data.num_workers={workers}"], args.epochs
            )
            print(f"| {'on' if cache else 'off'} | {workers} | {setup:.1f} | {rate:.1f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
