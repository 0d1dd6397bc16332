"""geoplant.torch.samplers: chunk-aware block shuffling, DDP sharding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import geoplant.torch as gt
from geoplant.builder import CHUNK_SURVEYS
from geoplant.errors import GeoplantError


def _assert_buffered(order: np.ndarray, block_of: np.ndarray, buffer: int) -> None:
    """``order`` is a run of groups, each exactly the indices of ``buffer`` whole blocks."""
    sizes = np.bincount(block_of)
    i = 0
    while i < len(order):
        blocks: set[int] = set()
        need, j = 0, i
        while j < len(order):
            b = int(block_of[order[j]])
            if b not in blocks:
                assert len(blocks) < buffer, "a group mixes more blocks than the buffer"
                blocks.add(b)
                need += sizes[b]
            j += 1
            if j - i == need and len(blocks) == buffer:
                break
        assert j - i == need, "a group holds part of a block"
        i = j


@pytest.mark.parametrize(("n", "block", "buffer"), [(950, 16, 4), (1000, 7, 3), (33, 1, 1),
                                                     (5, 16, 16)])
def test_block_sampler_yields_every_index_once(n: int, block: int, buffer: int) -> None:
    sampler = gt.BlockShuffleSampler(n, block_size=block, buffer_blocks=buffer, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = np.fromiter(sampler, dtype=np.int64)
        assert len(order) == len(sampler) == n
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
        orders.append(order)
        _assert_buffered(order, np.arange(n) // block, buffer)
    if n > 10:
        assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
    sampler.set_epoch(1)
    np.testing.assert_array_equal(np.fromiter(sampler, np.int64), orders[1])  # reproducible


def test_block_sampler_follows_dataset_chunks(loader_store: Path, loader_stats: dict[str, Any],
                                              loader_mem_ds: gt.SurveyDataset) -> None:
    ds = gt.SurveyDataset(loader_store, "pa_train", in_memory=False)
    sampler = ds.sampler(seed=1, buffer_blocks=2)
    order = np.fromiter(sampler, np.int64)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(ds)))
    _assert_buffered(order, ds.rows // CHUNK_SURVEYS, 2)
    with pytest.raises(AssertionError):  # a uniform permutation is not chunk-local
        _assert_buffered(np.random.default_rng(0).permutation(len(ds)),
                         ds.rows // CHUNK_SURVEYS, 2)
    assert loader_mem_ds.sampler().block_size == 1


@pytest.mark.parametrize(("n", "replicas"), [(950, 2), (951, 2), (949, 3), (5, 4)])
def test_ddp_shards_cover_every_survey_once(n: int, replicas: int) -> None:
    for epoch in (0, 1):
        parts, real = [], []
        for rank in range(replicas):
            s = gt.BlockShuffleSampler(n, block_size=16, buffer_blocks=2, seed=7,
                                       num_replicas=replicas, rank=rank)
            s.set_epoch(epoch)
            idx = np.fromiter(s, np.int64)
            assert len(idx) == len(s) == -(-n // replicas)  # equal lengths: DDP-safe
            parts.append(idx)
            real.append(idx[: len(idx) - s.padding])
        allreal = np.concatenate(real)
        np.testing.assert_array_equal(np.sort(allreal), np.arange(n))  # once, disjoint
        total_padding = sum(len(p) for p in parts) - n
        assert total_padding == replicas * (-(-n // replicas)) - n
        padded = np.concatenate([p[len(r):] for p, r in zip(parts, real, strict=True)])
        assert len(padded) == total_padding and np.isin(padded, allreal).all()
    # drop_last: no padding, at most replicas - 1 skipped
    dropped = [np.fromiter(gt.BlockShuffleSampler(n, num_replicas=replicas, rank=r,
                                                  drop_last=True), np.int64)
               for r in range(replicas)]
    flat = np.concatenate(dropped)
    assert len(flat) == len(np.unique(flat)) == n - n % replicas
    with pytest.raises(GeoplantError):
        gt.BlockShuffleSampler(10, num_replicas=2, rank=2)
