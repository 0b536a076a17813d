"""The study: paired statistics, censoring, arms and comparisons on scripted run folders, and a
tiny real sweep."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from scipy import stats

from segment.analysis import Study, kaplan_meier, load_runs, mean_std
from segment.analysis.__main__ import main as analysis_main
from segment.analysis.report import main as report_main
from segment.analysis.stats import Cell, compare, seeds_needed, tuned
from segment.analysis.tables import p_text, protocol_section, ratio, seconds_runs, units_table
from segment.analysis.thresholds import Threshold
from segment.config.names import parse_overrides
from segment.run.decision import Asked, RunFolderError, decide
from segment.run.record import Attempt, read_record
from tests.helpers import NO_CHECKPOINTS, TINY_OVERRIDES, TINY_SYNTHETIC, run_script, sweep_jobs

# A module-scoped fixture trains once for this file: pytest-xdist keeps the file on one worker.
pytestmark = pytest.mark.xdist_group("study")

SPEC = {
    "comparisons": {
        "pretraining": {"slower": {"model": "unet_scratch"}, "faster": {"model": "unet_vgg"}}
    },
    "headline": [1.0, 0.7],
    "loss_ladder": {"start": 1.2, "stop": 0.7, "step": 0.1},
    "miou_ladder": {"start": 0.3, "stop": 0.5, "step": 0.1},
    "loss_metric": "val/loss",
}


def _cell(
    times: list[float],
    reached: list[bool] | None = None,
    order: str | None = "v2",
    rate: float | None = None,
) -> Cell:
    reached = reached or [True] * len(times)
    keys = {seed: (order, seed) for seed in range(len(times))} if order else {}
    return Cell(
        {s: (t, r) for s, (t, r) in enumerate(zip(times, reached, strict=True))}, keys, rate
    )


def test_a_paired_comparison_is_a_t_interval_on_per_seed_log_ratios() -> None:
    slower, faster = _cell([4.0, 6.0, 9.0]), _cell([2.0, 2.0, 3.0])  # per-seed ratios 2, 3, 3
    estimate = compare(slower, faster)
    logs = np.log([2.0, 3.0, 3.0])
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert estimate.paired and estimate.point == pytest.approx(math.exp(logs.mean()))
    assert (estimate.low, estimate.high) == pytest.approx(
        (math.exp(logs.mean() - half), math.exp(logs.mean() + half))
    )
    assert estimate.values == ((0, 4.0, 2.0), (1, 6.0, 2.0), (2, 9.0, 3.0))
    # another seed order pairs other runs: the same ratio of geometric means, another interval
    shuffled = _cell([3.0, 2.0, 2.0])
    other = compare(slower, shuffled)
    assert other.point == pytest.approx(estimate.point)
    assert other.high - other.low > 2 * (estimate.high - estimate.low)


def test_runs_of_other_data_orders_are_compared_by_welch_t() -> None:
    """Pairing needs both runs of every seed to have seen the same data order; otherwise each
    cell keeps its own spread (Welch-Satterthwaite degrees of freedom)."""
    slower, faster = _cell([4.0, 6.0, 9.0], order="v2"), _cell([2.0, 2.0, 3.0], order="v1")
    estimate = compare(slower, faster)
    x, y = np.log([4.0, 6.0, 9.0]), np.log([2.0, 2.0, 3.0])
    a, b = x.var(ddof=1) / 3, y.var(ddof=1) / 3
    df = (a + b) ** 2 / (a**2 / 2 + b**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(a + b)
    assert not estimate.paired
    assert math.log(estimate.high) - math.log(estimate.point) == pytest.approx(half)
    expected = stats.ttest_ind(x, y, equal_var=False).pvalue
    assert estimate.p == pytest.approx(expected)  # the interval's own model
    assert estimate.exact_p == pytest.approx(0.1)  # 2 of the 20 splits of 3+3 runs
    unknown = compare(_cell([4.0, 6.0, 9.0], order=None), faster)
    assert not unknown.paired


def test_each_interval_uses_its_own_cells_through_the_report_path(tmp_path: Path) -> None:
    """A fixed-rate interval from the study (the report's path) is the paired t of its own two
    cells: no other rate or arm moves it, however noisy."""
    sweep = _bracket(tmp_path)
    for folder in sweep.iterdir():  # one data order for every run: the cells pair by seed
        record = json.loads((folder / "run.json").read_text())
        seed = int(folder.name.split("seed-")[1].split("__")[0])
        record["data_order"] = {"version": 2, "seed": seed}
        (folder / "run.json").write_text(json.dumps(record))
    study = Study(load_runs(sweep))
    level = Threshold("val/loss", "min", 0.9)
    assert len(study.comparisons) == 3
    for comparison in study.comparisons:
        estimate = comparison.estimate(level)
        slow = comparison.slower.cell(level)
        fast = comparison.faster.cell(level)
        d = slow.logs - fast.logs
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        assert estimate.paired and slow.rate == float(comparison.slower.value("model.optimizer.lr"))
        assert math.log(estimate.high / estimate.low) == pytest.approx(2 * half)
        assert estimate.p == pytest.approx(stats.ttest_rel(slow.logs, fast.logs).pvalue)


def test_the_interval_and_its_p_agree() -> None:
    """p < 0.05 exactly where the 95% interval excludes 1, at a fixed rate and at the best
    rates."""
    generator = np.random.default_rng(3)
    for _ in range(100):
        shift = generator.normal(0, 0.4)
        slow = [
            _cell(list(np.exp(generator.normal(1 + shift, 0.3, 4))), rate=r) for r in (1e-4, 1e-3)
        ]
        fast = [_cell(list(np.exp(generator.normal(1, 0.3, 4))), rate=r) for r in (1e-4, 1e-3)]
        for estimate in (compare(slow[0], fast[0]), tuned(slow, fast)):
            assert estimate.holds == (estimate.p < 0.05), (estimate.low, estimate.high, estimate.p)


def test_ties_on_the_validation_grid_never_give_a_zero_width_interval() -> None:
    """Two seeds whose ratios tie on the grid (the quick study's 1.60x [1.60, 1.60]): an interval
    as wide as the grid's rounding allows, or none with the reason."""
    slow = Cell({0: (2.0, True), 1: (2.0, True)}, {0: 0, 1: 1}, resolution=0.5)
    fast = Cell({0: (1.25, True), 1: (1.25, True)}, {0: 0, 1: 1}, resolution=0.5)
    estimate = compare(slow, fast)
    assert estimate.low < 1.6 / 1.2 and estimate.high > 1.6 * 1.2
    exact = compare(_cell([2.0, 2.0]), _cell([1.25, 1.25]))  # no grid known: no interval
    assert math.isnan(exact.low)
    assert ratio(exact) == "1.60x (no interval: every seed ties: no spread)"


@pytest.mark.parametrize("paired", [True, False])
def test_seeds_needed_is_monotone_and_never_nan(paired: bool) -> None:
    """At effects 1.1-4x and spreads 0.05-0.6: fewer seeds for a larger effect, more for a larger
    spread, always a number (scipy's noncentral t gives NaN far in its tails)."""
    effects = np.geomspace(1.1, 4.0, 25)
    spreads = np.linspace(0.05, 0.6, 23)
    table = np.array(
        [[seeds_needed(sd, 4, paired, effect)[0] for effect in effects] for sd in spreads]
    )
    assert np.all(np.isfinite(table)) and table.min() >= 2
    assert np.all(np.diff(table, axis=1) <= 0) and np.all(np.diff(table, axis=0) >= 0)
    assert seeds_needed(0.147, 4, True, 2.04)[0] <= 4  # a large effect at a small spread
    # a spread estimated from fewer degrees of freedom asks for more seeds (its upper bound)
    assert seeds_needed(0.3, 2, paired)[0] > seeds_needed(0.3, 20, paired)[0]


def test_p_is_printed_rounded_up_never_below_its_floor() -> None:
    assert p_text(2 / 2**5) == "p=0.063"  # 5 pairs: the floor 0.0625
    assert p_text(2 / 252) == "p=0.0080" and p_text(0.0499) == "p=0.0499"
    assert p_text(3e-5) == "p<0.0001"


def test_the_tuned_permutation_p_repeats_the_choice_of_rates() -> None:
    """The permutation p of the best rates relabels the arms within each rate and chooses again:
    two arms drawn alike give a large p however the best pair looks, a real gap a small one."""
    generator = np.random.default_rng(5)
    rates = (1e-4, 3e-4, 1e-3, 3e-3)
    alike = [
        [_cell(list(np.exp(generator.normal(1, 0.3, 5))), rate=r) for r in rates] for _ in range(2)
    ]
    assert tuned(*alike).exact_p > 0.05
    gap = [
        [_cell(list(np.exp(generator.normal(m, 0.1, 5))), rate=r) for r in rates] for m in (2, 1)
    ]
    assert tuned(*gap).exact_p < 0.001


def test_censoring_gives_a_bound_or_a_censored_fit() -> None:
    never = _cell([30.0, 30.0], [False, False])
    some = _cell([10.0, 30.0], [True, False])
    fast = _cell([5.0, 10.0])
    at_least = compare(never, fast)
    assert at_least.bound == ">=" and at_least.point == pytest.approx(30 / math.sqrt(50))
    assert math.isnan(at_least.low)
    fitted = compare(some, fast)
    assert fitted.model == "censored fit" and math.isnan(fitted.low)
    assert compare(never, never) is None  # neither got there


def test_the_permutation_test_stands_beside_every_interval() -> None:
    """Exact, two-sided: every sign flip of 5 pairs (32), every split of 3+5 runs (56)."""
    five = _cell([2.0, 3.0, 2.5, 2.2, 2.8])
    ones = _cell([1.0, 1.1, 0.9, 1.05, 0.95])
    assert compare(five, ones).exact_p == pytest.approx(2 / 32)
    three = _cell([2.0, 2.2, 2.1], order=None)
    assert compare(three, ones).exact_p == pytest.approx(2 / 56)


def test_kaplan_meier_fraction_reached_with_censoring() -> None:
    # 4 runs: reached at 2 and 5; one censored at 3 (stopped), one at 10 (the cap)
    times, fraction = kaplan_meier([2.0, 3.0, 5.0, 10.0], [True, False, True, False])
    assert times.tolist() == [0.0, 2.0, 5.0]
    assert fraction.tolist() == pytest.approx([0.0, 1 / 4, 1 - (3 / 4) * (1 / 2)])


def test_mean_std_of_few_values() -> None:
    assert mean_std([2.0]) == (2.0, 0.0)
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))
    assert all(np.isnan(mean_std([])))


def _write_run(
    sweep: Path,
    model: str,
    seed: int,
    lr: str,
    losses: list[float],
    status: str = "completed",
    net: dict | None = None,
    steps_per_validation: int = 10,
) -> Path:
    """A run folder as train.py writes it, with a scripted validation history (4 validations per
    epoch)."""
    overrides = [
        f"model={model}",
        f"seed={seed}",
        f"model.optimizer.lr={lr}",
        "data.root=/somewhere",
    ]
    folder = sweep / "__".join(o.replace("=", "-") for o in overrides[:3])
    (folder / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "study": SPEC,
        "model": {"optimizer": {"_target_": "torch.optim.AdamW", "lr": float(lr)}},
        "data": {"batch_size": 8, "image_size": [64, 96]},
        "trainer": {"val_check_interval": 0.25},
        "callbacks": {"thresholds": {"stop_when_reached": "val_loss<=0.7"}},
    }
    if net is not None:
        config["model"]["net"] = net
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"model": model}}}})
    )
    history = [
        {
            "epoch": (i + 1) / 4,
            "step": (i + 1) * steps_per_validation,
            "images_seen": (i + 1) * 80,
            "seconds": (i + 1) * 5.0,
            "cpu_share": 0.97,
            "val/loss": loss,
            "val/miou": max(0.0, 1.3 - loss),
        }
        for i, loss in enumerate(losses)
    ]
    (folder / "thresholds.json").write_text(
        json.dumps({"patience": 2, "finished": True, "history": history})
    )
    record = {
        "status": status,
        "config": config,
        "encoder_weights_used": {"source": "none", "requested": "none"},
    }
    (folder / "run.json").write_text(json.dumps(record))
    return folder


@pytest.fixture
def scripted(tmp_path: Path) -> Path:
    """Two learning rates x scratch/vgg x 2 seeds; the crossings are easy to count by hand."""
    sweep = tmp_path / "study"
    #                 validations at epochs 0.25, 0.5, ...
    _write_run(
        sweep, "unet_scratch", 0, "0.0001", [1.3, 1.1, 0.99, 1.01, 0.98, 0.95, 0.8, 0.69, 0.68]
    )
    _write_run(sweep, "unet_vgg", 0, "0.0001", [1.1, 0.98, 0.95, 0.75, 0.7, 0.6])
    _write_run(
        sweep, "unet_scratch", 1, "0.0001", [1.2, 1.1, 1.05, 0.97, 0.96, 0.9, 0.85, 0.8]
    )  # never 0.7
    _write_run(sweep, "unet_vgg", 1, "0.0001", [1.0, 0.9, 0.85, 0.66, 0.65])
    _write_run(sweep, "unet_scratch", 0, "0.001", [0.9, 0.8, 0.7, 0.6])
    _write_run(sweep, "unet_vgg", 0, "0.001", [0.95, 0.9, 0.7, 0.6])
    _write_run(sweep, "unet_vgg", 1, "0.001", [0.95, 0.9, 0.7, 0.6], status="failed")
    return sweep


def test_arms_pair_by_seed_within_each_learning_rate(scripted: Path) -> None:
    study = Study(load_runs(scripted))
    assert [arm.label for arm in study.arms] == [
        "model=unet_scratch, lr=1e-3",
        "model=unet_scratch, lr=1e-4",
        "model=unet_vgg, lr=1e-3",
        "model=unet_vgg, lr=1e-4",
    ]
    assert [c.label for c in study.comparisons] == ["pretraining at 1e-3", "pretraining at 1e-4"]
    low_lr = study.comparisons[1]
    # loss <= 1.0 held twice in a row: scratch seed 0 from its 5th validation (0.99, 1.01 breaks the
    # first streak), epoch 1.25; vgg seed 0 from its 2nd, epoch 0.5; scratch seed 1 from its 4th
    # (1.0); vgg seed 1 its 1st
    estimate = low_lr.estimate(Threshold("val/loss", "min", 1.0))
    assert [(seed, a, b) for seed, a, b in estimate.values] == [(0, 1.25, 0.5), (1, 1.0, 0.25)]
    assert estimate.point == pytest.approx(math.sqrt(2.5 * 4.0)) and estimate.bound == ""
    assert not estimate.paired  # these records say nothing of their data order
    # <= 0.7: scratch seed 1 never (last seen at epoch 2.0): a censored fit, no interval
    fitted = low_lr.estimate(Threshold("val/loss", "min", 0.7))
    assert fitted.model == "censored fit" and math.isnan(fitted.low)
    # interpolation: scratch seed 0 crosses 1.0 between 1.01 (epoch 1.0) and 0.98 (1.25): at 1.0 +
    # 1/3 * 0.25
    interpolated = low_lr.estimate(Threshold("val/loss", "min", 1.0), interpolate=True)
    _, slow, fast = interpolated.values[0]
    assert slow / fast == pytest.approx(
        (1.0 + 0.25 / 3) / (0.25 + 0.25 * (1.1 - 1.0) / (1.1 - 0.98))
    )
    # images and seconds follow the same validations
    images = low_lr.estimate(Threshold("val/loss", "min", 1.0), unit="images_seen")
    assert images.point == pytest.approx(estimate.point)


def test_report_of_scripted_runs(scripted: Path, capsys) -> None:
    assert report_main([str(scripted)]) == 0
    report = (scripted / "report.md").read_text()
    assert "6 usable runs of 7 in 4 arms" in report
    assert (
        "| pretraining at 1e-4 | val_loss<=1 | scratch 1e-4 / pretrained 1e-4 | 3.16x [" in report
    )
    assert "| pretraining at 1e-4 | val_loss<=0.7 | scratch 1e-4 / pretrained 1e-4 | ~" in report
    assert "| 0: 1.25/0.50; 1: 1.00/0.25 |" in report  # each seed's epochs beside the interval
    assert report.startswith("# Study report: scratch / pretrained, epochs to val/loss <= 1 | 0.7")
    answer = report.split("\n\n")[1].splitlines()
    assert len(answer) <= 7 and answer[-1].startswith("- not established")
    assert answer[0].startswith("In plain words: the pretrained 1e-3 arm reaches val/loss ")
    assert "## Each arm at its best rate" not in report  # no rates bracketed: no empty section
    assert "(2 validations per epoch" not in report and "(4 validations per epoch)" in report
    assert "| model-unet_vgg__seed-1__model.optimizer.lr-0.001 | 1 | failed |" in report
    for figure in (
        "speedup_vs_threshold.png",
        "reached_vs_epochs.png",
        "loss_curves.png",
        "calibration.png",
    ):
        assert (scripted / figure).stat().st_size > 1000, figure
        assert f"]({figure})" in report
    assert "Report:" in capsys.readouterr().out


def test_the_protocol_table_says_which_head_the_lab_vgg_net_trained_with(tmp_path: Path) -> None:
    lab_vgg = {"_target_": "segment.models.LabVGGUNet", "final_relu": True}
    _write_run(
        tmp_path, "unet_scratch", 0, "0.0001", [1.0, 0.9], net={**lab_vgg, "final_relu": False}
    )
    _write_run(tmp_path, "unet_vgg", 0, "0.0001", [1.0, 0.9], net=lab_vgg)
    _write_run(
        tmp_path,
        "unet_lab",
        0,
        "0.0001",
        [1.0, 0.9],
        net={"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "vgg16"},
    )
    table = protocol_section(Study(load_runs(tmp_path)))
    assert (
        "| LabVGGUNet, corrected head |" in table
        and "| LabVGGUNet, head ending in ReLU (the lab's) |" in table
    )
    assert "| Unet, vgg16 |" in table


def test_the_protocol_says_each_runs_grid_and_cap_in_its_own_unit(tmp_path: Path) -> None:
    """Per epoch for the study's runs; in images seen for runs on the image grid
    (``measurement=images``), whose epochs differ with the training-set size."""
    on_epochs = _write_run(tmp_path, "unet_scratch", 0, "0.001", [1.0, 0.9])
    on_images = _write_run(tmp_path, "unet_vgg", 0, "0.001", [1.0, 0.9])
    for folder, extra in (
        (on_epochs, {"trainer": {"val_check_interval": 0.25, "max_epochs": 30}}),
        (
            on_images,
            {
                "trainer": {"val_check_interval": 12, "max_epochs": -1},
                "measurement": {"val_every_images": 96, "max_images": 3456},
            },
        ),
    ):
        record = json.loads((folder / "run.json").read_text())
        record["config"].update(extra)
        (folder / "run.json").write_text(json.dumps(record))
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(record["config"]))
    rows = protocol_section(Study(load_runs(tmp_path))).splitlines()
    [scratch] = [row for row in rows if row.startswith("| scratch")]
    [pretrained] = [row for row in rows if row.startswith("| pretrained")]
    assert "| 4 per epoch |" in scratch and "| 30 epochs |" in scratch
    assert "| every 96 images |" in pretrained and "| 3,456 images |" in pretrained
    assert "-1" not in pretrained.split("|")[13]


def test_a_report_with_nothing_to_compare_claims_no_comparison(tmp_path: Path) -> None:
    """One arm, no partner: the report says there is nothing to compare, not that every speedup
    holds."""
    sweep = tmp_path / "study"
    _write_run(sweep, "unet_vgg", 0, "0.001", [0.95, 0.9, 0.7, 0.6])
    _write_run(sweep, "unet_vgg", 1, "0.001", [0.9, 0.8, 0.65])
    assert report_main([str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    assert report.split("\n\n")[1].startswith("No comparison")
    assert "excludes 1" not in report and "above 1" not in report


def test_report_command_on_a_folder_without_runs(tmp_path: Path, capsys) -> None:
    assert report_main([str(tmp_path)]) == 1
    assert "holds no run folders" in capsys.readouterr().err
    assert report_main([str(tmp_path / "missing")]) == 1
    assert "no such sweep folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, str]:
    """``experiment=compare_pretraining`` at 2 seeds, 1 epoch of 2 validations, tiny images: 6
    fast runs."""
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
            # the smallest the VGG16 U-Nets take: the report is the point
            "data.image_size=[32,64]",
            "callbacks.thresholds.patience=1",
            # a loose level every run reaches at its first validation, and one none reaches
            "study.headline=[1000,0.01]",
            # the report reads run files, not checkpoints: six VGG16 U-Net checkpoints would only
            # cost time
            *NO_CHECKPOINTS,
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
        (model, seed, "completed")
        for model in ("unet_lab", "unet_scratch", "unet_vgg")
        for seed in (0, 1)
    ]
    assert all([row["epoch"] for row in run.validations] == [0.5, 1.0] for run in runs)
    # the Hydra callback printed the answer: every run at the loose level's first validation,
    # none at the strict one; both arms of a seed saw the same data order (recorded): paired. The
    # ratios tie on the grid: the interval is as wide as its rounding, never zero-width
    for label in ("pretraining, scratch / pretrained", "architecture, lab net / scratch"):
        found = re.search(
            rf"- {re.escape(label)} \(2/2 seeds, paired\): 1\.00x \[([\d.]+), ([\d.]+)\] "
            r"p=1\.0 \| n/a",
            stdout,
        )
        assert found and float(found[1]) < 0.5 and float(found[2]) > 2, stdout
    report = (folder / "report.md").read_text()
    assert "| pretraining | val_loss<=1000 | scratch / pretrained | 1.00x [" in report
    assert "| architecture | val_loss<=1000 | lab net / scratch | 1.00x [" in report
    assert "None: every run completed." in report
    for figure in (
        "speedup_vs_threshold.png",
        "loss_curves.png",
        "reached_vs_epochs.png",
        "masks_at_thresholds.png",
    ):
        assert (folder / figure).stat().st_size > 1000, figure


@pytest.mark.slow
def test_the_mask_legend_is_the_label_set_the_runs_recorded(
    sweep: tuple[Path, str], tmp_path: Path
) -> None:
    """Each run records its dataset's label set; the report draws the legend from it, so a
    dataset the report has never heard of gets its own (it used to guess among four known ones
    from the logged class names, and drew none for any other)."""
    from segment.analysis.report import _dataset_info
    from segment.data.synthetic import SYNTHETIC_INFO

    folder = shutil.copytree(sweep[0], tmp_path / "sweep", symlinks=True)
    records = sorted(folder.glob("*/run.json"))
    assert records and all(
        json.loads(path.read_text())["labels"] == SYNTHETIC_INFO.as_record() for path in records
    )
    mine = {
        "name": "mine",
        "class_names": [f"class {i}" for i in range(SYNTHETIC_INFO.num_classes)],
        "palette": [[i, i, i] for i in range(SYNTHETIC_INFO.num_classes)],
    }
    for path in records:
        path.write_text(json.dumps({**json.loads(path.read_text()), "labels": mine}))
    info = _dataset_info(Study(load_runs(folder)))
    assert info is not None and info.name == "mine"
    assert list(info.class_names) == mine["class_names"]
    assert [list(colour) for colour in info.palette] == mine["palette"]


@pytest.mark.slow
def test_report_command_lists_a_failed_and_a_killed_run(
    sweep: tuple[Path, str], tmp_path: Path, capsys
) -> None:
    folder, _ = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy)
    jobs = sweep_jobs(copy)
    failed, killed = jobs["model=unet_lab,seed=0"], jobs["model=unet_scratch,seed=0"]
    record = json.loads((failed / "run.json").read_text())
    (failed / "run.json").write_text(
        json.dumps({**record, "status": "failed", "error": "FloatingPointError: nan"})
    )
    record = json.loads((killed / "run.json").read_text())
    (killed / "run.json").write_text(json.dumps({**record, "status": "running"}))
    assert report_main([str(copy)]) == 0
    report = (copy / "report.md").read_text()
    assert f"| {failed.name} | 0 | failed | FloatingPointError: nan |" in report
    assert f"| {killed.name} | 0 | incomplete |" in report
    assert "4 usable runs of 6" in report
    assert "Report:" in capsys.readouterr().out


def _rates(make_cfg, scheduler: str, max_epochs: int, steps: int = 40) -> list[float]:
    """The learning rate at each of ``steps`` optimiser steps under a composed schedule (2 steps
    per epoch)."""
    from hydra.utils import instantiate

    cfg = make_cfg(
        "experiment=compare_pretraining",
        f"scheduler={scheduler}",
        f"trainer.max_epochs={max_epochs}",
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = dict(OmegaConf.to_container(cfg.model.scheduler, resolve=True))
    scheduler_config = {**schedule["scheduler"]}
    if scheduler_config.get("total_steps", 0) is None:
        scheduler_config["total_steps"] = 2 * max_epochs
    stepper = instantiate(scheduler_config)(optimizer)
    rates = []
    for step in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule["interval"] == "step" or (step + 1) % 2 == 0:
            stepper.step()
    return rates


def test_the_study_schedule_does_not_depend_on_the_run_length(make_cfg) -> None:
    """The rate at every step of warmup_constant is the same whatever trainer.max_epochs;
    cosine's is not."""
    assert _rates(make_cfg, "warmup_constant", 3) == _rates(make_cfg, "warmup_constant", 30)
    assert _rates(make_cfg, "cosine", 3, steps=6) != _rates(make_cfg, "cosine", 30, steps=6)


def _bracket(tmp_path: Path) -> Path:
    """Two arms over three rates, five seeds; the faster arm's best rate wins by luck in some
    seeds."""
    sweep = tmp_path / "bracket"
    rng = np.random.default_rng(0)
    for model, base in (
        ("unet_scratch", {"1e-4": 12.0, "3e-4": 8.0, "1e-3": 8.5}),
        ("unet_vgg", {"1e-4": 6.0, "3e-4": 5.0, "1e-3": 5.2}),
    ):
        for lr, epochs in base.items():
            for seed in range(5):
                crossing = epochs * float(np.exp(rng.normal(0, 0.25)))
                validations = int(crossing * 4) + 2
                losses = [1.2 - 0.3 * (i + 1) / (crossing * 4) for i in range(validations)]
                _write_run(sweep, model, seed, str(float(lr)), losses)
    for folder in sweep.iterdir():  # declare the tuned comparison as the experiment YAML does
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        config["study"] = {
            **SPEC,
            "headline": [0.9],
            "tuned": {
                "pretraining": {
                    "slower": {"model": "unet_scratch"},
                    "faster": {"model": "unet_vgg"},
                    "rate": "model.optimizer.lr",
                }
            },
        }
        record = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**record, "config": config}))
    return sweep


def test_each_arm_at_its_best_rate_by_the_stated_rule_with_an_interval_for_every_pair(
    tmp_path: Path,
) -> None:
    study = Study(load_runs(_bracket(tmp_path)))
    [tuned_comparison] = study.tuned
    level = Threshold("val/loss", "min", 0.9)
    estimate = tuned_comparison.estimate(level)
    slow, fast = tuned_comparison.cells(level)
    # the rule: the lowest mean log-epochs (geometric mean) per arm
    best = [min(cells, key=lambda c: c.logs.mean()) for cells in (slow, fast)]
    assert estimate.rates == (best[0].rate, best[1].rate)
    assert estimate.point == pytest.approx(math.exp(best[0].logs.mean() - best[1].logs.mean()))
    # valid for every pair at once: wider than the fixed-rate interval of the chosen pair
    fixed = compare(best[0], best[1])
    assert estimate.low < fixed.low and estimate.high > fixed.high
    # ties go to the rate with more seeds, then to the lower rate
    tie = [
        _cell([2.0, 2.0], rate=1e-3),
        _cell([2.0, 2.0, 2.0], rate=3e-3),
        _cell([2.0, 2.0, 2.0], rate=1e-2),
    ]
    other = [_cell([1.0, 1.1], rate=1e-3)]
    assert tuned(tie, other).rates[0] == 3e-3


def test_the_report_gives_the_tuned_speedup_its_rate_table_and_figure(tmp_path: Path) -> None:
    sweep = _bracket(tmp_path)
    assert analysis_main(["report", str(sweep)]) == 0  # python -m segment.analysis report
    report = (sweep / "report.md").read_text()
    first = report.split("\n\n")[1].splitlines()[0]
    assert first.startswith("In plain words: each at its best rate, the pretrained arm reaches ")
    assert "| pretraining at each arm's best rate | val_loss<=0.9 |" in report
    assert "holds for every pair of candidate rates at once" in report
    assert "each seed's own best rate" in report
    assert "| scratch 3e-4 | 3e-4 | 5 |" in report  # the rate table: one row per arm and rate
    assert (sweep / "epochs_vs_rate.png").stat().st_size > 1000


def test_runs_in_different_precisions_are_flagged(tmp_path: Path) -> None:
    for model, precision in (("unet_scratch", "bf16-mixed"), ("unet_vgg", "32-true")):
        folder = _write_run(tmp_path, model, 0, "0.001", [1.0, 0.9])
        record = json.loads((folder / "run.json").read_text())
        record["attempts"] = [{"precision": {"precision": precision}}]
        (folder / "run.json").write_text(json.dumps(record))
    table = protocol_section(Study(load_runs(tmp_path)))
    assert "Warning: the arms of pretraining trained in different precisions" in table


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda f: (f / "run.json").write_text("[]"),
            r"run.json holds a list, not a run record; move it aside",
        ),
        (lambda f: (f / "run.json").write_text('{"status": "compl'), r"run.json is unreadable"),
        (
            lambda f: (
                (f / "csv").mkdir()
                or (f / "csv" / "metrics.csv").write_text(
                    "epoch,step,train/loss\n0,1,2.3\n1,2,x.7\n"
                )
            ),
            r"csv/metrics.csv, line 3: train/loss='x.7', epoch='1': not numbers",
        ),
        (
            lambda f: (f / "thresholds.json").write_text(
                json.dumps({"history": [{"epoch": 1, "step": 1, "val/loss": "x"}]})
            ),
            r"thresholds.json: history\[0\]\['val/loss'\]='x' is not a number",
        ),
    ],
)
def test_a_damaged_run_file_is_listed_by_name_not_a_crash(tmp_path: Path, damage, message) -> None:
    good = _write_run(tmp_path, "unet_scratch", 0, "0.001", [1.0, 0.9])
    bad = _write_run(tmp_path, "unet_vgg", 0, "0.001", [1.0, 0.9])
    damage(bad)
    assert report_main([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert (
        f"| {bad.name} | None | failed | unreadable run folder:" in report
        and good.name not in report.split("## Failed")[1]
    )

    assert re.search(message, report)


@pytest.mark.slow
@pytest.mark.parametrize("study", ["camvid_study", "camvid_data_size"])
def test_the_committed_camvid_reports_regenerate_from_their_exported_run_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, study: str
) -> None:
    """Each committed study under docs/results is an export (no machine paths); its report is
    what the report command writes from it, to the byte."""
    committed = Path(__file__).resolve().parents[1] / "docs" / "results" / study
    copy = tmp_path / "docs" / "results" / study  # the same path, from another root
    figures = {p.name for p in committed.glob("*.png")} | {"report.md"}  # the report's own
    shutil.copytree(
        committed,
        copy,
        ignore=lambda folder, names: figures & set(names) if Path(folder) == committed else [],
    )
    monkeypatch.chdir(tmp_path)
    assert report_main([f"docs/results/{study}"]) == 0
    assert (copy / "report.md").read_text() == (committed / "report.md").read_text()
    texts = [
        p.read_text(errors="replace")
        for p in committed.rglob("*")
        if p.suffix in (".json", ".yaml", ".log", ".csv", ".md")
    ]
    assert not any("/work/" in text or "/root/" in text or "/home/" in text for text in texts)


def test_the_report_prints_the_command_that_adds_the_seeds_it_needs(tmp_path: Path) -> None:
    sweep = _bracket(tmp_path)
    for folder in sweep.iterdir():
        if "seed-2" in folder.name or "seed-3" in folder.name or "seed-4" in folder.name:
            shutil.rmtree(folder)
    assert report_main([str(sweep)]) == 0
    words = _seeds_command((sweep / "report.md").read_text())
    assert "skip_completed=true" in words and "model=unet_scratch,unet_vgg" in words
    assert f"hydra.sweep.dir={sweep}" in words
    [seeds] = [w for w in words if w.startswith("seed=")]
    assert seeds.startswith("seed=2,") or seeds == "seed=2"


def test_the_exported_reports_seeds_command_parses_once_its_path_is_filled_in() -> None:
    """The committed data-size report's command, from runs exported with ``skip_completed=True``
    and ``data.root`` as its role: each key once, and Hydra parses it once the path is given."""
    committed = Path(__file__).resolve().parents[1] / "docs/results/camvid_data_size/report.md"
    report = committed.read_text()
    assert "with `<data.root>` replaced by the path on your machine" in report
    words = _seeds_command(report.replace("<data.root>", "/data/CamVid copy"))
    assert 'data.root="/data/CamVid copy"' in words


def _seeds_command(report: str) -> list[str]:
    """The report's seeds command as the shell splits it; checked to parse in Hydra with each
    key given once."""
    [command] = [line for line in report.splitlines() if line.startswith("segment-train -m ")]
    split = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True)
    words = split.stdout.decode().split("\0")[:-1]
    assert words[:2] == ["segment-train", "-m"]
    overrides = OverridesParser.create().parse_overrides(words[2:])
    keys = [override.key_or_group for override in overrides]
    assert len(keys) == len(set(keys)), keys
    return words


def test_seconds_compare_only_runs_of_one_machine_at_their_usual_speed(tmp_path: Path) -> None:
    """A run on another host, one that shared its CPU and one slowed past 25% of its arm's median
    step time are left out of the seconds ratio, by name; the rest compare."""
    for model in ("unet_scratch", "unet_vgg"):
        for seed in range(4):
            _write_run(tmp_path, model, seed, "0.001", [1.1, 0.95, 0.9, 0.8, 0.7])
    study = Study(load_runs(tmp_path))
    [comparison] = study.comparisons
    for run in study.usable:
        host = {"cpu": {"model": "Xeon"}, "speed": {"fp32_ms": 20.0}}
        if run.model == "unet_vgg" and run.seed == 3:
            host = {"cpu": {"model": "Xeon"}, "speed": {"fp32_ms": 31.0}}  # another host
        run.record.attempts = [Attempt(action="fresh", outcome="completed", machine=host)]
        for row in run.validations:
            if run.model == "unet_scratch" and run.seed == 1:
                row["seconds"] *= 1.5  # a slower run
            if run.model == "unet_scratch" and run.seed == 2:
                row["cpu_share"] = 0.5  # another job shared its cores
    timed, notes = seconds_runs(comparison)
    assert sorted(run.seed for run in timed.slower.runs) == [0, 3]
    assert sorted(run.seed for run in timed.faster.runs) == [0, 1, 2]
    assert any("scratch seed 1 (750 ms a step, its arm's median 500 ms)" in n for n in notes)
    assert any("scratch seed 2 (a CPU share of 0.50)" in n for n in notes)
    assert any("pretrained seed 3 (on Xeon (probe 31.0 ms))" in n for n in notes)
    level = Threshold("val/loss", "min", 0.9)
    assert timed.estimate(level, "seconds").point == pytest.approx(1.0)
    assert "seconds withheld" not in units_table(study)


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``folder`` (itself too): its modification time and bytes (a link: where it
    points; a folder: nothing)."""
    return {
        str(p.relative_to(folder)): (
            p.lstat().st_mtime_ns,
            str(p.readlink()).encode()
            if p.is_symlink()
            else p.read_bytes()
            if p.is_file()
            else b"",
        )
        for p in [folder, *folder.rglob("*")]
    }


def _as_written_now(folder: Path, **fields: object) -> Path:
    """``folder`` with its record as train.py writes it now (schema 2, its attempts listed), and
    ``fields``."""
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, "schema": 2, "attempts": [], **fields}))
    return folder


def test_export_trusts_no_layout_that_names_files_outside_the_run(tmp_path: Path) -> None:
    """A record's layout naming its record ``../../secret.txt`` and its log by an absolute path used
    to read a file outside the sweep, write one outside the export and rewrite the log in place; the
    record is now refused when read (the run listed as unreadable, naming the file and the entry)
    and nothing outside the sweep is read, nothing outside the export written."""
    sweep, dest = tmp_path / "study", tmp_path / "out" / "export"
    folder = _write_run(sweep, "unet_scratch", 0, "0.001", [1.0, 0.9])
    _as_written_now(_write_run(sweep, "unet_vgg", 0, "0.001", [1.0, 0.9]))
    (tmp_path / "secret.txt").write_text("SECRET of the machine")
    canary = tmp_path / "canary.log"
    canary.write_text("a log of /home/someone/elsewhere\n")
    before = _tree(canary)
    _as_written_now(folder, layout={"record": "../../secret.txt", "log": str(canary)})
    assert analysis_main(["export", str(sweep), str(dest)]) == 0
    assert _tree(canary) == before
    assert [p.name for p in dest.parent.iterdir()] == ["export"]
    assert not any("SECRET" in p.read_text() for p in dest.rglob("*") if p.is_file())
    [run] = [run for run in load_runs(sweep) if run.folder == folder]
    assert run.status == "failed" and re.search(
        r"run\.json: layout record='\.\./\.\./secret\.txt' \(from the run "
        r"record\) is not a path in the run folder",
        str(run.error),
    )


@pytest.mark.parametrize(
    "link", ["csv/notes.txt", ".hydra/notes.yaml", "masks/input.png", "train.log", "csv"]
)
def test_export_never_follows_a_link_out_of_the_run_folder(
    tmp_path: Path, link: str, capsys
) -> None:
    """A symbolic link among the files an export copies (or a linked folder of them) used to copy
    what it points to; the export is now refused before writing anything, naming the link."""
    sweep, dest, outside = tmp_path / "study", tmp_path / "export", tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("SECRET of the machine")
    for model in ("unet_scratch", "unet_vgg"):
        folder = _as_written_now(_write_run(sweep, model, 0, "0.001", [1.0, 0.9]))
        (folder / link).parent.mkdir(parents=True, exist_ok=True)
        (folder / link).symlink_to(outside if link == "csv" else outside / "notes.txt")
    code = analysis_main(["export", str(sweep), str(dest)])
    assert not any(b"SECRET" in p.read_bytes() for p in dest.rglob("*") if p.is_file())
    assert code == 1 and not dest.exists()
    assert re.search(
        rf"{re.escape(link)}(/notes\.txt)? is a symbolic link or in a linked folder: an export "
        "never follows one",
        capsys.readouterr().err,
    )


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("held", ["a run.json", "a linked run folder"])
def test_export_never_replaces_a_file_nor_writes_through_a_link_in_its_destination(
    tmp_path: Path, held: str, merge: bool, capsys
) -> None:
    """An existing destination's run.json used to be replaced, and a linked folder in it written
    through; a destination that holds files is now refused (or, merging, each file that exists
    or lies behind a link), leaving it as it was."""
    sweep, dest, outside = tmp_path / "study", tmp_path / "export", tmp_path / "outside"
    folder = _as_written_now(_write_run(sweep, "unet_scratch", 0, "0.001", [1.0, 0.9]))
    outside.mkdir()
    dest.mkdir()
    if held == "a run.json":
        (dest / folder.name).mkdir()
        (dest / folder.name / "run.json").write_text("the destination's own record")
    else:
        (dest / folder.name).symlink_to(outside)
    before = _tree(dest)
    code = analysis_main(["export", str(sweep), str(dest), *(["--merge"] if merge else [])])
    assert _tree(dest) == before and not any(outside.iterdir())
    expected = (
        f"{dest / folder.name / 'run.json'} exists: a merge never replaces a file"
        if held == "a run.json"
        else f"{dest / folder.name / 'run.json'} is a symbolic link or in a linked folder"
    )
    assert (
        code == 1 and (expected if merge else "is not an empty folder") in capsys.readouterr().err
    )


def test_export_merges_the_runs_of_another_sweep_into_its_destination(tmp_path: Path) -> None:
    """Records of schema 1 (no attempts) export too."""
    first = _write_run(tmp_path / "one", "unet_scratch", 0, "0.001", [1.0, 0.9])
    second = _write_run(tmp_path / "two", "unet_vgg", 0, "0.001", [1.0, 0.8])
    dest = tmp_path / "export"
    assert analysis_main(["export", str(tmp_path / "one"), str(dest)]) == 0
    kept = _tree(dest / first.name)
    assert analysis_main(["export", str(tmp_path / "two"), str(dest), "--merge"]) == 0
    assert _tree(dest / first.name) == kept
    assert sorted(run.folder.name for run in load_runs(dest)) == sorted([first.name, second.name])


def test_an_exported_run_is_skipped_as_completed_where_its_sweep_goes_on(
    hydra_train, tmp_path: Path
) -> None:
    """The export writes a machine path's role (``<sweep.dir>/...``) or home (``~/``) into each
    attempt's overrides, where ``skip_completed`` compares them with the job's: a sweep continued
    from exported folders refused its completed jobs (an override that did not parse; a run-defining
    path that no longer matched, "two jobs share a name"). Such a value is unknown, never compared:
    each job is skipped, as completed, also from a record of an older export (roles unquoted). An
    override that does not parse otherwise is refused, naming the record."""
    sweep = tmp_path / "sweep"
    base = ("model=unet_lab", "trainer.max_epochs=1", "scheduler=constant")
    hydra_train(*base, f"hydra.run.dir={sweep / 'first'}")
    job = (
        *base,
        f"model.init_from={sweep / 'first' / 'checkpoints' / 'last.ckpt'}",
        "+extras.at=[/home/me/a,/home/me/b]",
    )
    metrics = hydra_train(*job, f"hydra.run.dir={sweep / 'run'}")
    assert analysis_main(["export", str(sweep), str(tmp_path / "exported")]) == 0
    run = tmp_path / "exported" / "run"
    exported = (run / "run.json").read_text()
    assert "<sweep.dir>/first" in exported and "~/a" in exported  # not the machine's paths

    def skipped() -> bool:
        assert hydra_train(*job, f"hydra.run.dir={run}", "skip_completed=true") == metrics
        last = json.loads((run / "run.json").read_text())["attempts"][-1]
        return (last["action"], last["outcome"]) == ("skip", "skipped")

    assert skipped()
    (run / "run.json").write_text(re.sub(r"='([<~][^'\"]*)'", r"=\1", exported))  # unquoted
    assert "=<paths.data_dir>" in (run / "run.json").read_text()
    assert skipped()
    damaged = exported.replace('"scheduler=constant"', '"scheduler=[constant"')
    (run / "run.json").write_text(damaged)
    with pytest.raises(RunFolderError, match=r"run\.json: cannot parse the override 'scheduler="):
        hydra_train(*job, f"hydra.run.dir={run}", "skip_completed=true")


def test_export_writes_each_override_hydra_reads_less_the_machine_s_paths(tmp_path: Path) -> None:
    """A path under a home folder or a Python installation in an override is replaced by ``~`` or
    ``<site-packages>`` and quoted; the key before it (``data/transforms@x``) is kept."""
    run = _write_run(tmp_path / "sweep", "unet_scratch", 0, "0.001", [1.0, 0.9])
    typed = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    typed += ["+data/transforms@x=/usr/lib/python3/site-packages/a", "+extras.at=/home/me/x"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(typed))
    assert analysis_main(["export", str(tmp_path / "sweep"), str(tmp_path / "exported")]) == 0
    exported = tmp_path / "exported" / run.name / ".hydra" / "overrides.yaml"
    lines = yaml.safe_load(exported.read_text())
    assert lines[-2:] == ["+data/transforms@x='<site-packages>/a'", "+extras.at='~/x'"]
    assert parse_overrides(lines)["extras.at"] == "~/x"


_PLACES = (  # values that name a place of the machine (a role, a home, an installation) or not
    "{sweep}/first/checkpoints/last.ckpt",
    "/home/me/a",
    "[/home/me/a,/home/me/b]",
    "'/home/me/my data'",
    "/usr/lib/python3/site-packages/a",
    "{{a: /home/me/a}}",
    "0.001",
    "unet_vgg",
)
_KEYS = ("model.init_from", "+extras.at", "model.optimizer.lr", "+model.note", "data.root")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    extra=st.lists(
        st.tuples(st.sampled_from(_KEYS), st.sampled_from(_PLACES)),
        max_size=4,
        unique_by=lambda item: item[0],
    )
)
def test_every_exported_job_is_its_own_job_where_its_sweep_goes_on(
    tmp_path_factory: pytest.TempPathFactory, extra: list[tuple[str, str]]
) -> None:
    """Whatever places a job's overrides name, its exported record is the same job to
    ``skip_completed`` as the overrides typed again: skipped, never refused."""
    root = tmp_path_factory.mktemp("export")
    run = _write_run(root / "sweep", "unet_scratch", 0, "0.001", [1.0, 0.9])
    typed = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    typed += [f"{key}={value.format(sweep=root / 'sweep')}" for key, value in extra]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(typed))
    record = json.loads((run / "run.json").read_text())
    started = "2026-01-01T00:00:00+00:00"
    record |= {"schema": 2, "attempts": [{"started": started, "overrides": typed}]}
    (run / "run.json").write_text(json.dumps(record))
    assert analysis_main(["export", str(root / "sweep"), str(root / "exported")]) == 0
    exported = read_record(root / "exported" / run.name)
    asked = Asked(skip_completed=True, overrides=tuple(typed))
    assert decide(exported, True, asked, Path("last.ckpt")).action == "skip"
