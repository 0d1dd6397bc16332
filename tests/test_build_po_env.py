"""The PO env cube: sampled from the rasters when the release has no PO env tables (glc24),
read from the tables when it has them (geoplant), absent without either; resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_build import run_hooked, tree_digest

from geoplant.builder import build
from geoplant.errors import GeoplantError
from geoplant.points import point_features
from geoplant.raw import RawRelease
from geoplant.store import open_store


def _po_points(store: object) -> pd.DataFrame:
    """One row per PO survey (its first record's lon/lat), in surveyId order."""
    records = open_store(store).records("po_train", columns=["surveyId", "lon", "lat"])  # type: ignore[arg-type]
    return records.drop_duplicates("surveyId").sort_values("surveyId").reset_index(drop=True)


def test_glc24_po_env_is_the_rasters_at_the_po_surveys(raster_store: Path) -> None:
    store = open_store(raster_store)
    assert store.manifest["po_env_source"] == "rasters"
    assert store.manifest["po_env_columns_without_raster"] == []
    assert store.modalities("po_train") == ["env"]
    po, pa = store.cube("po_train"), store.cube("pa_train")
    columns = [str(c) for c in pa["env_variable"].values]
    assert [str(c) for c in po["env_variable"].values] == columns  # the PA column order
    points = _po_points(raster_store)
    np.testing.assert_array_equal(po["surveyId"].values, points["surveyId"])
    env = po["env"].values
    assert env.dtype == np.float32 and env.shape == (len(points), len(columns))
    want = point_features(store.rasters(), points["lon"], points["lat"], columns)
    np.testing.assert_array_equal(env, want.astype(np.float32))
    # the same through Store.extract, by raster name
    got = store.extract(points["lon"], points["lat"], ["bio1", "landcover", "soil_soc"])
    np.testing.assert_array_equal(env[:, columns.index("Bio1")], got["bio1"].values)
    np.testing.assert_array_equal(env[:, columns.index("LandCover")],
                                  got["landcover"].values[:, 0])
    np.testing.assert_array_equal(env[:, columns.index("Soilgrid-soc")], got["soil_soc"].values)
    on_land = got["valid_bio1"].values
    assert on_land.mean() > 0.95  # the synthetic PO records are drawn on land
    assert np.isfinite(env[on_land]).all()
    np.testing.assert_array_equal(po["valid_env"].values, np.isfinite(env).any(axis=1))
    assert store.cube_group("po_train")["env"].shape == env.shape


def test_po_env_is_absent_without_tables_or_rasters(loader_store: Path) -> None:
    store = open_store(loader_store)  # glc24 built with --no-rasters
    assert store.manifest["po_env_source"] is None
    assert "po_train" not in store.manifest["modalities"] and not store.has_cube("po_train")
    assert not (loader_store / "cubes" / "po_train.zarr").exists()
    with pytest.raises(GeoplantError, match="po_train"):
        store.cube("po_train")
    with pytest.raises(GeoplantError, match="po_train"):
        store.cube_group("po_train")


def test_geoplant_po_env_keeps_the_table_values(geoplant_tiny: Path, tmp_path: Path) -> None:
    # rasters too: the PO tables still win over them
    summary = build(geoplant_tiny, tmp_path / "store", splits=["po_train"], progress=False)
    assert summary.manifest["po_env_source"] == "tables"
    assert summary.phase_seconds["po_env"] < 1  # nothing sampled
    cube = open_store(tmp_path / "store").cube("po_train").load()
    raw = RawRelease(geoplant_tiny)
    for family in ("bioclimatic", "human_footprint", "landcover"):
        table = raw.read_env(family, "po_train").set_index("surveyId")
        table = table.reindex(cube["surveyId"].values)
        got = cube["env"].sel(env_variable=list(table.columns)).values
        np.testing.assert_array_equal(got, table.to_numpy(np.float32))
    assert cube["valid_env"].values.all()


def _damaged_copy(glc24_tiny: Path, root: Path) -> tuple[Path, list[int]]:
    """A copy of the release with two PO surveys moved off the grid and into the sea, and the
    soil organic carbon raster gone (the archive of all soil rasters); the moved surveys."""
    raw = root / "raw"
    shutil.copytree(glc24_tiny, raw)
    release = RawRelease(raw)
    (raw / release.location("raster.soil_soc").path).unlink()
    meta_path = raw / release.location("metadata.po", "po_train").path
    meta = pd.read_csv(meta_path)
    moved = [int(meta["surveyId"].iloc[0]), int(meta["surveyId"].iloc[-1])]
    meta.loc[meta["surveyId"] == moved[0], ["lon", "lat"]] = (100.0, 10.0)  # off the grid
    meta.loc[meta["surveyId"] == moved[1], ["lon", "lat"]] = (-9.95, 70.95)  # a sea cell
    meta.to_csv(meta_path, index=False)
    return raw, moved


def test_off_grid_surveys_and_a_missing_raster(glc24_tiny: Path, raster_store: Path,
                                               tmp_path: Path) -> None:
    raw, moved = _damaged_copy(glc24_tiny, tmp_path)
    summary = build(raw, tmp_path / "store", splits=["po_train"], progress=False)
    assert summary.manifest["po_env_source"] == "rasters"
    lost = [n for n in RawRelease(raw).raster_names() if n not in summary.manifest["rasters"]]
    assert "soil_soc" in lost and all(n.startswith("soil_") for n in lost)
    # the lost rasters are the skipped items; their columns are NaN, and listed
    assert {s["kind"] for s in summary.skipped} == {"raster"}
    unsampled = {f"Soilgrid-{n.removeprefix('soil_')}" for n in lost}
    assert set(summary.manifest["po_env_columns_without_raster"]) == unsampled
    cube = open_store(tmp_path / "store").cube("po_train").load()
    # the column order comes from the raw PA tables when pa_train is not built
    reference = open_store(raster_store).cube("pa_train")["env_variable"].values
    np.testing.assert_array_equal(cube["env_variable"].values, reference)
    env = cube["env"]
    assert np.isnan(env.sel(env_variable=sorted(unsampled)).values).all()
    off_grid, sea = moved
    assert np.isnan(env.sel(surveyId=off_grid).values).all()
    assert not bool(cube["valid_env"].sel(surveyId=off_grid))
    # at sea every raster has its nodata but the land cover (IGBP 17, water)
    at_sea = env.sel(surveyId=sea).to_series()
    assert at_sea.dropna().to_dict() == {"LandCover": 17.0}
    assert bool(cube["valid_env"].sel(surveyId=sea))
    others = cube["valid_env"].drop_sel(surveyId=moved).values
    assert others.mean() > 0.95
    # what the rasters give elsewhere is what the intact store has
    intact = open_store(raster_store).cube("po_train")["env"].drop_sel(surveyId=moved)
    np.testing.assert_array_equal(env.drop_sel(surveyId=moved, env_variable=sorted(unsampled)),
                                  intact.drop_sel(env_variable=sorted(unsampled)).values)


def test_po_env_phase_resumes_after_kills(glc24_tiny: Path, tmp_path: Path) -> None:
    # 32-survey blocks: PO tasks of 32 x 128 = 4096 surveys, a few on the tiny world
    options = {"splits": ["po_train"], "progress": False, "workers": 1, "block_surveys": 32}
    n_tasks = -(-len(RawRelease(glc24_tiny).survey_ids("po_train")) // 4096)
    assert n_tasks >= 3
    out = tmp_path / "store"
    kwargs = json.dumps({"raw_root": str(glc24_tiny), "out": str(out), **options})
    for where, nth, action in [("po_train.zarr/env/c/", 3, "kill-before"),  # inside a task
                               ("_build/po_train/block-", 2, "kill-after")]:  # 2 tasks done
        killed = run_hooked(where, nth, action, kwargs)
        assert killed.returncode == 137, (where, killed.stderr[-2000:])
        assert not (out / "manifest.json").exists()
    assert len(list((out / "_build" / "po_train").glob("block-*.json"))) == 2
    summary = build(glc24_tiny, out, **options)  # type: ignore[arg-type]
    assert (summary.blocks_done, summary.blocks_resumed) == (n_tasks - 2, 2)
    reference = build(glc24_tiny, tmp_path / "reference", **options)  # type: ignore[arg-type]
    assert reference.blocks_done == n_tasks
    assert tree_digest(out, ".") == tree_digest(tmp_path / "reference", ".")
