"""Job folder names: [A-Za-z0-9._-] only, readable, deterministic, short enough, distinct where runs
differ."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from segment.config.names import job_name, parse_overrides

STUDY = [
    "data=camvid",
    "experiment=compare_pretraining",
    "model=unet_vgg",
    "seed=0",
    "data.image_size=[128,160]",
    "model.optimizer.lr=0.0001",
    "data.root=/data/camvid",
    "skip_completed=true",
    "trainer.enable_progress_bar=false",
]
GROUPS = ("data", "experiment", "model", "protocol", "loss")


def test_a_study_job_is_named_with_the_swept_keys_first_and_values_made_paste_safe() -> None:
    assert job_name(STUDY, GROUPS) == (
        "model-unet_vgg__seed-0__image_size-128x160__lr-1e-4__"
        "data-camvid__experiment-compare_pretraining"
    )


def test_the_name_does_not_depend_on_the_order_of_overrides_or_where_the_data_lives() -> None:
    moved = [o if not o.startswith("data.root=") else "data.root=/scratch/me/camvid" for o in STUDY]
    assert (
        job_name(list(reversed(STUDY)), GROUPS)
        == job_name(STUDY, GROUPS)
        == job_name(moved, GROUPS)
    )
    assert job_name(STUDY, GROUPS) != job_name([*STUDY[:3], "seed=1", *STUDY[4:]], GROUPS)


def test_a_name_survives_glob_and_shells_whatever_the_values(tmp_path) -> None:
    odd = [
        "model=smp",
        "+model.net.encoder_name=timm-efficientnet-b0",
        "tags=[a b,c]",
        "model.mean=[0.5,0.5,0.5]",
        "loss.weight='x=y,z'",
        "+note='Straße/été*?[1]'",
    ]
    name = job_name(odd, GROUPS)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name
    assert job_name(["+note='été'"]) != job_name(
        ["+note='ètè'"]
    )  # a lossy replacement keeps a hash
    (tmp_path / name).mkdir()
    assert glob.glob(str(tmp_path / name)) == [
        str(tmp_path / name)
    ]  # no character class, no wildcard


def test_a_long_name_drops_whole_items_and_keeps_a_hash_of_the_whole() -> None:
    overrides = [f"+model.net.option_{i:02d}='{'é' * 30}'" for i in range(12)]
    name = job_name(overrides, GROUPS)
    assert len(name.encode()) <= 120 and re.fullmatch(r"[A-Za-z0-9._-]+__[0-9a-f]{8}", name)
    items = name.split("__")[:-1]
    assert items and all(
        re.fullmatch(r"option_\d\d-x-[0-9a-f]{4}", item) for item in items
    )  # whole items only
    assert name != job_name([*overrides[:-1], "+model.net.option_11='è'"], GROUPS)


def test_a_swept_data_root_names_its_folder() -> None:
    a = job_name(["model=unet_vgg", "data.root=/data/a"], GROUPS, swept={"data.root"})
    b = job_name(["model=unet_vgg", "data.root=/data/b"], GROUPS, swept={"data.root"})
    assert a.startswith("model-unet_vgg__root-a-") and b.startswith("model-unet_vgg__root-b-")
    # two copies of one dataset in folders of the same name get two job folders
    first = job_name(["data.root=/a/camvid"], GROUPS, swept={"data.root"})
    second = job_name(["data.root=/b/camvid"], GROUPS, swept={"data.root"})
    assert (
        first.startswith("root-camvid-") and second.startswith("root-camvid-") and first != second
    )


def test_a_sweep_over_two_data_roots_sends_each_job_to_its_own_folder(
    tmp_path: Path, monkeypatch
) -> None:
    """``data.root=/a/camvid,/b/camvid``: the second job's folder did not exist yet, and the lookup
    of older names, blind to data.root, sent the job to the first one's folder, which refused it."""
    from segment.config import names as config
    from segment.run.record import Attempt, RunRecord, write_record

    monkeypatch.setattr(config, "sweep_dir", lambda: str(tmp_path))
    swept = {"data.root"}
    jobs = [["model=unet_vgg", f"data.root=/{disk}/camvid", "skip_completed=true"] for disk in "ab"]
    first, second = (job_name(job, GROUPS, swept) for job in jobs)
    (tmp_path / first).mkdir()
    write_record(tmp_path / first, RunRecord(attempts=[Attempt(overrides=jobs[0])]))
    assert config._found_again(second, jobs[1], swept) == second
    # a continued sweep still finds each job under an older name, and only its own
    older = (tmp_path / first).rename(tmp_path / "model-unet_vgg__older")
    assert config._found_again(first, jobs[0], swept) == older.name
    assert config._found_again(second, jobs[1], swept) == second


def test_overrides_are_parsed_with_hydras_grammar() -> None:
    assert parse_overrides(
        [
            "model.optimizer.lr=3e-4",
            "data.image_size=[128,160]",
            "~callbacks.freezing",
            "+x='a=b'",
            "seed=0,1",
        ]
    ) == {
        "model.optimizer.lr": 0.0003,
        "data.image_size": [128, 160],
        "callbacks.freezing": None,
        "x": "a=b",
        "seed": ["0", "1"],
    }


def test_a_sweep_names_its_jobs_by_what_varies_and_rounds_sampled_values() -> None:
    """Constants of the sweep (num_train-48__num_val-16__max_epochs-3) went into every name, and an
    Optuna trial's sampled rate made the name long enough to end in a hash."""
    job = [
        "model=unet_vgg",
        "seed=0",
        "model.optimizer.lr=0.00023456789",
        "data.num_train=48",
        "trainer.max_epochs=3",
    ]
    name = job_name(job, GROUPS, swept={"seed", "model.optimizer.lr"})
    assert name == "model-unet_vgg__seed-0__lr-2.346e-4"
    assert job_name(job, GROUPS) != name  # outside a sweep every override names the run


def test_a_sweep_over_training_set_sizes_names_each_size() -> None:
    swept = {"seed", "model", "data.train_size"}
    names = {
        size: job_name(["model=unet_vgg", "seed=0", f"data.train_size={size}"], GROUPS, swept)
        for size in ("46", "122", "null")
    }
    assert names == {
        "46": "model-unet_vgg__seed-0__train_size-46",
        "122": "model-unet_vgg__seed-0__train_size-122",
        "null": "model-unet_vgg__seed-0__train_size-none",  # the whole split
    }


def test_a_list_from_the_config_reads_as_in_folder_names_in_every_logger(make_cfg) -> None:
    """data.image_size showed as 96_128-c1f3 in TensorBoard, MLflow, W&B and the CSV."""
    from segment.callbacks.hparams import hyperparameters

    cfg = make_cfg("data.image_size=[96,128]")
    params, _ = hyperparameters(cfg, [], {"model": "unet_scratch"})
    assert params["image_size"] == "96x128"


def test_a_damaged_record_in_the_sweep_is_named_and_the_job_still_found(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """Looking for a job under an older name reads every record of the sweep: one that cannot be
    read is no run of this job, and the warning names it (it used to be passed over unsaid)."""
    from segment.config import names
    from segment.run.record import Attempt, RunRecord, write_record

    monkeypatch.setattr(names, "sweep_dir", lambda: str(tmp_path))
    job = ["model=unet_vgg", "seed=0"]
    (tmp_path / "model-unet_vgg__older").mkdir()
    write_record(tmp_path / "model-unet_vgg__older", RunRecord(attempts=[Attempt(overrides=job)]))
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "run.json").write_text('{"status": 5}')
    (tmp_path / "not-a-folder").write_text("")
    with caplog.at_level("WARNING"):
        assert names._found_again(job_name(job, GROUPS), job, ()) == "model-unet_vgg__older"
    assert str(tmp_path / "damaged" / "run.json") in caplog.text and "status" in caplog.text
