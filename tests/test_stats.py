"""geoplant.stats: train-only normalisation statistics, streamed, torch-free."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from geoplant import stats as gs
from geoplant.errors import GeoplantError

MODS = ("sentinel2", "landsat", "climate", "env")


def _cube(store_path: Path, split: str) -> zarr.Group:
    return zarr.open_group(store_path / "cubes" / f"{split}.zarr", mode="r")


def test_stats_import_without_torch() -> None:
    # the build computes the statistics: it must not pay for (or need) PyTorch
    code = ("import sys, geoplant.stats; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_stats_are_train_moments_and_written_atomically(loader_store: Path,
                                                        loader_stats: dict[str, Any]) -> None:
    store_path, stats = loader_store, loader_stats
    on_disk = json.loads((store_path / gs.STATS_FILE).read_text())
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
    small = gs.compute_normalization_stats(store_path, modalities=("landsat", "env"),
                                           block_surveys=100, write=False)
    for m in ("landsat", "env"):
        np.testing.assert_allclose(small["modalities"][m]["mean"],
                                   stats["modalities"][m]["mean"], rtol=1e-9)
        np.testing.assert_allclose(small["modalities"][m]["std"],
                                   stats["modalities"][m]["std"], rtol=1e-9)
    # the tiny world does have NaN (Landsat) and inf (env) to ignore
    assert np.isnan(g["landsat"][:]).any() and np.isinf(g["env"][:]).any()
    assert stats["modalities"]["landsat"]["channels"][0] == "red"


def test_stats_refuse_test_split(loader_store: Path) -> None:
    with pytest.raises(GeoplantError, match="refusing"):
        gs.compute_normalization_stats(loader_store, "pa_test", write=False)


def test_load_reads_the_file_or_refuses_to_compute(loader_store: Path,
                                                   loader_stats: dict[str, Any],
                                                   tmp_path: Path) -> None:
    assert gs.load_normalization_stats(loader_store, MODS, compute=False) == loader_stats
    copy = tmp_path / "store"
    shutil.copytree(loader_store, copy)
    (copy / gs.STATS_FILE).unlink()
    with pytest.raises(GeoplantError, match="no normalisation statistics"):
        gs.load_normalization_stats(copy, ("env",), compute=False)
    assert not (copy / gs.STATS_FILE).exists()


def test_stats_of_a_training_subset(loader_store: Path, loader_stats: dict[str, Any],
                                    tmp_path: Path) -> None:
    g = _cube(loader_store, "pa_train")
    ids = g["surveyId"][:]
    pick = ids[(np.arange(len(ids)) % 5) != 0]  # e.g. the training part of a plan
    before = (loader_store / gs.STATS_FILE).read_bytes()
    sub = gs.compute_normalization_stats(loader_store, modalities=("sentinel2", "env"),
                                         survey_ids=pick[::-1])
    assert (loader_store / gs.STATS_FILE).read_bytes() == before  # not written by default
    assert sub["n_surveys"] == len(pick)
    keep = np.isin(ids, pick)
    s2 = g["sentinel2"][:][keep]
    for c in range(4):
        assert sub["modalities"]["sentinel2"]["mean"][c] == pytest.approx(
            s2[:, c].mean(dtype=np.float64), rel=1e-9)
    env = np.asarray(g["env"][:], np.float64)[keep]
    env = np.where(np.isfinite(env), env, np.nan)
    np.testing.assert_allclose(sub["modalities"]["env"]["std"], np.nanstd(env, axis=0),
                               rtol=1e-6)
    assert sub["modalities"]["env"]["mean"] != loader_stats["modalities"]["env"]["mean"]
    # which subset, compactly: the same ids in any order give the same digest
    again = gs.compute_normalization_stats(loader_store, modalities=("env",), survey_ids=pick)
    assert again["survey_ids_sha256"] == sub["survey_ids_sha256"]
    assert "survey_ids_sha256" not in loader_stats
    # written only when asked
    copy = tmp_path / "store"
    shutil.copytree(loader_store, copy)
    gs.compute_normalization_stats(copy, modalities=("env",), survey_ids=pick, write=True)
    assert json.loads((copy / gs.STATS_FILE).read_text())["n_surveys"] == len(pick)
    with pytest.raises(GeoplantError, match="not in split"):
        gs.compute_normalization_stats(loader_store, survey_ids=[-1], write=False)


def test_scale_offset_is_the_shared_definition(loader_stats: dict[str, Any]) -> None:
    scale, offset = gs.scale_offset(loader_stats, "landsat")
    mean = np.asarray(loader_stats["modalities"]["landsat"]["mean"])
    std = np.asarray(loader_stats["modalities"]["landsat"]["std"])
    assert scale.dtype == offset.dtype == np.float32 and scale.shape == (6,)
    np.testing.assert_array_equal(scale, (1 / std).astype(np.float32))
    np.testing.assert_array_equal(offset, (-mean / std).astype(np.float32))
    constant = {"modalities": {"x": {"mean": [3.0], "std": [0.0]}}}
    assert gs.scale_offset(constant, "x")[0].tolist() == [1.0]  # a constant channel
    with pytest.raises(GeoplantError, match="no normalisation statistics"):
        gs.scale_offset(loader_stats, "radar")
