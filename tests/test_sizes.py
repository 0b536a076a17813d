"""The data-size study's report by training-set size, on hand-made run records (no training): the
trend over sizes and its coverage by simulation through the report's own path, mask quality at
an early budget, the lowest loss per run, and cells not yet measured."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from segment.analysis import sizes
from segment.analysis.runs import Run
from segment.analysis.size_tables import section
from segment.analysis.stats import Estimate, mean_difference, mean_interval, size_trend
from segment.analysis.study import Study
from segment.analysis.thresholds import Threshold
from segment.run.record import RunRecord

SPEC = {
    "comparisons": {
        "pretraining": {"slower": {"model": "unet_scratch"}, "faster": {"model": "unet_vgg"}}
    },
    "headline": [1.0, 0.7],
}
SWEPT = {"seed": "0,1,2", "data.train_size": "46,122,null", "model": "unet_scratch,unet_vgg"}
LEVEL = Threshold("val/loss", "min", 1.0)


def _run(
    model: str,
    size: int | None,
    seed: int,
    rows: list[tuple[float, float]],
    status: str = "completed",
    train: int | None = None,
    order: bool = True,
    swept: dict[str, str] | None = None,
) -> Run:
    """A run of ``size`` training images (None: all, ``train`` of them) whose validations are
    ``(images seen, val/loss)``; mIoU falls with the loss."""
    text = "none" if size is None else str(size)
    validations = [
        {"epoch": i + 1.0, "step": i + 1, "images_seen": x, "val/loss": v, "val/miou": 1 - v / 2}
        for i, (x, v) in enumerate(rows)
    ]
    return Run(
        folder=Path(f"sim/{model}-{text}-{seed}"),
        choices={"model": model},
        overrides={"model": model, "data.train_size": text, "seed": str(seed)},
        config={"study": SPEC, "seed": seed, "data": {"train_size": size}},
        seed=seed,
        status=status,
        validations=validations,
        patience=2,
        record=RunRecord(
            status={"incomplete": "running"}.get(status, status),  # the record's word for it
            data={"train": train or size},
            data_order={"version": 2, "seed": seed} if order else None,
        ),
        swept=dict(SWEPT if swept is None else swept),
    )


def _crossing(time: float, end: float | None = None, step: float = 1.0) -> list[tuple]:
    """Validations around a crossing of val/loss 1.0 (and 0.7) at ``time`` images, held after."""
    points = sorted({time - step, time, time + step, end or time + step})
    return [(x, 1.5 if x < time else 0.6) for x in points if x > 0]


def _estimate(point: float, low: float, high: float, df: float) -> Estimate:
    return Estimate(point, low, high, spread=(1.0, df))


def test_the_trend_is_the_least_squares_slope_with_its_welch_interval() -> None:
    """Three sizes, each its own standard error (read back from its t interval) and degrees of
    freedom: the slope of the OLS line, var = sum c_i^2 se_i^2, Welch-Satterthwaite df."""
    n = np.array([46.0, 122.0, 367.0])
    se, df = np.array([0.08, 0.05, 0.03]), np.array([2.0, 2.0, 4.0])
    y = np.log([3.0, 2.0, 1.5])
    half = stats.t.ppf(0.975, df) * se
    points = [
        (size, _estimate(math.exp(v), math.exp(v - h), math.exp(v + h), d))
        for size, v, h, d in zip(n, y, half, df, strict=True)
    ]
    trend = size_trend(points)
    x = np.log(n)
    c = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    variance = np.sum(c**2 * se**2)
    dof = variance**2 / np.sum((c**2 * se**2) ** 2 / df)
    assert trend.slope == pytest.approx(np.polyfit(x, y, 1)[0])
    assert trend.df == pytest.approx(dof)
    assert trend.high - trend.slope == pytest.approx(stats.t.ppf(0.975, dof) * math.sqrt(variance))
    assert trend.holds and trend.slope < 0 and trend.sizes == (46.0, 122.0, 367.0)
    assert trend.per_halving[0] == pytest.approx(2**-trend.slope)
    # a size without an interval (a bound, a censored fit) is left out; one size is no trend
    bound = Estimate(4.0, bound=">=")
    assert size_trend([*points[1:], (46.0, bound)]).sizes == (122.0, 367.0)
    assert size_trend([points[0], (122.0, bound), (367.0, None)]) is None


def _study(generator: np.random.Generator, paired: bool) -> Study:
    runs = []
    for size, (mu, sd_slow, sd_fast) in DESIGN.items():
        z = generator.standard_normal((2, SEEDS))
        if paired:
            z[1] = RHO * z[0] + math.sqrt(1 - RHO**2) * z[1]
        for model, base, sd, zs in (
            ("unet_scratch", math.log(800) + mu, sd_slow, z[0]),
            ("unet_vgg", math.log(800), sd_fast, z[1]),
        ):
            for seed, t in enumerate(np.exp(base + sd * zs)):
                runs.append(
                    _run(model, size, seed, _crossing(t, step=0.01), order=paired, swept={})
                )
    return Study(runs)


# {size: (true log-ratio, spread of log-images from scratch, pretrained)}: not on a line in
# log-size, spreads several-fold apart
DESIGN = {46: (math.log(3.0), 0.35, 0.2), 122: (math.log(2.2), 0.2, 0.15), 367: (0.3, 0.1, 0.12)}
SEEDS, RHO, STUDIES = 3, 0.5, 400


@pytest.mark.slow
@pytest.mark.parametrize("paired", [True, False])
def test_the_trend_interval_covers_the_true_slope(paired: bool) -> None:
    """Simulated studies read through Study, the slope from ``sizes.trend`` (the report's call):
    its 95% interval covers the least-squares slope through the true per-size log-ratios in
    92-98% of 400 studies, paired (2 df a size) and unpaired (Welch) alike."""
    x = np.log(list(DESIGN))
    truth = np.polyfit(x, [mu for mu, _, _ in DESIGN.values()], 1)[0]
    generator = np.random.default_rng(7 + paired)
    hits = total = 0
    for _ in range(STUDIES):
        study = _study(generator, paired)
        trend, left = sizes.trend(study, LEVEL)
        assert not left and len(trend.sizes) == 3
        hits += trend.low <= truth <= trend.high
        total += 1
    assert 0.92 <= hits / total <= 0.98, hits / total


def test_mean_and_difference_intervals() -> None:
    mean, low, high = mean_interval([0.2, 0.3, 0.4])
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.3, 0.3 - half, 0.3 + half))
    assert np.isnan(mean_interval([0.2])[1])
    first, second = {0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.3, 1: 0.3, 2: 0.6}
    paired = mean_difference(first, second, paired=True)
    assert paired == pytest.approx(mean_interval([0.2, 0.1, 0.3]))
    welch = mean_difference(first, second, paired=False)
    test = stats.ttest_ind([0.3, 0.3, 0.6], [0.1, 0.2, 0.3], equal_var=False)
    ci = test.confidence_interval()
    assert welch == pytest.approx((0.2, ci.low, ci.high))


# val/loss at validations every 96 images: scratch falls, then rises (it overfits); pretrained
# reaches 0.5 (held twice) at 576 images and stops at 672
SCRATCH = [2.0, 1.5, 1.2, 0.95, 0.9, 0.85, 0.8, 0.82, 0.9, 0.95, 1.0, 1.05] + [1.1] * 24
PRETRAINED = [1.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45]


def _grid(losses: list[float], shift: float = 0.0) -> list[tuple[float, float]]:
    return [((i + 1) * 96.0, v + shift) for i, v in enumerate(losses)]


def _partial() -> list[Run]:
    """Seeds 0 and 1 of both arms at 46 images, scratch seed 0 at 122, its partner still
    running; nothing yet of the whole split."""
    runs = [
        _run(model, 46, seed, _grid(losses, shift * seed))
        for seed in (0, 1)
        for model, losses, shift in (
            ("unet_scratch", SCRATCH, 0.01),
            ("unet_vgg", PRETRAINED, 0.03),
        )
    ]
    runs.append(_run("unet_scratch", 122, 0, _grid(SCRATCH)))
    runs.append(_run("unet_vgg", 122, 0, _grid(PRETRAINED[:2]), status="incomplete"))
    return runs


def test_a_run_stopped_before_the_budget_carries_its_last_value() -> None:
    scratch, pretrained = (
        _run("unet_scratch", 46, 0, _grid(SCRATCH)),
        _run("unet_vgg", 46, 0, _grid(PRETRAINED)),
    )
    assert sizes.at_budget(scratch, 1824) == (pytest.approx(1 - 1.1 / 2), False)
    assert sizes.at_budget(pretrained, 1824) == (pytest.approx(1 - 0.45 / 2), True)
    assert sizes.at_budget(pretrained, 672) == (pytest.approx(1 - 0.45 / 2), False)
    assert sizes.lowest(scratch) == (0.8, 672.0, 1.1)
    [size] = [s for s in sizes.sizes(Study(_partial())) if s.value == "46"]
    quality = sizes.quality(size, 1824)
    assert quality.paired
    assert quality.sides["slower"][3:] == (2, 0) and quality.sides["faster"][3:] == (2, 2)
    per_seed = [(1.1 + 0.01 * s - 0.45 - 0.03 * s) / 2 for s in (0, 1)]
    assert quality.difference == pytest.approx(mean_interval(per_seed))


def test_cells_not_yet_measured_are_said_so() -> None:
    """A sweep in progress: sizes, seeds and arms the sweep declares but no completed run holds
    yet read "not yet measured"; the early budget waits for the whole split's size."""
    study = Study(_partial())
    assert sizes.applies(study)
    assert [
        (s.label, len(s.runs["slower"]), len(s.runs["faster"])) for s in sizes.sizes(study)
    ] == [
        ("46", 2, 2),
        ("122", 1, 0),
        ("all", 0, 0),
    ]
    text = section(study)
    assert "| 122 | 1 / 0 | not yet measured | not yet measured |" in text
    assert "| all | 0 / 0 | not yet measured | not yet measured |" in text
    assert re.search(r"\| 46 \| 2 / 2 \| \d\.\d\dx \[", text)
    assert (
        "- val_loss<=1: no trend yet: it needs an interval at two sizes (none at 122, all)" in text
    )
    assert "not yet measured: the budget is 5 epochs of the largest training set" in text
    assert (
        "| scratch | 46 | 0.800 at 672 (last 1.100) | 0.810 at 672 (last 1.110) | not yet" in text
    )
    assert "| pretrained | 122 | not yet measured (incomplete) | not yet measured |" in text


def test_the_early_budget_is_five_epochs_of_the_whole_split_on_the_grid() -> None:
    runs = _partial() + [
        _run(model, None, 0, _grid(losses), train=367)
        for model, losses in (("unet_scratch", SCRATCH), ("unet_vgg", PRETRAINED))
    ]
    study = Study(runs)
    found = sizes.sizes(study)
    assert [s.label for s in found] == ["46", "122", "367 (all)"]
    assert sizes.early_budget(study, found) == (1835, 1824)
    text = section(study)
    assert "= 1,835 images" in text and "(1,824 images on the grid)" in text
    assert re.search(r"\| 46 \| 0\.\d+ \[0\.\d+, 0\.\d+\] \(2; 0 ended before\)", text)
    assert "(2; 2 ended before)" in text


def test_no_size_section_where_the_runs_share_one_size() -> None:
    runs = [
        _run(m, 46, s, _grid(SCRATCH), swept={})
        for m in ("unet_scratch", "unet_vgg")
        for s in (0, 1)
    ]
    study = Study(runs)
    assert not sizes.applies(study) and section(study) == ""


def test_arms_and_comparisons_name_their_size_with_its_unit() -> None:
    """The comparisons of a size study read ``at 46 images`` and ``at all images`` (the whole
    split, ``data.train_size=null``), not ``at 46`` and ``at none``."""
    runs = _partial() + [
        _run(model, None, 0, _grid(losses), train=367)
        for model, losses in (("unet_scratch", SCRATCH), ("unet_vgg", PRETRAINED))
    ]
    study = Study(runs)
    labels = {comparison.label for comparison in study.comparisons}
    assert {label.split(" at ", 1)[1] for label in labels} == {"46 images", "all images"}
    names = {arm.name for arm in study.arms}
    assert {"scratch 46 images", "scratch all images"} <= names, names
    assert not any("none" in name for name in names | labels)
