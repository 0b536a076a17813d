"""What a run folder's files may do when the run is continued: they are data. A continued run
composes only from the project's config groups and the command line; where its output and traffic
go never comes from the saved file; a refused folder is left byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from segment.checkpoints import CheckpointError

FAST = ["model=unet_lab", "trainer.max_epochs=1", "scheduler=constant"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their target's name), by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def _append(run: Path, *lines: str) -> None:
    with (run / ".hydra" / "overrides.yaml").open("a") as file:
        file.writelines(f"- {line}\n" for line in lines)


def test_a_saved_search_path_cannot_bring_code_and_the_folder_stays_byte_identical(
    hydra_train, tmp_path: Path
) -> None:
    """A search path and a logger option from outside the project, appended as plain lines (no
    ``_target_``, no ``${``), used to open a file named in the outside option."""
    hydra_train(*FAST)
    run, canary, plugins = tmp_path / "run", tmp_path / "canary.txt", tmp_path / "plugins"
    (plugins / "logger").mkdir(parents=True)
    (plugins / "logger" / "evil.yaml").write_text(
        f"evil:\n  _target_: builtins.open\n  file: {canary}\n  mode: w\n"
    )
    for lines in (
        [f"hydra.searchpath=[file://{plugins}]", "logger=[csv,evil]"],
        ["logger=[csv,evil]"],
        [f"+hydra.searchpath=[file://{plugins}]"],
    ):
        overrides = (run / ".hydra" / "overrides.yaml").read_bytes()
        _append(run, *lines)
        before = _files(run)
        with pytest.raises(CheckpointError, match="Hydra's own keys|do not compose"):
            hydra_train("ckpt_path=last", "trainer.max_epochs=2")
        assert _files(run) == before and not canary.exists()
        (run / ".hydra" / "overrides.yaml").write_bytes(overrides)


@pytest.mark.parametrize(
    "line",
    [
        "paths.output_dir={elsewhere}",
        "paths.log_dir={elsewhere}",
        "logger.csv.save_dir={elsewhere}",
        "callbacks.model_checkpoint.dirpath={elsewhere}",
        "+trainer.default_root_dir={elsewhere}",
    ],
)
def test_a_saved_file_cannot_send_the_output_elsewhere(
    hydra_train, tmp_path: Path, line: str
) -> None:
    """Data-only lines used to make the continued run write outside its folder."""
    hydra_train(*FAST)
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _append(run, line.format(elsewhere=elsewhere))
    hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    assert list(elsewhere.iterdir()) == []
    assert (run / "checkpoints").is_dir()


def test_a_run_folder_given_as_ckpt_path_names_the_command_that_continues_it(
    hydra_train, tmp_path: Path
) -> None:
    """It used to tell the user to drop overrides they never typed (the other run's)."""
    from segment.runfolder import RunFolderError

    hydra_train(*FAST, "model.optimizer.lr=0.01")
    run = tmp_path / "run"
    with pytest.raises(RunFolderError, match="continue the run it belongs to") as refused:
        hydra_train(*FAST, f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'other'}")
    assert f"segment-train hydra.run.dir={run} ckpt_path=last" in str(refused.value)
