"""geoplant.torch.datasets: batched multimodal reads, train-only normalisation, DataLoader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

import geoplant.torch as gt
import geoplant.torch.datasets as gtd
from geoplant.builder import CHUNK_SURVEYS
from geoplant.errors import GeoplantError
from geoplant.store import open_store

MODS = ("sentinel2", "landsat", "climate", "env")


def _cube(store_path: Path, split: str) -> zarr.Group:
    return zarr.open_group(store_path / "cubes" / f"{split}.zarr", mode="r")


# --- the store's raw cube --------------------------------------------------------------------


def test_cube_group_opens_the_split_cube(loader_store: Path) -> None:
    store = open_store(loader_store)
    group = store.cube_group("pa_train")
    np.testing.assert_array_equal(group["surveyId"][:], _cube(loader_store, "pa_train")
                                  ["surveyId"][:])
    assert set(store.modalities("pa_train")) <= set(group.keys())
    for split in ("po_train", "nope"):
        with pytest.raises(GeoplantError, match="no cube for split"):
            store.cube_group(split)
    with pytest.raises(GeoplantError, match="no cube for split"):
        gt.SurveyDataset(store, "po_train")


# --- normalisation ---------------------------------------------------------------------------


def test_test_split_is_normalised_with_train_stats(loader_store: Path,
                                                   loader_stats: dict[str, Any]) -> None:
    store_path, stats = loader_store, loader_stats
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


def test_normalization_is_exposed_read_only(loader_store: Path, loader_stats: dict[str, Any],
                                            loader_mem_ds: gt.SurveyDataset) -> None:
    ds = loader_mem_ds
    norm = ds.normalization
    assert set(norm) == set(MODS)
    g = _cube(loader_store, "pa_train")
    raw = np.asarray(g["landsat"][:4])
    scale, offset = norm["landsat"]
    assert scale.dtype == offset.dtype == np.float32 and scale.shape == (1, 6, 1, 1)
    expected = np.nan_to_num(raw.astype(np.float32) * scale + offset, nan=0, posinf=0,
                             neginf=0)
    np.testing.assert_array_equal(ds.get_batch([0, 1, 2, 3])["landsat"].numpy(), expected)
    with pytest.raises(ValueError, match="read-only"):
        scale[...] = 0
    assert ds.normalization["landsat"][0].flags.writeable is False
    assert gt.SurveyDataset(loader_store, "pa_train", ("env",), normalize=False,
                            in_memory=False).normalization == {}


def test_modalities_one_name_many_or_none(loader_store: Path,
                                          loader_stats: dict[str, Any]) -> None:
    one = gt.SurveyDataset(loader_store, "pa_train", "env", stats=loader_stats, in_memory=False)
    assert one.modalities == ("env",)
    assert set(one.get_batch([0])) == {"env", "labels", "surveyId"}
    assert gt.SurveyDataset(loader_store, "pa_train", ["landsat", "env"], stats=loader_stats,
                            in_memory=False).modalities == ("landsat", "env")
    assert gt.SurveyDataset(loader_store, "pa_train", None, stats=loader_stats,
                            in_memory=False).modalities == tuple(MODS)
    for empty in ((), []):
        with pytest.raises(GeoplantError, match="no modality given"):
            gt.SurveyDataset(loader_store, "pa_train", empty)
    with pytest.raises(GeoplantError, match="no modality surveyId"):
        gt.SurveyDataset(loader_store, "pa_train", "surveyId")  # an array, not a modality


def test_missing_stats_are_computed_from_train(loader_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(loader_store, copy)
    (copy / gt.STATS_FILE).unlink()
    ds = gt.SurveyDataset(copy, "pa_test", modalities=("env",))
    assert ds.stats is not None and ds.stats["split"] == "pa_train"
    assert json.loads((copy / gt.STATS_FILE).read_text())["split"] == "pa_train"


def test_invalid_items_become_zero_and_are_flagged(loader_store: Path, tmp_path: Path,
                                                    loader_stats: dict[str, Any]) -> None:
    copy = tmp_path / "store"
    shutil.copytree(loader_store, copy)
    zarr.open_group(copy / "cubes" / "pa_train.zarr", mode="r+")["valid_sentinel2"][3] = False
    ds = gt.SurveyDataset(copy, "pa_train", stats=loader_stats, return_mask=True)
    batch = ds.get_batch([2, 3])
    assert batch["valid_sentinel2"].tolist() == [True, False]
    assert (batch["sentinel2"][1] == 0).all() and (batch["sentinel2"][0] != 0).any()


# --- samples and labels ----------------------------------------------------------------------


def test_labels_and_ids_match_records(loader_store: Path, loader_stats: dict[str, Any],
                                      loader_mem_ds: gt.SurveyDataset) -> None:
    store = open_store(loader_store)
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
    sample = loader_mem_ds[17]
    assert int(sample["surveyId"]) == ids[17]
    assert torch.equal(sample["labels"], batch["labels"][17])
    assert sample["sentinel2"].shape == (4, 128, 128) and sample["env"].ndim == 1


def test_disk_and_memory_modes_agree(loader_store: Path,
                                     loader_mem_ds: gt.SurveyDataset) -> None:
    mem = loader_mem_ds
    disk = gt.SurveyDataset(loader_store, "pa_train", in_memory=False, cache_mb=2)
    assert mem.block_size == 1 and disk.block_size == CHUNK_SURVEYS
    idx = [5, 900, 5, 0, 17, 949, -1]
    a, b = mem.get_batch(idx), disk.get_batch(idx)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert disk.cache_stats["bytes"] <= 2 * 2**20 + 1_100_000  # bounded (one chunk over max)
    raw = gt.SurveyDataset(loader_store, "pa_train", normalize=False, in_memory=False)
    r = raw.get_batch(idx)
    assert r["sentinel2"].dtype == torch.uint8
    g = _cube(loader_store, "pa_train")
    np.testing.assert_array_equal(r["sentinel2"].numpy(), g["sentinel2"][:][np.array(idx)])
    with pytest.raises(IndexError):
        mem.get_batch([950])


def test_subset_and_auto_memory(loader_store: Path, loader_mem_ds: gt.SurveyDataset,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    full = loader_mem_ds
    pick = full.survey_ids[[3, 100, 101, 640]]
    sub = gt.SurveyDataset(loader_store, "pa_train", survey_ids=pick[::-1])
    np.testing.assert_array_equal(sub.survey_ids, pick)
    a, b = sub.get_batch([0, 1, 2, 3]), full.get_batch([3, 100, 101, 640])
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(GeoplantError, match="not in split"):
        gt.SurveyDataset(loader_store, "pa_train", survey_ids=[-5])
    # auto: what fits in a quarter of the available memory, smallest modalities first
    per_survey_s2 = 4 * 128 * 128
    monkeypatch.setattr(gtd, "_available_memory", lambda: 4 * 950 * per_survey_s2 // 2)
    auto = gt.SurveyDataset(loader_store, "pa_train")
    assert set(auto.in_memory_modalities) == {"landsat", "climate", "env"}
    assert auto.block_size == CHUNK_SURVEYS
    monkeypatch.setattr(gtd, "_available_memory", lambda: 10**12)
    assert gt.SurveyDataset(loader_store, "pa_train", modalities=("env", "landsat"),
                            ).in_memory_modalities == ("env", "landsat")
    with pytest.raises(GeoplantError, match="no modality"):
        gt.SurveyDataset(loader_store, "pa_train", modalities=("sentinel2_tiff",))


# --- DataLoader ------------------------------------------------------------------------------


def test_dataloader_batches_use_getitems(loader_store: Path,
                                         loader_stats: dict[str, Any]) -> None:
    calls: list[int] = []

    class Counting(gt.SurveyDataset):
        def __getitems__(self, indices):  # type: ignore[no-untyped-def]
            calls.append(len(indices))
            return super().__getitems__(indices)

    ds = Counting(loader_store, "pa_train", in_memory=False)
    loader = DataLoader(ds, batch_size=64, sampler=ds.sampler(seed=0), collate_fn=gt.collate)
    batches = list(loader)
    assert calls[:-1] == [64] * (len(calls) - 1) and sum(calls) == len(ds)
    assert batches[0]["sentinel2"].shape == (64, 4, 128, 128)
    # the default collate gives the same batch (SurveyBatch is a sequence of samples)
    plain = DataLoader(ds, batch_size=64, sampler=ds.sampler(seed=0))
    first = next(iter(plain))
    for k, v in batches[0].items():
        assert torch.equal(first[k], v), k


def test_dataloader_two_persistent_workers(loader_store: Path,
                                           loader_mem_ds: gt.SurveyDataset) -> None:
    ds = gt.SurveyDataset(loader_store, "pa_train", in_memory=False, cache_mb=32)
    loader = ds.loader(batch_size=50, num_workers=2, persistent_workers=True,
                       pin_memory=False, seed=5)
    expected = loader_mem_ds
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


# --- stored dtypes, packed batches, explicit statistics -----------------------------------------


def test_stored_dtypes_carry_validity(loader_store: Path, loader_stats: dict[str, Any]) -> None:
    raw = gt.SurveyDataset(loader_store, "pa_train", normalize=False, in_memory=True)
    assert raw.stats is None and raw.normalization == {}
    batch = raw.get_batch([4, 1, 4])
    g = _cube(loader_store, "pa_train")
    for m in MODS:
        assert batch[m].numpy().dtype == g[m].dtype
        np.testing.assert_array_equal(batch[m].numpy(), g[m][:][[4, 1, 4]])
        assert batch[f"valid_{m}"].dtype == torch.bool and batch[f"valid_{m}"].all()
    assert "mask_landsat" not in batch
    # the statistics it would use: the store's, loaded on demand
    assert raw.normalization_stats()["modalities"] == loader_stats["modalities"]


def test_batch_tensors_share_one_reused_buffer(loader_mem_ds: gt.SurveyDataset) -> None:
    ds = loader_mem_ds
    batch = ds.get_batch([0, 1, 2])
    assert isinstance(batch, gt.PackedBatch) and isinstance(gt.collate(ds.__getitems__([0])),
                                                            gt.PackedBatch)
    base = batch.flat.untyped_storage().data_ptr()
    for key, value in batch.items():
        assert value.untyped_storage().data_ptr() == base, key
        assert value.data_ptr() % 64 == 0, key  # aligned views
    # a freed batch's buffer is reused; a kept one never is
    first = batch.flat.data_ptr()
    del batch, value
    again = ds.get_batch([3, 4, 5])
    assert again.flat.data_ptr() == first
    kept = [ds.get_batch([i]) for i in range(20)]  # more than the arena's 16 slots
    assert len({b.flat.data_ptr() for b in kept}) == 20
    for i, b in enumerate(kept):
        assert int(b["surveyId"][0]) == ds.survey_ids[i]
    # pickled (as sent by a worker) it comes back equal; .to() copies the whole buffer once
    import pickle

    back = pickle.loads(pickle.dumps(again))
    moved = again.to("cpu")
    for key in again:
        assert torch.equal(back[key], again[key]) and torch.equal(moved[key], again[key]), key


def test_workers_batches_stay_intact_when_all_are_kept(loader_store: Path,
                                                       loader_mem_ds: gt.SurveyDataset) -> None:
    # every batch of two epochs kept: worker slots are never reused under a live batch
    raw = gt.SurveyDataset(loader_store, "pa_train", ("sentinel2", "env"), normalize=False,
                           in_memory=True)
    loader = raw.loader(batch_size=40, num_workers=2, persistent_workers=True, seed=1)
    kept = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        kept += list(loader)
    g = _cube(loader_store, "pa_train")
    s2, env = g["sentinel2"][:], g["env"][:]
    for batch in kept:
        pos = np.searchsorted(raw.survey_ids, batch["surveyId"].numpy())
        np.testing.assert_array_equal(batch["sentinel2"].numpy(), s2[pos])
        np.testing.assert_array_equal(batch["env"].numpy(), env[pos])
    assert sum(len(b["surveyId"]) for b in kept) == 2 * len(raw)


def test_explicit_stats_of_a_training_subset(loader_store: Path,
                                             loader_stats: dict[str, Any]) -> None:
    ds = gt.SurveyDataset(loader_store, "pa_train", ("landsat",), in_memory=False,
                          stats=loader_stats)
    train_ids = ds.survey_ids[::3]
    before = (loader_store / gt.STATS_FILE).read_bytes()
    sub = gt.compute_normalization_stats(loader_store, survey_ids=train_ids)
    assert (loader_store / gt.STATS_FILE).read_bytes() == before  # a subset: not written
    assert sub["n_surveys"] == len(train_ids) and "survey_ids_sha256" in sub
    own = gt.SurveyDataset(loader_store, "pa_train", ("landsat",), in_memory=False, stats=sub)
    assert own.stats == sub
    raw = _cube(loader_store, "pa_train")["landsat"][:][:5].astype(np.float64)
    mean = np.asarray(sub["modalities"]["landsat"]["mean"]).reshape(1, -1, 1, 1)
    std = np.asarray(sub["modalities"]["landsat"]["std"]).reshape(1, -1, 1, 1)
    expected = np.nan_to_num((raw - mean) / std, nan=0.0)
    np.testing.assert_allclose(own.get_batch(range(5))["landsat"].numpy(), expected,
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(ds.get_batch(range(5))["landsat"].numpy(), expected, atol=1e-3)
    assert gt.DeviceNormalizer.from_dataset(own).landsat_scale.tolist() == pytest.approx(
        (1 / np.asarray(sub["modalities"]["landsat"]["std"])).tolist(), rel=1e-6)


def test_loader_pins_only_with_cuda(loader_mem_ds: gt.SurveyDataset) -> None:
    assert loader_mem_ds.loader(batch_size=8).pin_memory is torch.cuda.is_available()
    assert loader_mem_ds.loader(batch_size=8, pin_memory=False).pin_memory is False
