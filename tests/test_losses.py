"""Losses: class weights from label counts, weighted CE, every loss option skipping the ignore
index."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segment.data.dataset import DatasetStatistics
from segment.models import CrossEntropyLoss
from segment.models.losses import class_weights, resolve_class_weights
from tests.helpers import CONF_DIR

LOSS_OPTIONS = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))


def test_median_frequency_and_inverse_log_weights_by_hand() -> None:
    # 3 classes; class 2 appears in one image of 100 labelled pixels, with 10 of them
    pixels, image_pixels = [600, 290, 10], [1000, 500, 100]
    freq = [600 / 1000, 290 / 500, 10 / 100]  # 0.6, 0.58, 0.1 -> median 0.58
    assert class_weights("median_frequency", pixels, image_pixels) == pytest.approx(
        [0.58 / f for f in freq]
    )
    shares = [600 / 900, 290 / 900, 10 / 900]
    assert class_weights("inverse_log", pixels, image_pixels) == pytest.approx(
        [1 / math.log(1.02 + p) for p in shares], rel=1e-5
    )
    assert class_weights("median_frequency", [5, 0], [5, 0])[1] == 0.0  # never seen: no weight
    with pytest.raises(
        ValueError, match=r"class_weights='median'; expected null, a list, or one of"
    ):
        class_weights("median", pixels, image_pixels)


def test_weighted_cross_entropy_pays_more_for_a_rare_class() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, :1, :2] = 2  # the rare class: 4 of 128 pixels
    stats = DatasetStatistics(
        torch.tensor([124, 0, 4]).numpy(), torch.tensor([128, 0, 128]).numpy()
    )
    config = resolve_class_weights(
        {"_target_": "segment.models.CrossEntropyLoss", "class_weights": "inverse_log"}, stats
    )
    weighted, plain = instantiate(config), CrossEntropyLoss()
    rare = target == 2
    grads = []
    for loss in (weighted, plain):
        logits.grad = None
        loss(logits, target).backward()
        grads.append(logits.grad.abs().sum(1)[rare].mean() / logits.grad.abs().sum(1)[~rare].mean())
    assert grads[0] > 5 * grads[1]  # the rare pixels' share of the gradient grows with their weight
    # unweighted, it is torch's cross-entropy
    assert plain(logits, target).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item()
    )


def test_cross_entropy_of_a_batch_without_labels_is_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    void = torch.full((1, 4, 4), 255)
    for loss in (CrossEntropyLoss(), CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0])):
        value = loss(logits, void)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(logits.grad).all()
    assert torch.isnan(
        torch.nn.functional.cross_entropy(logits, void, ignore_index=255)
    )  # what it replaces


@pytest.mark.parametrize("option", LOSS_OPTIONS)
def test_every_loss_option_skips_ignored_pixels(option: str) -> None:
    config = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "loss" / f"{option}.yaml"))
    counts = DatasetStatistics(
        pixels=np.array([400, 200, 50, 10]), image_pixels=np.array([800, 800, 400, 200])
    )
    config = resolve_class_weights(config, counts)  # a weighting method, as train.py resolves it
    loss = instantiate(config, ignore_index=255, _recursive_=False)  # as the module builds it
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, :3] = 255
    changed = logits.clone()
    changed[:, :, :3] = 50 * torch.randn(2, 4, 3, 8)  # anything at ignored pixels must not matter
    assert torch.isfinite(loss(logits, target))
    assert loss(changed, target).item() == pytest.approx(
        loss(logits, target).item(), rel=1e-5, abs=1e-6
    )
