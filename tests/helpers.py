"""Paths, tiny overrides and the script runner shared by the tests."""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing
import os
import runpy
import signal
import signal as signal_module
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from lightning import Callback
from lightning.pytorch.loggers import Logger
from torch import nn

from segment.checkpoints import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# Tiny and fast: 64x96 images, a handful of samples, CPU, no worker processes.
TINY_OVERRIDES = [
    "data.image_size=[64,96]",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
]
# Only for data=synthetic (the default).
TINY_SYNTHETIC = ["data.num_train=8", "data.num_val=4"]
# Only for the smp U-Nets: pretrained weights are never fetched in tests.
TINY_SMP = ["model.net.encoder_weights=null"]

# The real CamVid, beside the repository (read-only in CI).
CAMVID_ROOT = REPO.parent / "shared" / "data" / "camvid"
# A sweep whose report is the point: no checkpoint written (the report reads run files only).
NO_CHECKPOINTS = [
    "~callbacks.model_checkpoint",
    "~callbacks.last_checkpoint",
    "+trainer.enable_checkpointing=false",
]


def sweep_jobs(sweep: Path) -> dict[str, Path]:
    """The job folders of a multirun, by the overrides that tell them apart (``seed=0``,
    ``model=unet_vgg``).

    Read from each job's ``.hydra/overrides.yaml``: the overrides not shared by every job.
    """
    import yaml

    folders = sorted(p for p in sweep.iterdir() if (p / ".hydra" / "overrides.yaml").is_file())
    parts = [
        set(yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()))
        for folder in folders
    ]
    common = set.intersection(*parts) if parts else set()
    return {
        ",".join(sorted(part - common)): folder for part, folder in zip(parts, folders, strict=True)
    }


def run_script(
    args: Sequence[str],
    cwd: Path = REPO,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    check: bool = True,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``python <args>`` like a user would (``env`` added to this process's), in a session of
    its own (a signal to its process group reaches no test); with ``check``, fail the test if it
    exits non-zero.

    A script (``train.py``, ``evaluate.py``, ``benchmarks/*.py``) runs in a warm process: forked
    from a server that imported torch, Lightning and this package once per test worker, which
    saves each run the imports a fresh interpreter spends (about 13 s on 2 cores). It is a real
    process (its own pid, exit status, signals, ``atexit``) that runs the script as ``__main__``
    with ``sys.argv``, cwd and environment set (tests/test_script_runner.py holds it to ``python``).
    A run whose environment differs from the server's in what libraries read when they are imported
    (:data:`_IMPORT_TIME`) starts a fresh interpreter; so does ``fresh=True`` (entry points, kills,
    signals: what only a process of its own shows).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, *args]
    global _SERVER_ENV
    _SERVER_ENV = _SERVER_ENV or _import_time(env)  # the server starts with the first warm run
    if fresh or _WARM is None or not args[0].endswith(".py") or _import_time(env) != _SERVER_ENV:
        result = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    else:
        result = _run_warm(command, cwd, env, timeout)
    if check and result.returncode != 0:
        pytest.fail(
            f"python {' '.join(args)} exited "
            f"{result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


# The warm server's imports: what train.py, evaluate.py and the benchmarks need (and these helpers,
# which callbacks in test configs name). Set before the server starts, at the first warm run of a
# test worker. Where there is no forkserver (Windows), every run is fresh.
_WARM = (
    multiprocessing.get_context("forkserver")
    if "forkserver" in multiprocessing.get_all_start_methods()
    else None
)
if _WARM is not None:
    _WARM.set_forkserver_preload(
        [
            "tests.helpers",
            "segment.training",
            "segment.evaluating",
            "segmentation_models_pytorch",
            "albumentations",
        ]
    )


# Variables read when a library is imported (huggingface_hub's HF_HUB_OFFLINE, torch's thread and
# device settings): a warm process imported them under the server's values.
_IMPORT_TIME = (
    "HF_",
    "HUGGINGFACE_",
    "TORCH",
    "PYTORCH_",
    "CUDA_",
    "OMP_",
    "MKL_",
    "KMP_",
    "OPENBLAS_",
    "NCCL_",
)
_SERVER_ENV: dict[str, str] | None = None


def _import_time(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(_IMPORT_TIME)}


def _run_warm(
    command: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        process = _WARM.Process(
            target=_warm_main, args=(command[1:], str(cwd), env, str(out), str(err))
        )
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its loader workers too
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(
                command, timeout, out.read_text(errors="replace"), err.read_text(errors="replace")
            )
        return subprocess.CompletedProcess(
            command,
            process.exitcode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )


def _warm_main(args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The warm process: what ``python <args>`` would set up, then the script as ``__main__``; an
    exception or ``SystemExit`` becomes the exit status as in ``python`` (multiprocessing's
    bootstrap does that)."""
    os.setsid()
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    script = args[0]
    sys.argv = list(args)
    sys.path.insert(0, str(Path(script).resolve().parent))
    interrupted = False
    try:
        runpy.run_path(script, run_name="__main__")
    except KeyboardInterrupt:  # python prints it, then dies by SIGINT (below, after the exit steps)
        traceback.print_exc()
        interrupted = True
    finally:
        # What the interpreter does at exit and multiprocessing's bootstrap skips before its
        # os._exit: join the threads (and run their exit hooks: joblib's loky stops its workers
        # there), then the atexit handlers.
        # Private API, here only: if a Python release drops it, every warm run fails at this line.
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


class TinyNet(nn.Module):
    """A 1x1 convolution: the smallest net the module can drive (``classes`` as smp nets take
    it)."""

    def __init__(self, classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, classes, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class Passthrough(nn.Module):
    """Returns its input: exposes what the module feeds its net."""

    def __init__(self, classes: int) -> None:
        super().__init__()

    def forward(self, x):
        return x


class KillAt(Callback):
    """SIGKILLs its own process at a training batch: a pre-emption no handler can soften.

    Only the first time: it leaves ``marker`` behind, so the resumed run (same config, same
    callback) trains on.
    """

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (
            trainer.current_epoch == self.epoch
            and batch_idx == self.batch
            and not self.marker.exists()
        ):
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAt(Callback):
    """Fills the net's weights with NaN at a training batch: the next loss is not finite."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            with torch.no_grad():
                for parameter in pl_module.net.parameters():
                    parameter.fill_(float("nan"))


class KillBeforeLast(AtomicCheckpointIO):
    """SIGKILLs its process when asked to write ``last.ckpt`` (once: it leaves ``marker``), so
    the best checkpoint of that validation is on disk and ``last.ckpt`` is not."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = Path(marker)

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if Path(path).name == "last.ckpt" and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        super().save_checkpoint(checkpoint, path, storage_options)


class LastCheckpointSpy(Callback):
    """Records ``[global_step, epoch]`` inside ``last.ckpt`` whenever it changed, in
    ``<folder>/last_checkpoints.json``.

    Looked at before every training batch and at the end of fit: Lightning runs its checkpoint
    callbacks after all others within a hook, so this is the first moment after each save.
    """

    def __init__(self, folder: str) -> None:
        self.path = Path(folder) / "last_checkpoints.json"
        self.seen: list[list[int]] = []

    def _look(self, trainer) -> None:
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            return
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        found = [int(checkpoint["global_step"]), int(checkpoint["epoch"])]
        if not self.seen or self.seen[-1] != found:
            self.seen.append(found)
            self.path.write_text(json.dumps(self.seen))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._look(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._look(trainer)


class SignalAt(Callback):
    """Sends ``signal`` once, at a training batch: to its whole process group (a cluster preemption,
    a ``kill`` of the job: DataLoader workers included) or to its own process only. Leaves
    ``marker``, so a rerun trains on."""

    def __init__(
        self, epoch: int, batch: int, marker: str, signal: str = "SIGTERM", group: bool = True
    ) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)
        self.number, self.group = getattr(signal_module, signal), group

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if (
            trainer.current_epoch == self.epoch
            and batch_idx == self.batch
            and not self.marker.exists()
        ):
            self.marker.touch()
            if self.group:
                os.killpg(os.getpgid(0), self.number)
            else:
                os.kill(os.getpid(), self.number)


class StopAt(Callback):
    """Sends ``signal`` to its own process once, at a moment of a run with a 2-batch epoch:
    ``after_first_checkpoint`` (the first batch after last.ckpt appeared), ``mid_epoch`` (epoch
    1, batch 1) or ``in_validation`` (epoch 1's validation); writes ``time.time()`` to ``stamp``
    first.
    """

    def __init__(self, when: str, signal: str, stamp: str) -> None:
        self.when, self.number, self.stamp = when, getattr(signal_module, signal), Path(stamp)

    def _send(self) -> None:
        if not self.stamp.exists():
            self.stamp.write_text(repr(time.time()))
            os.kill(os.getpid(), self.number)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if self.when == "after_first_checkpoint" and last.is_file():
            self._send()
        if self.when == "mid_epoch" and (trainer.current_epoch, batch_idx) == (1, 1):
            self._send()

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if (
            self.when == "in_validation"
            and not trainer.sanity_checking
            and trainer.current_epoch == 1
        ):
            self._send()


class KillAfterValidation(Callback):
    """SIGKILLs its process once, after the validation of ``epoch`` was logged and written to
    disk, before the checkpoint that follows it (Lightning runs checkpoint callbacks after the
    others)."""

    def __init__(self, epoch: int, marker: str) -> None:
        self.epoch, self.marker = epoch, Path(marker)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch != self.epoch or self.marker.exists():
            return
        for logger in trainer.loggers:
            logger.save()
        self.marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


class OverflowBatchNormAt(Callback):
    """Sets every BatchNorm's running variance to inf when ``epoch`` starts: the training loss
    (batch statistics) stays finite, the validation (running statistics) does not, as with a rate
    of 1e6."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            for module in pl_module.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_var.fill_(float("inf"))


class FailAt(Callback):
    """Raises RuntimeError once (it leaves ``marker``) in epoch ``epoch``: when training starts
    (``train_start``: inside ``fit``, before any row or checkpoint of that attempt), at training
    batch ``batch`` (``batch``), or after the validation at global step ``step`` was logged and
    written, before its checkpoint (``validation_end``: Lightning runs checkpoint callbacks last).
    """

    def __init__(self, at: str, marker: str, epoch: int = 0, batch: int = 0, step: int = 0) -> None:
        self.at, self.marker, self.epoch, self.batch, self.step = (
            at,
            Path(marker),
            epoch,
            batch,
            step,
        )

    def _fail(self, trainer, at: str) -> None:
        if self.at == at and trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError(f"FailAt: {at} of epoch {self.epoch}")

    def on_train_start(self, trainer, pl_module) -> None:
        self._fail(trainer, "train_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.batch:
            self._fail(trainer, "batch")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.global_step == self.step:
            for logger in trainer.loggers:
                logger.save()
            self._fail(trainer, "validation_end")


class NotebookLogger(Logger):
    """A logger added in one module, as a user adds one: Lightning's interface plus the project's
    (segment.run.loggers), each call noted as a line of ``<save_dir>/notebook/notes.jsonl``."""

    def __init__(self, save_dir: str) -> None:
        super().__init__()
        self.folder = Path(save_dir) / "notebook"

    @property
    def name(self) -> str:
        return "notebook"

    @property
    def version(self) -> int:
        return 0

    def _note(self, kind: str, **values) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "notes.jsonl").open("a") as notes:
            notes.write(json.dumps({"kind": kind, **values}, default=str) + "\n")

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self._note("hyperparams", keys=sorted(params))

    def log_metrics(self, metrics, step=None) -> None:
        self._note("metrics", keys=sorted(metrics), step=step)

    def log_masks(self, tag, sheet, step, masks) -> None:
        self._note("masks", tag=tag, shape=list(sheet.shape), classes=list(masks[3]), step=step)

    def log_run(self, run) -> None:
        self._note("run", params=sorted(run.params), columns=run.columns, tags=run.tags)

    def log_scores(self, scores, step) -> None:
        self._note("scores", scores=sorted(scores), step=step)

    def viewer(self, run: Path) -> str:
        return f"cat {self.folder / 'notes.jsonl'}"

    def results(self, run: Path) -> list[Path]:
        return [self.folder]
