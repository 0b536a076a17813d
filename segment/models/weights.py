"""Pretrained VGG16 encoder weights that work offline, and an honest record of which were used.

Sources for ``model.net.encoder_weights`` (VGG16 encoders: ``unet_vgg``, ``unet_lab_vgg``):

- ``imagenet``: segmentation_models_pytorch's VGG16 ImageNet weights, from the Hugging
  Face cache, torchvision's cache (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``) or a download
  through ``huggingface_hub`` (which honours ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and proxies); when
  none works, ``hed`` stands in if ``model.weights_fallback`` allows it, with a warning.
- ``hed``: HED's VGG16 convolutions (:mod:`segment.models.hed`).
- a ``.pth``/``.pt``/``.safetensors`` file: a torchvision VGG16 or smp encoder state dict.
- ``null``: random initialisation.

``python -m segment.models fetch hed|imagenet`` prepares either for offline use.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors import safe_open
from safetensors.torch import load_file
from segmentation_models_pytorch.encoders import encoders
from torch import nn

from segment.files import sha256
from segment.models.hed import hed_state_dict

__all__ = ["WeightsRecord", "hub_online", "load_encoder_weights", "resolve_encoder_weights"]

log = logging.getLogger(__name__)

TORCHVISION_VGG16 = "vgg16-397923af.pth"


@dataclass(frozen=True)
class WeightsRecord:
    """Which encoder weights a run actually got."""

    source: str  # "imagenet", "hed-bsds500", "file", "smp:<weights>", "none"
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


@functools.cache
def hub_online() -> bool:
    """Whether the Hugging Face hub answers, looked at once per process (none with
    ``HF_HUB_OFFLINE``; through a proxy, the hub's own calls decide). Offline, huggingface_hub
    retried every download for about 25 s; a failed look is said once, and the process works from
    the local caches."""
    if hf_constants.HF_HUB_OFFLINE:
        return False
    if any(
        os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    ):
        return True
    host = urllib.parse.urlparse(hf_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError as error:
        log.warning(
            "the Hugging Face hub (%s) is not reachable (%s): working from the local caches",
            host,
            error,
        )
        return False


def _imagenet_state_dict() -> tuple[dict[str, torch.Tensor], Path]:
    """smp's VGG16 ImageNet weights from the HF cache, torchvision's cache, or the hub.

    Raises:
        FileNotFoundError: none of the three worked, with huggingface_hub's reason.
    """
    settings = encoders["vgg16"]["pretrained_settings"]["imagenet"]
    repo, revision = settings["repo_id"], settings["revision"]
    try:
        path = Path(
            hf_hub_download(repo, "model.safetensors", revision=revision, local_files_only=True)
        )
        return load_file(path), path
    except LocalEntryNotFoundError:
        pass
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    torchvision_file = torch_home / "hub" / "checkpoints" / TORCHVISION_VGG16
    if torchvision_file.is_file():
        return _read_state_file(torchvision_file), torchvision_file
    try:
        if not hub_online():
            raise LocalEntryNotFoundError("the hub is not reachable from here")
        path = Path(hf_hub_download(repo, "model.safetensors", revision=revision))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as error:
        raise FileNotFoundError(
            f"VGG16 ImageNet weights are neither in the Hugging Face cache ({repo}) nor at "
            f"{torchvision_file}, and the hub did not provide them ({type(error).__name__}: "
            f"{(str(error).splitlines() or [''])[0]})"
        ) from error
    return load_file(path), path


def _described(path: Path) -> str:
    """The file's path, and the note its safetensors metadata carries (e.g. a float16 copy for
    transport)."""
    with safe_open(str(path), "pt") as file:
        note = (file.metadata() or {}).get("note")
    return f"{path} [{note}]" if note else str(path)


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _from_file(spec: str) -> tuple[dict[str, torch.Tensor], WeightsRecord]:
    path = Path(spec).expanduser()
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise ValueError(
            f"model.net.encoder_weights={spec!r}: expected imagenet, hed, null or a "
            ".pth/.pt/.safetensors file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    try:
        state = _read_state_file(path)
    except Exception as err:  # noqa: BLE001 -- corrupt pickles and safetensors raise many types
        raise ValueError(
            f"cannot read encoder weights {path}: {str(err).splitlines()[0]}"
        ) from None
    state = {
        k.removeprefix("encoder."): v for k, v in state.items() if not k.startswith("classifier.")
    }
    return state, WeightsRecord("file", str(path), sha256(path), spec)


def resolve_encoder_weights(
    spec: str | None, fallback: bool = True
) -> tuple[dict[str, torch.Tensor] | None, WeightsRecord]:
    """Turn ``model.net.encoder_weights`` into a VGG16 encoder state dict and a record of its
    source.

    Args:
        spec: ``imagenet``, ``hed``, a weights file, or None.
        fallback: When ImageNet weights cannot be had, use HED's instead (with a warning).

    Raises:
        RuntimeError: nothing usable, with the fix.
    """
    if spec is None or str(spec).lower() in ("none", "null"):
        return None, WeightsRecord("none", requested="none")
    if spec == "hed":
        state, path = hed_state_dict()
        return state, WeightsRecord("hed-bsds500", _described(path), sha256(path), "hed")
    if spec == "imagenet":
        return _imagenet_or_hed(fallback)
    return _from_file(str(spec))


def _imagenet_or_hed(fallback: bool) -> tuple[dict[str, torch.Tensor], WeightsRecord]:
    """torchvision's ImageNet VGG16; where it cannot be had, HED's with ``fallback`` (a warning,
    recorded as ``hed-bsds500``), else an error naming the fixes."""
    try:
        state, path = _imagenet_state_dict()
        return state, WeightsRecord("imagenet", str(path), sha256(path), "imagenet")
    except (OSError, ValueError) as err:
        if not fallback:
            raise RuntimeError(
                f"ImageNet VGG16 weights unavailable: {err}. Fix: run `python -m "
                "segment.models fetch imagenet` with internet access, put torchvision's "
                "vgg16-397923af.pth in $TORCH_HOME/hub/checkpoints/, set "
                "model.net.encoder_weights=<file> or =hed, or allow "
                "model.weights_fallback=true."
            ) from err
        # one line, once: a Python warning beside it printed it twice on the console
        log.warning(
            "ImageNet VGG16 weights unavailable (%s); FALLING BACK to HED-BSDS500 VGG16 "
            "weights (ImageNet VGG16 fine-tuned for edges). Results will be recorded as "
            "hed-bsds500.",
            err,
        )
    state, path = hed_state_dict()
    return state, WeightsRecord("hed-bsds500", _described(path), sha256(path), "imagenet")


def load_encoder_weights(
    encoder: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` into a VGG16 encoder; any missing or unexpected key is an error that lists
    them."""
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"encoder weights from {source} do not fit a VGG16 encoder: missing "
            f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected "
            f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"encoder weights from {source} have wrong shapes: {wrong[:5]}")
    encoder.load_state_dict(state)
