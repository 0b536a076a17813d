"""Training throughput of train.py's Lightning path vs. a bare PyTorch loop, vs. the hardware.

    python benchmarks/train_throughput.py data=camvid data.root=../shared/data/camvid model=unet_vgg

Any Hydra override of train.py selects model, data, size and batch (defaults: the train
config). Prints one markdown table:

- Lightning: ``Trainer.fit`` exactly as train.py builds it (precision, channels_last,
  loader), validation and logging off;
- bare loop: the same module, loader, optimiser, precision and memory format in a plain loop;
- lab-style loop: fp32, contiguous memory, in-process loader without cache (what one writes
  by hand);
- data: the training loader alone;
- FLOPs of one training step (``torch.utils.flop_counter``) and the achieved rate vs. a
  large matmul in the same dtype (the device's practical peak);
- peak memory and inference images/s.

Throughput is the median of ``--windows`` timed windows of ``--steps`` steps after
``--warmup`` steps. Run nothing else meanwhile: on a 2-core CPU a second job halves both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning import Callback
from torch.utils.flop_counter import FlopCounterMode

import segment  # noqa: F401  (registers config resolvers)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class _StepTimer(Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())


def _windows(stamps: list[float], warmup: int, steps: int, batch: int) -> float:
    """Median images/s over consecutive windows of ``steps`` steps after ``warmup``."""
    stamps = stamps[warmup:]
    rates = [steps * batch / (stamps[i + steps] - stamps[i]) for i in range(0, len(stamps) - steps, steps)]
    return statistics.median(rates)


def _compose(overrides: list[str]):
    cwd = os.getcwd()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={cwd}", f"paths.output_dir={cwd}/.bench", *overrides])


def _build(cfg, **model_overrides):
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    info = datamodule.info
    module = instantiate(
        cfg.model, class_names=list(info.class_names), ignore_index=info.ignore_index, **model_overrides
    )
    return datamodule, module


def _batches(loader, count: int):
    while True:
        for batch in loader:
            yield batch
            count -= 1
            if count == 0:
                return


def quiet_trainer(cfg, callbacks: list, **overrides):
    """train.py's Trainer (precision, accelerator) without logging, checkpoints or progress output."""
    return instantiate(
        cfg.trainer,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **overrides,
    )


def lightning_rate(cfg, total: int, warmup: int, steps: int) -> float:
    datamodule, module = _build(cfg)
    timer = _StepTimer()
    trainer = quiet_trainer(cfg, [timer], max_steps=total, max_epochs=-1, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    return _windows(timer.stamps, warmup, steps, cfg.data.batch_size)


def bare_rate(cfg, total: int, warmup: int, steps: int, lab_style: bool) -> float:
    """Plain loop with ``cfg``'s settings; ``lab_style``: fp32 whatever ``cfg`` says."""
    datamodule, module = _build(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    module = module.to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    bf16 = not lab_style and str(cfg.trainer.precision).startswith("bf16")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    stamps = []
    for batch in _batches(datamodule.train_dataloader(), total):
        images, masks = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
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
    datamodule, _ = _build(cfg)
    iterator, images, start = iter(_batches(datamodule.train_dataloader(), -1)), 0, None
    next(iterator)  # workers up
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += next(iterator)["image"].shape[0]
    return images / (time.perf_counter() - start)


def step_flops(cfg) -> float:
    """FLOPs of one training step (forward + backward) per image."""
    _, module = _build(cfg)
    height, width = cfg.data.image_size
    batch = cfg.data.batch_size
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8)
    masks = torch.zeros((batch, height, width), dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        module.criterion(module(images).float(), masks).backward()
    return counter.get_total_flops() / batch


def peak_flops(dtype: torch.dtype, device: torch.device, size: int = 4096, repeats: int = 5) -> float:
    """The device's practical peak: a large square matmul."""
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
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

    _, module = _build(cfg)
    predictor = Predictor(module, precision=str(cfg.trainer.precision))
    height, width = cfg.data.image_size
    images = torch.randint(0, 256, (cfg.data.batch_size, 3, height, width), dtype=torch.uint8)
    predictor.logits(images)
    start = time.perf_counter()
    for _ in range(batches):
        predictor.logits(images)
    return batches * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--windows", type=int, default=3)
    args, overrides = parser.parse_known_args()
    cfg = _compose(overrides)
    # What one writes by hand: fp32, contiguous memory, in-process loading, no cache.
    lab_cfg = _compose([*overrides, "model.channels_last=false", "data.cache=false", "data.num_workers=0"])
    total = args.warmup + args.steps * args.windows + 1
    height, width = cfg.data.image_size
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    dtype = torch.bfloat16 if str(cfg.trainer.precision).startswith("bf16") else torch.float32
    print(
        f"# {' '.join(overrides) or 'train.py defaults'}: {height}x{width}, batch {cfg.data.batch_size}, "
        f"{cfg.trainer.precision}, channels_last={cfg.model.channels_last}, {device} "
        f"({os.cpu_count()} cores{', ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''})\n"
    )
    rows = []

    def row(name: str, value: float, unit: str, note: str = "") -> None:
        rows.append((name, value, unit, note))
        print(f"| {name} | {value:.3g} | {unit} | {note} |")
        sys.stdout.flush()

    print("| measurement | value | unit | note |\n|---|---|---|---|")
    lightning = lightning_rate(cfg, total, args.warmup, args.steps)
    row("train: Lightning (train.py path)", lightning, "images/s")
    bare = bare_rate(cfg, total, args.warmup, args.steps, lab_style=False)
    row("train: bare PyTorch loop, same settings", bare, "images/s", f"Lightning / bare = {lightning / bare:.2f}")
    lab = bare_rate(lab_cfg, total, args.warmup, args.steps, lab_style=True)
    row("train: lab-style loop (fp32, contiguous, no cache)", lab, "images/s", f"ours / lab = {lightning / lab:.2f}x")
    data = loader_rate(cfg)
    row("data: training loader alone", data, "images/s", f"{data / lightning:.0f}x the model's consumption")
    flops = step_flops(cfg)
    row("FLOPs per training image (fwd + bwd)", flops / 1e9, "GFLOP")
    achieved = flops * lightning
    peak = peak_flops(dtype, device)
    row("achieved training FLOP/s", achieved / 1e12, "TFLOP/s", f"{100 * achieved / peak:.0f}% of the matmul peak")
    row(f"peak: 4096^3 matmul, {str(dtype).removeprefix('torch.')}", peak / 1e12, "TFLOP/s")
    row("inference (model input size)", inference_rate(cfg), "images/s")
    memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row("peak CPU RSS (whole benchmark)", memory, "GiB")
    if device.type == "cuda":
        row("peak GPU memory allocated", torch.cuda.max_memory_allocated() / 2**30, "GiB")


if __name__ == "__main__":
    main()
