"""The validation pass of :func:`geoplant.train.fit` and its samples-F1 in torch.

The competition metric, samples-averaged F1 (:func:`geoplant.metrics.samples_f1`), of the
top-K species of each survey (``metric="f1_topk"``) or of the best global probability
threshold on a grid (``"f1_threshold"``), or the validation loss (``"loss"``). It is
computed in torch per survey and all-reduced (exact under DDP but for the few surveys that
:class:`~torch.utils.data.distributed.DistributedSampler` repeats to even out the shards);
the tests check it equals :func:`geoplant.metrics.samples_f1`.

The samples-F1 helpers live here rather than with the losses: they score hard 0/1 sets and
have no gradient, and the validation pass is their only user in the loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import torch
from torch import Tensor, nn

from geoplant.train.device import accumulator_dtype, to_device
from geoplant.train.distributed import all_reduce_tensor
from geoplant.train.losses import LossFn
from geoplant.train.progress import iterate

__all__ = [
    "METRICS",
    "is_better",
    "monitored_value",
    "samples_f1_threshold",
    "samples_f1_topk",
    "validation_metrics",
]

#: The values ``TrainConfig.metric`` may monitor.
METRICS: Final = ("f1_topk", "f1_threshold", "loss")


def samples_f1_topk(scores: Tensor, targets: Tensor, k: int) -> Tensor:
    """Per-survey F1 of the top-``k`` species (``k`` clipped to the species count).

    Parameters
    ----------
    scores, targets
        ``(B, n_species)``; targets 0/1.
    k
        Species predicted per survey.

    Returns
    -------
    torch.Tensor
        ``(B,)``.
    """
    k = max(1, min(int(k), scores.shape[1]))
    top = torch.topk(scores, k, dim=1).indices
    tp = targets.gather(1, top).float().sum(1)
    return 2 * tp / (k + targets.float().sum(1))


def samples_f1_threshold(scores: Tensor, targets: Tensor, thresholds: Tensor,
                         empty_score: float = 1.0) -> Tensor:
    """Per-survey F1 ``(n_thresholds, B)`` of the sets ``scores >= t`` for each threshold.

    Parameters
    ----------
    scores, targets
        ``(B, n_species)``; targets 0/1.
    thresholds
        ``(n_thresholds,)``.
    empty_score
        F1 of an empty prediction for an empty truth.

    Returns
    -------
    torch.Tensor
        ``(n_thresholds, B)``.
    """
    targets = targets.float()
    n_true = targets.sum(1)
    out = []
    for t in thresholds.tolist():
        pred = (scores >= t).float()
        tp = (pred * targets).sum(1)
        den = pred.sum(1) + n_true
        out.append(torch.where(den > 0, 2 * tp / den.clamp(min=1),
                               torch.full_like(den, empty_score)))
    return torch.stack(out)


@torch.no_grad()
def validation_metrics(model: nn.Module, loader: Any, loss_fn: LossFn, device: torch.device,
                       autocast: Callable[[], contextlib.AbstractContextManager[Any]], *,
                       top_k: int, thresholds: Sequence[float], channels_last: bool = False,
                       progress: bool = False) -> dict[str, float]:
    """Loss and samples-F1 of ``model`` over ``loader``, averaged over all ranks' surveys.

    Sums stay on the device and are all-reduced and read once at the end: no host sync
    per batch.

    Parameters
    ----------
    model
        Put in eval mode.
    loader
        Batch dicts with ``"labels"``.
    loss_fn
        The training loss.
    device, autocast
        Where batches go, and the autocast context to run the model in.
    top_k, thresholds
        K of ``f1_topk``; the grid of ``f1_threshold``.
    channels_last
        Batches' 4-d tensors in channels-last layout (as the model's).
    progress
        Show a progress bar (removed when done).

    Returns
    -------
    dict
        ``val_loss``, ``val_f1_topk``, ``val_f1_threshold`` (at the best threshold) and
        ``val_best_threshold`` (NaN for the last two with an empty grid).
    """
    model.eval()
    grid = torch.tensor(thresholds, dtype=torch.float32, device=device)
    # loss sum, top-K F1 sum, survey count, then one F1 sum per threshold
    sums = torch.zeros(3 + len(grid), dtype=accumulator_dtype(device), device=device)
    for batch in iterate(loader, desc="validation", enabled=progress, leave=False):
        batch = to_device(batch, device, channels_last=channels_last)
        with autocast():
            logits = model(batch)
        logits = logits.float()
        y = batch["labels"].float()
        p = torch.sigmoid(logits)
        sums[0] += loss_fn(logits, y).to(sums.dtype) * y.shape[0]
        sums[1] += samples_f1_topk(p, y, top_k).sum().to(sums.dtype)
        sums[2] += y.shape[0]
        if len(grid):
            sums[3:] += samples_f1_threshold(p, y, grid).sum(1).to(sums.dtype)
    reduced = all_reduce_tensor(sums).tolist()
    loss_sum, f1k_sum, n_all = reduced[:3]
    f1t = np.asarray(reduced[3:]) / max(n_all, 1)
    best = int(np.argmax(f1t)) if len(f1t) else 0
    return {"val_loss": loss_sum / max(n_all, 1), "val_f1_topk": f1k_sum / max(n_all, 1),
            "val_f1_threshold": float(f1t[best]) if len(f1t) else float("nan"),
            "val_best_threshold": float(thresholds[best]) if len(f1t) else float("nan")}


def monitored_value(metrics: dict[str, float], metric: str) -> float:
    """The value of :func:`validation_metrics`'s result that ``metric`` (one of
    :data:`METRICS`) monitors."""
    return {"f1_topk": metrics["val_f1_topk"], "loss": metrics["val_loss"],
            "f1_threshold": metrics["val_f1_threshold"]}[metric]


def is_better(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta`` (lower is better for
    ``"loss"``, higher for the F1s); a first non-NaN value always improves."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if metric == "loss":
        return value < best - min_delta
    return value > best + min_delta
