"""Saved models of every kind: round trips, maps of torch and MaxEnt models, indicators."""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from geoplant.cli import main
from geoplant.errors import GeoplantError
from geoplant.maps import make_maps, open_maps
from geoplant.models.persist import load_model, save_trained
from geoplant.store import open_store


@pytest.fixture(scope="module")
def bbox(raster_store: Path) -> tuple[float, float, float, float]:
    """A 10 x 5 degree lon/lat box around the median PA survey (quick maps holding surveys)."""
    rec = open_store(raster_store).records("pa_train", columns=["lon", "lat"])
    lon, lat = float(rec["lon"].median()), float(rec["lat"].median())
    return lon - 5.0, lat - 2.5, lon + 5.0, lat + 2.5


@pytest.fixture(scope="module")
def env_nn(raster_store: Path) -> Iterator[tuple[Any, Any, Any]]:
    """An env MultimodalSDM trained one epoch: (plan, validation predictions, TrainResult)."""
    import torch

    from geoplant import experiment as ex

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    store = open_store(raster_store)
    plan = ex.make_plan(store)
    val, _, result = ex.fit_torch(store, plan, ["env"], epochs=1, progress=False)
    yield plan, val, result
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def env_nn_dir(env_nn: tuple[Any, Any, Any], raster_store: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, val, result = env_nn
    return save_trained(result, tmp_path_factory.mktemp("envnn") / "model",
                        store=open_store(raster_store), val=val, meta={"method": "nn"})


def _env_cube(store: Any, survey_ids: np.ndarray) -> np.ndarray:
    return store.cube("pa_train")["env"].sel(surveyId=survey_ids).values


def test_env_nn_round_trip_gives_identical_probabilities(env_nn: tuple[Any, Any, Any],
                                                         env_nn_dir: Path,
                                                         raster_store: Path) -> None:
    import torch

    from geoplant.indicators import max_tss_thresholds

    _, val, result = env_nn
    store = open_store(raster_store)
    saved = load_model(env_nn_dir)
    assert saved.kind == "MultimodalSDM" and saved.model.modalities == ("env",)
    assert saved.feature_names == [str(v) for v in store.cube("pa_train")["env_variable"].values]
    assert np.array_equal(saved.species_ids, store.species["speciesId"].to_numpy())
    X = _env_cube(store, val.survey_ids)
    p = saved.model.predict_proba(X)
    # the loaded model on the env columns = the trained model through the training loader
    assert p.dtype == np.float32 and np.array_equal(p, val.probs)
    with torch.no_grad():
        direct = torch.sigmoid(result.model.cpu().eval()({"env": torch.from_numpy(X)}))
    assert np.array_equal(p, direct.numpy())
    # the normaliser's statistics came back with the weights
    norm = saved.model.network.normalizer
    assert torch.equal(norm.env_scale, result.model.normalizer.env_scale)
    # plain arrays (no pickle), validation max-TSS thresholds in the meta
    with np.load(env_nn_dir / "weights.npz", allow_pickle=False) as npz:
        assert "state.normalizer.env_offset" in npz.files
    with zipfile.ZipFile(env_nn_dir / "weights.npz") as z:
        assert all(n.endswith(".npy") for n in z.namelist())
    expected = max_tss_thresholds(val.labels, val.probs)
    got = np.array([np.nan if v is None else v for v in saved.meta["max_tss_thresholds"]])
    assert np.array_equal(got, expected, equal_nan=True)
    assert saved.meta["method"] == "nn" and saved.meta["store"] == str(raster_store)


def test_env_nn_map_matches_predictions_at_survey_cells(env_nn_dir: Path, raster_store: Path,
                                                        bbox: tuple[float, ...],
                                                        tmp_path: Path) -> None:
    from geoplant.points import point_features

    out = tmp_path / "maps"
    result = make_maps(env_nn_dir, raster_store, out, top=1, block=64, bbox=bbox,
                       progress=False, quicklooks=False)
    assert result.blocks_computed == result.blocks_total and result.indicators is None
    ds = open_maps(out)
    store = open_store(raster_store)
    rec = store.records("pa_train", columns=["lon", "lat"]).drop_duplicates()
    x, y = ds["x"].values, ds["y"].values
    ix = np.abs(x[None, :] - rec["lon"].to_numpy()[:, None]).argmin(axis=1)
    iy = np.abs(y[None, :] - rec["lat"].to_numpy()[:, None]).argmin(axis=1)
    inside = (rec["lon"].between(bbox[0], bbox[2]) & rec["lat"].between(bbox[1], bbox[3]))
    ix, iy = ix[inside.to_numpy()], iy[inside.to_numpy()]
    saved = load_model(env_nn_dir)
    expected = saved.model.predict_proba(
        point_features(store.rasters(), x[ix], y[iy], saved.feature_names))
    mapped = ds["probability"].values[:, iy, ix].T
    land = np.isfinite(mapped).all(axis=1)
    assert land.sum() > 20
    # stored as round(p * 250): at most half a step away
    assert np.abs(mapped[land] - expected[land]).max() <= 0.5 / 250 + 1e-6
    assert expected[land].std(axis=0).max() > 0.01  # the model varies over space


def test_sentinel2_model_saves_but_is_not_mapped(raster_store: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from geoplant.models import MultimodalSDM

    store = open_store(raster_store)
    kwargs = {"sentinel2": {"weights": None, "arch": "resnet18"}}
    model = MultimodalSDM(["sentinel2"], len(store.species), encoder_kwargs=kwargs)
    folder = save_trained(model, tmp_path / "s2", store=store, encoder_kwargs=kwargs)
    saved = load_model(folder)
    assert saved.kind == "MultimodalSDM" and saved.feature_names == []
    with pytest.raises(GeoplantError, match="'sentinel2' modality"):
        make_maps(folder, raster_store, tmp_path / "maps", progress=False)
    assert not (tmp_path / "maps").exists()  # refused before anything was written
    assert main(["map", str(folder), "--data", str(raster_store), "--out",
                 str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'sentinel2' modality" in err and "env" in err


def test_torch_settings_must_rebuild_the_model(raster_store: Path, tmp_path: Path) -> None:
    from geoplant.models import MultimodalSDM

    store = open_store(raster_store)
    model = MultimodalSDM(["env"], len(store.species),
                          encoder_kwargs={"env": {"hidden": [32]}}, head_hidden=16)
    with pytest.raises(GeoplantError, match="do not rebuild"):
        save_trained(model, tmp_path / "a", store=store)
    folder = save_trained(model, tmp_path / "b", store=store,
                          encoder_kwargs={"env": {"hidden": [32]}})
    X = _env_cube(store, store.labels("pa_train").survey_ids[:40])
    import torch

    with torch.no_grad():
        direct = torch.sigmoid(model.eval()({"env": torch.from_numpy(X)})).numpy()
    assert np.array_equal(load_model(folder).model.predict_proba(X), direct)
    with pytest.raises(GeoplantError, match="cannot save a dict"):
        save_trained({}, tmp_path / "c", store=store)


@pytest.fixture(scope="module")
def maxent_dir(raster_store: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Any, Path]:
    """A MaxentPO (every elapid feature class, LandCover categorical) and its saved folder."""
    from geoplant.models.maxent import MaxentPO

    store = open_store(raster_store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MaxentPO(n_background=1500, max_species=3, min_records=20,
                         feature_types=("linear", "quadratic", "product", "threshold",
                                        "hinge")).fit_store(
            store, ["Bio1", "Bio12", "Elevation", "LandCover"])
    return model, save_trained(model, tmp_path_factory.mktemp("maxent") / "model",
                               store=store)


def test_maxent_round_trip_predicts_exactly(maxent_dir: tuple[Any, Path],
                                            raster_store: Path) -> None:
    model, folder = maxent_dir
    saved = load_model(folder)
    assert saved.kind == "MaxentPO" and saved.feature_names == model.feature_names_
    assert len(saved.model.models_) == 3
    store = open_store(raster_store)
    names = [str(v) for v in store.cube("pa_test")["env_variable"].values]
    X = store.cube("pa_test")["env"].values[:, [names.index(f) for f in model.feature_names_]]
    X = np.vstack([X, X[:5] + 0.5])  # and values between the fitted ones
    X[-1, 3] = 999  # a land-cover class never seen: zeros, not an error
    assert np.array_equal(saved.model.predict_proba(X), model.predict_proba(X))
    assert np.array_equal(saved.model.predict_proba(X, columns=slice(2, 9)),
                          model.predict_proba(X)[:, 2:9])


def test_maxent_model_is_mappable(maxent_dir: tuple[Any, Path], raster_store: Path,
                                  bbox: tuple[float, ...], tmp_path: Path) -> None:
    model, folder = maxent_dir
    sid = int(open_store(raster_store).species["speciesId"].to_numpy()[model.fitted_species_[0]])
    result = make_maps(folder, raster_store, tmp_path / "maps", species=[sid], block=64,
                       bbox=bbox, progress=False, quicklooks=False)
    prob = open_maps(result.out)["probability"].sel(species=sid).values
    land = np.isfinite(prob)
    assert land.mean() > 0.5 and np.nanstd(prob) > 0.01


def _thresholds_of(folder: Path) -> dict[int, float]:
    saved = load_model(folder)
    thr = saved.thresholds()
    assert thr is not None
    return thr


def test_status_writes_indicators_at_saved_thresholds(env_nn_dir: Path, raster_store: Path,
                                                      bbox: tuple[float, ...], glc24_tiny: Path,
                                                      tmp_path: Path) -> None:
    status = tmp_path / "status.csv"
    table = pd.read_csv(glc24_tiny / "truth" / "status.csv")
    table.to_csv(status, index=False)
    out = tmp_path / "maps"
    assert main(["map", str(env_nn_dir), "--data", str(raster_store), "--out", str(out),
                 "--bbox", *map(str, bbox), "--top", "1", "--status", str(status),
                 "--quiet"]) == 0
    folder = out / "indicators"
    for name in ("species_indicators.csv", "indicators.zarr", "proportion_threatened.png",
                 "worst_status.png"):
        assert (folder / name).exists(), name
    rows = pd.read_csv(folder / "species_indicators.csv").set_index("speciesId")
    saved = _thresholds_of(env_nn_dir)
    assert np.allclose(rows["threshold"].to_numpy(),
                       [saved[int(s)] for s in rows.index], equal_nan=True)
    assert set(rows["map_category"]) <= {"DD", "LC", "NT", "VU", "EN", "CR"}
    summary = json.loads((out / "map.json").read_text())
    assert summary["thresholds"].startswith("max-tss")
    # a thresholds CSV overrides them (a rerun: blocks reused, indicators rewritten)
    sid = int(rows.index[0])
    (tmp_path / "thr.csv").write_text(f"speciesId,threshold\n{sid},0.25\n")
    assert main(["map", str(env_nn_dir), "--data", str(raster_store), "--out", str(out),
                 "--bbox", *map(str, bbox), "--top", "1", "--thresholds",
                 str(tmp_path / "thr.csv"), "--quiet"]) == 0
    again = pd.read_csv(folder / "species_indicators.csv").set_index("speciesId")
    assert again.loc[sid, "threshold"] == 0.25
    assert again["threshold"].drop(sid).isna().all()  # not listed: no threshold -> DD
    assert (again["map_category"].drop(sid) == "DD").all()


@pytest.mark.parametrize("content, option, message", [
    ("speciesId,iucn\n1,LC\n", "--status", "lacks the column(s) status"),
    ("speciesId,status\n123456789,LC\n123456790,VU\n", "--status", "unknown species id"),
    ("speciesId,status\n{sid},XX\n", "--status", "unknown status"),
    ("speciesId,threshold\n123456789,0.5\n", "--thresholds", "unknown species id"),
    ("speciesId,threshold\n{sid},1.5\n", "--thresholds", "not a probability"),
    ("species,threshold\n{sid},0.5\n", "--thresholds", "lacks the column(s) speciesId"),
])
def test_bad_status_or_threshold_csv_is_one_line(content: str, option: str, message: str,
                                                 env_nn_dir: Path, raster_store: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sid = int(load_model(env_nn_dir).species_ids[0])
    bad = tmp_path / "bad.csv"
    bad.write_text(content.format(sid=sid))
    out = tmp_path / "maps"
    assert main(["map", str(env_nn_dir), "--data", str(raster_store), "--out", str(out),
                 option, str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and str(bad) in err and "Traceback" not in err
    assert not out.exists()  # refused before mapping


def test_max_tss_needs_saved_thresholds(env_model_dir: Path, raster_store: Path,
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The session's env-logistic folder was saved without validation thresholds."""
    assert load_model(env_model_dir).thresholds() is None
    assert main(["map", str(env_model_dir), "--data", str(raster_store), "--out",
                 str(tmp_path / "m"), "--thresholds", "max-tss", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no validation max-TSS thresholds" in err


@pytest.mark.parametrize("method", ["logistic", "frequency"])
def test_classic_save_trained_keeps_thresholds(method: str, raster_store: Path,
                                               tmp_path: Path) -> None:
    from geoplant import experiment as ex

    store = open_store(raster_store)
    plan = ex.make_plan(store)
    kwargs = {"max_iter": 50} if method == "logistic" else {}
    val, _, model = ex.fit_classic(store, plan, method, **kwargs)
    folder = save_trained(model, tmp_path / "model", store=store, val=val)
    saved = load_model(folder)
    X = ex.env_features(store, "pa_train", plan.val_ids)
    assert np.array_equal(saved.model.predict_proba(X), val.probs)
    assert len(_thresholds_of(folder)) == len(store.species)


def test_loading_and_mapping_modules_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, geoplant.models, geoplant.models.persist, geoplant.maps; "
            "from geoplant.models import EnvLogisticBaseline; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "geoplant.models.MultimodalSDM; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
