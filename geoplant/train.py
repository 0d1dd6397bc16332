"""Training loop for the torch models: AdamW + warmup/cosine, AMP, checkpoints, DDP.

Batches are the dicts of :class:`geoplant.torch.SurveyDataset` (modality tensors,
``"labels"`` multi-hot float32, ``"surveyId"`` int64); any model mapping such a dict to
logits ``(B, n_species)`` trains here (:class:`geoplant.models.MultimodalSDM`).

One device or many
------------------
``fit`` runs on one device (CUDA if available, else MPS, else CPU) or, when started by
``torchrun`` (``WORLD_SIZE > 1`` in the environment), as one DDP process per device:
``init_process_group`` with NCCL on CUDA and Gloo on CPU, device ``cuda:$LOCAL_RANK``. A
loader whose sampler is not already distributed (no ``set_epoch``/``num_replicas``) is
rebuilt with a :class:`~torch.utils.data.distributed.DistributedSampler`; a sampler
with a ``num_replicas`` or ``world_size`` attribute is taken to shard by rank itself. Losses and
metrics are all-reduced; only rank 0 writes checkpoints and logs. ::

    torchrun --nproc_per_node=4 train_script.py

Validation metric
-----------------
The competition metric, samples-averaged F1 (:func:`geoplant.metrics.samples_f1`), of the
top-K species of each survey (``metric="f1_topk"``, K = ``TrainConfig.top_k``) or of the
best global probability threshold on a grid (``"f1_threshold"``), or the validation loss
(``"loss"``). It is computed in torch per survey and all-reduced (exact under DDP but for
the few surveys that :class:`DistributedSampler` repeats to even out the shards); the tests
check it equals :func:`geoplant.metrics.samples_f1`.

Losses
------
``"bce"``: binary cross-entropy with optional per-species ``pos_weight``
(:func:`pos_weight_from_labels`). ``"asl"``: the asymmetric loss of Ridnik et al. (ICCV
2021): focusing ``gamma_neg`` down-weights the many easy absences and the probability
margin ``clip`` discards very easy ones; it suits thousands of species with ~20 present.
``"soft_f1"``: ``1 - mean_i softF1_i`` with ``softF1 = 2 sum(p y) / (sum p + sum y)``, a
differentiable surrogate of the samples-F1 itself (better used to fine-tune, or mixed:
``"bce+soft_f1"``).

Reproducibility and resume
--------------------------
``seed_everything`` seeds Python, NumPy and torch. A checkpoint (written atomically at every
epoch's end) holds the model, optimizer, scheduler, AMP scaler, epoch, best metric, early
stopping counter, history and the RNG states of every rank, so a resumed run continues
exactly as an uninterrupted one (tested on CPU, single process: the same losses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from geoplant.errors import GeoplantError

__all__ = [
    "AsymmetricLoss",
    "EpochLog",
    "SoftF1Loss",
    "TrainConfig",
    "TrainResult",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "make_loss",
    "pos_weight_from_labels",
    "predict",
    "samples_f1_threshold",
    "samples_f1_topk",
    "seed_everything",
    "select_device",
    "spatial_block_split",
]

log = logging.getLogger("geoplant.train")

CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# devices, seeds, distributed


def _world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment (0, 0, 1 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local, world


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on.

    ``device`` if given; else ``cuda:$LOCAL_RANK`` when CUDA is available, else ``mps``,
    else ``cpu``. Never a fixed ``cuda:N``: under torchrun each process gets its own GPU.
    """
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        local = _world()[1]
        return torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global RNG is what we seed)
    torch.manual_seed(seed)


def init_distributed(device: str | torch.device | None = None) -> bool:
    """Join the process group when torchrun started us (``WORLD_SIZE > 1``); idempotent.

    NCCL on CUDA (after ``torch.cuda.set_device(cuda:$LOCAL_RANK)``), Gloo otherwise.
    :func:`fit` calls it; call it yourself *before* building loaders whose samplers read
    the world size from ``torch.distributed`` (e.g. ``geoplant.torch.BlockShuffleSampler``).

    Returns
    -------
    bool
        True when running distributed.
    """
    device = select_device(device)
    if _world()[2] <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return True


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    if not _distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# spatial split


def spatial_block_split(lon: Any, lat: Any, block_km: float = 10.0, val_fraction: float = 0.1,
                        seed: int = 0) -> np.ndarray:
    """Validation mask from spatial blocks: whole ~``block_km`` squares go to validation.

    Parameters
    ----------
    lon, lat
        Survey coordinates (WGS84 degrees), same length.
    block_km
        Side of the blocks. Coordinates are mapped to km with the sinusoidal projection
        (``x = lon * 111.32 * cos(lat)``, ``y = lat * 110.57``), so blocks are about
        ``block_km`` wide at every latitude.
    val_fraction
        Target fraction of surveys in validation; blocks are drawn in a random order until
        it is reached (so the fraction is met within one block's surveys).
    seed
        Seed of the block order.

    Returns
    -------
    numpy.ndarray
        Boolean mask, True for validation surveys. Nearby surveys (same block) are never
        split between training and validation, which keeps spatial autocorrelation from
        inflating validation scores.
    """
    lon = np.asarray(lon, dtype=np.float64).ravel()
    lat = np.asarray(lat, dtype=np.float64).ravel()
    if lon.shape != lat.shape:
        raise GeoplantError(f"lon and lat differ in length ({len(lon)} vs {len(lat)})")
    if not (0.0 < val_fraction < 1.0):
        raise GeoplantError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if block_km <= 0:
        raise GeoplantError(f"block_km must be > 0, got {block_km}")
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise GeoplantError("lon/lat hold NaN or inf", fix="drop surveys without coordinates")
    y = lat * 110.574
    x = lon * 111.320 * np.cos(np.deg2rad(lat))
    keys = np.stack([np.floor(x / block_km), np.floor(y / block_km)], axis=1).astype(np.int64)
    _, block = np.unique(keys, axis=0, return_inverse=True)
    block = block.ravel()
    counts = np.bincount(block)
    order = np.random.default_rng(seed).permutation(len(counts))
    target = val_fraction * len(lon)
    cumulative = np.cumsum(counts[order])
    n_blocks = int(np.searchsorted(cumulative, target) + 1)
    chosen = np.zeros(len(counts), dtype=bool)
    chosen[order[:n_blocks]] = True
    if chosen.all() and len(counts) > 1:  # keep at least one training block
        chosen[order[n_blocks - 1]] = False
    return chosen[block]


# ---------------------------------------------------------------------------------------------
# losses and metrics


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


class _BCE(nn.Module):
    def __init__(self, pos_weight: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        pw = self.pos_weight if isinstance(self.pos_weight, Tensor) else None
        return nn.functional.binary_cross_entropy_with_logits(
            logits.float(), targets.float(), pos_weight=pw)


class _Sum(nn.Module):
    def __init__(self, *losses: nn.Module, weights: tuple[float, ...]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)
        self.weights = weights

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        total = self.weights[0] * self.losses[0](logits, targets)
        for f, w in zip(self.losses[1:], self.weights[1:], strict=True):
            total = total + w * f(logits, targets)
        return total


LossName = Literal["bce", "asl", "soft_f1", "bce+soft_f1"]


def make_loss(name: str | nn.Module | Callable[[Tensor, Tensor], Tensor], *,
              pos_weight: Any = None, asl: Mapping[str, float] | None = None,
              soft_f1_weight: float = 1.0) -> nn.Module | Callable[[Tensor, Tensor], Tensor]:
    """The loss ``(logits, targets) -> scalar`` named ``name`` (see the module docstring).

    ``pos_weight`` (scalar, per-species array or tensor) applies to BCE; ``asl`` holds
    :class:`AsymmetricLoss` arguments; ``soft_f1_weight`` weighs soft-F1 in
    ``"bce+soft_f1"``. A module or callable is returned unchanged.
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
        return _Sum(_BCE(pw), SoftF1Loss(), weights=(1.0, float(soft_f1_weight)))
    raise GeoplantError(f"unknown loss {name!r}",
                        fix='use "bce", "asl", "soft_f1", "bce+soft_f1" or a callable')


def samples_f1_topk(scores: Tensor, targets: Tensor, k: int) -> Tensor:
    """Per-survey F1 of the top-``k`` species (``k`` clipped to the species count)."""
    k = max(1, min(int(k), scores.shape[1]))
    top = torch.topk(scores, k, dim=1).indices
    tp = targets.gather(1, top).float().sum(1)
    return 2 * tp / (k + targets.float().sum(1))


def samples_f1_threshold(scores: Tensor, targets: Tensor, thresholds: Tensor,
                         empty_score: float = 1.0) -> Tensor:
    """Per-survey F1 ``(n_thresholds, B)`` of the sets ``scores >= t`` for each threshold."""
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


# ---------------------------------------------------------------------------------------------
# configuration and results


@dataclass
class TrainConfig:
    """Settings of :func:`fit` (all have defaults; JSON-serialisable for model cards).

    Attributes
    ----------
    epochs
        Maximum number of epochs.
    lr, weight_decay, betas
        AdamW (decoupled weight decay; biases and norm parameters are not decayed).
    warmup_epochs
        Linear warmup from 0 (may be fractional), then cosine decay to ``lr * min_lr_ratio``
        at the end of ``epochs``; the schedule steps every optimizer step.
    loss, pos_weight, asl, soft_f1_weight
        See :func:`make_loss`; ``pos_weight`` from :func:`pos_weight_from_labels`.
    amp
        ``"auto"``: bf16 autocast on CUDA when supported, else fp16 with a GradScaler;
        ``"bf16"``, ``"fp16"``; ``"off"``. Always off on CPU/MPS.
    grad_clip
        Max gradient norm (None: no clipping).
    metric
        ``"f1_topk"`` (default), ``"f1_threshold"`` or ``"loss"``: the validation value that
        picks the best epoch and drives early stopping.
    top_k, thresholds
        K of ``f1_topk``; threshold grid of ``f1_threshold`` (also reported).
    patience, min_delta
        Early stopping: stop after ``patience`` epochs without an improvement larger than
        ``min_delta`` (None: never stop early).
    restore_best
        Load the best epoch's weights into the model at the end.
    checkpoint_dir
        Where ``last.pt``, ``best.pt`` and ``log.jsonl`` go (None: nothing written).
    resume
        Continue from ``checkpoint_dir/last.pt`` when it exists (or from this path).
    seed
        Seed of Python/NumPy/torch at the start (+ rank under DDP).
    device
        Force a device (default: :func:`select_device`).
    steps_per_epoch
        Needed only for loaders without ``len`` (iterable datasets).
    find_unused_parameters
        Passed to DDP.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    loss: str = "bce"
    pos_weight: Any = None
    asl: dict[str, float] = field(default_factory=dict)
    soft_f1_weight: float = 1.0
    amp: str = "auto"
    grad_clip: float | None = 5.0
    metric: str = "f1_topk"
    top_k: int = 25
    thresholds: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
    patience: int | None = 5
    min_delta: float = 0.0
    restore_best: bool = True
    checkpoint_dir: str | None = None
    resume: bool | str = True
    seed: int = 0
    device: str | None = None
    steps_per_epoch: int | None = None
    find_unused_parameters: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (``pos_weight`` summarised)."""
        d = dataclasses.asdict(self)
        if d["pos_weight"] is not None and not isinstance(d["pos_weight"], int | float):
            d["pos_weight"] = f"<array of {np.asarray(self.pos_weight).size}>"
        d["thresholds"] = list(d["thresholds"])
        d["betas"] = list(d["betas"])
        return d


@dataclass
class EpochLog:
    """One epoch's record (also a line of ``log.jsonl``).

    ``train_loss`` and the ``val_*`` values are averaged over all ranks' samples;
    ``samples_per_s`` is the global training throughput (all ranks, slowest rank's time);
    ``peak_memory_mb`` is the epoch's peak CUDA memory allocated (largest rank) on CUDA, and
    the process's peak resident memory so far on CPU/MPS; ``gpu_utilization`` is
    ``torch.cuda.utilization()`` at the epoch's end (None off CUDA or without pynvml).
    ``metric`` is the monitored value (``TrainConfig.metric``).
    """

    epoch: int
    train_loss: float
    lr: float
    samples: int
    seconds: float
    samples_per_s: float
    peak_memory_mb: float
    val_loss: float | None = None
    val_f1_topk: float | None = None
    val_f1_threshold: float | None = None
    val_best_threshold: float | None = None
    metric: float | None = None
    improved: bool = False
    gpu_utilization: float | None = None


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model
        The trained model (unwrapped from DDP; the best epoch's weights when
        ``restore_best``).
    history
        One :class:`EpochLog` per epoch run (including epochs before a resume).
    best_metric, best_epoch
        Best validation value and its (0-based) epoch (None without validation).
    epochs_run
        Epochs completed in total.
    stopped_early
        True when early stopping ended training.
    best_checkpoint, last_checkpoint
        Paths written (None without ``checkpoint_dir``).
    device
        The device used.
    """

    model: nn.Module
    history: list[EpochLog]
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    stopped_early: bool
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    device: str


# ---------------------------------------------------------------------------------------------
# helpers


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, Tensor) else v)
            for k, v in batch.items()}


def _amp_settings(amp: str, device: torch.device) -> tuple[bool, torch.dtype, bool]:
    """(autocast on, dtype, GradScaler on)."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise GeoplantError(f"unknown amp setting {amp!r}", fix='use "auto", "bf16", "fp16", '
                                                                '"off"')
    if device.type != "cuda" or amp == "off":
        return False, torch.float32, False
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return True, torch.bfloat16, False
    return True, torch.float16, True


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _loader_len(loader: Any, override: int | None) -> int:
    if override:
        return int(override)
    try:
        return len(loader)
    except TypeError as err:
        raise GeoplantError("the training loader has no length",
                            fix="set TrainConfig.steps_per_epoch") from err


def _is_distributed_sampler(obj: Any) -> bool:
    """A sampler that shards by rank itself (DistributedSampler and look-alikes)."""
    return obj is not None and any(hasattr(obj, a) for a in ("num_replicas", "world_size"))


def _shard_loader(loader: DataLoader, shuffle: bool, seed: int) -> DataLoader:
    """The same loader over a DistributedSampler shard (unless it is already sharded)."""
    from torch.utils.data import BatchSampler, IterableDataset, RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader  # iterable datasets shard themselves
    for obj in (loader.sampler, loader.batch_sampler):
        if _is_distributed_sampler(obj):
            n = getattr(obj, "num_replicas", getattr(obj, "world_size", None))
            if n is not None and int(n) != dist.get_world_size():
                raise GeoplantError(
                    f"the loader's sampler shards over {n} replicas but the world size is "
                    f"{dist.get_world_size()}",
                    fix="build the loader after geoplant.train.init_distributed(), or pass "
                        "num_replicas/rank to the sampler")
            return loader
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        raise GeoplantError("a custom batch sampler is not DDP-aware",
                            fix="give it set_epoch/num_replicas, or use a plain sampler")
    shuffle = shuffle and isinstance(loader.sampler, RandomSampler)
    sampler: Any = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed)
    kwargs: dict[str, Any] = {
        "batch_size": loader.batch_size, "sampler": sampler, "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn, "pin_memory": loader.pin_memory,
        "drop_last": loader.drop_last, "worker_init_fn": loader.worker_init_fn,
        "timeout": loader.timeout, "generator": loader.generator,
    }
    if loader.num_workers > 0:
        kwargs["persistent_workers"] = loader.persistent_workers
        kwargs["prefetch_factor"] = loader.prefetch_factor
        kwargs["multiprocessing_context"] = loader.multiprocessing_context
    return DataLoader(loader.dataset, **kwargs)


def _set_epoch(loader: Any, epoch: int) -> None:
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                getattr(loader, "dataset", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def _gpu_utilization(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # pynvml missing or unsupported
        return None


def _rng_state() -> dict[str, Any]:
    """RNG states as plain Python values (picklable by all_gather_object, weights_only-safe)."""
    np_state: Any = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit` (tensors on CPU).

    ``state["model"]`` is the model's ``state_dict``; ``state["config"]`` the
    :class:`TrainConfig` as a dict; ``state["history"]`` the epoch logs.
    """
    path = Path(path)
    if not path.is_file():
        raise GeoplantError("checkpoint not found", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GeoplantError(f"unreadable checkpoint ({type(err).__name__}: {err})", path=path,
                            fix="delete it to start over") from err


# ---------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def _evaluate(model: nn.Module, loader: Any, loss_fn: Any, device: torch.device,
              autocast: Callable[[], contextlib.AbstractContextManager[Any]],
              cfg: TrainConfig) -> dict[str, float]:
    model.eval()
    thresholds = torch.tensor(cfg.thresholds, dtype=torch.float32, device=device)
    loss_sum = 0.0
    f1k_sum = 0.0
    f1t_sum = torch.zeros(len(thresholds), dtype=torch.float64, device=device)
    n = 0
    for batch in loader:
        batch = _to_device(batch, device)
        with autocast():
            logits = model(batch)
        logits = logits.float()
        y = batch["labels"].float()
        b = y.shape[0]
        loss_sum += float(loss_fn(logits, y)) * b
        p = torch.sigmoid(logits)
        f1k_sum += float(samples_f1_topk(p, y, cfg.top_k).sum())
        if len(thresholds):
            f1t_sum += samples_f1_threshold(p, y, thresholds).sum(1).double()
        n += b
    reduced = _all_reduce([loss_sum, f1k_sum, float(n), *f1t_sum.tolist()], device)
    loss_sum, f1k_sum, n_all = reduced[:3]
    f1t = np.asarray(reduced[3:]) / max(n_all, 1)
    best = int(np.argmax(f1t)) if len(f1t) else 0
    return {"val_loss": loss_sum / max(n_all, 1), "val_f1_topk": f1k_sum / max(n_all, 1),
            "val_f1_threshold": float(f1t[best]) if len(f1t) else float("nan"),
            "val_best_threshold": float(cfg.thresholds[best]) if len(f1t) else float("nan")}


@torch.no_grad()
def predict(model: nn.Module, loader: Any, *, device: str | torch.device | None = None,
            amp: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Presence probabilities of every survey in ``loader``.

    Parameters
    ----------
    model
        A model mapping batch dicts to logits (moved to ``device``; DDP wrappers unwrapped).
    loader
        Batches with ``"surveyId"`` and the model's modalities (labels not needed).
    device, amp
        As in :class:`TrainConfig` (default: :func:`select_device`, autocast on CUDA).

    Returns
    -------
    survey_ids : numpy.ndarray
        int64 ``(n,)`` in loader order.
    probabilities : numpy.ndarray
        float32 ``(n, n_species)``.

    Notes
    -----
    Runs in the calling process over the whole loader (under DDP, call it on rank 0 or
    give each rank its own shard and concatenate).
    """
    model = _unwrap(model)
    dev = select_device(device)
    model.to(dev).eval()
    use_amp, dtype, _ = _amp_settings(amp, dev)
    ids: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for batch in loader:
        if "surveyId" not in batch:
            raise GeoplantError("batches lack 'surveyId'", fix="use geoplant.torch.SurveyDataset")
        batch = _to_device(batch, dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=use_amp):
            logits = model(batch)
        probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        ids.append(batch["surveyId"].cpu().numpy().astype(np.int64))
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, getattr(model, "n_species", 0)), np.float32)
    return np.concatenate(ids), np.concatenate(probs).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# the loop


def _is_better(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    if metric == "loss":
        return value < best - min_delta
    return value > best + min_delta


def fit(model: nn.Module, train_loader: Any, val_loader: Any = None,
        config: TrainConfig | None = None, *,
        on_epoch_end: Callable[[EpochLog], bool | None] | None = None) -> TrainResult:
    """Train ``model`` on batch dicts; validate, checkpoint, stop early, resume.

    Parameters
    ----------
    model
        Maps a batch dict to logits ``(B, n_species)`` (e.g. :class:`MultimodalSDM`).
        Build it after :func:`seed_everything` for reproducible initial weights.
    train_loader
        Iterable of batch dicts with ``"labels"``; a :class:`~torch.utils.data.DataLoader`
        is sharded automatically under DDP.
    val_loader
        Validation batches (with ``"labels"``); None: no validation, no early stopping.
    config
        :class:`TrainConfig` (defaults if None).
    on_epoch_end
        Called (on every rank) with each epoch's log after the checkpoint is written;
        returning True stops training (all ranks stop if any asks).

    Returns
    -------
    TrainResult

    Raises
    ------
    GeoplantError
        Bad settings, a loader without labels, an unreadable checkpoint.
    """
    cfg = config or TrainConfig()
    if cfg.metric not in ("f1_topk", "f1_threshold", "loss"):
        raise GeoplantError(f"unknown metric {cfg.metric!r}",
                            fix='use "f1_topk", "f1_threshold" or "loss"')
    device = select_device(cfg.device)
    distributed = init_distributed(device)
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    is_main = rank == 0
    seed_everything(cfg.seed + rank)

    model = _unwrap(model).to(device)
    if distributed:
        train_loader = _shard_loader(train_loader, shuffle=True, seed=cfg.seed)
        if val_loader is not None:
            val_loader = _shard_loader(val_loader, shuffle=False, seed=cfg.seed)
    steps_per_epoch = _loader_len(train_loader, cfg.steps_per_epoch)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, warmup, cfg.min_lr_ratio))
    use_amp, amp_dtype, use_scaler = _amp_settings(cfg.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    loss_fn = make_loss(cfg.loss, pos_weight=cfg.pos_weight, asl=cfg.asl,
                        soft_f1_weight=cfg.soft_f1_weight)
    if isinstance(loss_fn, nn.Module):
        loss_fn = loss_fn.to(device)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    last_path = ckpt_dir / "last.pt" if ckpt_dir else None
    best_path = ckpt_dir / "best.pt" if ckpt_dir else None
    history: list[EpochLog] = []
    start_epoch = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs = 0
    best_state: dict[str, Tensor] | None = None

    resume_from: Path | None = None
    if isinstance(cfg.resume, str):
        resume_from = Path(cfg.resume)
        if not resume_from.is_file():
            raise GeoplantError("resume checkpoint not found", path=resume_from)
    elif cfg.resume and last_path is not None and last_path.is_file():
        resume_from = last_path
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"]) + 1
        best_metric = state["best_metric"]
        best_epoch = state["best_epoch"]
        bad_epochs = int(state["bad_epochs"])
        history = [EpochLog(**h) for h in state["history"]]
        rngs = state["rng"]
        _set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        if best_path is not None and best_path.is_file() and cfg.restore_best:
            best_state = load_checkpoint(best_path)["model"]
        if is_main:
            log.info("resumed from %s at epoch %d", resume_from, start_epoch)

    if distributed:
        ddp_kwargs: dict[str, Any] = {"find_unused_parameters": cfg.find_unused_parameters}
        if device.type == "cuda":
            ddp_kwargs["device_ids"] = [device.index]
        train_model: nn.Module = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    else:
        train_model = model

    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs):
        if (val_loader is not None and cfg.patience is not None and history
                and bad_epochs >= cfg.patience):  # resumed after early stopping
            stopped_early = True
            break
        _set_epoch(train_loader, epoch)
        train_model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        loss_sum, n_samples = 0.0, 0
        for step, batch in enumerate(itertools.islice(train_loader, steps_per_epoch)):
            batch = _to_device(batch, device)
            if "labels" not in batch:
                raise GeoplantError("training batches lack 'labels'",
                                    fix="use a train split (pa_train)")
            with autocast():
                logits = train_model(batch)
            loss = loss_fn(logits.float(), batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(train_model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            b = int(batch["labels"].shape[0])
            loss_sum += float(loss.detach()) * b
            n_samples += b
            if not math.isfinite(float(loss.detach())):
                raise GeoplantError(f"loss is {float(loss)} at epoch {epoch} step {step}",
                                    fix="lower lr, check inputs for NaN, or use amp='off'")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        loss_sum, n_all = _all_reduce([loss_sum, float(n_samples)], device)
        rec = EpochLog(epoch=epoch, train_loss=loss_sum / max(n_all, 1),
                       lr=float(optimizer.param_groups[0]["lr"]), samples=int(n_all),
                       seconds=seconds, samples_per_s=n_all / max(seconds, 1e-9),
                       peak_memory_mb=_peak_memory_mb(device),
                       gpu_utilization=_gpu_utilization(device))
        if distributed:  # the slowest rank's time; the largest rank's memory
            rec.seconds, rec.peak_memory_mb = _all_reduce([seconds, rec.peak_memory_mb],
                                                          device, op="max")
            rec.samples_per_s = n_all / max(rec.seconds, 1e-9)
        if val_loader is not None:
            metrics = _evaluate(train_model, val_loader, loss_fn, device, autocast, cfg)
            for k, v in metrics.items():
                setattr(rec, k, v)
            rec.metric = {"f1_topk": metrics["val_f1_topk"], "loss": metrics["val_loss"],
                          "f1_threshold": metrics["val_f1_threshold"]}[cfg.metric]
            rec.improved = _is_better(rec.metric, best_metric, cfg.metric, cfg.min_delta)
            if rec.improved:
                best_metric, best_epoch, bad_epochs = rec.metric, epoch, 0
                if cfg.restore_best:
                    best_state = {k: v.detach().clone().cpu()
                                  for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
        else:
            best_epoch = epoch
        history.append(rec)
        if is_main:
            log.info("epoch %d: %s", epoch, json.dumps(
                {k: v for k, v in dataclasses.asdict(rec).items() if v is not None}))

        rngs = [_rng_state()]
        if distributed:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if ckpt_dir is not None and is_main:
            state = {
                "version": CHECKPOINT_VERSION, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "best_metric": best_metric,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "history": [dataclasses.asdict(h) for h in history], "rng": rngs,
                "config": cfg.to_dict(), "world_size": world,
            }
            if rec.improved or val_loader is None:
                _atomic_save(state, best_path)  # type: ignore[arg-type]
            _atomic_save(state, last_path)  # type: ignore[arg-type]
            with open(ckpt_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(dataclasses.asdict(rec)) + "\n")
        if distributed:
            dist.barrier()
        stop = bool(on_epoch_end(rec)) if on_epoch_end is not None else False
        if _all_reduce([float(stop)], device, op="max")[0] > 0:
            break
        if val_loader is not None and cfg.patience is not None and bad_epochs >= cfg.patience:
            stopped_early = True
            if is_main:
                log.info("early stopping at epoch %d (best %s at epoch %s)", epoch,
                         best_metric, best_epoch)
            break

    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    if distributed:  # BatchNorm statistics drift per rank after the last step: use rank 0's
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
    model.eval()
    return TrainResult(
        model=model, history=history, best_metric=best_metric, best_epoch=best_epoch,
        epochs_run=len(history), stopped_early=stopped_early,
        best_checkpoint=best_path if best_path is not None and best_path.is_file() else None,
        last_checkpoint=last_path if last_path is not None and last_path.is_file() else None,
        device=str(device))

