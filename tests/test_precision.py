"""The default precision is measured on the host when training starts (once per sweep), cached,
recorded, refused where it cannot train, and overridable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segment.device import precision
from segment.device.precision import PrecisionChoice, cpu_precision, resolve_precision
from tests.helpers import TINY_SYNTHETIC, run_script


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEGMENT_CACHE_DIR", str(tmp_path))
    return tmp_path / "precision.json"


def _timed(monkeypatch: pytest.MonkeyPatch, fp32_ms: float, bf16_ms: float) -> list[bool]:
    """Make the benchmark report these step times; returns the list of measurements made."""
    calls = []

    def step_ms(net, x, bf16: bool, repeats: int) -> float:
        calls.append(bf16)
        return bf16_ms if bf16 else fp32_ms

    monkeypatch.setattr(precision, "_step_ms", step_ms)
    return calls


@pytest.mark.parametrize(
    ("fp32_ms", "bf16_ms", "expected"),
    [
        (10.0, 4.0, "bf16-mixed"),  # an AMX host: bf16 2.5x faster
        (10.0, 20.0, "32-true"),  # AVX512-BF16 without AMX, as measured on one host: bf16 2x slower
        (10.0, 9.5, "32-true"),  # barely faster: not worth bf16's lost mantissa bits
    ],
)
def test_cpu_precision_follows_the_measurement_not_the_flags(
    cache, monkeypatch, fp32_ms, bf16_ms, expected
) -> None:
    _timed(monkeypatch, fp32_ms, bf16_ms)
    choice = cpu_precision()
    assert choice.precision == expected and resolve_precision("auto", "cpu")[0] == expected
    assert choice.bf16_speedup == pytest.approx(fp32_ms / bf16_ms)


def test_the_measurement_is_cached_per_host_and_torch_version(cache, monkeypatch) -> None:
    calls = _timed(monkeypatch, 10.0, 4.0)
    first = cpu_precision()
    assert len(calls) == 2 and cpu_precision() == first and len(calls) == 2  # measured once
    saved = json.loads(cache.read_text())
    assert list(saved) == [precision.host_key()] and "torch" in precision.host_key()
    monkeypatch.setattr(precision, "host_key", lambda: "another CPU | torch 9.9 | 2 threads")
    cpu_precision()
    assert len(calls) == 4 and len(json.loads(cache.read_text())) == 2


def test_gpu_precision_without_measuring(monkeypatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: False)
    monkeypatch.setattr(
        precision, "cpu_precision", lambda: pytest.fail("measured a CPU for a GPU run")
    )
    assert resolve_precision("auto", "gpu") == (
        "16-mixed",
        {"precision": "16-mixed", "chosen_by": "the GPU's bf16 support"},
    )


@pytest.mark.parametrize("asked", ["16-mixed", "bf16-true", "16-true"])
def test_a_precision_that_cannot_train_on_a_cpu_is_refused_naming_the_one_to_use(
    asked: str,
) -> None:
    with pytest.raises(
        ValueError,
        match=rf"trainer.precision={asked} cannot train on a CPU .* use "
        r"trainer.precision=bf16-mixed or 32-true",
    ):
        resolve_precision(asked, "cpu")


def test_a_corrupt_cache_is_named_and_replaced(cache, monkeypatch, caplog) -> None:
    _timed(monkeypatch, 10.0, 4.0)
    cache.write_text("{not json")
    assert cpu_precision().precision == "bf16-mixed"
    assert f"the precision cache {cache} is unreadable" in caplog.text
    assert json.loads(cache.read_text())[precision.host_key()]["precision"] == "bf16-mixed"


def test_composing_a_config_measures_nothing(make_cfg, cache, monkeypatch) -> None:
    from omegaconf import OmegaConf

    monkeypatch.setattr(
        precision, "measure_cpu_precision", lambda **kw: pytest.fail("measured while composing")
    )
    cfg = make_cfg("model=unet_lab")
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.trainer.precision == "auto" and not cache.exists()


@pytest.mark.slow
def test_a_sweep_measures_once_before_its_jobs_and_every_job_trains_alike(
    tmp_path: Path, data_dir: Path
) -> None:
    sweep = tmp_path / "sweep"
    run_script(
        [
            "train.py",
            "-m",
            "model=unet_lab",
            "seed=0,1",
            "trainer.max_epochs=1",
            *TINY_SYNTHETIC,
            "data.image_size=[64,96]",
            "data.num_workers=0",
            "trainer.enable_progress_bar=false",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        env={"SEGMENT_CACHE_DIR": str(tmp_path / "cache")},
    )
    shared = json.loads((sweep / "precision.json").read_text())
    records = [_recorded(p.parent) for p in sorted(sweep.glob("*/run.json"))]
    assert len(records) == 2
    for record in records:
        assert record["precision"] == shared["precision"] and record["fp32_ms"] == shared["fp32_ms"]
        assert record["chosen_by"] == f"measured once for the sweep ({sweep / 'precision.json'})"


def _recorded(run: str | Path) -> dict:
    """The precision record of a run's latest attempt (each attempt records what it trained in)."""
    return json.loads((Path(run) / "run.json").read_text())["attempts"][-1]["precision"]


def test_run_json_records_the_precision_and_who_chose_it(make_cfg, cache, monkeypatch) -> None:
    from segment.training import train

    _timed(monkeypatch, 10.0, 20.0)
    cfg = make_cfg("model=unet_lab", "debug=fdr")
    train(cfg)
    record = _recorded(cfg.paths.output_dir)
    assert record["precision"] == "32-true" and record["chosen_by"] == "measured on this CPU"
    assert record["bf16_speedup"] == pytest.approx(0.5)
    cfg = make_cfg("model=unet_lab", "debug=fdr", "trainer.precision=bf16-mixed")
    cfg.paths.output_dir = str(Path(cfg.paths.output_dir).parent / "override")
    train(cfg)
    record = _recorded(cfg.paths.output_dir)
    assert record == {"precision": "bf16-mixed", "chosen_by": "trainer.precision"}


def test_a_probe_under_load_or_close_is_taken_again_and_the_fastest_times_decide(
    cache, monkeypatch
) -> None:
    """A first probe taken while another job had the cores chose fp32 (796 vs 905 ms) where every
    later one chose bf16: it is taken again, each precision's fastest time decides, and a settled
    verdict is not measured again."""
    host = precision.host_key()
    taken = iter(
        [
            PrecisionChoice("32-true", 796.0, 905.0, host, cpu_share=0.45),  # under load
            PrecisionChoice("bf16-mixed", 700.0, 280.0, host, cpu_share=0.98),
        ]
    )
    calls = []
    monkeypatch.setattr(precision, "measure_cpu_precision", lambda: calls.append(1) or next(taken))
    assert cpu_precision().precision == "32-true"
    again = cpu_precision()  # the cached verdict was taken under load: measured again
    assert (again.precision, again.fp32_ms, again.bf16_ms) == ("bf16-mixed", 700.0, 280.0)
    assert again.measurements == 2 and again.cpu_share == 0.98
    assert cpu_precision() == again and len(calls) == 2  # settled: read from the cache
    assert json.loads(cache.read_text())[host]["measurements"] == 2


def test_precision_choice_round_trips() -> None:
    choice = PrecisionChoice("bf16-mixed", 10.0, 4.0, "x")
    assert (
        PrecisionChoice(**{k: v for k, v in choice.as_dict().items() if k != "bf16_speedup"})
        == choice
    )


@pytest.mark.slow
def test_throughput_benchmark_measures_each_precision_and_their_ratio(
    tmp_path: Path, data_dir: Path
) -> None:
    """The benchmark that settles a host's precision: both precisions in one run, and the ratio of
    the two; built as train.py builds, so a loss weighted by the data's class frequencies runs."""
    out = tmp_path / "throughput.json"
    run_script(
        [
            "benchmarks/train_throughput.py",
            "--quick",
            "--precisions",
            "32-true",
            "bf16-mixed",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--windows",
            "1",
            "--peak-size",
            "256",
            "--loader-seconds",
            "1",
            "--json",
            str(out),
            "model=unet_lab",
            "loss=ce_balanced",  # class weights from the data: train.py's build, not a copy of it
            "data.image_size=[64,96]",
            "data.batch_size=2",
            *TINY_SYNTHETIC,
            f"paths.data_dir={data_dir}",
        ],
        timeout=600,
    )
    rows = {row["measurement"]: row["value"] for row in json.loads(out.read_text())["rows"]}
    fp32 = rows["train: Lightning (train.py path), 32-true, batch 2"]
    bf16 = rows["train: Lightning (train.py path), bf16-mixed, batch 2"]
    assert rows["train: bf16-mixed / 32-true"] == pytest.approx(bf16 / fp32)
