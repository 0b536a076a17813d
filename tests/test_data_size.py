"""Training-set size: nested, seeded subsets of the training split (``data.train_size``), the
measurement on a grid of training images seen (``measurement=images``), and the data-size study's
sweep."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from hydra.utils import instantiate

from segment.analysis import load_runs
from segment.config.schema import ConfigError
from segment.run.decision import RunFolderError
from segment.run.folder import check_same_data
from tests.helpers import NO_CHECKPOINTS, run_script, sweep_jobs

# A training split of 24 scenes, 4 for validation.
SPLIT = ["data.num_train=24", "data.num_val=4"]
# The smallest net, a schedule that does not follow the run's length.
FAST = ["model=unet_lab", "scheduler=warmup_constant"]


def _images(make_cfg, *overrides: str) -> tuple[list[str], list[str], dict]:
    """The training and validation images a data module built from the config loads, and its
    fingerprint."""
    datamodule = instantiate(make_cfg(*SPLIT, *overrides).data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    names = [
        [sample.image.name for sample in dataset.samples]
        for dataset in (datamodule.train_dataset, datamodule.val_dataset)
    ]
    return names[0], names[1], datamodule.fingerprint()


def test_subsets_are_nested_and_the_same_for_every_model_and_training_seed(make_cfg) -> None:
    everything, val, whole = _images(make_cfg)
    assert len(everything) == 24
    drawn, fingerprints = set(), {whole["files"]}
    for model, seed in (("unet_scratch", 0), ("unet_vgg", 1), ("unet_lab", 7)):
        arm = (f"model={model}", f"seed={seed}")
        small, small_val, small_print = _images(make_cfg, *arm, "data.train_size=8")
        large, large_val, large_print = _images(make_cfg, *arm, "data.train_size=16")
        assert (len(small), len(large)) == (8, 16)
        assert set(small) < set(large) < set(everything)
        assert small_val == large_val == val  # validation is never subset
        drawn.add((tuple(small), tuple(large)))
        fingerprints |= {small_print["files"], large_print["files"]}
        assert (small_print["train"], small_print["train_size"]) == (8, 8)
    assert len(drawn) == 1  # the same images whatever the model and the training seed
    assert len(fingerprints) == 3  # all, 16 and 8 images: three fingerprints
    # the subset seed, not the run's, picks the images; the whole split is not reordered
    other = _images(make_cfg, "data.train_size=8", "data.subset_seed=1")[0]
    assert len(other) == 8 and set(other) != set(next(iter(drawn))[0])
    assert _images(make_cfg, "data.train_size=24")[0] == everything


def test_a_train_size_beyond_the_split_or_below_one_is_refused(make_cfg) -> None:
    with pytest.raises(
        ValueError,
        match=r"data.train_size=25: the synthetic training split has only 24 samples; give "
        r"data.train_size <= 24, or null",
    ):
        _images(make_cfg, "data.train_size=25")
    with pytest.raises(Exception, match=r"data.train_size=0: must be >= 1"):  # by instantiate
        _images(make_cfg, "data.train_size=0")


def test_the_size_is_recorded_and_a_run_is_not_continued_under_another(
    hydra_train, make_cfg, tmp_path: Path
) -> None:
    hydra_train(*FAST, *SPLIT, "data.train_size=8")
    run = tmp_path / "run"
    recorded = json.loads((run / "run.json").read_text())["data"]
    assert (recorded["train"], recorded["train_size"], recorded["subset_seed"]) == (8, 8, 0)
    with pytest.raises(RunFolderError, match=r"data.train_size: 8 -> 16"):
        hydra_train("ckpt_path=last", "trainer.max_epochs=2", "data.train_size=16")
    assert json.loads((run / "run.json").read_text())["attempts"][-1]["outcome"] == "refused"
    # the data check refuses it too, as it would a data.root holding other files
    check_same_data(run, recorded, _images(make_cfg, "data.train_size=8")[2], skip=False)
    with pytest.raises(RunFolderError, match="trained on other data"):
        check_same_data(run, recorded, _images(make_cfg, "data.train_size=16")[2], skip=False)


def test_validation_every_n_images_crosses_epochs_and_the_image_budget_ends_training(
    hydra_train, tmp_path: Path
) -> None:
    """12 images in batches of 4: 3 steps an epoch; a validation every 8 images (2 steps), 36
    images at most (9 steps, off the grid: no validation at the last step)."""
    hydra_train(
        *FAST,
        "measurement=images",
        "data.num_train=12",
        "measurement.val_every_images=8",
        "measurement.max_images=36",
        "trainer.max_epochs=4",  # 12 steps: past the budget, short of a hang if it is ignored
        "trainer.log_every_n_steps=1",
        "callbacks.thresholds.stop_when_reached=null",
    )
    run = tmp_path / "run"
    history = json.loads((run / "thresholds.json").read_text())["history"]
    assert [row["images_seen"] for row in history] == [8, 16, 24, 32]
    assert [row["step"] for row in history] == [2, 4, 6, 8]
    assert [row["epoch"] for row in history] == [0.6667, 1.3333, 2.0, 2.6667]
    with (run / "csv" / "metrics.csv").open() as file:
        trained = [int(row["step"]) for row in csv.DictReader(file) if row["train/loss_step"]]
    assert trained == list(range(9))  # 9 optimiser steps, then the budget stopped it


def test_an_image_count_that_is_not_whole_steps_is_refused_before_data_is_read(
    hydra_train, tmp_path: Path
) -> None:
    data = tmp_path / "untouched"
    with pytest.raises(
        ConfigError,
        match=r"measurement.val_every_images=10 is not a whole number of optimiser steps: a step "
        r"takes 4 images \(data.batch_size=4 x 1 device\(s\)\); give a multiple of 4: "
        r"measurement.val_every_images=8 or measurement.val_every_images=12",
    ):
        hydra_train(
            *FAST, "measurement=images", "measurement.val_every_images=10", f"paths.data_dir={data}"
        )
    assert not data.exists()


@pytest.mark.slow
def test_the_quick_data_size_sweep_gives_each_size_its_folders_and_a_report(
    tmp_path: Path, data_dir: Path
) -> None:
    """experiment=quick_data_size, 48 images each (3 validations): 8 runs. The quick runs get
    nowhere near val/loss 1 in so few images, so the levels are ones they reach (4) and do not
    (3, 0.5): the report's section by size has numbers where they got there and says where they
    did not."""
    folder = tmp_path / "sweep"
    run_script(
        [
            "train.py",
            "--multirun",
            "experiment=quick_data_size",
            "measurement.max_images=48",
            "callbacks.thresholds.val_loss=[4.0,3.0,0.5]",
            "data.num_workers=0",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *NO_CHECKPOINTS,  # the report reads run files, not checkpoints
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={folder}",
        ],
        timeout=1800,  # 8 runs: about 11 minutes on 2 busy cores
    )
    jobs = sweep_jobs(folder)
    assert sorted(jobs) == [
        f"data.train_size={size},model={model},seed={seed}"
        for size in (16, 8)
        for model in ("unet_scratch", "unet_vgg")
        for seed in (0, 1)
    ]
    for key, job in jobs.items():
        size = int(key.split(",")[0].split("=")[1])
        assert f"train_size-{size}__" in job.name
        record = json.loads((job / "run.json").read_text())
        assert (record["status"], record["data"]["train"]) == ("completed", size)
        history = json.loads((job / "thresholds.json").read_text())["history"]
        assert [row["images_seen"] for row in history] == [16, 32, 48]
    # both models trained on the same images at each size
    for size in (8, 16):
        records = [
            json.loads((jobs[f"data.train_size={size},model={m},seed=0"] / "run.json").read_text())
            for m in ("unet_scratch", "unet_vgg")
        ]
        assert records[0]["data"] == records[1]["data"]
    assert len(load_runs(folder)) == 8
    _assert_by_size(folder)


def _assert_by_size(folder: Path) -> None:
    """The report's section by training-set size: the speedup in images per size with its
    interval, the trend line, mask quality at the early budget and the lowest loss per run."""
    report = (folder / "report.md").read_text()
    section = report.split("## By training-set size")[1].split("\n## ")[0]
    ratio = r"~?\d+\.\d\dx \[\d+\.\d\d, \d+\.\d\d\] p="
    for size in (8, 16):
        assert re.search(rf"\| {size} \| 2 / 2 \| {ratio}", section), section
    number = r"[+-]\d+\.\d\d"
    assert re.search(rf"- val_loss<=4: slope {number} \[{number}, {number}\] \(", section)
    assert "sizes 8, 16): halving the training set multiplies the speedup by" in section
    # 5 epochs of 16 images: 80, past these runs' 48 images, so each carries its last value
    assert "= 80 images" in section
    for size in (8, 16):
        assert re.search(
            rf"\| {size} \| 0\.\d{{3}} \[-?0\.\d{{3}}, 0\.\d{{3}}\] \(2; 2 ended before\) \| ",
            section,
        )
    assert re.search(r"\| pretrained \| 16 \| \d\.\d{3} at \d+ \(last \d\.\d{3}\) \|", section)
    assert "| not yet measured" not in section  # every size and seed is complete
    for name in ("speedup_vs_train_size.png", "loss_by_train_size.png"):
        assert (folder / name).stat().st_size > 1000 and f"]({name})" in report
