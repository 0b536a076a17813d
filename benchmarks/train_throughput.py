"""Training throughput of train.py's Lightning path vs. a bare PyTorch loop, vs. the hardware.

    python benchmarks/train_throughput.py data=camvid data.root=../shared/data/camvid model=unet_vgg

Any Hydra override of train.py selects model, data, size and batch (defaults: the train config).
Prints one markdown table:

- Lightning: ``Trainer.fit`` exactly as train.py builds it (precision, channels_last,
  loader), validation and logging off;
- bare loop: the same module, loader, optimiser, precision and memory format in a plain loop;
- lab-style loop: fp32, contiguous memory, in-process loader without cache (what one writes
  by hand);
- data: the training loader alone;
- FLOPs of one training step (``torch.utils.flop_counter``) and the achieved rate (MFU) vs.
  a large square matmul in the *fastest* precision (fp32 or bf16: the device's practical peak,
  whatever the run uses);
- peak memory and inference images/s.

``--batch-sizes 16 32 --compile both --peak-size 8192 --quick --json out.json`` is the GPU check
(benchmarks/device_study.sh). Throughput is the median of ``--windows`` timed windows of ``--steps``
steps after ``--warmup`` steps. Run nothing else meanwhile: on a 2-core CPU a second job halves
both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from lightning import Callback
from torch.utils.flop_counter import FlopCounterMode

from segment.build import build
from segment.config.compose import compose_train
from segment.device.precision import resolve_precision


class _StepTimer(Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())


def _windows(stamps: list[float], warmup: int, steps: int, batch: int) -> float:
    """Median images/s over consecutive windows of ``steps`` steps after ``warmup``."""
    stamps = stamps[warmup:]
    rates = [
        steps * batch / (stamps[i + steps] - stamps[i])
        for i in range(0, len(stamps) - steps, steps)
    ]
    return statistics.median(rates)


def _compose(overrides: list[str]):
    """train.py's config, precision resolved as train.py resolves it; no loggers or callbacks."""
    cfg = compose_train(["~callbacks", *overrides], output_dir=f"{os.getcwd()}/.bench")
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)[0]
    return cfg


def _build(cfg, callbacks: tuple = (), **trainer_args):
    """train.py's build (``build(cfg)``: class weights, module, trainer) without logging,
    checkpoints or progress output."""
    options = {
        "logger": False,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    built = build(cfg, **{**options, **trainer_args})
    built.trainer.callbacks.extend(callbacks)
    built.datamodule.setup("fit")
    return built


def _batches(loader, count: int):
    while True:
        for batch in loader:
            yield batch
            count -= 1
            if count == 0:
                return


def lightning_rate(cfg, total: int, warmup: int, steps: int) -> float:
    timer = _StepTimer()
    built = _build(cfg, (timer,), max_steps=total, max_epochs=-1, limit_val_batches=0)
    built.trainer.fit(built.module, datamodule=built.datamodule)
    return _windows(timer.stamps, warmup, steps, cfg.data.batch_size)


def bare_rate(cfg, total: int, warmup: int, steps: int, lab_style: bool) -> float:
    """Plain loop with ``cfg``'s settings; ``lab_style``: fp32 whatever ``cfg`` says."""
    built = _build(cfg)
    datamodule, module = built.datamodule, built.module
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
    )
    module = module.to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    bf16 = not lab_style and str(cfg.trainer.precision).startswith("bf16")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    stamps = []
    for batch in _batches(datamodule.train_dataloader(), total):
        images, masks = (
            batch["image"].to(device, non_blocking=True),
            batch["mask"].to(device, non_blocking=True),
        )
        with autocast:
            logits = module(images)
        loss = module.criterion(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
    return _windows(stamps, warmup, steps, cfg.data.batch_size)


def loader_rate(cfg, seconds: float = 10.0) -> float:
    datamodule = _build(cfg).datamodule
    iterator, images, start = iter(_batches(datamodule.train_dataloader(), -1)), 0, None
    next(iterator)  # workers up
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += next(iterator)["image"].shape[0]
    return images / (time.perf_counter() - start)


def step_flops(cfg) -> float:
    """FLOPs of one training step (forward + backward) per image."""
    module = _build(cfg).module
    height, width = cfg.data.image_size
    batch = cfg.data.batch_size
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8)
    masks = torch.zeros((batch, height, width), dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        module.criterion(module(images).float(), masks).backward()
    return counter.get_total_flops() / batch


def peak_flops(
    dtype: torch.dtype, device: torch.device, size: int = 4096, repeats: int = 5
) -> float:
    """The device's practical peak: a large square matmul."""
    a, b = (
        torch.randn(size, size, dtype=dtype, device=device),
        torch.randn(size, size, dtype=dtype, device=device),
    )
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def inference_rate(cfg, batches: int = 6) -> float:
    from segment.evaluation import Predictor

    module = _build(cfg).module
    predictor = Predictor(module, precision=str(cfg.trainer.precision))
    height, width = cfg.data.image_size
    images = torch.randint(0, 256, (cfg.data.batch_size, 3, height, width), dtype=torch.uint8)
    predictor.logits(images)
    start = time.perf_counter()
    for _ in range(batches):
        predictor.logits(images)
    return batches * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="*",
        default=None,
        help="measure the Lightning path at these batch sizes (default: the config's)",
    )
    parser.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default="off",
        help="torch.compile the net (model.compile); both: a row for each",
    )
    parser.add_argument(
        "--precisions",
        nargs="*",
        default=None,
        help="measure the Lightning path in each (e.g. 32-true bf16-mixed; default: the config's, "
        "which is measured per host) and give their ratio",
    )
    parser.add_argument(
        "--peak-size", type=int, default=4096, help="side of the square matmul of the peak"
    )
    parser.add_argument(
        "--quick", action="store_true", help="Lightning path, loader, FLOPs and peaks only"
    )
    parser.add_argument(
        "--loader-seconds", type=float, default=10.0, help="how long to time the loader alone"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args, overrides = parser.parse_known_args()
    cfg = _compose(overrides)
    # What one writes by hand: fp32, contiguous memory, in-process loading, no cache.
    lab_cfg = _compose(
        [*overrides, "model.channels_last=false", "data.cache=false", "data.num_workers=0"]
    )
    total = args.warmup + args.steps * args.windows + 1
    height, width = cfg.data.image_size
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
    )
    print(
        f"# {' '.join(overrides) or 'train.py defaults'}: {height}x{width}, batch "
        f"{cfg.data.batch_size}, {cfg.trainer.precision}, channels_last={cfg.model.channels_last}, "
        f"{device} ({os.cpu_count()} "
        f"cores{', ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''})\n"
    )
    rows = []

    def row(name: str, value: float, unit: str, note: str = "") -> None:
        rows.append({"measurement": name, "value": value, "unit": unit, "note": note})
        print(f"| {name} | {value:.3g} | {unit} | {note} |")
        sys.stdout.flush()
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"setup": " ".join(overrides), "device": str(device), "rows": rows}, indent=2
                )
            )

    print("| measurement | value | unit | note |\n|---|---|---|---|")
    # The fastest precision's peak: a run in fp32 on a bf16-capable device is measured against
    # bf16's
    peaks = {
        dtype: peak_flops(dtype, device, args.peak_size)
        for dtype in (torch.float32, torch.bfloat16)
    }
    fastest = max(peaks, key=peaks.get)
    for dtype, value in peaks.items():
        row(
            f"peak: {args.peak_size}^3 matmul, {str(dtype).removeprefix('torch.')}",
            value / 1e12,
            "TFLOP/s",
        )
    flops = step_flops(cfg)
    row("FLOPs per training image (fwd + bwd)", flops / 1e9, "GFLOP")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    batch_sizes = args.batch_sizes or [cfg.data.batch_size]
    precisions = args.precisions or [str(cfg.trainer.precision)]
    lightning = None
    by_precision: dict[str, float] = {}
    for precision in precisions:
        for batch in batch_sizes:
            for compiled in compiles:
                variant = _compose(
                    [
                        *overrides,
                        f"data.batch_size={batch}",
                        f"model.compile={str(compiled).lower()}",
                        f"trainer.precision={precision}",
                    ]
                )
                rate = lightning_rate(variant, total, args.warmup, args.steps)
                lightning = lightning if lightning is not None else rate
                by_precision.setdefault(precision, rate)
                achieved = flops * rate
                row(
                    f"train: Lightning (train.py path), {precision}, batch "
                    f"{batch}{', compiled' if compiled else ''}",
                    rate,
                    "images/s",
                    f"{achieved / 1e12:.3g} TFLOP/s = {100 * achieved / peaks[fastest]:.0f}% of "
                    f"the {str(fastest).removeprefix('torch.')} matmul peak (MFU)",
                )
    if len(by_precision) > 1:
        (first, base), *others = by_precision.items()
        for precision, rate in others:
            row(
                f"train: {precision} / {first}",
                rate / base,
                "x",
                f"the default here: {cfg.trainer.precision}",
            )
    if not args.quick:
        bare = bare_rate(cfg, total, args.warmup, args.steps, lab_style=False)
        row(
            "train: bare PyTorch loop, same settings",
            bare,
            "images/s",
            f"Lightning / bare = {lightning / bare:.2f}",
        )
        lab = bare_rate(lab_cfg, total, args.warmup, args.steps, lab_style=True)
        row(
            "train: lab-style loop (fp32, contiguous, no cache)",
            lab,
            "images/s",
            f"ours / lab = {lightning / lab:.2f}x",
        )
    data = loader_rate(cfg, args.loader_seconds)
    row(
        f"data: training loader alone, {cfg.data.num_workers} workers",
        data,
        "images/s",
        f"{data / lightning:.1f}x the model's consumption",
    )
    if not args.quick:
        row("inference (model input size)", inference_rate(cfg), "images/s")
    memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row("peak CPU RSS (whole benchmark)", memory, "GiB")
    if device.type == "cuda":
        row("peak GPU memory allocated", torch.cuda.max_memory_allocated() / 2**30, "GiB")


if __name__ == "__main__":
    main()
