"""Chunk-aware shuffling of a dataset's indices, sharded over DDP ranks.

:class:`BlockShuffleSampler` shuffles blocks of surveys aligned to the storage chunks, then
shuffles inside a buffer of several blocks, so each chunk read serves many samples; it shards
epochs over DDP ranks (``num_replicas``/``rank``, :meth:`~BlockShuffleSampler.set_epoch`).
With in-memory data the block size is 1: a plain random permutation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from geoplant.errors import GeoplantError
from geoplant.torch.datasets import SurveyDataset

__all__ = ["BlockShuffleSampler"]


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``, filling the missing ones from ``torch.distributed``."""
    if num_replicas is None or rank is None:
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else \
            (dist.get_world_size() if ready else 1)
        rank = rank if rank is not None else (dist.get_rank() if ready else 0)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise GeoplantError(f"invalid rank {rank} for {num_replicas} replicas")
    return num_replicas, rank


class BlockShuffleSampler(Sampler[int]):
    """Chunk-aware shuffling of a dataset's indices, sharded over DDP ranks.

    Each epoch: the blocks (runs of indices whose surveys share a storage chunk of
    ``block_size`` surveys) are put in random order; consecutive blocks are grouped into
    buffers of ``buffer_blocks`` and the indices inside each buffer are shuffled. A batch then
    touches a few chunks, each decoded once and served from the cache for many samples.
    ``block_size=1`` gives a plain uniform permutation (the default for in-memory data).

    Sharding: the epoch's global order (identical on every rank: seed + epoch) is cut into
    ``num_replicas`` contiguous parts of ``num_samples = ceil(n / num_replicas)`` indices
    (each part keeps the block locality). When ``n`` is not a multiple, the order is
    **padded** by repeating its first ``total_size - n`` indices at the end, so every rank
    gets the same number of samples (required by DDP's collective ops); the padding therefore
    sits at the end of the last rank(s), and :attr:`padding` says how many of this rank's
    indices are repeats (drop them, or de-duplicate by ``surveyId``, when gathering
    evaluation predictions). Without the padding every survey is seen exactly once per epoch
    across ranks. ``drop_last=True`` truncates instead (``floor(n / num_replicas)`` each;
    up to ``num_replicas - 1`` surveys, different each epoch, are skipped).

    Parameters
    ----------
    data_source
        A :class:`~geoplant.torch.datasets.SurveyDataset` (blocks follow its storage chunks)
        or a length.
    block_size
        Surveys per block (default: ``data_source.block_size``, else 1).
    buffer_blocks
        Blocks shuffled together.
    shuffle
        ``False``: sequential order (evaluation), still sharded.
    seed
        Base seed; the epoch's order depends on ``seed + epoch`` only.
    num_replicas, rank
        DDP world size and rank (default: from ``torch.distributed`` when initialised,
        else 1 and 0).
    drop_last
        Truncate to a multiple of ``num_replicas`` instead of padding.
    """

    def __init__(
        self,
        data_source: SurveyDataset | int,
        block_size: int | None = None,
        buffer_blocks: int = 16,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if isinstance(data_source, SurveyDataset):
            self.n = len(data_source)
            rows = data_source.rows
            default_block = data_source.block_size
        else:
            self.n = int(data_source)
            rows = np.arange(self.n, dtype=np.int64)
            default_block = 1
        self.block_size = int(block_size or default_block)
        if self.block_size < 1 or buffer_blocks < 1:
            raise GeoplantError("block_size and buffer_blocks must be >= 1")
        num_replicas, rank = _world(num_replicas, rank)
        self.buffer_blocks = int(buffer_blocks)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.epoch = 0
        # block id of each index: rows are sorted, so a block is a contiguous run of indices
        _, self._block = np.unique(rows // self.block_size, return_inverse=True)
        self.n_blocks = int(self._block.max()) + 1 if self.n else 0
        if drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    @property
    def padding(self) -> int:
        """How many of this rank's indices (at the end of its list) are padding repeats."""
        if self.drop_last:
            return 0
        end = (self.rank + 1) * self.num_samples
        return int(min(self.num_samples, max(0, end - self.n)))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (a new order each epoch, the same on all ranks)."""
        self.epoch = int(epoch)

    def global_order(self) -> np.ndarray:
        """The epoch's order of all ``n`` indices, before sharding."""
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.block_size == 1:
            return rng.permutation(self.n).astype(np.int64)
        block_rank = np.empty(self.n_blocks, np.int64)
        block_rank[rng.permutation(self.n_blocks)] = np.arange(self.n_blocks)
        buffer = block_rank[self._block] // self.buffer_blocks
        return np.lexsort((rng.random(self.n), buffer)).astype(np.int64)

    def rank_indices(self) -> np.ndarray:
        """This rank's indices for the current epoch (padding, if any, at the end)."""
        order = self.global_order()
        if self.total_size > self.n:
            order = np.resize(order, self.total_size)  # cyclic: repeats the first indices
        start = self.rank * self.num_samples
        return order[start : start + self.num_samples]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
