"""geoplant.torch: batched multimodal loading, train-only normalisation, chunk-aware samplers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

import geoplant.torch as gt
from geoplant.build import CHUNK_SURVEYS, build
from geoplant.errors import GeoplantError
from geoplant.store import open_store

MODS = ("sentinel2", "landsat", "climate", "env")


@pytest.fixture(scope="module")
def store_path(glc24_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("torch") / "store"
    build(glc24_tiny, out, progress=False, rasters=False)
    return out


@pytest.fixture(scope="module")
def stats(store_path: Path) -> dict:
    return gt.compute_normalization_stats(store_path)


@pytest.fixture(scope="module")
def mem_ds(store_path: Path, stats: dict) -> gt.SurveyDataset:
    return gt.SurveyDataset(store_path, "pa_train", in_memory=True)


def _cube(store_path: Path, split: str) -> zarr.Group:
    return zarr.open_group(store_path / "cubes" / f"{split}.zarr", mode="r")


# --- normalisation statistics ----------------------------------------------------------------


def test_stats_are_train_moments_and_written_atomically(store_path: Path, stats: dict) -> None:
    on_disk = json.loads((store_path / gt.STATS_FILE).read_text())
    assert on_disk["split"] == "pa_train" and on_disk["modalities"].keys() == set(MODS)
    assert not list(store_path.glob(".stats.json.tmp-*"))
    g = _cube(store_path, "pa_train")
    assert g["valid_sentinel2"][:].all()
    s2 = g["sentinel2"][:]
    for c in range(4):
        band = s2[:, c].astype(np.float32)
        assert stats["modalities"]["sentinel2"]["mean"][c] == pytest.approx(
            band.mean(dtype=np.float64), rel=1e-9)
        assert stats["modalities"]["sentinel2"]["std"][c] == pytest.approx(
            band.std(dtype=np.float64), rel=1e-6)
    for m in MODS[1:]:
        x = np.asarray(g[m][:], np.float64).swapaxes(0, 1).reshape(g[m].shape[1], -1)
        x = np.where(np.isfinite(x), x, np.nan)
        np.testing.assert_allclose(stats["modalities"][m]["mean"], np.nanmean(x, axis=1),
                                   rtol=1e-6)
        np.testing.assert_allclose(stats["modalities"][m]["std"], np.nanstd(x, axis=1),
                                   rtol=1e-5)
        np.testing.assert_array_equal(stats["modalities"][m]["count"],
                                      np.isfinite(x).sum(axis=1))
    # streaming over many small blocks (merging their moments) gives the same numbers
    small = gt.compute_normalization_stats(store_path, modalities=("landsat", "env"),
                                           block_surveys=100, write=False)
    for m in ("landsat", "env"):
        np.testing.assert_allclose(small["modalities"][m]["mean"],
                                   stats["modalities"][m]["mean"], rtol=1e-9)
        np.testing.assert_allclose(small["modalities"][m]["std"],
                                   stats["modalities"][m]["std"], rtol=1e-9)
    # the tiny world does have NaN (Landsat) and inf (env) to ignore
    assert np.isnan(g["landsat"][:]).any() and np.isinf(g["env"][:]).any()
    assert stats["modalities"]["landsat"]["channels"][0] == "red"


def test_stats_refuse_test_split(store_path: Path) -> None:
    with pytest.raises(GeoplantError, match="refusing"):
        gt.compute_normalization_stats(store_path, "pa_test", write=False)


def test_test_split_is_normalised_with_train_stats(store_path: Path, stats: dict) -> None:
    ds = gt.SurveyDataset(store_path, "pa_test", return_mask=True)
    assert "labels" not in ds[0] and ds.n_species == 0
    g = _cube(store_path, "pa_test")
    idx = [0, 7, len(ds) - 1]
    batch = ds.get_batch(idx)
    for m in MODS:
        raw = np.asarray(g[m][:], np.float64)[idx]
        mean = np.asarray(stats["modalities"][m]["mean"])
        std = np.asarray(stats["modalities"][m]["std"])
        shape = (1, -1) + (1,) * (raw.ndim - 2)
        expected = (raw - mean.reshape(shape)) / std.reshape(shape)
        expected = np.where(np.isfinite(expected), expected, 0.0)
        np.testing.assert_allclose(batch[m].numpy(), expected, rtol=1e-4, atol=1e-4)
        # and not with the test split's own statistics
        own = np.nanmean(np.where(np.isfinite(raw), raw, np.nan).swapaxes(0, 1).reshape(
            raw.shape[1], -1), axis=1)
        assert not np.allclose(own, mean, rtol=1e-3)
        if m != "sentinel2":
            mask = batch[f"mask_{m}"].numpy()
            np.testing.assert_array_equal(mask, np.isfinite(raw))
            assert (batch[m].numpy()[~mask] == 0).all()
    assert (~batch["mask_landsat"]).any()  # NaNs were there and became 0
    # the stats file is the train one, untouched by opening a test split
    assert json.loads((store_path / gt.STATS_FILE).read_text())["split"] == "pa_train"


def test_missing_stats_are_computed_from_train(store_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    (copy / gt.STATS_FILE).unlink()
    ds = gt.SurveyDataset(copy, "pa_test", modalities=("env",))
    assert ds.stats is not None and ds.stats["split"] == "pa_train"
    assert json.loads((copy / gt.STATS_FILE).read_text())["split"] == "pa_train"


def test_invalid_items_become_zero_and_are_flagged(store_path: Path, tmp_path: Path,
                                                    stats: dict) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    zarr.open_group(copy / "cubes" / "pa_train.zarr", mode="r+")["valid_sentinel2"][3] = False
    ds = gt.SurveyDataset(copy, "pa_train", stats=stats, return_mask=True)
    batch = ds.get_batch([2, 3])
    assert batch["valid_sentinel2"].tolist() == [True, False]
    assert (batch["sentinel2"][1] == 0).all() and (batch["sentinel2"][0] != 0).any()


# --- samples and labels ----------------------------------------------------------------------


def test_labels_and_ids_match_records(store_path: Path, stats: dict,
                                      mem_ds: gt.SurveyDataset) -> None:
    store = open_store(store_path)
    ds = gt.SurveyDataset(store, "pa_train", modalities=("env",))
    records = store.records("pa_train", columns=["surveyId", "speciesId"])
    species = store.species["speciesId"].to_numpy()
    batch = ds.get_batch(np.arange(len(ds)))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape[1] == len(species)
    ids = batch["surveyId"].numpy()
    np.testing.assert_array_equal(ids, np.unique(records["surveyId"]))
    expected = np.zeros((len(ids), len(species)), np.float32)
    expected[np.searchsorted(ids, records["surveyId"]),
             np.searchsorted(species, records["speciesId"])] = 1
    np.testing.assert_array_equal(batch["labels"].numpy(), expected)
    labels = store.labels("pa_train")
    np.testing.assert_array_equal(expected, labels.matrix.toarray())
    # a single sample agrees with the batch
    sample = mem_ds[17]
    assert int(sample["surveyId"]) == ids[17]
    assert torch.equal(sample["labels"], batch["labels"][17])
    assert sample["sentinel2"].shape == (4, 128, 128) and sample["env"].ndim == 1


def test_disk_and_memory_modes_agree(store_path: Path, mem_ds: gt.SurveyDataset) -> None:
    mem = mem_ds
    disk = gt.SurveyDataset(store_path, "pa_train", in_memory=False, cache_mb=2)
    assert mem.block_size == 1 and disk.block_size == CHUNK_SURVEYS
    idx = [5, 900, 5, 0, 17, 949, -1]
    a, b = mem.get_batch(idx), disk.get_batch(idx)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert disk.cache_stats["bytes"] <= 2 * 2**20 + 1_100_000  # bounded (one chunk over max)
    raw = gt.SurveyDataset(store_path, "pa_train", normalize=False, in_memory=False)
    r = raw.get_batch(idx)
    assert r["sentinel2"].dtype == torch.uint8
    g = _cube(store_path, "pa_train")
    np.testing.assert_array_equal(r["sentinel2"].numpy(), g["sentinel2"][:][np.array(idx)])
    with pytest.raises(IndexError):
        mem.get_batch([950])


def test_subset_and_auto_memory(store_path: Path, mem_ds: gt.SurveyDataset,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    full = mem_ds
    pick = full.survey_ids[[3, 100, 101, 640]]
    sub = gt.SurveyDataset(store_path, "pa_train", survey_ids=pick[::-1])
    np.testing.assert_array_equal(sub.survey_ids, pick)
    a, b = sub.get_batch([0, 1, 2, 3]), full.get_batch([3, 100, 101, 640])
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(GeoplantError, match="not in split"):
        gt.SurveyDataset(store_path, "pa_train", survey_ids=[-5])
    # auto: what fits in a quarter of the available memory, smallest modalities first
    per_survey_s2 = 4 * 128 * 128
    monkeypatch.setattr(gt, "_available_memory", lambda: 4 * 950 * per_survey_s2 // 2)
    auto = gt.SurveyDataset(store_path, "pa_train")
    assert set(auto.in_memory_modalities) == {"landsat", "climate", "env"}
    assert auto.block_size == CHUNK_SURVEYS
    monkeypatch.setattr(gt, "_available_memory", lambda: 10**12)
    assert gt.SurveyDataset(store_path, "pa_train", modalities=("env", "landsat"),
                            ).in_memory_modalities == ("env", "landsat")
    with pytest.raises(GeoplantError, match="no modality"):
        gt.SurveyDataset(store_path, "pa_train", modalities=("sentinel2_tiff",))


# --- samplers --------------------------------------------------------------------------------


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


def test_block_sampler_follows_dataset_chunks(store_path: Path, stats: dict,
                                              mem_ds: gt.SurveyDataset) -> None:
    ds = gt.SurveyDataset(store_path, "pa_train", in_memory=False)
    sampler = ds.sampler(seed=1, buffer_blocks=2)
    order = np.fromiter(sampler, np.int64)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(ds)))
    _assert_buffered(order, ds.rows // CHUNK_SURVEYS, 2)
    with pytest.raises(AssertionError):  # a uniform permutation is not chunk-local
        _assert_buffered(np.random.default_rng(0).permutation(len(ds)),
                         ds.rows // CHUNK_SURVEYS, 2)
    assert mem_ds.sampler().block_size == 1


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


# --- DataLoader ------------------------------------------------------------------------------


def test_dataloader_batches_use_getitems(store_path: Path, stats: dict) -> None:
    calls: list[int] = []

    class Counting(gt.SurveyDataset):
        def __getitems__(self, indices):  # type: ignore[no-untyped-def]
            calls.append(len(indices))
            return super().__getitems__(indices)

    ds = Counting(store_path, "pa_train", in_memory=False)
    loader = DataLoader(ds, batch_size=64, sampler=ds.sampler(seed=0), collate_fn=gt.collate)
    batches = list(loader)
    assert calls[:-1] == [64] * (len(calls) - 1) and sum(calls) == len(ds)
    assert batches[0]["sentinel2"].shape == (64, 4, 128, 128)
    # the default collate gives the same batch (SurveyBatch is a sequence of samples)
    plain = DataLoader(ds, batch_size=64, sampler=ds.sampler(seed=0))
    first = next(iter(plain))
    for k, v in batches[0].items():
        assert torch.equal(first[k], v), k


def test_dataloader_two_persistent_workers(store_path: Path, mem_ds: gt.SurveyDataset) -> None:
    ds = gt.SurveyDataset(store_path, "pa_train", in_memory=False, cache_mb=32)
    loader = ds.loader(batch_size=50, num_workers=2, persistent_workers=True,
                       pin_memory=False, seed=5)
    expected = mem_ds
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        seen = []
        for batch in loader:
            seen.append(batch["surveyId"].numpy())
            if len(seen) == 1:  # the worker's reads equal the in-memory truth
                pos = np.searchsorted(expected.survey_ids, seen[0])
                ref = expected.get_batch(pos)
                for k in ref:
                    assert torch.equal(ref[k], batch[k]), k
        ids = np.concatenate(seen)
        assert len(ids) == len(ds) and np.array_equal(np.sort(ids), ds.survey_ids)


# --- augmentation and plotting ---------------------------------------------------------------


def test_flip_rotate_is_one_symmetry_for_all_channels() -> None:
    x = torch.arange(4 * 5 * 5, dtype=torch.float32).reshape(4, 5, 5)
    aug = gt.RandomFlipRotate(generator=torch.Generator().manual_seed(0))
    symmetries = [gt.RandomFlipRotate.apply(x, k, f) for k in range(4) for f in (False, True)]
    seen = set()
    for _ in range(64):
        out = aug({"sentinel2": x, "env": torch.ones(3)})
        match = [i for i, s in enumerate(symmetries) if torch.equal(out["sentinel2"], s)]
        assert len(match) == 1  # every channel moved the same way
        seen.add(match[0])
        assert torch.equal(out["env"], torch.ones(3))
    assert len(seen) == 8
    batch = torch.stack([x, x + 1000, x + 2000])
    out = aug({"sentinel2": batch})["sentinel2"]
    for i in range(3):
        assert any(torch.equal(out[i], gt.RandomFlipRotate.apply(batch[i], k, f))
                   for k in range(4) for f in (False, True))


def test_transforms_apply_per_sample(store_path: Path, mem_ds: gt.SurveyDataset) -> None:
    ds = gt.SurveyDataset(store_path, "pa_train", in_memory=False,
                          transforms=gt.RandomFlipRotate(flip=False, rotate=False))
    plain = mem_ds
    samples = ds.__getitems__([1, 2])
    assert isinstance(samples, list) and len(samples) == 2
    assert torch.equal(gt.collate(samples)["sentinel2"], plain.get_batch([1, 2])["sentinel2"])


def test_plot_writes_a_figure(mem_ds: gt.SurveyDataset, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    ds = mem_ds
    fig = ds.plot(3)
    assert len(fig.axes) == 5
    assert len(fig.axes[0].images) == 1 and len(fig.axes[3].lines) == 6
    assert len(fig.axes[4].lines) == 4
    assert str(ds.survey_ids[3]) in fig.get_suptitle()
    out = tmp_path / "sample.png"
    fig.savefig(out, dpi=60)
    assert out.stat().st_size > 10_000
    gt.plot(ds.get_batch([0, 1]))  # a batch plots its first survey
