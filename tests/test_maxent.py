"""``MaxentPO``: background draws, elapid fits on PO records, predictions on env columns."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from geoplant.errors import GeoplantError
from geoplant.models.maxent import MaxentPO, background_points
from geoplant.store import open_store

FEATURES = ["Bio1", "Bio12", "Elevation"]


def test_target_group_background_is_po_locations(raster_store: Path) -> None:
    store = open_store(raster_store)
    po = store.records("po_train", columns=["lon", "lat"])
    lon, lat = background_points(store, "target-group", 300, seed=1)
    known = set(zip(po["lon"].round(6), po["lat"].round(6), strict=True))
    assert all(p in known for p in zip(lon.round(6), lat.round(6), strict=True))
    again = background_points(store, "target-group", 300, seed=1)
    np.testing.assert_array_equal(lon, again[0])  # deterministic per seed


def test_uniform_background_is_on_land_cells(raster_store: Path) -> None:
    store = open_store(raster_store)
    lon, lat = background_points(store, "uniform", 300, seed=0)
    bio1 = store.rasters()["bio1"].isel(band=0)
    assert np.isin(lon, bio1["x"].values).all() and np.isin(lat, bio1["y"].values).all()
    assert np.isfinite(store.extract(lon, lat, ["bio1"])["bio1"].values).all()
    with pytest.raises(GeoplantError, match="unknown background"):
        background_points(store, "everywhere", 3)  # type: ignore[arg-type]


def test_maxent_fit_store_and_predict(raster_store: Path) -> None:
    store = open_store(raster_store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MaxentPO(background="target-group", n_background=2000, max_species=3,
                         min_records=20).fit_store(store, FEATURES)
    n_species = len(store.species)
    assert len(model.fitted_species_) == 3 and model.feature_names_ == FEATURES
    counts = np.asarray(store.labels("po_train").matrix.sum(axis=0)).ravel()
    assert counts[model.fitted_species_].min() >= np.sort(counts)[-3]  # the most recorded
    # predict on the env cube's columns
    cube = store.cube("pa_test")
    names = [str(v) for v in cube["env_variable"].values]
    X = cube["env"].values[:, [names.index(f) for f in FEATURES]]
    p = model.predict_proba(X)
    assert p.shape == (len(X), n_species) and p.dtype == np.float32
    fitted = p[:, model.fitted_species_]
    assert ((fitted >= 0) & (fitted <= 1)).all() and fitted.std(axis=0).min() > 0
    others = np.setdiff1d(np.arange(n_species), model.fitted_species_)
    np.testing.assert_allclose(p[:, others], np.tile(model.prior_[others], (len(X), 1)),
                               rtol=1e-6)
    with pytest.raises(GeoplantError, match="features"):
        model.predict_proba(X[:, :2])


def test_maxent_fit_arrays_learns_a_niche() -> None:
    rng = np.random.default_rng(0)
    sites = rng.uniform(-1, 1, (600, 2))
    Y = np.zeros((600, 2), dtype=bool)
    Y[:, 0] = sites[:, 0] > 0.3  # species 0 lives where x0 is high
    Y[:5, 1] = True  # species 1: too rare, frequency fallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MaxentPO(n_background=400, min_records=10).fit(sites, Y)
    assert model.fitted_species_.tolist() == [0]
    p = model.predict_proba(np.array([[0.9, 0.0], [-0.9, 0.0]]))
    assert p[0, 0] > p[1, 0]
    assert p[0, 1] == pytest.approx(5 / 600)
    with pytest.raises(GeoplantError, match="uniform background needs"):
        MaxentPO(background="uniform").fit(sites, Y)
