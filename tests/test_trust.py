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


def _lines(*lines: str) -> bytes:
    return "".join(f"- {line}\n" for line in lines).encode()


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
    overrides = (run / ".hydra" / "overrides.yaml").read_bytes()
    for added in (
        _lines(f"hydra.searchpath=[file://{plugins}]", "logger=[csv,evil]"),
        _lines(f"+hydra.searchpath=[file://{plugins}]"),
        _lines(f"task_name=$\\{{own_dir:{canary}\\}}"),  # Hydra unescapes it to ${...}
        b"---\n- seed=1\n",
        b"- !!python/object/apply:os.system [touch " + str(canary).encode() + b"]\n",
        b"- 'seed=[1'\n",
        b"- seed=\xff\xfe\n",
    ):
        (run / ".hydra" / "overrides.yaml").write_bytes(overrides + added)
        before = _files(run)
        with pytest.raises(CheckpointError, match="Hydra's own keys|do not compose|saved|move it"):
            hydra_train("ckpt_path=last", "trainer.max_epochs=2")
        assert _files(run) == before and not canary.exists(), added
    (run / ".hydra" / "overrides.yaml").write_bytes(overrides)


@pytest.mark.parametrize(
    "line",
    [
        "paths.output_dir={elsewhere}",
        "paths.log_dir={elsewhere}",
        "logger.csv.save_dir={elsewhere}",
        "callbacks.model_checkpoint.dirpath={elsewhere}",
        "+trainer.default_root_dir={elsewhere}",
        "callbacks.last_checkpoint.filename=../../escaped",
        "logger=[csv,wandb]",
        "logger=[csv,evil]",  # a logger is chosen on the command line: left out, never composed
        "trainer=ddp",
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
    parts = {p.name for p in run.iterdir()}
    hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    assert list(elsewhere.iterdir()) == [] and not list(tmp_path.glob("escaped*"))
    assert {p.name for p in run.iterdir()} == parts  # no wandb/ either


def test_a_run_folder_given_as_ckpt_path_names_the_command_that_continues_it(
    hydra_train, tmp_path: Path
) -> None:
    """It used to tell the user to drop overrides they never typed (the other run's)."""
    from segment.run.decision import RunFolderError

    hydra_train(*FAST, "model.optimizer.lr=0.01")
    run = tmp_path / "run"
    with pytest.raises(RunFolderError, match="continue the run it belongs to") as refused:
        hydra_train(*FAST, f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'other'}")
    assert f"segment-train hydra.run.dir={run} ckpt_path=last" in str(refused.value)


def test_a_link_out_of_the_run_folder_refuses_it_as_it_is(hydra_train, tmp_path: Path) -> None:
    """A continued run used to write its config, checkpoints and logs through linked parts."""
    from segment.run.decision import RunFolderError

    hydra_train(*FAST)
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / ".hydra").rename(outside)
    (run / ".hydra").symlink_to(outside)
    before, theirs = _files(run), _files(outside)
    with pytest.raises(RunFolderError, match="symbolic link out of the run folder"):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    assert _files(run) == before and _files(outside) == theirs


def test_a_start_time_in_the_record_cannot_move_the_archive_out(
    hydra_train, tmp_path: Path
) -> None:
    """overwrite=true used to archive the earlier run under the record's "started", as a path."""
    import json

    hydra_train(*FAST)
    run = tmp_path / "run"
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "started": "../../escaped"}))
    hydra_train(*FAST, "overwrite=true")
    assert not list(tmp_path.rglob("escaped")) or all(
        run in p.parents for p in tmp_path.rglob("*escaped*")
    )
    assert [p.name for p in (run / "archive").iterdir()]


def test_export_and_the_report_resolve_nothing_from_a_run_s_files(tmp_path: Path) -> None:
    """An interpolation in a job's hydra.yaml used to run the project's resolvers (a folder made
    anywhere) when the sweep was exported."""
    import json

    from segment.analysis.export import export

    job, canary = tmp_path / "sweep" / "job", tmp_path / "made"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  runtime:\n    output_dir: ${{own_dir:{canary}}}\n    choices:\n"
        f"      model: ${{own_dir:{canary}2}}\n"
    )
    (job / ".hydra" / "config.yaml").write_text(f"seed: ${{own_dir:{canary}3}}\n")
    (job / "run.json").write_text(json.dumps({"status": "completed", "schema": 2}))
    export(tmp_path / "sweep", tmp_path / "out")
    assert not list(tmp_path.glob("made*"))


def test_a_checkpoint_naming_a_hub_or_a_url_is_refused() -> None:
    """An allow-listed timm encoder named "hf-hub:..." fetched its config even without weights."""
    from segment.config.trust import check_trusted_targets

    for name in ("hf-hub:timm/resnet18.a1_in1k", "https://example.org/x.pth"):
        net = {
            "_target_": "segmentation_models_pytorch.encoders.timm_universal.TimmUniversalEncoder",
            "name": name,
        }
        with pytest.raises(CheckpointError, match="may not name a hub or a URL"):
            check_trusted_targets({"net": net}, "checkpoint", "model")


def test_a_continued_run_fetches_no_weights_and_keeps_the_record_of_those_it_started_from(
    hydra_train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A continued pretrained run used to look its encoder weights up again (the hub, when they
    were not cached), although the checkpoint holds them."""
    import json

    import segment.models.nets as nets

    hydra_train("model=unet_vgg", "trainer.max_epochs=1", "scheduler=constant")
    run = tmp_path / "run"
    used = json.loads((run / "run.json").read_text())["encoder_weights_used"]
    assert used["source"] != "none"

    def fetch(*args: object, **kwargs: object) -> None:
        raise AssertionError("a continued run looked its encoder weights up")

    monkeypatch.setattr(nets, "resolve_encoder_weights", fetch)
    hydra_train("ckpt_path=last", "trainer.max_epochs=2")
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["encoder_weights_used"] == used
