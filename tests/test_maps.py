"""geoplant map: persistence, grid, COGs, richness, resume, bbox, errors, truth agreement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoplant.cli import main
from geoplant.maps import make_maps, open_maps, raster_source
from geoplant.models.persist import load_model
from geoplant.store import open_store


@pytest.fixture(scope="module")
def maps_dir(env_model_dir: Path, raster_store: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Maps of the whole tiny grid, 2 species with COGs (128-cell blocks: 3 x 4 blocks)."""
    out = tmp_path_factory.mktemp("maps") / "maps"
    make_maps(env_model_dir, raster_store, out, top=2, block=128, progress=False)
    return out


def test_persist_round_trip(env_model_dir: Path, raster_store: Path) -> None:
    from geoplant.experiment import env_features

    saved = load_model(env_model_dir)
    store = open_store(raster_store)
    labels = store.labels("pa_train")
    X = env_features(store, "pa_train", labels.survey_ids[:50])
    assert saved.feature_names[:3] == ["lon", "lat", "Bio1"]
    assert np.array_equal(saved.species_ids, labels.species_ids)
    p = saved.model.predict_proba(X)
    assert p.shape == (50, len(labels.species_ids)) and np.isfinite(p).all()
    assert not any(f.suffix == ".pkl" for f in env_model_dir.iterdir())


def test_feature_to_raster_mapping() -> None:
    names = ["bio1", "bio12", "elevation", "landcover", "soil_phh2o", "hfp_Croplands1992",
             "hfp_Navwater2009"]
    assert raster_source("Bio12", names) == ("bio12", 0)
    assert raster_source("LandCover", names) == ("landcover", 0)
    assert raster_source("Soilgrid-phh2o", names) == ("soil_phh2o", 0)
    assert raster_source("HumanFootprint-croplands1992", names)[0] == "hfp_Croplands1992"
    assert raster_source("HumanFootprint-NavWater2009", names)[0] == "hfp_Navwater2009"


def test_cogs_have_grid_crs_and_bounds(maps_dir: Path, raster_store: Path) -> None:
    ref = next(iter(open_store(raster_store).rasters().values()))
    left, bottom, right, top = ref.rio.bounds()
    cogs = [maps_dir / "richness.tif", *sorted((maps_dir / "species").glob("*.tif"))]
    assert len(cogs) == 3
    for path in cogs:
        with rasterio.open(path) as src:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.crs.to_epsg() == 4326
            assert np.allclose(tuple(src.bounds), (left, bottom, right, top))
            assert src.shape == (ref.sizes["y"], ref.sizes["x"])
    assert (maps_dir / "png" / "richness.png").stat().st_size > 1000
    assert len(list((maps_dir / "png").glob("*.png"))) == 3


def test_richness_is_sum_and_topk_consistent(maps_dir: Path) -> None:
    ds = open_maps(maps_dir)
    assert ds.rio.crs.to_epsg() == 4326
    p = ds["probability"].values
    rich = ds["richness"].values
    land = np.isfinite(rich)
    assert 0.5 < land.mean() < 1.0  # the sea is nodata
    assert np.allclose(np.nansum(p, axis=0)[land], rich[land], atol=1e-4)
    assert np.isnan(p[:, ~land]).all()
    top1 = ds["topk_probability"].values[0]
    assert np.allclose(top1[land], p[:, land].max(axis=0))
    iy, ix = np.argwhere(land)[0]
    best = ds["species"].values[np.nanargmax(p[:, iy, ix])]
    assert p[list(ds["species"].values).index(int(ds["topk_species"].values[0, iy, ix])),
             iy, ix] == p[list(ds["species"].values).index(best), iy, ix]
    raw = open_maps(maps_dir, decode=False)["probability"]
    assert raw.dtype == np.uint8 and int(raw.values.max()) == 255


def test_rerun_recomputes_only_deleted_block(maps_dir: Path, env_model_dir: Path,
                                             raster_store: Path, tmp_path: Path) -> None:
    import zarr

    out = tmp_path / "maps"
    shutil.copytree(maps_dir, out)
    before = open_maps(out, decode=False)["probability"].values.copy()
    again = make_maps(env_model_dir, raster_store, out, top=2, block=128, progress=False)
    assert again.blocks_computed == 0 and again.blocks_total == 12
    (out / "_progress" / "blocks" / "1-2.done").unlink()
    zarr.open_array(out / "probability.zarr" / "probability", mode="r+")[:, 128:256,
                                                                          256:384] = 0
    again = make_maps(env_model_dir, raster_store, out, top=2, block=128, progress=False)
    assert again.blocks_computed == 1
    assert np.array_equal(open_maps(out, decode=False)["probability"].values, before)


def test_bbox_restricts_grid(env_model_dir: Path, raster_store: Path, maps_dir: Path,
                             tmp_path: Path) -> None:
    out = tmp_path / "bbox"
    sid = int(load_model(env_model_dir).species_ids[0])
    code = main(["map", str(env_model_dir), "--data", str(raster_store), "--out", str(out),
                 "--bbox", "0", "45", "10", "50", "--species", str(sid), "--quiet"])
    assert code == 0
    with rasterio.open(out / "species" / f"{sid}.tif") as src:
        assert np.allclose(tuple(src.bounds), (0.0, 45.0, 10.0, 50.0))
    part = open_maps(out)["probability"].sel(species=sid)
    whole = open_maps(maps_dir)["probability"]
    inside = (int(whole["y"].to_series().between(45, 50).sum()),
              int(whole["x"].to_series().between(0, 10).sum()))
    full = whole.sel(species=sid, x=part["x"], y=part["y"])
    assert part.shape == inside and min(inside) > 10
    assert np.array_equal(part.values, full.values, equal_nan=True)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], text: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and text in err and "Traceback" not in err


def test_bad_inputs(capsys: pytest.CaptureFixture[str], env_model_dir: Path,
                    raster_store: Path, loader_store: Path, tmp_path: Path) -> None:
    _one_line_error(capsys, ["map", str(tmp_path / "nope"), "--data", str(raster_store),
                             "--out", str(tmp_path / "a")], "no such model folder")
    _one_line_error(capsys, ["map", str(env_model_dir), "--data", str(loader_store),
                             "--out", str(tmp_path / "b")], "no environmental rasters")
    _one_line_error(capsys, ["map", str(env_model_dir), "--data", str(raster_store),
                             "--out", str(tmp_path / "c"), "--species", "999999"],
                    "unknown species id")
    _one_line_error(capsys, ["map", str(env_model_dir), "--data", str(raster_store),
                             "--out", str(tmp_path / "d"), "--bbox", "100", "0", "101", "1"],
                    "holds no cell")


def test_truth_agreement(maps_dir: Path, glc24_tiny: Path, tmp_path: Path) -> None:
    """The env-logistic map ranks cells like the true map (here 20 species, 8 draws;
    measured: mean Spearman 0.48, AUC 0.62, richness r 0.34). The richness bar is low on
    purpose: PA surveys never reach the archive gaps (30% of the land), where the gap
    species live, so a PA-trained map cannot know them there."""
    from geoplant.map_eval import score_maps
    from geoplant.synthetic.maps import write_truth_maps

    species = [int(s) for s in open_maps(maps_dir)["species"].values[:20]]
    truth = write_truth_maps(glc24_tiny, species, out=tmp_path / "truth", draws=8)
    scores = score_maps(maps_dir, truth, max_cells=20_000)
    assert scores["n_species"] == 20 and 0 < scores["n_species_ranked"] <= 20
    assert scores["spearman_mean"] > 0.35
    assert scores["auc_mean"] > 0.58
    assert scores["richness_pearson"] > 0.25


def test_evaluate_scores_a_maps_folder(maps_dir: Path, glc24_tiny: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`geoplant evaluate MAPS --truth RELEASE` writes the missing true maps, then scores."""
    truth = tmp_path / "release" / "truth"
    shutil.copytree(glc24_tiny / "truth", truth)  # the session release stays untouched
    assert main(["evaluate", str(maps_dir), "--truth", str(truth.parent), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_species"] == open_maps(maps_dir).sizes["species"]
    assert result["spearman_mean"] > 0.35 and result["richness_pearson"] > 0.4
    lo, hi = result["spearman_mean_ci"]
    assert lo < result["spearman_mean"] < hi and hi - lo < 0.2
    assert (truth / "maps" / "probability.zarr").is_dir()
