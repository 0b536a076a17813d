"""Which Lightning precision trains fastest here, measured on this host rather than read off CPU
flags.

CPU flags mislead: a 2-core Xeon that advertises AVX512-BF16 (no AMX) ran a 4096^2 bf16 matmul at
half its fp32 speed, while an AMX host runs the VGG16 U-Net 4x faster in bf16. So for
``trainer.precision=auto`` on a CPU, :func:`cpu_precision` times a small convolution forward +
backward step in fp32 and under bf16 autocast (about two seconds), picks bf16 only when it is
clearly faster, and caches the answer per CPU model, torch version and thread count in
``$SEGMENT_CACHE_DIR/precision.json`` (default ``~/.cache/segment``). A probe that did not have
its cores (another job ran) or whose verdict is close is taken again at the next run, up to three
times, each precision's fastest time deciding; the run record keeps the verdict and how it was
taken.

Nothing is measured while a config is composed: :func:`resolve_precision` runs when training starts,
and a sweep measures once, before its jobs start (:class:`SweepPrecision`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from torch import nn

from segment.files import cache_root, write_atomic

__all__ = [
    "PrecisionChoice",
    "SweepPrecision",
    "cpu_info",
    "cpu_precision",
    "machine",
    "measure_cpu_precision",
    "resolve_precision",
]

log = logging.getLogger(__name__)

# bf16 loses mantissa bits: take it only when it saves at least this share of the step time.
MIN_SPEEDUP = 1.15
SWEEP_FILE = "precision.json"


@dataclass(frozen=True)
class PrecisionChoice:
    """A measured precision choice: what was picked, and the step times it was picked from."""

    precision: str  # "bf16-mixed" or "32-true"
    fp32_ms: float
    bf16_ms: float
    host: str  # the cache key: CPU model, torch version, threads
    cpu_share: float = 1.0  # the CPU time the probe got, of its threads' wall time
    measurements: int = 1  # times measured: the times are the fastest of them

    @property
    def bf16_speedup(self) -> float:
        return self.fp32_ms / self.bf16_ms if self.bf16_ms else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "bf16_speedup": round(self.bf16_speedup, 3)}


def cpu_info() -> dict[str, Any]:
    """The CPU as the OS names it: model name, family/model/stepping (one model name covers several
    generations), the features that decide bf16 speed, and the cores this process has."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": fields.get("model name") or platform.processor() or platform.machine(),
        "id": "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "features": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "cores": cores,
    }


def host_key() -> str:
    """What the measurement depends on: CPU model and id, torch version, intra-op threads."""
    cpu = cpu_info()
    threads = torch.get_num_threads()
    return f"{cpu['model']} ({cpu['id']}) | torch {torch.__version__} | {threads} threads"


def machine(accelerator: str = "auto") -> dict[str, Any]:
    """What a run trained on, for comparing its seconds with another's: the GPU's name, or the CPU
    and a speed index (this host's probe step times, measured once and cached)."""
    if _on_gpu(accelerator):
        return {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "?"}
    probe = cpu_precision()
    return {
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "speed": {"fp32_ms": probe.fp32_ms, "bf16_ms": probe.bf16_ms},
    }


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


def measure_cpu_precision(
    size: int = 48, channels: int = 64, batch: int = 4, repeats: int = 5
) -> PrecisionChoice:
    """Time a 3-layer 3x3 conv stack (NHWC, as the models run) in fp32 and in bf16 autocast."""
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
    ).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, generator=generator).contiguous(
        memory_format=torch.channels_last
    )
    cpu, wall = time.process_time(), time.perf_counter()
    fp32, bf16 = _step_ms(net, x, False, repeats), _step_ms(net, x, True, repeats)
    elapsed = time.perf_counter() - wall
    # the share of the cores the probe got (under 0.8: another job had them); too short to tell: 1
    threads = torch.get_num_threads()
    share = (time.process_time() - cpu) / (elapsed * threads) if elapsed > 0.05 else 1.0
    return PrecisionChoice(
        _verdict(fp32, bf16), round(fp32, 3), round(bf16, 3), host_key(), round(min(share, 1.0), 3)
    )


def _verdict(fp32_ms: float, bf16_ms: float) -> str:
    return "bf16-mixed" if fp32_ms >= MIN_SPEEDUP * bf16_ms else "32-true"


def _settled(choice: PrecisionChoice) -> bool:
    """A cached verdict stands unless it was taken under load (another job had the cores) or is
    close (within 25% of the bf16 threshold); then it is measured again, up to 3 times."""
    close = MIN_SPEEDUP / 1.25 < choice.bf16_speedup < MIN_SPEEDUP * 1.25
    return choice.measurements >= 3 or not (choice.cpu_share < 0.8 or close)


def _combined(old: PrecisionChoice, new: PrecisionChoice) -> PrecisionChoice:
    """Both measurements as one: the fastest time of each precision (load only slows a step)."""
    fp32, bf16 = min(old.fp32_ms, new.fp32_ms), min(old.bf16_ms, new.bf16_ms)
    return PrecisionChoice(
        _verdict(fp32, bf16),
        fp32,
        bf16,
        new.host,
        max(old.cpu_share, new.cpu_share),
        old.measurements + 1,
    )


def cpu_precision(refresh: bool = False) -> PrecisionChoice:
    """The measured CPU precision for this host: from the cache, or measured now under a lock.

    The lock (``precision.json.lock`` beside the cache) makes concurrent runs wait for one
    measurement instead of each timing the CPU while the others load it.
    """
    key, path = host_key(), _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        cached, before = _read_cache(path), None
        if not refresh and isinstance(cached.get(key), dict):
            entry = {k: v for k, v in cached[key].items() if k != "bf16_speedup"}
            try:
                before = PrecisionChoice(**entry)
            except TypeError:
                pass  # an older cache format: measure again
            if before is not None and _settled(before):
                return before
        choice = measure_cpu_precision()
        if before is not None:
            choice = _combined(before, choice)
        log.info(
            "CPU precision measured on %s: fp32 %.1f ms, bf16 %.1f ms per step (CPU share %.2f, "
            "%d measurement(s)) -> %s",
            key,
            choice.fp32_ms,
            choice.bf16_ms,
            choice.cpu_share,
            choice.measurements,
            choice.precision,
        )
        try:
            write_atomic(path, json.dumps({**cached, key: choice.as_dict()}, indent=2) + "\n")
        except OSError as error:  # a read-only home must not stop training
            log.warning("could not cache the precision measurement in %s: %s", path, error)
    return choice


def _read_cache(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning(
            "the precision cache %s is unreadable (%s): measuring again and replacing it",
            path,
            error,
        )
        return {}
    if not isinstance(cached, dict):
        log.warning("the precision cache %s holds no table: measuring again and replacing it", path)
        return {}
    return cached


def _on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


# Precisions the module cannot train in on a CPU: fp16 autocast has no CPU kernels (Lightning would
# quietly train in bf16), and "true" half precision breaks the module's fp32 input normalisation.
_REFUSED_ON_CPU = {
    "16-mixed": "bf16-mixed",
    "16": "bf16-mixed",
    "bf16-true": "bf16-mixed",
    "16-true": "bf16-mixed",
    "bf16": "bf16-mixed",
    "transformer-engine": "bf16-mixed",
}


def resolve_precision(
    requested: str | int,
    accelerator: str = "auto",
    sweep: str | Path | None = None,
) -> tuple[str, dict[str, Any]]:
    """The precision a run trains in, and the record of how it was chosen.

    Args:
        requested: ``trainer.precision``: ``auto``, or a Lightning precision.
        accelerator: ``trainer.accelerator``.
        sweep: A multirun's folder: ``auto`` takes the answer :class:`SweepPrecision`
            measured there before the jobs started, so every job of a sweep trains alike.

    Returns:
        ``(precision, record)``: what Lightning is given (and what the run records), and why.

    Raises:
        ValueError: a precision that cannot train here, naming the one to use.
    """
    requested = str(requested)
    if requested != "auto":
        if not _on_gpu(accelerator) and requested in _REFUSED_ON_CPU:
            raise ValueError(
                f"trainer.precision={requested} cannot train on a CPU (fp16 autocast has no CPU "
                "kernels and half-precision weights break the fp32 input normalisation); use "
                f"trainer.precision={_REFUSED_ON_CPU[requested]} or 32-true"
            )
        return requested, {"precision": requested, "chosen_by": "trainer.precision"}
    if _on_gpu(accelerator):
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        chosen = "bf16-mixed" if bf16 else "16-mixed"
        return chosen, {"precision": chosen, "chosen_by": "the GPU's bf16 support"}
    shared = Path(sweep) / SWEEP_FILE if sweep is not None else None
    if shared is not None and shared.is_file():
        choice, how = _sweep_choice(shared), f"measured once for the sweep ({shared})"
    else:
        choice, how = cpu_precision(), "measured on this CPU"
    return choice.precision, {"precision": choice.precision, "chosen_by": how, **choice.as_dict()}


def _sweep_choice(shared: Path) -> PrecisionChoice:
    """The precision :class:`SweepPrecision` measured for a sweep, read from ``shared``."""
    try:
        saved = json.loads(shared.read_text())
        return PrecisionChoice(**{k: v for k, v in saved.items() if k != "bf16_speedup"})
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{shared} is unreadable ({error}); delete it to measure again") from None


class SweepPrecision(Callback):
    """Measure the CPU precision once, before a sweep's jobs start, into ``<sweep
    folder>/precision.json``.

    Jobs started together (``hydra/launcher=joblib``) would otherwise each time the CPU while the
    others load it, and some would pick another precision than the rest.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        trainer = config.get("trainer")
        if (
            not trainer
            or str(trainer.get("precision")) != "auto"
            or _on_gpu(str(trainer.get("accelerator")))
        ):
            return  # not a training sweep, a precision given, or a GPU
        folder = Path(config.hydra.sweep.dir)
        folder.mkdir(parents=True, exist_ok=True)
        if not (
            folder / SWEEP_FILE
        ).is_file():  # a sweep continued into its folder keeps its answer
            write_atomic(
                folder / SWEEP_FILE, json.dumps(cpu_precision().as_dict(), indent=2) + "\n"
            )
