"""Training losses ``(logits, targets) -> scalar`` and the BCE ``pos_weight`` helper.

``"bce"``: binary cross-entropy with optional per-species ``pos_weight``
(:func:`pos_weight_from_labels`). ``"asl"``: the asymmetric loss of Ridnik et al. (ICCV
2021): focusing ``gamma_neg`` down-weights the many easy absences and the probability
margin ``clip`` discards very easy ones; it suits thousands of species with ~20 present.
``"soft_f1"``: ``1 - mean_i softF1_i`` with ``softF1 = 2 sum(p y) / (sum p + sum y)``, a
differentiable surrogate of the samples-F1 itself (better used to fine-tune, or mixed:
``"bce+soft_f1"``).

Presence-only (PO) losses, for batches of PO sites whose ``labels`` list the species recorded
there (absences unknown):

- ``"po_an"``: "assume negative" BCE (Cole et al. 2023, "full assume negative" when the
  batches also hold background sites without records): every unrecorded species counts as
  absent, and presences are up-weighted by ``pos_weight`` (lambda: one global value as in
  Cole et al., or per species, e.g. :func:`pos_weight_from_labels` on the PO sites) to offset
  the many assumed negatives. With lambda = 1 it is ``"bce"``.
- ``"po_maxent"``: DeepMaxent's normalised Poisson loss (Estopinan et al. 2024): for each
  species a softmax over the *sites of the batch* (which act as its target-group
  background), the presences' log-share averaged with weight ``1 / n_s`` (``n_s``: the
  species' presences in the batch; every species present counts equally);
  ``"po_maxent_uniform"`` weights every presence equally instead. The logits are
  log-intensities defined up to a per-species constant (the loss ignores one), so the
  output needs an intercept calibration before its sigmoid reads as a probability
  (:func:`geoplant.presence_only.calibrate_intercepts`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from geoplant.errors import GeoplantError

__all__ = [
    "AsymmetricLoss",
    "DeepMaxentLoss",
    "LossFn",
    "LossName",
    "SoftF1Loss",
    "make_loss",
    "pos_weight_from_labels",
]

LossName = Literal["bce", "asl", "soft_f1", "bce+soft_f1", "po_an", "po_maxent",
                   "po_maxent_uniform"]

#: Species weightings of :class:`DeepMaxentLoss`.
MAXENT_WEIGHTINGS = ("inverse", "uniform")

#: What :func:`make_loss` returns: a module or a plain callable ``(logits, targets) -> loss``.
LossFn = nn.Module | Callable[[Tensor, Tensor], Tensor]


def pos_weight_from_labels(labels: Any, *, power: float = 0.5, max_weight: float = 100.0
                           ) -> Tensor:
    """Per-species ``pos_weight`` for BCE: ``(n_neg / n_pos) ** power``, clipped.

    Parameters
    ----------
    labels
        Presence matrix ``(n_surveys, n_species)``: dense, ``scipy.sparse`` or a tensor.
    power
        0.5 (default) is a softened re-weighting; 1 balances presences and absences fully
        (usually too many false positives with thousands of rare species).
    max_weight
        Upper clip (species with one presence would otherwise get a huge weight).

    Returns
    -------
    torch.Tensor
        float32 ``(n_species,)``, at least 1.
    """
    import scipy.sparse as sp

    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    pos = (np.asarray((labels != 0).sum(axis=0)).ravel() if sp.issparse(labels)
           else (np.asarray(labels) != 0).sum(axis=0))
    n = labels.shape[0]
    ratio = (n - pos) / np.maximum(pos, 1)
    return torch.as_tensor(np.clip(ratio**power, 1.0, max_weight), dtype=torch.float32)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss for multi-label classification (Ridnik et al., ICCV 2021).

    ``L = -sum_k [ y (1-p)^g+ log p + (1-y) p_m^g- log(1-p_m) ]`` with the shifted
    probability ``p_m = max(p - clip, 0)``; summed over species, averaged over surveys.

    Parameters
    ----------
    gamma_neg, gamma_pos
        Focusing exponents of absences and presences (paper defaults 4 and 0).
    clip
        Probability margin for absences (paper default 0.05).
    eps
        Floor inside the logarithms.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean over the batch of the per-survey loss."""
        logits, targets = logits.float(), targets.float()
        p = torch.sigmoid(logits)
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        log_pos = torch.log(p.clamp(min=self.eps))
        log_neg = torch.log((1 - p_neg).clamp(min=self.eps))
        loss = targets * log_pos * (1 - p).pow(self.gamma_pos)
        loss = loss + (1 - targets) * log_neg * p_neg.pow(self.gamma_neg)
        return -loss.sum(dim=1).mean()


class SoftF1Loss(nn.Module):
    """``1 - mean_i softF1_i``, ``softF1_i = (2 sum_k p y + eps) / (sum_k p + sum_k y + eps)``.

    A differentiable version of the samples-F1 (probabilities in place of 0/1 predictions).
    The ``eps`` smoothing scores an empty truth with an (almost) empty prediction as 1, like
    :func:`geoplant.metrics.samples_f1`'s ``empty_score``.
    """

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean over the batch of ``1 - softF1``."""
        p = torch.sigmoid(logits.float())
        targets = targets.float()
        f1 = (2 * (p * targets).sum(1) + self.eps) / (p.sum(1) + targets.sum(1) + self.eps)
        return 1 - f1.mean()


class DeepMaxentLoss(nn.Module):
    """DeepMaxent's normalised Poisson loss: per species, a softmax over the batch's sites.

    With ``eta`` the logits (log-intensities) and ``y`` the presences ``(B, S)``::

        l_s = -sum_i y_is * log_softmax_i(eta_is)      (softmax over the sites i, dim 0)
        "inverse": L = mean over species present in the batch of l_s / n_s
        "uniform": L = sum_s l_s / sum_s n_s           (every presence equal)

    ``n_s = sum_i y_is``. Adding a constant to one species' logits changes nothing; a batch
    without any presence gives 0.

    Parameters
    ----------
    weighting
        ``"inverse"`` (default, DeepMaxent's ``1 / n_s``) or ``"uniform"``.
    """

    def __init__(self, weighting: str = "inverse") -> None:
        super().__init__()
        if weighting not in MAXENT_WEIGHTINGS:
            raise GeoplantError(f"unknown DeepMaxent weighting {weighting!r}",
                                fix=f"use one of {MAXENT_WEIGHTINGS}")
        self.weighting = weighting

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The batch loss (a scalar)."""
        logits, targets = logits.float(), targets.float()
        per_species = -(targets * torch.log_softmax(logits, dim=0)).sum(0)
        n = targets.sum(0)
        if self.weighting == "uniform":
            return per_species.sum() / n.sum().clamp(min=1)
        present = n > 0
        return (per_species[present] / n[present]).sum() / present.sum().clamp(min=1)


class _BCE(nn.Module):
    """Mean binary cross-entropy on logits; ``pos_weight`` is a buffer so ``.to()`` moves it."""

    def __init__(self, pos_weight: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        pw = self.pos_weight if isinstance(self.pos_weight, Tensor) else None
        return nn.functional.binary_cross_entropy_with_logits(
            logits.float(), targets.float(), pos_weight=pw)


class _WeightedLossSum(nn.Module):
    """``sum_i weights[i] * losses[i](logits, targets)`` (e.g. ``"bce+soft_f1"``)."""

    def __init__(self, *losses: nn.Module, weights: tuple[float, ...]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = weights

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        total = self.weights[0] * self.losses[0](logits, targets)
        for f, w in zip(self.losses[1:], self.weights[1:], strict=True):
            total = total + w * f(logits, targets)
        return total


def make_loss(name: str | nn.Module | Callable[[Tensor, Tensor], Tensor], *,
              pos_weight: Any = None, asl: Mapping[str, float] | None = None,
              soft_f1_weight: float = 1.0) -> LossFn:
    """The loss ``(logits, targets) -> scalar`` named ``name`` (see the module docstring).

    Parameters
    ----------
    name
        ``"bce"``, ``"asl"``, ``"soft_f1"``, ``"bce+soft_f1"``, or for presence-only sites
        ``"po_an"``, ``"po_maxent"``, ``"po_maxent_uniform"``; a module or callable is
        returned unchanged.
    pos_weight
        Scalar, per-species array or tensor; applies to BCE (also inside ``"bce+soft_f1"``)
        and is the presences' lambda of ``"po_an"`` (None: 1).
    asl
        :class:`AsymmetricLoss` keyword arguments.
    soft_f1_weight
        Weight of soft-F1 in ``"bce+soft_f1"``.

    Returns
    -------
    torch.nn.Module or callable
        The loss.

    Raises
    ------
    GeoplantError
        An unknown loss name.
    """
    if not isinstance(name, str):
        return name
    pw = None if pos_weight is None else torch.as_tensor(np.asarray(pos_weight, np.float32))
    if name == "bce":
        return _BCE(pw)
    if name == "asl":
        return AsymmetricLoss(**dict(asl or {}))
    if name == "soft_f1":
        return SoftF1Loss()
    if name == "bce+soft_f1":
        return _WeightedLossSum(_BCE(pw), SoftF1Loss(), weights=(1.0, float(soft_f1_weight)))
    if name == "po_an":  # BCE with lambda on the presences *is* assume-negative
        return _BCE(pw)
    if name == "po_maxent":
        return DeepMaxentLoss("inverse")
    if name == "po_maxent_uniform":
        return DeepMaxentLoss("uniform")
    raise GeoplantError(f"unknown loss {name!r}",
                        fix='use "bce", "asl", "soft_f1", "bce+soft_f1", "po_an", '
                            '"po_maxent", "po_maxent_uniform" or a callable')
