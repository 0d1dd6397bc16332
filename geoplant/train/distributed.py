"""DDP plumbing: the process group, all-reduces, and sharding loaders by rank.

``fit`` runs as one process per device when started by ``torchrun`` (``WORLD_SIZE > 1``):
``init_process_group`` with NCCL on CUDA and Gloo on CPU. A loader whose sampler is not
already distributed (no ``num_replicas``/``world_size``) is rebuilt over a
:class:`~torch.utils.data.distributed.DistributedSampler`. Collectives the loop runs only
when :func:`init_distributed` said so (barriers, gathers) stay in the loop itself.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from geoplant.errors import GeoplantError
from geoplant.train.device import select_device, torchrun_world

__all__ = [
    "all_reduce",
    "all_reduce_tensor",
    "init_distributed",
    "is_distributed",
    "set_epoch",
    "shard_loader",
    "unwrap",
]


def init_distributed(device: str | torch.device | None = None) -> bool:
    """Join the process group when torchrun started us (``WORLD_SIZE > 1``); idempotent.

    NCCL on CUDA (after ``torch.cuda.set_device(cuda:$LOCAL_RANK)``), Gloo otherwise.
    :func:`~geoplant.train.fit` calls it; call it yourself *before* building loaders whose
    samplers read the world size from ``torch.distributed`` (e.g.
    ``geoplant.torch.BlockShuffleSampler``).

    Parameters
    ----------
    device
        As for :func:`~geoplant.train.select_device`; picks the backend.

    Returns
    -------
    bool
        True when running distributed.
    """
    device = select_device(device)
    if torchrun_world()[2] <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(values: list[float], device: torch.device,
               op: Literal["sum", "max"] = "sum") -> list[float]:
    """Sum (or max) ``values`` over all ranks, in float64; ``values`` itself in one process."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor, op: Literal["sum", "max"] = "sum") -> torch.Tensor:
    """Sum (or max) ``t`` over all ranks in place, on its device (no host sync); ``t``
    itself in one process."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside :class:`~torch.nn.parallel.DistributedDataParallel` and
    ``torch.compile`` wrappers (the one whose ``state_dict`` has plain keys)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def _is_distributed_sampler(obj: Any) -> bool:
    """A sampler that shards by rank itself (DistributedSampler and look-alikes)."""
    return obj is not None and any(hasattr(obj, a) for a in ("num_replicas", "world_size"))


def shard_loader(loader: DataLoader, shuffle: bool, seed: int) -> DataLoader:
    """The same loader over a DistributedSampler shard (unless it is already sharded).

    Parameters
    ----------
    loader
        Returned unchanged when it is not a :class:`DataLoader`, iterates an
        ``IterableDataset`` (those shard themselves) or already has a rank-aware sampler.
    shuffle
        Shuffle the shard (only if ``loader`` shuffled: a ``RandomSampler``).
    seed
        Seed of the DistributedSampler's shuffling.

    Raises
    ------
    GeoplantError
        The loader's sampler shards over another world size, or a custom batch sampler is
        not rank-aware.
    """
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


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell the loader's sampler, batch sampler and dataset the epoch (those that listen)."""
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                getattr(loader, "dataset", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
