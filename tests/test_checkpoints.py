"""Checkpoint files: atomic writes across filesystems, readable errors, the newest loadable one,
and an allow-list for what a checkpoint may build."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import struct
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
from lightning import Callback
from segmentation_models_pytorch.encoders import TimmUniversalEncoder
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder

from segment.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    load_module,
    newest_checkpoint,
    read_checkpoint,
    verify_checksum,
)
from segment.config.trust import check_trusted_targets
from segment.evaluating import load_checkpoint
from segment.files import sha256
from segment.models import SegmentationModule
from segment.run.record import RunRecord, read_record, write_record
from tests.helpers import REPO, run_script

# Save once, then save again and die at the most exposed moment of the second save: during a
# cross-device move's copy into the target (Lightning's fsspec transaction writes in $TMPDIR and
# moves), or just before the rename (ours).
_KILLED_SAVE = """
import os, shutil, signal, sys, torch
from pathlib import Path
dest, which = Path(sys.argv[1]), sys.argv[2]
if which == "atomic":
    from segment.checkpoints import AtomicCheckpointIO as IO
else:
    from lightning.pytorch.plugins.io import TorchCheckpointIO as IO
io = IO()
io.save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}, "version": 1}, dest)
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
os.sendfile = shutil.copyfileobj = os.fsync = die
io.save_checkpoint({"state_dict": {"w": torch.ones(100_000)}, "version": 2}, dest)
"""


@pytest.fixture
def other_filesystem() -> Path:
    """A folder on another filesystem than $TMPDIR (/dev/shm vs /tmp), as on clusters."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than $TMPDIR")
    folder = shm / f"segment-test-{uuid.uuid4().hex}"
    folder.mkdir()
    yield folder
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder.rmdir()


def _killed_save(dest: Path, which: str) -> None:
    env = {**os.environ, "TMPDIR": tempfile.gettempdir()}
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_SAVE, str(dest), which],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr[-2000:]


def test_a_kill_during_a_save_keeps_the_previous_checkpoint(other_filesystem: Path) -> None:
    dest = other_filesystem / "checkpoints" / "last.ckpt"
    _killed_save(dest, "atomic")
    assert read_checkpoint(dest)["version"] == 1  # the previous checkpoint, whole
    leftovers = [p.name for p in dest.parent.iterdir() if p.name != "last.ckpt"]
    assert all(
        name.startswith(".last.ckpt.") and name.endswith(".partial") for name in leftovers
    ), leftovers


def test_lightning_default_writer_loses_the_checkpoint_across_filesystems(
    other_filesystem: Path,
) -> None:
    """Why AtomicCheckpointIO exists; when a Lightning upgrade makes this fail, the plugin can
    go."""
    dest = other_filesystem / "last.ckpt"
    _killed_save(dest, "lightning")
    with pytest.raises(CheckpointError):
        read_checkpoint(dest)


def test_trainer_config_writes_checkpoints_atomically(make_cfg) -> None:
    from hydra.utils import instantiate

    trainer = instantiate(make_cfg().trainer, precision="32-true")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_unreadable_checkpoints_are_named_and_never_unpickled(tmp_path: Path) -> None:
    (tmp_path / "text.ckpt").write_text("epoch: 3\nthis is not a checkpoint\n")
    (tmp_path / "random.ckpt").write_bytes(random.Random(0).randbytes(4096))
    torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(1000)}}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    for name in ("text.ckpt", "random.ckpt", "truncated.ckpt"):
        message = rf"ckpt_path=.*{name} is not a checkpoint: not a torch archive"
        with pytest.raises(CheckpointError, match=message) as info:
            read_checkpoint(tmp_path / name)
        assert "weights_only" not in str(info.value) and info.value.__cause__ is None

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"global_step": 1, "extra": Payload()}, tmp_path / "code.ckpt")
    with pytest.raises(
        CheckpointError, match=r"code.ckpt holds objects other than tensors"
    ) as info:
        read_checkpoint(tmp_path / "code.ckpt")
    assert "weights_only" not in str(info.value) and info.value.__cause__ is None
    with pytest.raises(
        CheckpointError,
        match=r"whole.ckpt is not a train.py checkpoint: it has no hyper_parameters",
    ):
        read_checkpoint(tmp_path / "whole.ckpt", require=("hyper_parameters",))


def test_newest_loadable_checkpoint_is_found(tmp_path: Path) -> None:
    assert newest_checkpoint(tmp_path / "none") is None
    torch.save({"global_step": 12}, tmp_path / "epoch001-val_loss0.9.ckpt")
    torch.save({"global_step": 6}, tmp_path / "epoch000-val_loss1.2.ckpt")
    assert newest_checkpoint(tmp_path) == tmp_path / "epoch001-val_loss0.9.ckpt"
    (tmp_path / "last.ckpt").write_bytes(b"")  # killed while Lightning wrote it
    assert newest_checkpoint(tmp_path) == tmp_path / "epoch001-val_loss0.9.ckpt"
    torch.save({"global_step": 12}, tmp_path / "last.ckpt")
    assert newest_checkpoint(tmp_path) == tmp_path / "last.ckpt"  # last.ckpt wins a tie


# Three payloads a crafted checkpoint could hide in its net config; each would write a file.
def _payloads(target: Path) -> list[dict]:
    return [
        {"_target_": "pathlib.Path.write_text", "self": str(target), "data": "pwned"},
        {"_target_": "builtins.open", "file": str(target), "mode": "w"},
        {"_target_": "shutil.copyfile", "src": __file__, "dst": str(target)},
    ]


@pytest.mark.parametrize(
    "index", [0, 1, 2], ids=["Path.write_text", "builtins.open", "shutil.copyfile"]
)
def test_a_crafted_checkpoint_builds_nothing_outside_the_allow_list(
    tmp_path: Path, index: int
) -> None:
    target = tmp_path / "written_by_checkpoint.txt"
    module = SegmentationModule(
        net={"_target_": "segment.models.LabUNet", "channels": [4, 8, 16]},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        class_names=["a", "b"],
    )
    hparams = dict(module.hparams)
    hparams["net"] = {**hparams["net"], "dropout": _payloads(target)[index]}
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    with pytest.raises(
        CheckpointError, match=r"hyper_parameters.net.dropout: refusing to build _target_="
    ):
        load_module(path)
    assert not target.exists()


def test_allow_list_takes_nets_losses_optimisers_and_schedulers() -> None:
    for target in (
        "segmentation_models_pytorch.Unet",
        "segment.models.LabVGGUNet",
        "torch.nn.CrossEntropyLoss",
        "segmentation_models_pytorch.losses.LovaszLoss",
        "torch.optim.AdamW",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "segmentation_models_pytorch.create_model",
    ):
        check_trusted_targets({"_target_": target}, "test")
    for target in (
        "os.system",
        "segmentation_models_pytorch.os.system",
        "torch.load",
        "torch.nn.functional.relu",
        "segment.models.module.torch.save",
        "subprocess.run",
    ):
        with pytest.raises(CheckpointError, match="refusing to build"):
            check_trusted_targets({"a": [{"_target_": target}]}, "test")


def _crafted_checkpoint(tmp_path: Path, where: str, target: Path) -> Path:
    """A real checkpoint whose string at ``where`` (dotted) would make OmegaConf build a file
    writer."""
    module = SegmentationModule(
        net={"_target_": "segment.models.LabUNet", "channels": [4, 8, 16]},
        loss={"_target_": "torch.nn.CrossEntropyLoss"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        class_names=["a", "b"],
    )
    payload = (
        "${oc.create:{_target_: segment.files.write_atomic, _args_: [" + str(target) + ", pwned]}}"
    )
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "global_step": 1,
        "config": {
            "data": {
                "_target_": "segment.data.SyntheticDataModule",
                "root": "data",
                "image_size": [32, 32],
                "transforms": {},
            }
        },
    }
    node = checkpoint
    *parents, leaf = where.split(".")
    for key in parents:
        node[key] = dict(node[key])
        node = node[key]
    node[leaf] = payload
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "where", ["hyper_parameters.net.dropout", "hyper_parameters.net.channels", "config.data.root"]
)
def test_an_interpolation_in_a_checkpoint_is_refused_naming_the_key(
    tmp_path: Path, where: str
) -> None:
    """The allow-list looks at _target_ dicts; a string that OmegaConf resolves later is refused
    when the file is read, before anything is built or composed, by the module and by evaluate.py
    alike."""
    target = tmp_path / "written_by_checkpoint.txt"
    path = _crafted_checkpoint(tmp_path, where, target)
    refusal = rf"crafted.ckpt: {where}=.* may not hold interpolations or resolvers"
    with pytest.raises(CheckpointError, match=refusal):
        load_module(path)
    with pytest.raises(CheckpointError, match=refusal):
        read_checkpoint(path)
    out = tmp_path / "eval"
    result = run_script(["evaluate.py", f"ckpt_path={path}", f"hydra.run.dir={out}"], check=False)
    assert result.returncode != 0 and "may not hold interpolations or resolvers" in result.stderr
    assert not target.exists() and not (tmp_path / "data").exists()


def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(tmp_path: Path, monkeypatch) -> None:
    import errno
    import shutil
    from collections import namedtuple

    from segment.checkpoints import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)

    def full(obj, file):  # what torch 2.14's zip writer raises when the disk fills mid-write
        file.write(b"PK")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 3683136 vs 3683024"
        )

    monkeypatch.setattr(torch, "save", full)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(2**30, 2**30 - 2**19, 2**19))
    with pytest.raises(
        OSError,
        match=r"No space left on device: writing checkpoint .*last.ckpt failed with 0.5 MiB "
        r"free; the previous checkpoint is intact",
    ) as caught:
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, path)
    assert caught.value.errno == errno.ENOSPC
    assert read_checkpoint(path)["global_step"] == 1 and [p.name for p in tmp_path.iterdir()] == [
        "last.ckpt"
    ]


def test_a_full_disk_is_told_by_errno_whatever_the_free_space_reads(
    tmp_path: Path, monkeypatch
) -> None:
    """An ENOSPC in the chain of whatever torch raises names the full disk (a quota: EDQUOT)."""
    import errno

    from segment.checkpoints import AtomicCheckpointIO

    def full(obj, file):
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as cause:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . anything") from cause

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space left on device: writing checkpoint") as caught:
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, tmp_path / "last.ckpt")
    assert caught.value.errno == errno.ENOSPC


def test_positional_arguments_in_a_checkpoint_are_refused_before_anything_is_built(
    tmp_path: Path,
) -> None:
    """A checkpoint naming smp's Unet with positional arguments (resnet18, 5, imagenet) made
    evaluate.py ask the hub for weights: loading blanks only the encoder_weights key."""
    config = {
        "model": {
            "net": {
                "_target_": "segmentation_models_pytorch.Unet",
                "_args_": ["resnet18", 5, "imagenet"],
            }
        }
    }
    torch.save({"global_step": 1, "config": config}, tmp_path / "crafted.ckpt")
    with pytest.raises(
        CheckpointError,
        match=r"config.model.net._args_: a checkpoint's config may "
        r"not give positional arguments",
    ):
        read_checkpoint(tmp_path / "crafted.ckpt")


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The encoders built (``built``) and what smp's and timm's pretrained-weight loaders were
    asked for (``fetched``; each ask fails, as offline)."""
    seen: dict[str, list[str]] = {"built": [], "fetched": []}

    def fetch(*args, **kwargs):
        seen["fetched"].append(str(args[0] if args else kwargs))
        raise OSError("a test fetched pretrained weights")

    monkeypatch.setattr("segmentation_models_pytorch.encoders.hf_hub_download", fetch)
    monkeypatch.setattr("timm.models._builder.load_pretrained", fetch)
    for encoder in (ResNetEncoder, TimmUniversalEncoder):

        @functools.wraps(encoder.__init__)  # its signature stays the encoder's
        def counted(self, *args, _init=encoder.__init__, _name=encoder.__name__, **kwargs):
            _init(self, *args, **kwargs)
            seen["built"].append(_name)

        monkeypatch.setattr(encoder, "__init__", counted)
    return seen


# Nets that fetch pretrained weights by their class's default (smp's nets and create_model:
# encoder_weights="imagenet"; smp's timm encoder: pretrained=True) or by asking.
_SMALL = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [8, 8, 8]}
_FETCHING_NETS = {
    "Unet-default": {"_target_": "segmentation_models_pytorch.Unet", **_SMALL},
    "Unet-imagenet": {
        "_target_": "segmentation_models_pytorch.Unet",
        **_SMALL,
        "encoder_weights": "imagenet",
    },
    "create_model-default": {
        "_target_": "segmentation_models_pytorch.create_model",
        "arch": "Unet",
        **_SMALL,
    },
    "timm-default": {
        "_target_": "segmentation_models_pytorch.encoders.TimmUniversalEncoder",
        "name": "resnet18",
    },
}
_LAB = {"_target_": "segment.models.LabUNet", "channels": [4, 8, 16]}
_LOSS = {"_target_": "torch.nn.CrossEntropyLoss"}
_SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
# Where a checkpoint's module config may hold such a net: the hyperparameters it sets.
_PLACES = {
    "net": lambda net: {"net": net},
    "loss": lambda net: {"net": _LAB, "loss": net},
    "ModuleDict": lambda net: {"net": {"_target_": "torch.nn.ModuleDict", "modules": {"a": net}}},
    "ModuleList-in-ModuleDict": lambda net: {
        "net": {
            "_target_": "torch.nn.ModuleDict",
            "modules": {"a": {"_target_": "torch.nn.ModuleList", "modules": [net]}},
        }
    },
    "SegmentationModule": lambda net: {
        "net": {
            "_target_": "segment.models.SegmentationModule",
            "net": net,
            "loss": _LOSS,
            "optimizer": _SGD,
            "class_names": ["a", "b"],
        }
    },
}


@pytest.mark.parametrize(
    ("net", "place"),
    [
        (net, place)
        for net in _FETCHING_NETS
        for place in _PLACES
        # smp's timm encoder takes no classes or ignore_index: it is built only when nested
        if not (net.startswith("timm") and place in ("net", "loss"))
    ],
)
def test_no_net_in_a_checkpoint_fetches_weights_at_any_depth(
    tmp_path: Path, loads: dict[str, list[str]], net: str, place: str
) -> None:
    """Every allow-listed net a checkpoint names, at any depth, asking for weights or leaving the
    key to its class's default, is built by evaluate.py's loader without pretrained weights: its
    encoder was built (whether the module then loads or is refused) and nothing was fetched."""
    module = SegmentationModule(net=_LAB, loss=_LOSS, optimizer=_SGD, class_names=["a", "b"])
    hparams = {**module.hparams, **_PLACES[place](_FETCHING_NETS[net])}
    path = tmp_path / "crafted.ckpt"
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": hparams, "global_step": 1}, path
    )
    with contextlib.suppress(Exception):  # a net in a ModuleDict is no segmentation net
        load_checkpoint(path)
    assert loads["built"] and loads["fetched"] == []


def test_an_smp_checkpoint_without_encoder_weights_restores_its_own_weights_offline(
    tmp_path: Path, loads: dict[str, list[str]]
) -> None:
    """smp's default (imagenet) for an absent encoder_weights key is not fetched: the
    checkpoint's weights are the net's."""
    trained = SegmentationModule(
        net={**_FETCHING_NETS["Unet-default"], "encoder_weights": None},
        loss=_LOSS,
        optimizer=_SGD,
        class_names=["a", "b"],
    )
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01)
    hparams = {**trained.hparams, "net": _FETCHING_NETS["Unet-default"]}
    checkpoint = {"state_dict": trained.state_dict(), "hyper_parameters": hparams, "global_step": 1}
    torch.save(checkpoint, tmp_path / "a.ckpt")
    restored = load_checkpoint(tmp_path / "a.ckpt")
    assert loads["fetched"] == []
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], tensor, msg=name)


def _flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the checkpoint's largest tensor (not its pickled index)."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    with path.open("r+b") as file:
        file.seek(info.header_offset + 26)
        name, extra = struct.unpack("<HH", file.read(4))
        file.seek(info.header_offset + 30 + name + extra + info.file_size // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_a_flipped_byte_in_a_checkpoint_is_refused_on_load(hydra_train, tmp_path: Path) -> None:
    """The record holds the SHA-256 of every checkpoint the run keeps (a removed one dropped); a
    checkpoint whose bytes changed loads silently with torch, and is refused by evaluation,
    ``model.init_from`` and a continuation, which leaves the run as it was."""
    hydra_train("model=unet_lab", "trainer.max_epochs=2", "scheduler=constant")
    run = tmp_path / "run"
    files = sorted((run / "checkpoints").glob("*.ckpt"))
    sums = read_record(run).checkpoints
    assert sums == {f"checkpoints/{p.name}": [sha256(p)] for p in files} and len(files) == 2
    last = run / "checkpoints" / "last.ckpt"
    _flip_a_tensor_byte(last)
    torch.load(last, weights_only=True)  # the fault: nothing in the file tells
    before = {p.name: p.read_bytes() for p in files}
    for load in (
        lambda: load_checkpoint(last),
        lambda: hydra_train(
            "model=unet_lab",
            "trainer.max_epochs=1",
            f"model.init_from={last}",
            f"hydra.run.dir={tmp_path / 'other'}",
        ),
        lambda: hydra_train("ckpt_path=last", "trainer.max_epochs=3"),
    ):
        # init_from's error reaches the caller wrapped in Hydra's InstantiationException
        with pytest.raises(Exception, match=r"last\.ckpt is damaged: its SHA-256"):
            load()
    assert {p.name: p.read_bytes() for p in files} == before
    record = read_record(run)
    assert record.status == "completed" and record.attempts[-1].outcome == "refused"


class FlipBestAtFitEnd(Callback):
    """Damages the best checkpoint between the fit and ``test_after_fit``'s load of it."""

    def on_fit_end(self, trainer, pl_module) -> None:
        _flip_a_tensor_byte(Path(trainer.checkpoint_callback.best_model_path))


def test_the_best_checkpoint_is_checked_before_the_test_after_fit_loads_it(
    hydra_train, tmp_path: Path
) -> None:
    """Lightning loads checkpoints itself (a resume, the test after fit) through the checkpoint
    writer, which used to load a changed file silently."""
    from tests.layouts import write_camvid

    with pytest.raises(CheckpointError, match=r"val_loss.*\.ckpt is damaged: its SHA-256"):
        hydra_train(
            "model=unet_lab",
            "scheduler=constant",
            "test_after_fit=true",
            *write_camvid(tmp_path / "camvid"),
            f"+callbacks.flip._target_={__name__}.FlipBestAtFitEnd",
        )


def test_a_kill_while_a_checkpoint_is_renamed_leaves_one_the_record_vouches_for(
    hydra_train, tmp_path: Path, monkeypatch
) -> None:
    """Between writing a checkpoint and renaming it into place the record accepts the old and the
    new file: an attempt that dies there is continued from the old one."""
    real, calls = os.replace, []

    def dies_at_the_second_last(source, target):
        calls.append(Path(target).name)
        if calls.count("last.ckpt") == 2 and Path(target).name == "last.ckpt":
            raise RuntimeError("killed while renaming")
        return real(source, target)

    monkeypatch.setattr("segment.files.os.replace", dies_at_the_second_last)
    with pytest.raises(RuntimeError, match="killed while renaming"):
        hydra_train("model=unet_lab", "trainer.max_epochs=2", "scheduler=constant")
    monkeypatch.setattr("segment.files.os.replace", real)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    accepted = read_record(run).checkpoints["checkpoints/last.ckpt"]
    assert len(accepted) == 2 and accepted[0] == sha256(last)
    for best in set((run / "checkpoints").glob("*.ckpt")) - {last}:  # it holds the later step
        best.unlink()
    hydra_train("ckpt_path=last", "trainer.max_epochs=3")  # loads the old last.ckpt, checked
    assert read_record(run).checkpoints["checkpoints/last.ckpt"] == [sha256(last)]
    assert read_record(run).status == "completed"


def test_a_checkpoint_is_checked_by_its_run_whatever_door_it_comes_by(tmp_path: Path) -> None:
    """Doors a red-team pass found, each of which loaded a changed file unchecked: renamed inside
    its run, copied into another run, a symlinked checkpoints folder, a record placed in
    checkpoints/, an unreadable record, an empty list of sums."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    good = run / "checkpoints" / "last.ckpt"
    good.write_bytes(b"the bytes the run wrote")
    sums = {"checkpoints/last.ckpt": [sha256(good)]}
    write_record(run, RunRecord(status="completed", checkpoints=sums))
    verify_checksum(good)  # the untouched file passes

    good.rename(run / "checkpoints" / "last-v1.ckpt")
    with pytest.raises(CheckpointError, match="holds no checksum for checkpoints/last-v1.ckpt"):
        verify_checksum(run / "checkpoints" / "last-v1.ckpt")
    (run / "checkpoints" / "last-v1.ckpt").rename(good)

    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    write_record(other, RunRecord(status="completed", checkpoints={"checkpoints/x.ckpt": ["0"]}))
    os.link(good, other / "checkpoints" / "copied.ckpt")
    with pytest.raises(CheckpointError, match="holds no checksum"):
        verify_checksum(other / "checkpoints" / "copied.ckpt")

    good.write_bytes(b"the bytes the run wrote, changed")
    outside = tmp_path / "scratch"
    (run / "checkpoints").rename(outside)
    (run / "checkpoints").symlink_to(outside)
    with pytest.raises(CheckpointError, match="is damaged"):
        verify_checksum(run / "checkpoints" / "last.ckpt")

    for nested in ("{}", "not json"):
        (outside / "run.json").write_text(nested)
        with pytest.raises(CheckpointError, match="is damaged|cannot be checked"):
            verify_checksum(run / "checkpoints" / "last.ckpt")
    (outside / "run.json").unlink()

    (run / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be checked against its run's record"):
        verify_checksum(run / "checkpoints" / "last.ckpt")
    write_record(run, RunRecord(status="completed", checkpoints={"checkpoints/last.ckpt": []}))
    with pytest.raises(CheckpointError, match="holds no checksum"):
        verify_checksum(run / "checkpoints" / "last.ckpt")
