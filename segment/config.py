"""OmegaConf resolvers that the config tree uses; registered on import of :mod:`segment`."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

__all__ = ["best_precision", "register_resolvers"]


def best_precision(accelerator: str = "auto") -> str:
    """The fastest numerically safe Lightning precision for ``accelerator``.

    bf16 autocast where the hardware computes bf16 natively (Ampere+ GPUs; CPUs with AMX
    or AVX512-BF16, where it trains a VGG16 U-Net 2.1x faster than fp32 on a 2-core
    AVX512-BF16 EPYC, at its bf16 matmul peak), fp16 autocast on
    older GPUs, fp32 otherwise -- CPUs without bf16 units emulate it slower than fp32.
    """
    use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("cpu", "auto"):
        # Private probes (stable since torch 2.1); absent ones count as "no native bf16".
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        native_bf16 = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
        return "bf16-mixed" if native_bf16 else "32-true"
    return "32-true"


def register_resolvers() -> None:
    """Register ``${best_precision:<accelerator>}`` (idempotent)."""
    if not OmegaConf.has_resolver("best_precision"):
        OmegaConf.register_new_resolver("best_precision", best_precision)
