"""Overrides and names: Hydra's override grammar read in one place (:func:`parse_overrides`), the
keys that do not define a run (:data:`INFRASTRUCTURE` and its kin), run identities and job folder
names, and the one walk over a config as data (:func:`nodes`)."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import itertools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import ListConfig, OmegaConf

from segment.run.record import record_or_new

__all__ = [
    "ATTEMPT",
    "INFRASTRUCTURE",
    "MAX_NAME",
    "RESUMABLE",
    "ROLE",
    "comparable",
    "did_you_mean",
    "identity",
    "is_infrastructure",
    "job_name",
    "nodes",
    "ordered",
    "parse_overrides",
    "place_keys",
    "short_names",
    "sweep_dir",
    "sweep_jobs",
    "this_job_name",
    "swept_keys",
    "value_text",
]


# How one attempt treats its folder.
ATTEMPT = ("ckpt_path", "skip_completed", "overwrite")

# Where things are, how a run is shown, logged, continued or reported on: never what it trains.
INFRASTRUCTURE = (
    *ATTEMPT,
    "hydra",
    "paths",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "task_name",
    "tags",
    "extras",
    "logger",
    "study",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)

# What a resume may change besides: how long training goes on.
RESUMABLE = (
    *INFRASTRUCTURE,
    "trainer.max_epochs",
    "trainer.max_steps",
    "measurement.max_images",
    "callbacks.thresholds.stop_when_reached",
)

MAX_NAME = 120  # bytes of a job folder name (filesystems allow 255)

_CONTEXT_GROUPS = ("data", "experiment")  # the same for a whole sweep, as a rule: last in names


def is_infrastructure(key: str, keys: Sequence[str] = INFRASTRUCTURE) -> bool:
    """Whether a dotted key (or config group, ``data/transforms``) is one of ``keys`` or below
    one."""
    key = key.replace("/", ".")
    return any(key == name or key.startswith(name + ".") for name in keys)


def place_keys(config: Any) -> tuple[str, ...]:
    """The keys of a config (plain containers, unresolved) whose value interpolates ``paths.*`` or
    Hydra's runtime: where files go, whatever the key is called."""
    return tuple(
        place
        for place, value in nodes(config, lists=False)
        if not isinstance(value, dict)
        and "${" in str(value)
        and ("paths." in str(value) or "hydra:" in str(value))
    )


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["model=unet_vgg", "data.image_size=[128,160]"]`` -> ``{"model": "unet_vgg",
    "data.image_size": [128, 160]}``.

    Hydra's own grammar: typed values (``1e-4`` -> ``0.0001``), no ``+``/``++``; a deletion
    (``~key``) maps to None, a sweep (``seed=0,1``) to its list of strings. An item Hydra cannot
    parse: ``ValueError`` naming it.
    """
    parser = OverridesParser.create()
    parsed: dict[str, Any] = {}
    for item in items:
        try:
            [override] = parser.parse_overrides([str(item)])
        except Exception as error:  # noqa: BLE001 -- Hydra raises its own OverrideParseException
            raise ValueError(f"cannot parse the override {item!r}: {error}") from None
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        if override.is_sweep_override():
            parsed[key] = list(override.sweep_string_iterator())
        else:
            parsed[key] = None if override.is_delete() else override.value()
    return parsed


def identity(overrides: Iterable[str], swept: Iterable[str] = ()) -> dict[str, Any]:
    """The overrides that say what a run trains: :func:`parse_overrides` without
    :data:`INFRASTRUCTURE`, but with any key of ``swept`` (a sweep over ``data.root`` trains on
    each root, and names each)."""
    swept = set(swept)
    return {
        key: value
        for key, value in parse_overrides(overrides).items()
        if key in swept or not is_infrastructure(key)
    }


# What an export writes in place of a machine path (segment.analysis.export): its role
# (``<data.root>``), anywhere in a value, or a home folder (``~/``); what it was is unknown.
ROLE = re.compile(r"<[\w.-]+>")
_EXPORTED = re.compile(rf"{ROLE.pattern}|(?<![\w.])~(?=/)")


def comparable(saved: Sequence[str], asked: Sequence[str]) -> tuple[list[str], list[str]]:
    """A run's saved overrides and the asked ones, each less the keys whose saved value an export
    replaced by a role or home: unknown there, they are never compared (nor parsed)."""

    def key(item: str) -> str:
        return item.partition("=")[0].lstrip("+~")

    unknown = {key(item) for item in saved if _EXPORTED.search(item.partition("=")[2])}
    return [i for i in saved if key(i) not in unknown], [i for i in asked if key(i) not in unknown]


def value_text(value: Any) -> str:
    """A value as a name: ``[128, 160]`` -> ``128x160``, ``0.0003`` -> ``3e-4``, ``/a/b`` ->
    ``a_b-<hash4>``."""
    if isinstance(value, list | tuple | ListConfig):  # a config's own list too: 96x128
        return "x".join(value_text(item) for item in value) or "empty"
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float) and value and abs(value) < 1e-2 and math.isfinite(value):
        mantissa, exponent = f"{value:.3e}".split("e")  # 4 significant digits: a sampled 2.3457e-4
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, float) and math.isfinite(value) and value != round(value):
        return f"{value:.4g}"
    text = str(value)
    safe = _safe(text).strip("_") or "x"
    # two values must not share a name: a lossy replacement carries a hash of what it replaced
    return safe if safe == text else f"{safe}-{_digest(text)}"


def _safe(text: str) -> str:
    """``text`` with each run of characters other than ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _digest(text: str, length: int = 4) -> str:
    """A short hash that tells apart names a lossy shortening made equal."""
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key's last part (``model.optimizer.lr`` -> ``lr``) where no other key of
    ``keys`` shares it and it says something on its own (not ``_target_``)."""
    tails = [key.replace("/", ".").rsplit(".", 1)[-1] for key in keys]
    return {
        key: tail
        if tails.count(tail) == 1 and tail not in keys and not tail.startswith("_")
        else key.replace("/", ".")
        for key, tail in zip(keys, tails, strict=True)
    }


def ordered(values: dict[str, Any], groups: Iterable[str]) -> list[str]:
    """Keys in name order: config-group choices (``model``, ``protocol``), top-level keys
    (``seed``), dotted keys, then the sweep's context (``data``, ``experiment``); sorted within
    each."""
    groups = set(groups)

    def rank(key: str) -> tuple[int, str]:
        if key in _CONTEXT_GROUPS:
            return 3, key
        return (0 if key in groups else 1 if "." not in key else 2), key

    return sorted(values, key=rank)


def job_name(
    overrides: Sequence[str], groups: Iterable[str] = (), swept: Iterable[str] = ()
) -> str:
    """A job's overrides as a folder name of ``[A-Za-z0-9._-]`` only:
    ``model-unet_vgg__seed-0__lr-1e-4``.

    Deterministic, so a continued or extended sweep finds its jobs again; keys in :func:`ordered`
    order, dotted ones by their last part; :data:`INFRASTRUCTURE` left out, except a
    ``data.root`` the sweep varies. In a sweep (``swept``: the keys it varies) a dotted key the
    sweep holds constant is left out too (``num_train-48__max_epochs-3`` in every name said
    nothing); config-group choices and top-level keys stay. Past :data:`MAX_NAME` bytes, whole
    items are dropped from the end and a hash of the full name is appended.
    """
    parsed, swept = parse_overrides(overrides), set(swept)
    values = {
        key: value
        for key, value in parsed.items()
        if not is_infrastructure(key)
        and (not swept or key in swept or "." not in key.replace("/", "."))
    }
    if "data.root" in swept and parsed.get("data.root"):  # its folder's name, told apart by a hash
        root = str(parsed["data.root"])
        values["data.root"] = f"{Path(root).name}-{_digest(root)}"
    keys = ordered(values, groups)
    names = short_names(keys)
    items = [f"{_safe(names[key])}-{value_text(values[key])}" for key in keys]
    name = "__".join(items) or "defaults"
    if len(name) > MAX_NAME:
        digest = _digest(name, 8)
        kept: list[str] = []
        for item in items:
            if len("__".join([*kept, item, digest])) > MAX_NAME:
                break
            kept.append(item)
        name = "__".join([*kept, digest])[-MAX_NAME:]
    return name


def _sweep_lists() -> dict[str, list[str]] | None:
    """Each key of the running multirun with its jobs' overrides (sweeper params, then the
    command line, which replaces a param of the same key), from the ``multirun.yaml`` Hydra
    writes; None outside a multirun."""
    hydra = HydraConfig.get()
    if hydra.mode is None or hydra.mode.name != "MULTIRUN":
        return None
    try:
        task = list(OmegaConf.load(Path(hydra.sweep.dir) / "multirun.yaml").hydra.overrides.task)
    except Exception:  # noqa: BLE001 -- a single run, or a launcher that wrote no multirun.yaml
        return None
    params = [
        f"{key}={value}" for key, value in (OmegaConf.select(hydra, "sweeper.params") or {}).items()
    ]
    lists: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides([*params, *task]):
        try:
            values = override.sweep_string_iterator() if override.is_sweep_override() else None
        except Exception:  # noqa: BLE001 -- a sampled range (Optuna's interval): it varies
            values = ["sampled", "values"]
        lists[override.key_or_group] = (
            [f"{override.get_key_element()}={v}" for v in values]
            if values is not None
            else [override.input_line]
        )
    return lists


def swept_keys() -> set[str]:
    """The keys the running multirun gives more than one value (none outside a multirun, or
    without Hydra)."""
    lists = (_sweep_lists() if HydraConfig.initialized() else None) or {}
    return {key for key, values in lists.items() if len(values) > 1}


def _found_again(name: str, overrides: Sequence[str], swept: Iterable[str]) -> str:
    """``name``, or the running sweep's folder whose run has this job's :func:`identity` (with the
    ``swept`` keys, as names have) under another name (a sweep begun by an earlier version, or
    before a constant was swept): a continued sweep finds its jobs again, two jobs never one."""
    sweep = Path(sweep_dir() or "")
    if sweep == Path() or (sweep / name).exists() or not sweep.is_dir():
        return name
    found = []
    for folder in (f for f in sweep.iterdir() if f.is_dir()):
        record = record_or_new(folder)  # a damaged one is named in a warning: not this job's
        if not record.attempts:
            continue
        theirs, mine = comparable(record.attempts[0].overrides, overrides)
        with contextlib.suppress(ValueError):  # overrides Hydra cannot parse: not this job's
            if identity(theirs, swept) == identity(mine, swept):
                found.append(folder.name)
    return found[0] if len(found) == 1 else name


def this_job_name() -> str:
    """The running job's folder name (the ``${job_name:}`` resolver): :func:`job_name` of its
    overrides, or the folder its run already has in the sweep; ``run`` outside Hydra."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is None:
        return "run"
    task, swept = list(hydra.overrides.task), swept_keys()
    return _found_again(job_name(task, hydra.runtime.choices.keys(), swept), task, swept)


def sweep_jobs() -> list[str]:
    """The job folder names of the running multirun (this job alone outside one), in launch
    order."""
    hydra, lists, swept = HydraConfig.get(), _sweep_lists(), swept_keys()
    if lists is None:
        return [job_name(list(hydra.overrides.task), hydra.runtime.choices.keys())]
    return [
        _found_again(job_name(list(job), hydra.runtime.choices.keys(), swept), job, swept)
        for job in itertools.product(*lists.values())
    ]


def nodes(node: Any, where: str = "", lists: bool = True) -> Iterator[tuple[str, Any]]:
    """Every node of nested plain containers with its place (``model.net``, ``tags[0]``), the root
    first; ``lists=False`` takes a list as a leaf. The one walk over a config as data."""
    yield where, node
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if lists and isinstance(node, list | tuple)
        else ()
    )
    for key, value in items:
        place = f"{where}[{key}]" if not isinstance(node, dict) else f"{where}.{key}".lstrip(".")
        yield from nodes(value, place, lists)


def did_you_mean(word: str, options: Iterable[str], prefix: str = "", n: int = 1) -> str:
    """``"did you mean <prefix><closest>?"`` (up to ``n`` closest, joined by "or"), or ``""``."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=n)
    return f"did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


def sweep_dir() -> str | None:
    """The running multirun's folder; None in a single run or outside Hydra."""
    mode = HydraConfig.get().mode if HydraConfig.initialized() else None
    if mode is None or mode.name != "MULTIRUN":
        return None
    return str(HydraConfig.get().sweep.dir)
