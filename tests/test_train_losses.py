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


def test_po_maxent_is_a_softmax_over_sites() -> None:
    from geoplant.train import losses

    torch.manual_seed(1)
    eta = torch.randn(7, 4)
    y = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1],
                      [0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.float32)
    # by hand: species s's presences' log-share of exp(eta[:, s]) over the 7 sites
    share = eta - torch.logsumexp(eta, dim=0, keepdim=True)
    manual = {s: -share[y[:, s] == 1, s].sum() for s in (0, 1, 3)}  # species 2: no presence
    inverse = sum(manual[s] / y[:, s].sum() for s in manual) / 3
    uniform = sum(manual.values()) / y.sum()
    assert torch.isclose(make_loss("po_maxent")(eta, y), inverse)
    assert torch.isclose(make_loss("po_maxent_uniform")(eta, y), uniform)
    # one constant per species changes nothing; a constant per site does
    shifted = eta + torch.tensor([5.0, -3.0, 100.0, 0.5])
    assert torch.isclose(make_loss("po_maxent")(shifted, y), inverse, atol=1e-5)
    assert not torch.isclose(make_loss("po_maxent")(eta + torch.arange(7.0)[:, None], y),
                             inverse)
    # raising a presence's logit lowers the loss; no presence at all: 0
    up = eta.clone()
    up[0, 0] += 1
    assert make_loss("po_maxent")(up, y) < inverse
    assert make_loss("po_maxent")(eta, torch.zeros_like(y)) == 0
    with pytest.raises(GeoplantError, match="weighting"):
        losses.DeepMaxentLoss("sqrt")


def test_po_an_is_bce_with_lambda_on_presences() -> None:
    torch.manual_seed(2)
    logits = torch.randn(5, 6)
    y = (torch.rand(5, 6) < 0.3).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert torch.isclose(make_loss("po_an")(logits, y), bce)
    assert torch.isclose(make_loss("po_an", pos_weight=1.0)(logits, y), bce)
    # lambda multiplies the presence terms only, per species or globally
    lam = torch.arange(1.0, 7.0)
    p = torch.sigmoid(logits)
    manual = -(lam * y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert torch.isclose(make_loss("po_an", pos_weight=lam.numpy())(logits, y), manual,
                         atol=1e-6)
    manual_global = -(8 * y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert torch.isclose(make_loss("po_an", pos_weight=8.0)(logits, y), manual_global,
                         atol=1e-6)
