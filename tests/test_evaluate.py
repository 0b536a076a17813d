"""evaluate.py: metrics against independent implementations, checkpoints, prediction, ONNX
export."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from segment.evaluating import load_checkpoint
from segment.evaluation import Predictor
from segment.models.metrics import confusion_metric, evaluation_scores
from segment.training import train
from tests.helpers import CONF_DIR, TINY_OVERRIDES, TINY_SYNTHETIC, run_script
from tests.layouts import write_image

# A module-scoped fixture trains once for this file: pytest-xdist keeps the file on one worker.
pytestmark = pytest.mark.xdist_group("evaluate")

NAMES = ["road", "car", "sky", "sign"]


def _numpy_scores(truth: np.ndarray, prediction: np.ndarray, num_classes: int, ignore: int) -> dict:
    """A plain reimplementation: confusion by counting, IoU = TP / (TP + FP + FN)."""
    valid = truth != ignore
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for t, p in zip(truth[valid], prediction[valid], strict=True):
        confusion[t, p] += 1
    ious = []
    for c in range(num_classes):
        tp, fp, fn = (
            confusion[c, c],
            confusion[:, c].sum() - confusion[c, c],
            confusion[c, :].sum() - confusion[c, c],
        )
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    return {"iou": np.array(ious), "pixel_acc": np.trace(confusion) / confusion.sum()}


def test_metrics_match_hand_counts_numpy_and_torchmetrics() -> None:
    # 4 classes; "sign" (3) occurs in neither truth nor prediction; 255 is ignored.
    truth = np.array([[0, 0, 0, 0, 1, 1], [0, 0, 2, 2, 1, 255], [255, 255, 2, 2, 1, 1]])
    prediction = np.array([[0, 0, 0, 1, 1, 1], [0, 2, 2, 2, 0, 1], [0, 1, 2, 0, 1, 1]])
    # hand counts over the 15 labelled (truth != 255) pixels:
    # road: 6 in truth, TP 4, FN 2, FP 2 (a car and a sky pixel called road) -> IoU 4/8
    # car:  5 in truth, TP 4, FN 1, FP 1 -> 4/6;   sky: 4 in truth, TP 3, FN 1, FP 1 -> 3/5
    # sign: in neither truth nor prediction -> undefined
    expected_iou = [4 / 8, 4 / 6, 3 / 5]
    metric = confusion_metric(4, 255)  # the object training and evaluation both accumulate
    metric.update(torch.from_numpy(prediction[:2]), torch.from_numpy(truth[:2]))
    metric.update(torch.from_numpy(prediction[2:]), torch.from_numpy(truth[2:]))
    confusion = metric.compute()
    scores = evaluation_scores(confusion, NAMES)
    assert [scores["per_class"][n]["iou"] for n in NAMES[:3]] == pytest.approx(expected_iou)
    assert scores["per_class"]["sign"]["iou"] is None and scores["absent_classes"] == ["sign"]
    # the absent class is left out of the mean: divided by 3, not 4
    assert scores["miou"] == pytest.approx(sum(expected_iou) / 3)
    assert scores["pixel_acc"] == pytest.approx(11 / 15)
    assert scores["mean_class_acc"] == pytest.approx((4 / 6 + 4 / 5 + 3 / 4) / 3)
    assert scores["fw_iou"] == pytest.approx((6 * 4 / 8 + 5 * 4 / 6 + 4 * 3 / 5) / 15)
    assert scores["per_class"]["car"]["dice"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert scores["per_class"]["road"]["pixels"] == 6

    reference = _numpy_scores(truth, prediction, 4, 255)
    np.testing.assert_allclose(
        [scores["per_class"][n]["iou"] for n in NAMES[:3]], reference["iou"][:3]
    )
    assert np.isnan(reference["iou"][3])
    assert scores["pixel_acc"] == pytest.approx(reference["pixel_acc"])

    jaccard = MulticlassJaccardIndex(4, average="none", ignore_index=255)(
        torch.from_numpy(prediction), torch.from_numpy(truth)
    )
    torch.testing.assert_close(
        jaccard[:3].double(), torch.tensor(expected_iou, dtype=torch.float64), atol=1e-6, rtol=0
    )
    accuracy = MulticlassAccuracy(4, average="micro", ignore_index=255)(
        torch.from_numpy(prediction), torch.from_numpy(truth)
    )
    assert accuracy.item() == pytest.approx(scores["pixel_acc"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch tiny synthetic run; returns its folder."""
    root = tmp_path_factory.mktemp("trained")
    overrides = [
        *TINY_OVERRIDES,
        *TINY_SYNTHETIC,
        "+trainer.limit_train_batches=2",
        "trainer.max_epochs=1",
    ]
    paths = [
        f"paths.root_dir={root}",
        f"paths.data_dir={root / 'data'}",
        f"paths.output_dir={root / 'run'}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        train(compose("train", overrides=[*overrides, *paths]))
    return root


def _evaluate_args(trained: Path, *extra: str) -> list[str]:
    return [
        "evaluate.py",
        f"ckpt_path={trained / 'run' / 'checkpoints' / 'last.ckpt'}",
        "data.image_size=[64,96]",
        *TINY_SYNTHETIC,
        "data.batch_size=4",
        f"paths.data_dir={trained / 'data'}",
        *extra,
    ]


@pytest.mark.slow
def test_evaluation_equals_validation_during_training(trained: Path, tmp_path: Path) -> None:
    # no data= and no data.*: the run's data config comes from the checkpoint
    checkpoint = trained / "run" / "checkpoints" / "last.ckpt"
    run_script(["evaluate.py", f"ckpt_path={checkpoint}", f"hydra.run.dir={tmp_path}"])
    report = json.loads((tmp_path / "metrics.json").read_text())
    with (trained / "run" / "csv" / "metrics.csv").open() as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("val/miou")][-1]
    assert report["miou"] == pytest.approx(float(logged["val/miou"]), abs=1e-4)
    assert report["pixel_acc"] == pytest.approx(float(logged["val/pixel_acc"]), abs=1e-4)
    assert report["num_images"] == 4 and set(report["per_class"]) >= {"road", "sky", "pole"}
    for name in ("evaluation.md", "confusion_matrix.png", "sheets/00000.png", "sheets/00003.png"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (
        "| mIoU | pixel acc | mean class acc | fw IoU | mean Dice |"
        in (tmp_path / "evaluation.md").read_text()
    )


def test_evaluation_writes_only_into_a_folder_of_its_own(trained: Path, tmp_path: Path) -> None:
    """Never into a training run's folder, never over a file it did not just create, never inside
    its input."""
    from segment.evaluating import evaluate, predict

    run = trained / "run"
    with pytest.raises(
        ValueError, match=r"run is a training run's folder; evaluate.py writes only into a folder"
    ):
        evaluate(_compose(trained, f"paths.output_dir={run}"))
    nested = run / "checkpoints" / "sub"  # the check used to look at the folder only
    with pytest.raises(ValueError, match=r"sub is inside a training run's folder \(.*run\)"):
        evaluate(_compose(trained, f"paths.output_dir={nested}"))
    assert not nested.exists()
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    with pytest.raises(
        FileExistsError, match=r"eval/metrics.json exists: evaluate.py never writes over a file"
    ):
        evaluate(_compose(trained, f"paths.output_dir={tmp_path / 'eval'}"))
    assert (tmp_path / "eval" / "metrics.json").read_text() == "{}"
    images = tmp_path / "in"
    write_image(images / "x.png", seed=0)
    for output in (images, images / "masks"):
        with pytest.raises(ValueError, match=r"is inside input=.*: predictions would mix with"):
            predict(_compose(trained, "mode=predict", f"input={images}", f"output={output}"))
    write_image(tmp_path / "out" / "x_mask.png", seed=3)
    before = (tmp_path / "out" / "x_mask.png").read_bytes()
    with pytest.raises(FileExistsError, match=r"out/x_labels.png exists|out/x_mask.png exists"):
        predict(_compose(trained, "mode=predict", f"input={images}", f"output={tmp_path / 'out'}"))
    assert (tmp_path / "out" / "x_mask.png").read_bytes() == before and sorted(
        images.iterdir()
    ) == [images / "x.png"]


def _compose(trained: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[
                f"ckpt_path={trained / 'run'}",
                f"paths.data_dir={trained / 'data'}",
                f"paths.root_dir={trained}",
                *overrides,
            ],
        )


def test_bad_checkpoints_are_named(trained: Path, tmp_path: Path, make_cfg) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"ckpt_path=.*missing.ckpt: no such checkpoint file"
    ):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    with pytest.raises(
        ValueError, match=r"ckpt_path=.*junk.ckpt is not a checkpoint: not a torch archive"
    ):
        load_checkpoint(tmp_path / "junk.ckpt")

    from segment.evaluating import evaluate
    from tests.layouts import write_folder

    overrides = write_folder(tmp_path / "folder")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[
                f"ckpt_path={trained / 'run' / 'checkpoints' / 'last.ckpt'}",
                *overrides,
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'eval'}",
            ],
        )
    with pytest.raises(ValueError, match=r"predicts 10 classes .* but data=folder has 3 classes"):
        evaluate(cfg)


@pytest.mark.slow
def test_predict_writes_masks_for_any_size_and_names_what_it_skips(
    trained: Path, tmp_path: Path
) -> None:
    write_image(tmp_path / "in" / "small.png", seed=0, shape=(50, 70))
    write_image(tmp_path / "in" / "wide.jpg", seed=1, shape=(64, 160))
    (tmp_path / "in" / "clip.gif").write_bytes(b"GIF89a")
    (tmp_path / "in" / "photo.webp").write_bytes(b"RIFF")
    done = run_script(
        _evaluate_args(
            trained, "mode=predict", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}"
        )
    )
    said = done.stdout + done.stderr  # the log goes to stdout, the progress bar to stderr
    assert "skipping 2 file(s) that are not" in said and "clip.gif, photo.webp" in said
    import cv2

    for stem, shape in (("small", (50, 70)), ("wide", (64, 160))):
        labels = cv2.imread(str(tmp_path / "out" / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert labels.shape == shape and labels.max() < 10
        assert cv2.imread(str(tmp_path / "out" / f"{stem}_mask.png")).shape == (*shape, 3)
        assert cv2.imread(str(tmp_path / "out" / f"{stem}_overlay.png")).shape == (*shape, 3)


def test_export_without_onnx_names_the_extra(trained: Path, monkeypatch) -> None:
    import importlib.util

    from segment.evaluating import export

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a)
    )
    with pytest.raises(
        ModuleNotFoundError, match=r"mode=export needs the onnx extra: pip install -e '.\[onnx\]'"
    ):
        export(_compose(trained, "mode=export"))


@pytest.mark.slow
def test_onnx_export_matches_pytorch(trained: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    run_script(_evaluate_args(trained, "mode=export", f"hydra.run.dir={tmp_path}"))
    session = onnxruntime.InferenceSession(
        str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    module = load_checkpoint(trained / "run" / "checkpoints" / "last.ckpt")
    for shape in ((1, 3, 64, 96), (2, 3, 96, 128)):  # dynamic batch, height and width
        images = torch.randint(0, 256, shape).float()
        with torch.no_grad():
            expected = module(images).numpy()
        (actual,) = session.run(None, {"images": images.numpy()})
        np.testing.assert_allclose(actual, expected, atol=2e-3, rtol=1e-3)


def test_predictor_modes_agree(trained: Path) -> None:
    module = load_checkpoint(trained / "run" / "checkpoints" / "last.ckpt")
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    plain = Predictor(module).logits(images)
    whole_window = Predictor(module, window=(64, 96)).logits(images)
    torch.testing.assert_close(whole_window, plain)
    tiles = Predictor(module, window=(64, 64), window_stride=(32, 32)).logits(images)
    assert tiles.shape == plain.shape and torch.isfinite(tiles).all()
    flipped = Predictor(module, flip=True).logits(images)
    mirror = Predictor(module).logits(images.flip(-1)).flip(-1)
    torch.testing.assert_close(flipped, (plain + mirror) / 2)
    odd = Predictor(module).logits(torch.randint(0, 256, (1, 3, 50, 70), dtype=torch.uint8))
    assert odd.shape == (1, 10, 50, 70)  # padded to 64x96 inside, cropped back
    resized = Predictor(module, input_size=(32, 64)).logits(images)
    assert resized.shape == plain.shape


def test_inference_options_are_checked_with_a_fix(trained: Path, monkeypatch) -> None:
    module = load_checkpoint(trained / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(
        ValueError,
        match=r"sliding_window.stride=\[0, 0\]: two steps between 1 and the window size "
        r"\[64, 64\], e.g. stride: \[32, 32\]",
    ):
        Predictor(module, window=(64, 64), window_stride=(0, 0))
    with pytest.raises(
        ValueError,
        match=r"input_size=\[100, 150\]: height and width must be positive multiples of "
        r"32 \(the net downsamples 32x\); try input_size=\[128, 160\]",
    ):
        Predictor(module, input_size=(100, 150))

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(
            "DefaultCPUAllocator: not enough memory: you tried to allocate 68719476736 bytes."
        )

    monkeypatch.setattr(module.net, "forward", out_of_memory)
    with pytest.raises(
        MemoryError, match=r"out of memory predicting 1 image\(s\) of 64x96 .*'sliding_window="
    ):
        Predictor(module).logits(torch.zeros(1, 3, 64, 96, dtype=torch.uint8))


def test_predict_refuses_two_inputs_with_one_name(trained: Path, tmp_path: Path) -> None:
    from segment.evaluation.scoring import _input_images

    write_image(tmp_path / "in" / "s0.png", seed=0)
    write_image(tmp_path / "in" / "s0.jpg", seed=1)
    with pytest.raises(
        ValueError, match=r"s0.jpg and .*s0.png have the same name; their predictions"
    ):
        _input_images(tmp_path / "in")


def test_the_mask_panel_goes_to_every_logger_that_takes_images(monkeypatch) -> None:
    """Each of the project's loggers that takes images logs the panel through its own API; the
    callback picks them by the method alone (a CSV log takes none)."""
    from segment.run.loggers.csv_logs import CSVLogger
    from segment.run.loggers.mlflow import MLFlowLogger
    from segment.run.loggers.tensorboard import TensorBoardLogger
    from segment.run.loggers.wandb import WandbLogger

    calls = []
    image = np.zeros((4, 6, 3), np.uint8)

    class Experiment:
        def add_image(self, tag, img, global_step, dataformats):  # TensorBoard's SummaryWriter
            calls.append(("tensorboard", tag, img.shape, global_step, dataformats))

        def log_image(self, run_id, img, key, step):  # MLflow's client
            calls.append(("mlflow", run_id, key, step))

        def log(self, data):  # a W&B run
            calls.append(("wandb", sorted(data), data["trainer/global_step"]))

    for kind in (TensorBoardLogger, MLFlowLogger, WandbLogger):
        monkeypatch.setattr(kind, "experiment", property(lambda self: Experiment()))
    monkeypatch.setattr(MLFlowLogger, "run_id", property(lambda self: "run-1"))
    masks = (image[None], image[None, ..., 0], image[None, ..., 0], ["road"])
    for kind in (TensorBoardLogger, WandbLogger, MLFlowLogger):
        object.__new__(kind).log_masks("val/masks", image, 7, masks)
    assert calls == [
        ("tensorboard", "val/masks", (4, 6, 3), 7, "HWC"),
        ("wandb", ["trainer/global_step", "val/masks"], 7),
        ("mlflow", "run-1", "val_masks", 7),
    ]
    assert not hasattr(CSVLogger, "log_masks")


class _CountingModule(torch.nn.Module):
    """Logits that say which call made them: call k fills its tile with k."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.hparams = SimpleNamespace(mean=[0.5, 0.5, 0.5])
        self.size_multiple = 32
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full((images.shape[0], 2, *images.shape[-2:]), float(self.calls))


def test_sliding_windows_average_their_overlaps() -> None:
    module = _CountingModule()
    # 64x96 with 64x64 windows every 32 columns: tile 1 covers columns 0-63, tile 2 columns 32-95
    logits = Predictor(module, window=(64, 64), window_stride=(32, 32)).logits(
        torch.zeros(1, 3, 64, 96)
    )
    row = logits[0, 0, 0]
    assert module.calls == 2
    assert row[:32].unique().tolist() == [1.0] and row[64:].unique().tolist() == [2.0]
    assert row[32:64].unique().tolist() == [
        1.5
    ]  # the overlap: the mean of both tiles, not their sum


def test_a_refused_evaluate_leaves_no_folder_or_log_behind(trained: Path) -> None:
    """python evaluate.py into a run's checkpoints/sub used to leave an empty evaluate.log there."""
    nested = trained / "run" / "checkpoints" / "sub"
    done = run_script(
        [
            "evaluate.py",
            f"ckpt_path={trained / 'run'}",
            f"paths.data_dir={trained / 'data'}",
            f"hydra.run.dir={nested}",
        ],
        check=False,
    )
    assert done.returncode == 1 and "inside a training run's folder" in done.stderr
    assert not nested.exists()
