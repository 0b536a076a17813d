"""Config validation before anything is built: each ``_target_`` node against its target's
signature.

The top level is :class:`segment.config.compose.TrainSchema` (checked by Hydra while composing).
The nodes with a ``_target_`` are checked here against the parameters of the class they name,
which are their real schema. Kept rather than left to the libraries because the messages are
better: a misspelt key is named with its config path and the closest allowed names (a class raises
``TypeError: unexpected keyword`` without the path, smp encoders drop unknown keys silently), a
wrong type with the expected one, before any weights load.
"""

from __future__ import annotations

import contextlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from segment.config.names import did_you_mean, nodes

__all__ = ["ConfigError", "validate"]


class ConfigError(ValueError):
    """A config value or key that cannot work; the message names the key."""


_SMP = "segmentation_models_pytorch"
_SKIP = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}
_SCALARS = {
    bool: bool,
    int: int,
    float: int | float,
    str: str,
    Path: str | Path,
}  # hint -> accepted values


def validate(cfg: DictConfig) -> None:
    """Check every ``_target_`` node of a train config against its target's signature.

    Raises:
        ConfigError: naming the key, what is wrong and the allowed names or type.
    """
    for key in ("data", "model", "trainer"):
        if key not in cfg or cfg[key] is None:
            raise ConfigError(f"{key}: missing; choose one with {key}=<name> (see conf/{key}/)")
    raw = OmegaConf.to_container(cfg)  # unresolved: interpolations and ??? stay as they are
    for path, node in nodes({k: v for k, v in raw.items() if k != "hydra"}):
        if isinstance(node, dict) and "_target_" in node:
            _check_node(path, node)
    if "classes" in (cfg.model.get("net") or {}):
        raise ConfigError(
            "model.net.classes: the number of classes comes from the dataset (its class names); "
            "remove the key, or choose another data config"
        )
    lr = OmegaConf.select(cfg, "model.optimizer.lr")
    if isinstance(lr, int | float) and not 0 < lr < 3.4e38:  # torch keeps rates in float32 too
        raise ConfigError(
            f"model.optimizer.lr={lr}: must be above 0 (0 trains nothing) and below 3.4e38 "
            "(float32's largest number)"
        )
    try:  # the trainer's resolvers (images_to_steps) check their values: their message, as ours
        OmegaConf.to_container(cfg.trainer, resolve=True)
    except InterpolationResolutionError as error:
        cause: BaseException = error  # OmegaConf wraps the resolver's error, unchained
        while isinstance(cause, InterpolationResolutionError) and cause.__context__ is not None:
            cause = cause.__context__
        raise ConfigError(f"{error.full_key}: {cause}") from None
    _check_input_size(cfg)
    accelerator = str(cfg.trainer.get("accelerator"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} (trainer=gpu) needs a CUDA GPU, and none is "
            "visible here: train on the CPU with the default trainer (accelerator auto) or "
            "trainer=cpu"
        )
    for key in ("max_epochs", "max_steps", "limit_train_batches", "val_check_interval"):
        value, limit = cfg.trainer.get(key), key.startswith("max_")  # a limit of -1: none
        if isinstance(value, int | float) and (value == 0 or not limit and value < 0):
            raise ConfigError(
                f"trainer.{key}={value}: trains (or validates) nothing and keeps no checkpoint; "
                "give a number above 0 (-1: no limit, for max_epochs with trainer.max_steps)"
            )
    t_max = OmegaConf.select(cfg, "model.scheduler.scheduler.T_max")
    if isinstance(t_max, int) and t_max < 1:
        raise ConfigError(
            f"model.scheduler.scheduler.T_max={t_max}: the cosine schedule decays over 1 or "
            "more epochs (trainer.max_epochs; -1 where a run is counted in steps, e.g. "
            "measurement=images): choose a schedule that does not follow the run's length, "
            "scheduler=warmup_constant, or give T_max"
        )
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and not clip > 0:  # Lightning takes any number and clips to it
        raise ConfigError(
            f"trainer.gradient_clip_val={clip}: must be > 0 (the largest gradient norm), or null"
        )


def input_multiple(config: Any) -> int | None:
    """What a net config's input height and width must be multiples of, from the config alone
    (what ``segment.models.nets.size_multiple`` says of the net it builds): a class's own
    ``size_multiple``, else smp's ``encoder_output_stride`` or ``2 ** encoder_depth`` (given, or
    the class's default). None where only the built net can tell."""
    try:
        target = get_object(config["_target_"])
    except Exception:  # noqa: BLE001 -- the target check names an unimportable target itself
        return None
    if isinstance(getattr(target, "size_multiple", None), int):
        return target.size_multiple
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    given = {
        key: config.get(key, parameters[key].default)
        for key in ("encoder_output_stride", "encoder_depth")
        if key in parameters
    }
    if isinstance(given.get("encoder_output_stride"), int):
        return given["encoder_output_stride"]
    depth = given.get("encoder_depth")
    return 2**depth if isinstance(depth, int) else None


def _check_input_size(cfg: DictConfig) -> None:
    """``data.image_size`` against what the net's downsampling takes, before any image is read."""
    size = OmegaConf.select(cfg, "data.image_size")
    net = OmegaConf.select(cfg, "model.net")
    multiple = input_multiple(OmegaConf.to_container(net)) if isinstance(net, DictConfig) else None
    if multiple and size is not None and any(int(s) % multiple for s in size):
        fitting = [-(-int(s) // multiple) * multiple for s in size]
        raise ConfigError(
            f"data.image_size={list(size)}: this net downsamples {multiple}x, so height and width "
            f"must be multiples of {multiple}; try data.image_size={fitting}"
        )


def _parameters(obj: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]] | None:
    """Named parameters and type hints of a callable; for a class, of the ``__init__`` chain along
    which this package's classes forward ``**kwargs`` to their base. None where it takes
    arbitrary keywords in the end."""
    functions = _init_chain(obj) if inspect.isclass(obj) else [obj]
    if functions is None:
        return None
    parameters: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    for function in functions:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return None
        parameters.update(
            {
                k: p
                for k, p in signature.parameters.items()
                if k != "self" and p.kind not in variadic
            }
        )
        with contextlib.suppress(Exception):  # unresolvable annotations: check names only
            found = typing.get_type_hints(function)
            hints.update({k: v for k, v in found.items() if k not in hints})
    if _takes_kwargs(functions[-1]) and not functions[-1].__module__.startswith(_SMP):
        return None
    return parameters, hints


def _init_chain(klass: type) -> list[Any] | None:
    """The ``__init__``s a class's keys go through: its own, then its bases' where this package's
    classes forward ``**kwargs``; None where they go somewhere not ours to know."""
    functions = []
    for base in klass.__mro__:
        if base is object:
            return None
        if "__init__" not in base.__dict__:
            continue
        functions.append(base.__init__)
        if not _takes_kwargs(base.__init__) or base.__module__.startswith(_SMP):
            return functions  # smp hands **kwargs to encoders that drop unknown keys
        if not base.__module__.startswith("segment."):
            return None
    return functions


def _takes_kwargs(function: Any) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _target(path: str, node: dict[str, Any]) -> Any:
    """What a node's ``_target_`` names (for ``smp.create_model``: the architecture ``arch``
    names, whose keys the node gives)."""
    target = node["_target_"]
    try:
        obj = get_object(target)
    except Exception as error:
        raise ConfigError(f"{path}._target_={target!r} cannot be imported: {error}") from error
    if target != f"{_SMP}.create_model":
        return obj
    names = get_object(f"{_SMP}.MODEL_ARCHITECTURES_MAPPING")
    arch = str(node.get("arch")).lower()
    if arch not in names:
        hint = did_you_mean(arch, names, n=3) or "architectures:"
        raise ConfigError(
            f"{path}.arch={node.get('arch')!r} is not an smp architecture; {hint} "
            f"({', '.join(names)})"
        )
    return names[arch]


def _check_node(path: str, node: dict[str, Any]) -> None:
    target, obj = node["_target_"], _target(path, node)
    found = _parameters(obj)
    if found is None:
        return  # takes anything; its own checks apply
    parameters, hints = found
    for key in node:
        if key in _SKIP or (key == "arch" and target.endswith(".create_model")):
            continue
        if key not in parameters:
            hint = f"{did_you_mean(key, parameters, n=3)} ".lstrip()
            raise ConfigError(
                f"{path}.{key}: {target} has no argument {key!r}; {hint}allowed: "
                f"{', '.join(sorted(parameters))}"
            )
        value = node[key]
        if key in hints and not (isinstance(value, str) and ("${" in value or value == "???")):
            # None is fine wherever None is the default, whatever the annotation says
            if not (value is None and parameters[key].default is None) and not _conforms(
                value, hints[key]
            ):
                raise ConfigError(
                    f"{path}.{key}={value!r}: expected {_type_name(hints[key])} (argument "
                    f"of {target})"
                )


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arm) for arm in typing.get_args(hint))
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "").replace("collections.abc.", "")
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a config value can be passed where ``hint`` is expected (lenient where unsure)."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if value is None:
        return False
    if hint in _SCALARS:
        return isinstance(value, _SCALARS[hint]) and not (
            hint is not bool and isinstance(value, bool)
        )
    base = origin or hint
    if (
        inspect.isclass(base) and issubclass(base, Sequence) and base is not str
    ):  # list, tuple, Sequence[...]
        if not isinstance(value, list | tuple):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return len(args) != 1 or all(_conforms(item, args[0]) for item in value)
    if inspect.isclass(base) and issubclass(base, Mapping):
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is torch.Tensor:  # e.g. a learning rate typed float | Tensor
        return _conforms(value, float)
    return True  # other classes, callables...: the target checks them itself
