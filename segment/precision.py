"""Which Lightning precision trains fastest here, measured on this host rather than read off CPU flags.

CPU flags mislead: a 2-core Xeon that advertises AVX512-BF16 (no AMX) ran a 4096^2 bf16
matmul at half its fp32 speed, while an AMX host runs the VGG16 U-Net 4x faster in bf16.
So on a CPU, :func:`cpu_precision` times a small convolution forward + backward step in
fp32 and under bf16 autocast (about two seconds), picks bf16 only when it is clearly
faster, and caches the answer per CPU model, torch version and thread count in
``$SEGMENT_CACHE_DIR/precision.json`` (default ``~/.cache/segment``).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from segment.files import cache_root, write_atomic

__all__ = ["PrecisionChoice", "best_precision", "cpu_precision", "measure_cpu_precision"]

log = logging.getLogger(__name__)

# bf16 loses mantissa bits: take it only when it saves at least this share of the step time.
MIN_SPEEDUP = 1.15


@dataclass(frozen=True)
class PrecisionChoice:
    """A measured precision choice: what was picked, and the step times it was picked from."""

    precision: str  # "bf16-mixed" or "32-true"
    fp32_ms: float
    bf16_ms: float
    host: str  # the cache key: CPU model, torch version, threads

    @property
    def bf16_speedup(self) -> float:
        return self.fp32_ms / self.bf16_ms if self.bf16_ms else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "bf16_speedup": round(self.bf16_speedup, 3)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_key() -> str:
    """What the measurement depends on: CPU model, torch version, intra-op threads."""
    return f"{_cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _cache_file() -> Path:
    return cache_root() / "precision.json"


def _step_ms(net: nn.Module, x: torch.Tensor, bf16: bool, repeats: int) -> float:
    """Median milliseconds of one forward + backward step."""
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().square().mean().backward()
        if i:  # the first step warms up (oneDNN primitive creation)
            times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def measure_cpu_precision(size: int = 48, channels: int = 64, batch: int = 4, repeats: int = 5) -> PrecisionChoice:
    """Time a 3-layer 3x3 conv stack (NHWC, as the models run) in fp32 and in bf16 autocast."""
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
    ).to(memory_format=torch.channels_last)  # fmt: skip
    x = torch.rand(batch, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    fp32, bf16 = _step_ms(net, x, False, repeats), _step_ms(net, x, True, repeats)
    precision = "bf16-mixed" if fp32 >= MIN_SPEEDUP * bf16 else "32-true"
    return PrecisionChoice(precision, round(fp32, 3), round(bf16, 3), host_key())


def cpu_precision(refresh: bool = False) -> PrecisionChoice:
    """The measured CPU precision for this host, from the cache or measured once now."""
    key, path = host_key(), _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not refresh and isinstance(cached.get(key), dict):
        entry = {k: v for k, v in cached[key].items() if k != "bf16_speedup"}
        try:
            return PrecisionChoice(**entry)
        except TypeError:
            pass  # an older cache format: measure again
    choice = measure_cpu_precision()
    log.info("CPU precision measured on %s: fp32 %.1f ms, bf16 %.1f ms per step -> %s",
             key, choice.fp32_ms, choice.bf16_ms, choice.precision)  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**cached, key: choice.as_dict()}, indent=2) + "\n")
    except OSError as error:  # a read-only home must not stop training
        log.warning("could not cache the precision measurement in %s: %s", path, error)
    return choice


def best_precision(accelerator: str = "auto") -> str:
    """The fastest numerically safe Lightning precision for ``accelerator``.

    GPUs: bf16 autocast on Ampere or newer, fp16 autocast with loss scaling before. CPUs:
    whatever :func:`cpu_precision` measured (bf16 autocast or fp32).
    """
    use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("cpu", "auto"):
        return cpu_precision().precision
    return "32-true"
