"""The study: paired statistics, censoring, arms and comparisons on scripted run folders, and a tiny real sweep."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from segment.analysis import kaplan_meier, load_runs, mean_std, paired_ratio
from segment.analysis.report import Level, Study, protocol_section
from segment.analysis.report import main as report_main
from tests.helpers import TINY_OVERRIDES, TINY_SYNTHETIC, run_script, sweep_jobs

SPEC = {
    "comparisons": {"pretraining": {"slower": {"model": "unet_scratch"}, "faster": {"model": "unet_vgg"}}},
    "headline": [1.0, 0.7],
    "loss_ladder": {"start": 1.2, "stop": 0.7, "step": 0.1},
    "miou_ladder": {"start": 0.3, "stop": 0.5, "step": 0.1},
    "loss_metric": "val/loss",
}


def test_paired_ratio_is_the_geometric_mean_with_a_t_interval_on_log_ratios() -> None:
    slower, faster = [4.0, 6.0, 9.0], [2.0, 2.0, 3.0]  # per-seed ratios 2, 3, 3
    estimate = paired_ratio([(t, True) for t in slower], [(t, True) for t in faster])
    logs = np.log([2.0, 3.0, 3.0])
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert estimate.point == pytest.approx(math.exp(logs.mean()))  # (2*3*3)^(1/3), not mean(slow)/mean(fast)
    assert (estimate.low, estimate.high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert estimate.bound == "" and estimate.ratios == (2.0, 3.0, 3.0) and estimate.seeds == 3
    # paired: the same values in another seed order give the same geometric mean but another interval
    # (seeds that are hard for both arms no longer cancel); an unpaired resampling could not tell them apart
    shuffled = paired_ratio([(t, True) for t in slower], [(t, True) for t in (3.0, 2.0, 2.0)])
    assert shuffled.point == pytest.approx(estimate.point)
    assert shuffled.high - shuffled.low > 2 * (estimate.high - estimate.low)


def test_censored_seeds_turn_the_ratio_into_a_bound() -> None:
    # the slower arm never got there in seed 1 (last seen at 30 epochs): the speedup is at least ...
    at_least = paired_ratio([(10.0, True), (30.0, False)], [(5.0, True), (10.0, True)])
    assert at_least.bound == ">=" and at_least.point == pytest.approx(math.sqrt(2 * 3)) and math.isnan(at_least.low)
    at_most = paired_ratio([(10.0, True), (12.0, True)], [(5.0, True), (30.0, False)])
    assert at_most.bound == "<="
    assert paired_ratio([(30.0, False)], [(30.0, False)]) is None  # neither got there
    assert paired_ratio([(30.0, False), (8.0, True)], [(4.0, True), (30.0, False)]) is None  # both ways
    with pytest.raises(ValueError, match="one value per seed"):
        paired_ratio([(1.0, True)], [])


def test_kaplan_meier_fraction_reached_with_censoring() -> None:
    # 4 runs: reached at 2 and 5; one censored at 3 (stopped), one at 10 (the cap)
    times, fraction = kaplan_meier([2.0, 3.0, 5.0, 10.0], [True, False, True, False])
    assert times.tolist() == [0.0, 2.0, 5.0]
    assert fraction.tolist() == pytest.approx([0.0, 1 / 4, 1 - (3 / 4) * (1 / 2)])


def test_mean_std_of_few_values() -> None:
    assert mean_std([2.0]) == (2.0, 0.0)
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))
    assert all(np.isnan(mean_std([])))


def _write_run(sweep: Path, model: str, seed: int, lr: str, losses: list[float], status: str = "completed",
               net: dict | None = None) -> Path:
    """A run folder as train.py writes it, with a scripted validation history (4 validations per epoch)."""
    overrides = [f"model={model}", f"seed={seed}", f"model.optimizer.lr={lr}", "data.root=/somewhere"]
    folder = sweep / ",".join(overrides[:3])
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "study": SPEC, "model": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": float(lr)}},
              "data": {"batch_size": 8, "image_size": [64, 96]}, "trainer": {"val_check_interval": 0.25},
              "callbacks": {"thresholds": {"stop_when_reached": "val_loss<=0.7"}}}  # fmt: skip
    if net is not None:
        config["model"]["net"] = net
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": model}}}}))
    history = [{"epoch": (i + 1) / 4, "step": (i + 1) * 10, "images_seen": (i + 1) * 80, "seconds": (i + 1) * 5.0,
                "cpu_share": 0.97, "val/loss": loss, "val/miou": max(0.0, 1.3 - loss)}
               for i, loss in enumerate(losses)]  # fmt: skip
    (folder / "thresholds.json").write_text(json.dumps({"patience": 2, "finished": True, "history": history}))
    record = {"status": status, "config": config, "encoder_weights_used": {"source": "none", "requested": "none"}}
    (folder / "run.json").write_text(json.dumps(record))
    return folder


@pytest.fixture
def scripted(tmp_path: Path) -> Path:
    """Two learning rates x scratch/vgg x 2 seeds; the crossings are easy to count by hand."""
    sweep = tmp_path / "study"
    #                 validations at epochs 0.25, 0.5, ...
    _write_run(sweep, "unet_scratch", 0, "0.0001", [1.3, 1.1, 0.99, 1.01, 0.98, 0.95, 0.8, 0.69, 0.68])
    _write_run(sweep, "unet_vgg", 0, "0.0001", [1.1, 0.98, 0.95, 0.75, 0.7, 0.6])
    _write_run(sweep, "unet_scratch", 1, "0.0001", [1.2, 1.1, 1.05, 0.97, 0.96, 0.9, 0.85, 0.8])  # never 0.7
    _write_run(sweep, "unet_vgg", 1, "0.0001", [1.0, 0.9, 0.85, 0.66, 0.65])
    _write_run(sweep, "unet_scratch", 0, "0.001", [0.9, 0.8, 0.7, 0.6])
    _write_run(sweep, "unet_vgg", 0, "0.001", [0.95, 0.9, 0.7, 0.6])
    _write_run(sweep, "unet_vgg", 1, "0.001", [0.95, 0.9, 0.7, 0.6], status="failed")
    return sweep


def test_arms_pair_by_seed_within_each_learning_rate(scripted: Path) -> None:
    study = Study(load_runs(scripted))
    assert [arm.label for arm in study.arms] == [
        "model=unet_scratch, model.optimizer.lr=0.0001", "model=unet_scratch, model.optimizer.lr=0.001",
        "model=unet_vgg, model.optimizer.lr=0.0001", "model=unet_vgg, model.optimizer.lr=0.001",
    ]  # fmt: skip
    assert [(c.name, c.seeds) for c in study.comparisons] == [
        ("pretraining (model.optimizer.lr=0.0001)", [0, 1]), ("pretraining (model.optimizer.lr=0.001)", [0]),
    ]  # fmt: skip
    low_lr = study.comparisons[0]
    # loss <= 1.0 held twice in a row: scratch seed 0 from its 5th validation (0.99, 1.01 breaks the first
    # streak), epoch 1.25; vgg seed 0 from its 2nd, epoch 0.5; scratch seed 1 from its 4th (1.0); vgg seed 1 its 1st
    estimate = low_lr.estimate(Level("val/loss", "min", 1.0))
    assert estimate.ratios == pytest.approx((1.25 / 0.5, 1.0 / 0.25))
    assert estimate.point == pytest.approx(math.sqrt(2.5 * 4.0)) and estimate.bound == ""
    # <= 0.7: scratch seed 1 never (last seen at epoch 2.0) -> a lower bound
    bound = low_lr.estimate(Level("val/loss", "min", 0.7))
    assert bound.bound == ">=" and bound.ratios == pytest.approx((2.0 / 1.25, 2.0 / 1.0))
    # interpolation: scratch seed 0 crosses 1.0 between 1.01 (epoch 1.0) and 0.98 (1.25): at 1.0 + 1/3 * 0.25
    interpolated = low_lr.estimate(Level("val/loss", "min", 1.0), interpolate=True)
    assert interpolated.ratios[0] == pytest.approx((1.0 + 0.25 / 3) / (0.25 + 0.25 * (1.1 - 1.0) / (1.1 - 0.98)))
    # images and seconds follow the same validations
    assert low_lr.estimate(Level("val/loss", "min", 1.0), unit="images_seen").ratios == estimate.ratios


def test_report_of_scripted_runs(scripted: Path, capsys) -> None:
    assert report_main([str(scripted)]) == 0
    report = (scripted / "report.md").read_text()
    assert "6 usable runs of 7 in 4 arms" in report
    assert ("| pretraining (model.optimizer.lr=0.0001) | model=unet_scratch, model.optimizer.lr=0.0001 / "
            "model=unet_vgg, model.optimizer.lr=0.0001 | 2 | 3.16x") in report  # sqrt(2.5 * 4)
    assert "| >=1.79x |" in report  # sqrt(1.6 * 2.0), the bound at 0.7
    assert "1: 2.00 / 1.00 = 2.00 (>=)" in report  # the per-seed table marks the censored seed
    assert "| model.optimizer.lr=0.001, seed=1" not in report and "failed" in report
    for figure in ("speedup_vs_threshold.png", "reached_vs_epochs.png", "loss_curves.png", "calibration.png"):
        assert (scripted / figure).stat().st_size > 1000, figure
        assert f"]({figure})" in report
    assert "Report:" in capsys.readouterr().out


def test_the_protocol_table_says_which_head_the_lab_vgg_net_trained_with(tmp_path: Path) -> None:
    lab_vgg = {"_target_": "segment.models.LabVGGUNet", "final_relu": True}
    _write_run(tmp_path, "unet_scratch", 0, "0.0001", [1.0, 0.9], net={**lab_vgg, "final_relu": False})
    _write_run(tmp_path, "unet_vgg", 0, "0.0001", [1.0, 0.9], net=lab_vgg)
    _write_run(tmp_path, "unet_lab", 0, "0.0001", [1.0, 0.9], net={"_target_": "segmentation_models_pytorch.Unet",
                                                                   "encoder_name": "vgg16"})  # fmt: skip
    table = protocol_section(Study(load_runs(tmp_path)))
    assert "| LabVGGUNet, corrected head |" in table and "| LabVGGUNet, head ending in ReLU (the lab's) |" in table
    assert "| Unet, vgg16 |" in table


def test_report_command_on_a_folder_without_runs(tmp_path: Path, capsys) -> None:
    assert report_main([str(tmp_path)]) == 1
    assert "holds no run folders" in capsys.readouterr().err
    assert report_main([str(tmp_path / "missing")]) == 1
    assert "no such sweep folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, str]:
    """``experiment=compare_pretraining`` at 2 seeds, 1 epoch of 2 validations, tiny images: 6 fast runs."""
    folder = tmp_path_factory.mktemp("study") / "sweep"
    result = run_script(
        [
            "train.py",
            "--multirun",
            "experiment=compare_pretraining",
            "seed=0,1",
            *TINY_OVERRIDES,
            *TINY_SYNTHETIC,
            "trainer.max_epochs=1",
            "trainer.val_check_interval=0.5",
            "callbacks.thresholds.patience=1",
            # a loose level every run reaches at its first validation, and one none reaches
            "study.headline=[1000,0.01]",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={folder}",
        ],
        timeout=900,
    )
    return folder, result.stdout


@pytest.mark.slow
def test_sweep_writes_the_report_and_prints_the_headline(sweep: tuple[Path, str]) -> None:
    folder, stdout = sweep
    runs = load_runs(folder)
    assert sorted((run.model, run.seed, run.status) for run in runs) == [
        (model, seed, "completed") for model in ("unet_lab", "unet_scratch", "unet_vgg") for seed in (0, 1)
    ]
    assert all([row["epoch"] for row in run.validations] == [0.5, 1.0] for run in runs)
    # the Hydra callback printed the headline: every arm, the loose level at the first validation
    assert "epochs to val/loss<=1000" in stdout
    for model in ("unet_lab", "unet_scratch", "unet_vgg"):
        assert f"| model={model} | 2 | 0.50 +- 0.00 (2/2) | not reached (2 runs, up to 1) |" in stdout
    report = (folder / "report.md").read_text()
    assert "| pretraining | model=unet_scratch / model=unet_vgg | 2 | 1.00x [1.00, 1.00] | n/a |" in report
    assert "| architecture | model=unet_lab / model=unet_scratch | 2 | 1.00x [1.00, 1.00] | n/a |" in report
    assert "None: every run completed." in report
    for figure in ("speedup_vs_threshold.png", "loss_curves.png", "reached_vs_epochs.png", "masks_at_thresholds.png"):
        assert (folder / figure).stat().st_size > 1000, figure


@pytest.mark.slow
def test_report_command_lists_a_failed_and_a_killed_run(sweep: tuple[Path, str], tmp_path: Path, capsys) -> None:
    folder, _ = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy)
    jobs = sweep_jobs(copy)
    failed, killed = jobs["model=unet_lab,seed=0"], jobs["model=unet_scratch,seed=0"]
    record = json.loads((failed / "run.json").read_text())
    (failed / "run.json").write_text(json.dumps({**record, "status": "failed", "error": "FloatingPointError: nan"}))
    record = json.loads((killed / "run.json").read_text())
    (killed / "run.json").write_text(json.dumps({**record, "status": "running"}))
    assert report_main([str(copy)]) == 0
    report = (copy / "report.md").read_text()
    assert f"| {failed.name} | 0 | failed | FloatingPointError: nan |" in report
    assert f"| {killed.name} | 0 | incomplete |" in report
    assert "4 usable runs of 6" in report
    assert "Report:" in capsys.readouterr().out


def _val_losses(make_cfg, tmp_path: Path, name: str, *overrides: str) -> list[float]:
    from segment.training import train

    cfg = make_cfg("experiment=compare_pretraining", "model=unet_lab", "seed=0", "trainer.deterministic=true",
                   "trainer.val_check_interval=0.5", "callbacks.thresholds.stop_when_reached=null",
                   *overrides)  # fmt: skip
    cfg.paths.output_dir = str(tmp_path / name)
    train(cfg)
    return [row["val/loss"] for row in json.loads((tmp_path / name / "thresholds.json").read_text())["history"]]


@pytest.mark.slow
def test_the_study_schedule_does_not_depend_on_the_run_length(make_cfg, tmp_path: Path) -> None:
    short = _val_losses(make_cfg, tmp_path, "short", "trainer.max_epochs=3")
    long = _val_losses(make_cfg, tmp_path, "long", "trainer.max_epochs=5")
    assert len(short) == 6 and len(long) == 10
    assert long[:6] == short  # bitwise: the first 3 epochs are the same run
    # under the cosine schedule tied to max_epochs they are not: what the study protocol avoids
    cosine = _val_losses(make_cfg, tmp_path, "cosine", "trainer.max_epochs=3", "scheduler=cosine")
    cosine_long = _val_losses(make_cfg, tmp_path, "cosine_long", "trainer.max_epochs=5", "scheduler=cosine")
    assert cosine_long[:6] != cosine
