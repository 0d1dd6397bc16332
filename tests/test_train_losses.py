"""geoplant.train.losses: BCE (with pos_weight), asymmetric loss, soft-F1 and their sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoplant.errors import GeoplantError
from geoplant.train import AsymmetricLoss, SoftF1Loss, make_loss, pos_weight_from_labels
from geoplant.train.losses import _WeightedLossSum


def test_losses() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    y = (torch.rand(6, 5) < 0.3).float()
    bce_sum = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, y, reduction="none").sum(1).mean()
    # ASL without focusing and margin is BCE (summed over species)
    assert torch.allclose(AsymmetricLoss(0.0, 0.0, 0.0)(logits, y), bce_sum, atol=1e-5)
    # focusing on absences lowers their loss; the margin zeroes absences with p < clip
    assert AsymmetricLoss()(logits, y) < bce_sum
    easy = torch.full((1, 3), -5.0)
    assert AsymmetricLoss(clip=0.05)(easy, torch.zeros(1, 3)) == 0
    # soft-F1: perfect confident predictions ~0, inverted ~1
    assert SoftF1Loss()(y * 40 - 20, y) < 1e-3
    assert SoftF1Loss()(20 - y * 40, y) > 0.99
    # pos_weight enters BCE; computed from label frequencies
    pw = pos_weight_from_labels(np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 1]]))
    assert torch.allclose(pw, torch.tensor([3**0.5, 3**0.5, 1.0]))
    weighted = make_loss("bce", pos_weight=[2.0] * 5)(logits, y)
    assert weighted > make_loss("bce")(logits, y)
    combo = make_loss("bce+soft_f1", soft_f1_weight=0.5)(logits, y)
    assert torch.isclose(combo, make_loss("bce")(logits, y) + 0.5 * SoftF1Loss()(logits, y))
    with pytest.raises(GeoplantError, match="unknown loss"):
        make_loss("hinge")


def test_make_loss_kinds_and_passthrough() -> None:
    asl = make_loss("asl", asl={"gamma_neg": 2.0})
    assert isinstance(asl, AsymmetricLoss) and asl.gamma_neg == 2.0
    assert isinstance(make_loss("soft_f1"), SoftF1Loss)
    combo = make_loss("bce+soft_f1", soft_f1_weight=0.5)
    assert isinstance(combo, _WeightedLossSum) and combo.weights == (1.0, 0.5)

    def custom(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logits.sum() * 0

    assert make_loss(custom) is custom


def test_pos_weight_from_sparse_and_tensor_labels() -> None:
    import scipy.sparse as sp

    dense = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 1, 1]])
    expected = pos_weight_from_labels(dense)
    assert torch.equal(pos_weight_from_labels(sp.csr_matrix(dense)), expected)
    assert torch.equal(pos_weight_from_labels(torch.from_numpy(dense)), expected)
    assert pos_weight_from_labels(dense, power=1.0, max_weight=2.0).max() == 2.0
