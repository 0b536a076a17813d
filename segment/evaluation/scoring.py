"""What ``evaluate.py`` computes and writes, given a trained module: scores, figures and sheets on a
dataset split (:func:`score`), masks for unlabelled images (:func:`predict_images`), an ONNX file
(:func:`export_onnx`). Finding and rebuilding the checkpoint, and the folder written into, are the
driver's (:mod:`segment.evaluating`)."""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from segment.data.datamodule import SegmentationDataModule
from segment.data.dataset import IMAGE_SUFFIXES, SegmentationDataset, read_image
from segment.data.labels import DatasetInfo, annotated, colorize
from segment.device.precision import resolve_precision
from segment.evaluation.figures import confusion_figure, mask_sheet, overlay
from segment.evaluation.inference import Predictor
from segment.files import write_atomic, write_png
from segment.models import SegmentationModule
from segment.models.metrics import confusion_metric, evaluation_scores

__all__ = [
    "EVALUATION_FILES",
    "EXPORT_FILES",
    "check_classes",
    "check_export",
    "device_of",
    "export_onnx",
    "predict_images",
    "prediction_plan",
    "score",
]

log = logging.getLogger(__name__)


# What mode=evaluate and mode=export write into their folder.
EVALUATION_FILES = (
    "metrics.json",
    "evaluation.md",
    "confusion_matrix.png",
    "sheets",
    "tensorboard",
)
EXPORT_FILES = ("model.onnx", "model.json")


def device_of(name: str) -> torch.device:
    """``auto``: a GPU where there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_classes(module: SegmentationModule, info: DatasetInfo, ckpt_path: str) -> None:
    """Refuse data whose classes are not those the module predicts."""
    if list(module.class_names) != list(info.class_names):
        raise ValueError(
            f"ckpt_path={ckpt_path} predicts {len(module.class_names)} classes "
            f"{module.class_names[:4]}... but data={info.name} has {info.num_classes} classes "
            f"{list(info.class_names[:4])}...; evaluate with the data config the model was trained "
            "on"
        )


def _predictor(cfg: DictConfig, module: SegmentationModule) -> Predictor:
    window = cfg.sliding_window
    return Predictor(
        module,
        precision=resolve_precision(cfg.precision, cfg.device)[0],
        input_size=cfg.input_size,
        window=window.size if window else None,
        window_stride=window.get("stride") if window else None,
        flip=cfg.tta_flip,
    )


def _same_size_runs(items: list[dict]) -> Iterable[list[dict]]:
    """Consecutive items of equal image size, so that they can be stacked into one batch."""
    run: list[dict] = []
    for item in items:
        if run and item["image"].shape != run[0]["image"].shape:
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def score(
    cfg: DictConfig,
    module: SegmentationModule,
    datamodule: SegmentationDataModule,
    checkpoint: Path,
    output_dir: Path,
) -> dict:
    """Score ``module`` (from ``checkpoint``) on ``cfg.split`` of ``datamodule``; write metrics,
    tables and figures into ``output_dir``."""
    _check_request(cfg, datamodule)
    info, device = datamodule.info, device_of(cfg.device)
    load_size = None if cfg.resolution == "native" else datamodule.image_size
    dataset = SegmentationDataset(datamodule.samples(cfg.split), info, load_size=load_size)
    size = cfg.batch_size or datamodule.batch_size
    loader = DataLoader(dataset, batch_size=size, num_workers=cfg.num_workers, collate_fn=list)
    predictor = _predictor(cfg, module)
    confusion, seconds = _confusion(loader, predictor, info, f"evaluate {info.name}/{cfg.split}")
    scores = evaluation_scores(confusion, info.class_names)
    report = {
        "checkpoint": str(checkpoint.resolve()),
        "dataset": info.name,
        "split": cfg.split,
        "num_images": len(dataset),
        **_settings(cfg),
        "precision": predictor.precision,
        "device": str(device),
        "images_per_s": len(dataset) / seconds if seconds else None,
        "encoder_weights_used": module.weights_record.as_dict(),
        **scores,
        "confusion": confusion.tolist(),
    }
    sheets = _sheets(dataset, predictor, info, cfg.num_sheets)
    _write_results(output_dir, report, confusion, info.class_names, sheets)
    log.info("metrics, tables and figures in %s", output_dir)
    return report


def _settings(cfg: DictConfig) -> dict:
    """How the images were predicted, as ``metrics.json`` records it."""
    return {
        "resolution": cfg.resolution,
        "input_size": list(cfg.input_size) if cfg.input_size else None,
        "sliding_window": (
            OmegaConf.to_container(cfg.sliding_window) if cfg.sliding_window else None
        ),
        "tta_flip": bool(cfg.tta_flip),
    }


def _check_request(cfg: DictConfig, datamodule: SegmentationDataModule) -> None:
    if cfg.split not in datamodule.splits:
        raise ValueError(
            f"split={cfg.split!r}; {datamodule.info.name} has {list(datamodule.splits)}"
        )
    if cfg.resolution not in ("native", "model"):
        raise ValueError(f"resolution={cfg.resolution!r}; expected 'native' or 'model'")


def _confusion(
    loader: DataLoader, predictor: Predictor, info: DatasetInfo, desc: str
) -> tuple[torch.Tensor, float]:
    """The confusion matrix of ``predictor`` over ``loader``, and the seconds it spent
    predicting."""
    metric = confusion_metric(info.num_classes, info.ignore_index)
    seconds = 0.0
    for items in tqdm(loader, desc=desc, unit="batch"):
        for group in _same_size_runs(items):
            images = torch.stack([item["image"] for item in group])
            start = time.perf_counter()
            prediction = predictor.logits(images).argmax(dim=1).cpu()
            seconds += time.perf_counter() - start
            metric.update(prediction, torch.stack([item["mask"] for item in group]))
    return metric.compute(), seconds


def _write_results(
    output_dir: Path,
    report: dict,
    confusion: torch.Tensor,
    class_names: Sequence[str],
    sheets: list,
) -> None:
    """``metrics.json``, ``evaluation.md`` (also printed), the confusion figure, the sheets, and
    the TensorBoard copy of them."""
    write_atomic(output_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
    table = _markdown(report)
    write_atomic(output_dir / "evaluation.md", table + "\n")
    print(table)

    figure = confusion_figure(confusion.numpy(), class_names)
    write_png(output_dir / "confusion_matrix.png", figure)
    sheet_dir = output_dir / "sheets"
    sheet_dir.mkdir(exist_ok=True)
    for index, sheet in sheets:
        write_png(sheet_dir / f"{index:05d}.png", sheet)
    _tensorboard(output_dir, figure, sheets, report)


def _sheets(
    dataset: SegmentationDataset, predictor: Predictor, info: DatasetInfo, count: int
) -> list:
    if count <= 0:
        return []
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    sheets = []
    for index in picks:
        item = dataset[int(index)]
        prediction = predictor.logits(item["image"][None]).argmax(dim=1)[0].cpu().numpy()
        image = item["image"].permute(1, 2, 0).numpy()
        row = mask_sheet(image, item["mask"].numpy(), prediction, info.palette, info.ignore_index)
        titles = ["input", "truth", "prediction", "errors (red)"]
        sheets.append((int(index), annotated(row, titles, info.class_names, info.palette)))
    return sheets


def _tensorboard(output_dir: Path, figure: np.ndarray, sheets: list, scores: dict) -> None:
    with SummaryWriter(str(output_dir / "tensorboard")) as writer:
        writer.add_image("eval/confusion_matrix", figure, dataformats="HWC")
        for index, sheet in sheets:
            writer.add_image(f"eval/sheets/{index:05d}", sheet, dataformats="HWC")
        for name in ("miou", "pixel_acc", "mean_class_acc", "fw_iou", "mean_dice"):
            writer.add_scalar(f"eval/{name}", scores[name])


def _markdown(report: dict) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None or value != value else f"{100 * value:.2f}"

    head = (
        f"Checkpoint `{report['checkpoint']}` on {report['dataset']}/{report['split']} "
        f"({report['num_images']} images, {report['resolution']} "
        f"resolution{', flip TTA' if report['tta_flip'] else ''}, {report['precision']}, "
        f"{report['images_per_s']:.1f} images/s on {report['device']})"
    )
    weights = report.get("encoder_weights_used") or {}
    if weights:
        source, requested = weights.get("source"), weights.get("requested")
        head += f"; encoder initialised from: {source} (requested {requested})"
    lines = [
        head,
        "",
        "| mIoU | pixel acc | mean class acc | fw IoU | mean Dice |",
        "|---|---|---|---|---|",
        "| "
        + " | ".join(
            pct(report[k]) for k in ("miou", "pixel_acc", "mean_class_acc", "fw_iou", "mean_dice")
        )
        + " |",
        "",
        "| class | IoU | Dice | acc | pixels |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["per_class"].items():
        lines.append(
            f"| {name} | {pct(row['iou'])} | {pct(row['dice'])} | {pct(row['acc'])} | "
            f"{row['pixels']} |"
        )
    if report["absent_classes"]:
        lines += [
            "",
            "Absent from truth and prediction (left out of the means): "
            f"{', '.join(report['absent_classes'])}",
        ]
    return "\n".join(lines)


def _input_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p.name for p in files if p not in images]
    if others:
        shown = ", ".join(others[:10]) + (" ..." if len(others) > 10 else "")
        log.warning(
            "input=%s: skipping %d file(s) that are not %s images: %s",
            path,
            len(others),
            "/".join(IMAGE_SUFFIXES),
            shown,
        )
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:  # outputs are named by stem: one would overwrite the other
            raise ValueError(
                f"input={path}: {stems[image.stem]} and {image} have the same name; their "
                f"predictions ({image.stem}_mask.png, ...) would overwrite each other. Rename one"
            )
        stems[image.stem] = image
    if not images:
        raise FileNotFoundError(
            f"input={path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"
        )
    return images


def prediction_plan(cfg: DictConfig) -> tuple[list[Path], Path, list[str]]:
    """``mode=predict``'s images, its output folder (never inside the input's) and the files it
    will write there."""
    if not cfg.input:
        raise ValueError("mode=predict needs input=<image or folder>")
    source = Path(cfg.input)
    inputs = _input_images(source)
    output = Path(cfg.output) if cfg.output else Path(cfg.paths.output_dir) / "predictions"
    folder = (source if source.is_dir() else source.parent).resolve()
    if output.resolve() == folder or folder in output.resolve().parents:
        raise ValueError(
            f"output={output} is inside input={source}: predictions would mix with (or overwrite) "
            "the images they come from; choose a folder outside it"
        )
    names = [f"{path.stem}_{kind}.png" for path in inputs for kind in ("labels", "mask", "overlay")]
    return inputs, output, names


def predict_images(
    cfg: DictConfig,
    module: SegmentationModule,
    inputs: list[Path],
    output: Path,
    palette: Sequence[Sequence[int]],
) -> dict:
    """Colour masks, class-index masks and overlays for unlabelled images of any size."""
    predictor = _predictor(cfg, module)
    for path in tqdm(inputs, desc="predict", unit="image"):
        image = read_image(path)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        prediction = predictor.logits(tensor).argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
        write_png(output / f"{path.stem}_labels.png", prediction)
        write_png(output / f"{path.stem}_mask.png", colorize(prediction, palette))
        write_png(output / f"{path.stem}_overlay.png", overlay(image, prediction, palette))
    log.info("%d predictions in %s", len(inputs), output)
    return {"output": str(output), "num_images": len(inputs)}


def check_export(cfg: DictConfig) -> None:
    """``mode=export``'s format, and the packages it needs."""
    if cfg.format != "onnx":
        raise ValueError(f"format={cfg.format!r}; only 'onnx' is supported")
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        raise ModuleNotFoundError("mode=export needs the onnx extra: pip install -e '.[onnx]'")


def export_onnx(module: SegmentationModule, output_dir: Path, opset: int) -> dict:
    """ONNX model with dynamic batch, height and width (multiples of 32) in ``output_dir``.

    Input ``images``: ``(B, 3, H, W)`` float32 RGB in ``[0, 255]`` (normalisation is inside);
    output ``logits``: ``(B, C, H, W)``.
    """
    path = output_dir / "model.onnx"
    height, width = 64, 96
    example = torch.randint(0, 256, (1, 3, height, width)).float()
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={
            "images": {0: "batch", 2: "height", 3: "width"},
            "logits": {0: "batch", 2: "height", 3: "width"},
        },
        opset_version=opset,
        dynamo=False,
    )
    write_atomic(
        output_dir / "model.json",
        json.dumps(
            {"class_names": module.class_names, "ignore_index": module.hparams.ignore_index},
            indent=2,
        )
        + "\n",
    )
    log.info("ONNX model in %s", path)
    return {"onnx": str(path)}
