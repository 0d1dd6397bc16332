"""Where and how tensors run: device choice, seeding, autocast settings, memory readings.

The process's place under ``torchrun`` (:func:`torchrun_world`) is read from the
environment here, not from ``torch.distributed``, because the device must be chosen
before the process group exists (:func:`geoplant.train.distributed.init_distributed`).
"""

from __future__ import annotations

import os
import random
import resource
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from geoplant.errors import GeoplantError

__all__ = [
    "AmpSettings",
    "accumulator_dtype",
    "amp_settings",
    "gpu_utilization",
    "peak_memory_mb",
    "seed_everything",
    "select_device",
    "to_device",
    "torchrun_world",
]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def torchrun_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the torchrun environment (0, 0, 1 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local, world


def select_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on.

    ``device`` if given; else ``cuda:$LOCAL_RANK`` when CUDA is available, else ``mps``,
    else ``cpu``. Never a fixed ``cuda:N``: under torchrun each process gets its own GPU.

    Parameters
    ----------
    device
        A device to force (returned as a :class:`torch.device`).

    Returns
    -------
    torch.device
    """
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        local = torchrun_world()[1]
        return torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device).

    Parameters
    ----------
    seed
        Any int; NumPy gets it modulo 2**32.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global RNG is what we seed)
    torch.manual_seed(seed)


def to_device(batch: Mapping[str, Any], device: torch.device, *,
              channels_last: bool = False) -> dict[str, Any]:
    """The batch dict with its tensors on ``device``, dtypes unchanged.

    Copies to CUDA are non-blocking: with a loader's ``pin_memory=True`` they overlap the
    compute of the previous step (without pinning they are synchronous, and still correct).
    Integer tensors (e.g. uint8 patches for an on-device normaliser) stay integer.

    Parameters
    ----------
    batch
        A batch dict (non-tensor values are passed through).
    device
        The target device.
    channels_last
        Give 4-d tensors (image-like ``(B, C, H, W)`` modalities) the channels-last memory
        layout, to match a model converted with ``memory_format=torch.channels_last``.
    """
    nb = device.type == "cuda"
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=nb)
            if channels_last and v.ndim == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums kept on ``device`` (exact counts and losses), float32 on MPS (which
    has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


class AmpSettings(NamedTuple):
    """Mixed precision resolved for one device."""

    autocast: bool
    dtype: torch.dtype
    grad_scaler: bool


def amp_settings(amp: str, device: torch.device) -> AmpSettings:
    """Resolve ``TrainConfig.amp`` for ``device``: bf16 when CUDA supports it, else fp16
    with a GradScaler; never on CPU/MPS.

    Raises
    ------
    GeoplantError
        ``amp`` is not one of ``"auto"``, ``"bf16"``, ``"fp16"``, ``"off"``.
    """
    if amp not in AMP_CHOICES:
        raise GeoplantError(f"unknown amp setting {amp!r}", fix='use "auto", "bf16", "fp16", '
                                                                '"off"')
    if device.type != "cuda" or amp == "off":
        return AmpSettings(False, torch.float32, False)
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return AmpSettings(True, torch.bfloat16, False)
    return AmpSettings(True, torch.float16, True)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device`` (since the last reset), else the process's
    peak resident memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def gpu_utilization(device: torch.device) -> float | None:
    """``torch.cuda.utilization`` in percent; None off CUDA or without pynvml."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # pynvml missing or unsupported
        return None
