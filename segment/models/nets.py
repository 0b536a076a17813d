"""Building the segmentation net from its config, with pretrained encoder weights recorded honestly.

- smp nets with a VGG16 encoder (``unet_vgg``) and the lab's VGG16 U-Net get their
  encoder weights from :func:`~segment.models.weights.resolve_encoder_weights` (ImageNet, else HED,
  files; the source used is recorded);
- any other smp architecture and encoder (``model=smp``) uses smp's own pretrained
  mechanism (the Hugging Face cache), recorded as ``smp:<weights>``;
- other nets (``LabUNet``) are built as configured, from scratch.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import segmentation_models_pytorch as smp
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from hydra.utils import get_object, instantiate
from torch import nn

from segment.config.names import did_you_mean
from segment.files import sha256
from segment.models.weights import (
    WeightsRecord,
    hub_online,
    load_encoder_weights,
    resolve_encoder_weights,
)

__all__ = ["build_net", "check_image_size", "size_multiple"]

log = logging.getLogger(__name__)


def _check_net(config: dict[str, Any]) -> None:
    """What the config schema cannot know: the encoder must be one smp has (its keys are checked by
    ``segment.config.schema``)."""
    encoder = config.get("encoder_name")
    if encoder is not None and "segmentation_models_pytorch" in str(config.get("_target_")):
        if encoder not in smp.encoders.encoders:
            hint = did_you_mean(encoder, smp.encoders.encoders, n=3)
            raise ValueError(
                f"model.net.encoder_name={encoder!r} is not an smp encoder"
                f"{'; ' + hint if hint else ''} (list: smp.encoders.get_encoder_names())"
            )


def size_multiple(net: nn.Module) -> int:
    """What the height and width of a net's input must be multiples of: its encoder's total
    downsampling."""
    encoder = getattr(net, "encoder", None)
    return int(getattr(encoder, "output_stride", None) or getattr(net, "size_multiple", 1))


def check_image_size(size: Sequence[int] | None, multiple: int) -> None:
    """Refuse an input ``size`` (height, width) that is not a multiple of a net's downsampling,
    naming the nearest size that fits."""
    if size and any(int(s) % multiple for s in size):
        fitting = [-(-int(s) // multiple) * multiple for s in size]
        raise ValueError(
            f"data.image_size={list(size)}: this net downsamples {multiple}x, so height and "
            f"width must be multiples of {multiple}; try data.image_size={fitting}"
        )


def build_net(
    config: dict[str, Any], num_classes: int, fallback: bool
) -> tuple[nn.Module, WeightsRecord]:
    """Instantiate the net for ``num_classes`` and load its pretrained encoder weights.

    Args:
        config: The ``model.net`` config (``_target_`` and arguments).
        num_classes: Output channels (``classes``).
        fallback: ImageNet VGG16 weights unavailable -> HED's, with a warning.

    Returns:
        The net and a record of the encoder weights it started from.
    """
    _check_net(config)
    if "encoder_weights" not in config and (default := _default_weights(config)) is not None:
        # what the class loads when the key is absent (smp's nets: imagenet): resolved and
        # recorded as if the config had said it
        config = {**config, "encoder_weights": default}
    spec = config.get("encoder_weights")
    if spec is None:
        return instantiate(config, classes=num_classes), WeightsRecord("none", requested="none")
    if config.get("encoder_name") == "vgg16" or _is_lab_vgg(config):
        net = instantiate({**config, "encoder_weights": None}, classes=num_classes)
        state, record = resolve_encoder_weights(spec, fallback=fallback)
        if _is_lab_vgg(config):  # blocks 1-4 only: VGG16's conv5 is not part of the lab's net
            state = {key: value for key, value in state.items() if key in net.encoder.state_dict()}
        load_encoder_weights(net.encoder, state, str(record))
        log.info("encoder weights: %s", record)
        return net, record
    return _instantiate_smp(config, num_classes), _smp_record(config.get("encoder_name"), str(spec))


def _default_weights(config: dict[str, Any]) -> str | None:
    """The ``encoder_weights`` default of the net's class, or None where it takes none."""
    try:
        parameter = inspect.signature(get_object(config["_target_"])).parameters["encoder_weights"]
    except (KeyError, ImportError, ValueError, TypeError):
        return None
    return None if parameter.default is inspect.Parameter.empty else parameter.default


def _smp_record(encoder: str | None, spec: str) -> WeightsRecord:
    """What smp loaded: the file in the Hugging Face cache and its sha256, where smp names one."""
    settings = (
        smp.encoders.encoders.get(encoder or "", {}).get("pretrained_settings", {}).get(spec, {})
    )
    try:
        path = hf_hub_download(
            settings["repo_id"],
            "model.safetensors",
            revision=settings.get("revision"),
            local_files_only=True,
        )
    except (KeyError, LocalEntryNotFoundError, OSError):
        return WeightsRecord(f"smp:{spec}", requested=spec)
    return WeightsRecord(f"smp:{spec}", str(path), sha256(path), spec)


def _is_lab_vgg(config: dict[str, Any]) -> bool:
    return str(config.get("_target_", "")).rsplit(".", 1)[-1] == "LabVGGUNet"


def _instantiate_smp(config: dict[str, Any], num_classes: int) -> nn.Module:
    """Instantiate a net whose pretrained weights smp itself fetches (the Hugging Face cache or
    hub); offline, an empty cache is said at once, without the hub's retries."""
    try:
        settings = smp.encoders.encoders[config["encoder_name"]]["pretrained_settings"]
        weights = settings[str(config["encoder_weights"])]
    except (KeyError, TypeError):
        weights = None  # smp names the unknown weights itself
    if weights is not None and not hub_online():
        try:  # at smp's revision: smp caches a snapshot of it, with no ref to "main"
            hf_hub_download(
                weights["repo_id"],
                "model.safetensors",
                revision=weights.get("revision"),
                local_files_only=True,
            )
        except LocalEntryNotFoundError as error:
            raise RuntimeError(
                f"could not obtain encoder weights {config['encoder_weights']!r} for "
                f"{config.get('encoder_name')!r}: not in the Hugging Face cache, and the hub is "
                "not reachable. Run once with internet access to fill the cache (HF_HOME), or set "
                "model.net.encoder_weights=null."
            ) from error
    try:
        return instantiate(config, classes=num_classes)
    except Exception as err:
        # Hydra wraps the hub's errors in an InstantiationException; find the hub's own
        cause = err
        while cause is not None and not isinstance(
            cause, LocalEntryNotFoundError | OfflineModeIsEnabled | OSError
        ):
            cause = cause.__cause__
        if cause is None:
            raise
        raise RuntimeError(
            f"could not obtain encoder weights {config['encoder_weights']!r} for "
            f"{config.get('encoder_name')!r}: {cause}. Run once with internet access to fill the "
            "Hugging Face cache (HF_HOME), or set model.net.encoder_weights=null."
        ) from err
