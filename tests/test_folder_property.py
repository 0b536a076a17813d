"""A run folder's files are data, whatever they hold: a property test.

Hypothesis mutates a completed run's folder (its record, its saved overrides, its files: wrong
types, absolute and ``..`` paths, symlinks in and out, truncations, extra lines from the project's
own keys) and makes one attempt on it, taken up to the point where the run would start fitting.
For every example: nothing outside the run folder changes, no code from the folder runs, no
connection is opened, and an attempt that is refused leaves the folder as it was (at most one
refused attempt appended to its record).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from segment.run.decision import REFUSALS

FAST = ["model=unet_lab", "trainer.max_epochs=1", "scheduler=constant"]
# The attempts a user makes on a folder: continue it, skip it as completed, replace it, or reuse it.
ATTEMPTS = {
    "continue": ("ckpt_path=last", "trainer.max_epochs=2"),
    "skip": (*FAST, "skip_completed=true"),
    "overwrite": (*FAST, "overwrite=true"),
    "again": tuple(FAST),
}


class Fitting(Exception):
    """Raised where the run would start fitting: the example ends there."""


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under ``root`` (not under ``skip``): a link's target, a file's bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_symlink():
            found[str(path)] = ("link", str(path.readlink()))
        elif path.is_file():
            found[str(path)] = ("file", path.read_bytes())
    return found


def _lines(outside: Path, canary: Path) -> list[str]:
    """Lines a hostile or careless hand appends to ``.hydra/overrides.yaml``."""
    return [
        f"hydra.searchpath=[file://{outside / 'plugins'}]",
        "logger=[csv,evil]",
        f"+hydra.run.dir={outside}",
        f"paths.output_dir={outside}",
        f"paths.log_dir={outside}",
        f"logger.csv.save_dir={outside}",
        f"callbacks.model_checkpoint.dirpath={outside}",
        "callbacks.model_checkpoint.dirpath=../escaped",
        f"+trainer.default_root_dir={outside}",
        "+logger.x._target_=builtins.open",
        f"+logger.x._args_=[{canary},w]",
        "+model.net._target_=builtins.open",
        f"+model.net.file={canary}",
        "seed=${oc.env:HOME}",
        "model.net.encoder_weights=imagenet",
        "~model.net",
        "model=unet_vgg",
        "model=smp",
        f"data.root={outside}",
        "data.download=true",
        "data=camvid",
        "model.optimizer.lr=0.5",
        "trainer.max_epochs=3",
        "logger=[csv,wandb]",
        "logger.wandb.offline=false",
        "not an override",
        "'",
    ]


def _mutations(outside: Path, canary: Path) -> dict[str, Callable[[Path, st.DataObject], None]]:
    """Named ways to damage a run folder, each drawing its details from ``data``."""

    def record_field(run: Path, data: st.DataObject) -> None:
        record = json.loads((run / "run.json").read_text())
        key = data.draw(st.sampled_from(sorted(record) + ["schema"]))
        record[key] = data.draw(
            st.sampled_from(
                [5, "x", None, [1, 2], {"a": 1}, [None], str(outside), "../../x", -1, 99]
            )
        )
        (run / "run.json").write_text(json.dumps(record))

    def attempt_field(run: Path, data: st.DataObject) -> None:
        record = json.loads((run / "run.json").read_text())
        attempt = record["attempts"][-1]
        key = data.draw(st.sampled_from(sorted(attempt)))
        attempt[key] = data.draw(st.sampled_from([5, "x", None, [1], {"a": [1]}, "${oc.env:HOME}"]))
        (run / "run.json").write_text(json.dumps(record))

    def layout(run: Path, data: st.DataObject) -> None:
        record = json.loads((run / "run.json").read_text())
        part = data.draw(st.sampled_from(sorted(record["layout"])))
        record["layout"][part] = data.draw(
            st.sampled_from([str(outside / "x"), "../../outside", "/etc/passwd", ".", ""])
        )
        (run / "run.json").write_text(json.dumps(record))

    def truncate(run: Path, data: st.DataObject) -> None:
        files = sorted(p for p in run.rglob("*") if p.is_file() and not p.is_symlink())
        path = data.draw(st.sampled_from(files))
        size = path.stat().st_size
        path.write_bytes(path.read_bytes()[: data.draw(st.integers(0, max(size - 1, 0)))])

    def append_lines(run: Path, data: st.DataObject) -> None:
        lines = data.draw(
            st.lists(st.sampled_from(_lines(outside, canary)), min_size=1, max_size=3)
        )
        with (run / ".hydra" / "overrides.yaml").open("a") as file:
            file.writelines(f"- {line}\n" for line in lines)

    def overrides_type(run: Path, data: st.DataObject) -> None:
        text = data.draw(st.sampled_from(["{a: 1}", "5", "- [1, 2]\n", "- {a: 1}\n", ""]))
        (run / ".hydra" / "overrides.yaml").write_text(text)

    def link_out(run: Path, data: st.DataObject) -> None:
        name = data.draw(
            st.sampled_from(
                ["train.log", "csv/metrics.csv", "checkpoints/last.ckpt", "csv", "thresholds.json"]
            )
        )
        target = outside / "target" / name.replace("/", "_")
        if (run / name).is_symlink() or target.exists() or not (run / name).parent.is_dir():
            return
        if (run / name).is_dir():
            shutil.copytree(run / name, target)
            shutil.rmtree(run / name)
        else:
            target.parent.mkdir(exist_ok=True)
            if (run / name).exists():
                shutil.move(run / name, target)
            else:
                target.write_text("outside")
        (run / name).symlink_to(target)

    def unfinished(run: Path, data: st.DataObject) -> None:
        """Killed before its first checkpoint: continued, it starts afresh from its saved lines."""
        record = json.loads((run / "run.json").read_text())
        record["status"] = data.draw(st.sampled_from(["running", "failed", "interrupted"]))
        (run / "run.json").write_text(json.dumps(record))
        shutil.rmtree(run / "checkpoints", ignore_errors=True)

    def link_in(run: Path, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(["checkpoints/extra.ckpt", "csv/other.csv", "masks/x"]))
        (run / name).parent.mkdir(exist_ok=True)
        if not (run / name).is_symlink():
            (run / name).symlink_to(run / "run.json")

    return {
        f.__name__: f
        for f in (
            record_field,
            attempt_field,
            layout,
            truncate,
            append_lines,
            overrides_type,
            link_out,
            link_in,
            unfinished,
        )
    }


@pytest.fixture
def completed(hydra_train, tmp_path: Path) -> Path:
    """One completed tiny run (with a checkpoint), copied for each example."""
    hydra_train(*FAST, f"hydra.run.dir={tmp_path / 'base'}")
    return tmp_path / "base"


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    # each example trains a folder up to fit: shrinking a failure would take many minutes, and the
    # drawn mutations printed with it already name the door
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_whatever_a_run_folder_holds_it_stays_data(
    hydra_train, completed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data
) -> None:
    outside, canary = tmp_path / "outside", tmp_path / "outside" / "canary.txt"
    shutil.rmtree(outside, ignore_errors=True)
    (outside / "plugins" / "logger").mkdir(parents=True)
    (outside / "plugins" / "logger" / "evil.yaml").write_text(
        f"evil:\n  _target_: builtins.open\n  file: {canary}\n  mode: w\n"
    )
    (outside / "precious.txt").write_text("keep me")
    run = tmp_path / "work"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(completed, run, symlinks=True)
    mutations = _mutations(outside, canary)
    for name in data.draw(st.lists(st.sampled_from(sorted(mutations)), min_size=1, max_size=3)):
        mutations[name](run, data)
    attempt = data.draw(st.sampled_from(sorted(ATTEMPTS)))

    connections: list[object] = []

    def no_connection(*args: object, **kwargs: object) -> None:
        connections.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_connection)
    monkeypatch.setattr(socket, "create_connection", no_connection)
    monkeypatch.setattr(socket.socket, "connect", no_connection)

    def fitting(*args: object, **kwargs: object) -> None:
        raise Fitting

    monkeypatch.setattr("lightning.pytorch.Trainer.fit", fitting)
    before, folder = _snapshot(tmp_path, skip=run), _snapshot(run)
    record = (run / "run.json").read_bytes() if (run / "run.json").is_file() else None
    try:
        hydra_train(f"hydra.run.dir={run}", *ATTEMPTS[attempt])
        refused = False
    except Fitting:
        refused = False
    except REFUSALS:
        refused = True
    assert _snapshot(tmp_path, skip=run) == before, "something outside the run folder changed"
    assert not canary.exists(), "code from the folder ran"
    assert connections == [], f"a connection was attempted: {connections}"
    if refused:
        after = _snapshot(run)
        changed = {p for p in folder.keys() | after.keys() if folder.get(p) != after.get(p)}
        assert changed <= {str(run / "run.json"), str(run / ".lock")}, changed
        if str(run / "run.json") in changed:
            old, new = json.loads(record), json.loads((run / "run.json").read_bytes())
            assert new["attempts"][:-1] == old["attempts"]
            assert new["attempts"][-1]["outcome"] == "refused"
            assert {k: v for k, v in new.items() if k != "attempts"} == {
                k: v for k, v in old.items() if k != "attempts"
            }
