"""geoplant.presence_only: PO sites, cell pooling, weights, calibration, PO training and the
PO -> PA weight transfer (``fit_torch(init_from=...)``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from geoplant import experiment as ex
from geoplant import presence_only as po
from geoplant.errors import GeoplantError
from geoplant.store import open_store

#: km of ground per degree of latitude (the grid's Earth radius).
KM_PER_DEG = np.radians(1) * po.EARTH_RADIUS_KM


def _sites(lon: list[float], lat: list[float], rows: list[list[int]]) -> po.POSites:
    n = len(lon)
    return po.POSites(np.arange(10, 10 + n, dtype=np.int64), np.array(lon), np.array(lat),
                      sp.csr_matrix(np.array(rows, np.uint8)), np.array([1, 2, 3], np.int32),
                      np.ones(n, np.int64))


def test_cells_are_about_cell_km_on_the_ground_at_any_latitude() -> None:
    for lat in (0.0, 45.0, 65.0):
        lat = (np.floor(lat * KM_PER_DEG) + 0.5) / KM_PER_DEG  # a row's central latitude
        ew = 1 / (KM_PER_DEG * np.cos(np.radians(lat)))  # degrees of longitude per km
        base = 100.05 * ew  # just past a column edge
        cells = po.cell_index([base, base + 0.8 * ew, base + 2.2 * ew], [lat] * 3, 1.0)
        assert (cells[0] == cells[1]).all() and cells[2, 1] - cells[0, 1] == 2, lat
    # rows: 1 km of latitude
    edge = np.floor(45 * KM_PER_DEG)  # km from the equator of a row edge
    ns = po.cell_index([5.0, 5.0], [(edge + 0.1) / KM_PER_DEG, (edge + 1.3) / KM_PER_DEG], 1.0)
    assert ns[1, 0] - ns[0, 0] == 1
    with pytest.raises(GeoplantError, match="cell_km"):
        po.cell_index([0.0], [0.0], 0.0)
    with pytest.raises(GeoplantError, match="finite"):
        po.cell_index([np.nan], [0.0], 1.0)


def test_pool_cells_unions_species_per_cell() -> None:
    lat0 = (np.floor(45 * KM_PER_DEG) + 0.5) / KM_PER_DEG  # a cell's centre
    ew = 1 / (KM_PER_DEG * np.cos(np.radians(lat0)))
    lon0 = 250.5 * ew
    d = 0.2 / KM_PER_DEG  # 200 m north-south
    sites = _sites([lon0 - 0.3 * ew, lon0, 8.0, lon0 + 0.3 * ew],
                   [lat0, lat0 + d, 50.0, lat0 - d],
                   [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]])
    cells = po.pool_cells(sites, 1.0)
    assert len(cells) == 2 and cells.cell_km == 1.0
    np.testing.assert_array_equal(cells.survey_ids, [10, 12])  # ordered by first survey
    np.testing.assert_array_equal(cells.labels.toarray(), [[1, 1, 1], [0, 0, 1]])
    assert cells.labels.dtype == np.uint8  # a union: 0/1, not counts
    np.testing.assert_array_equal(cells.n_surveys, [3, 1])
    assert cells.lon[0] == pytest.approx(np.mean(sites.lon[[0, 1, 3]]))
    assert cells.lat[1] == 50.0
    first = po.pool_cells(sites, 1.0, location="first")
    assert first.lon[0] == sites.lon[0] and first.lat[0] == sites.lat[0]
    # a bigger cell pools everything nearby; a tiny one keeps every site
    assert len(po.pool_cells(sites, 0.05)) == 4
    assert cells.info["species_per_cell_mean"] == 2.0
    with pytest.raises(GeoplantError, match="location"):
        po.pool_cells(sites, location="centre")


def test_species_counts_and_weights() -> None:
    labels = sp.csr_matrix(np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]))
    counts = po.species_counts(labels)
    np.testing.assert_array_equal(counts, [3, 1, 1, 0])
    np.testing.assert_array_equal(po.species_counts(labels.toarray()), counts)
    w = po.species_weights(counts, "inverse")
    np.testing.assert_allclose(w, np.array([1 / 3, 1, 1, 0]) / (7 / 9))
    np.testing.assert_allclose(po.species_weights(counts, "uniform"), [1, 1, 1, 0])
    assert po.species_weights(counts, "inverse_sqrt")[0] < 1 < po.species_weights(
        counts, "inverse_sqrt")[1]
    with pytest.raises(GeoplantError, match="weighting"):
        po.species_weights(counts, "log")


def test_match_prevalence_sets_each_species_mean_probability() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)) * [1, 3, 0.5, 2] + [10, -5, 0, 40]
    target = np.array([0.3, 0.01, 0.5, 0.9])
    c = po.match_prevalence(logits, target)
    mean = (1 / (1 + np.exp(-(logits + c)))).mean(axis=0)
    np.testing.assert_allclose(mean, target, atol=1e-6)
    with pytest.raises(GeoplantError, match="do not match"):
        po.match_prevalence(logits, target[:3])


def test_array_dataset_batches_match_survey_dataset_keys(loader_store: Path) -> None:
    from geoplant.torch import SurveyDataset
    from geoplant.torch.arrays import ArrayDataset

    store = open_store(loader_store)
    pa = SurveyDataset(store, "pa_train", ["env"], normalize=False)
    env = np.arange(12, dtype=np.float32).reshape(3, 4)
    env[1] = np.nan
    ds = ArrayDataset({"env": env}, sp.csr_matrix(np.eye(3, 5)), [7, 8, 9])
    batch = next(iter(ds.loader(2, shuffle=False)))
    assert set(batch) == set(next(iter(pa.loader(2, shuffle=False))))
    assert batch["labels"].dtype.is_floating_point and batch["labels"].shape == (2, 5)
    assert batch["valid_env"].tolist() == [True, False] and batch["surveyId"].tolist() == [7, 8]
    # the shuffle is a function of seed and epoch
    loader = ds.loader(3, seed=1)
    first = next(iter(loader))["surveyId"].tolist()
    assert next(iter(loader))["surveyId"].tolist() == first and sorted(first) == [7, 8, 9]
    with pytest.raises(GeoplantError, match="ids"):
        ArrayDataset({"env": env}, ids=[1, 2])


def test_save_and_load_pretrained_moves_encoder_and_head_columns(tmp_path: Path) -> None:
    import torch

    from geoplant.models import MultimodalSDM

    torch.manual_seed(0)
    source = MultimodalSDM(["env"], 6, encoder_kwargs={"env": {"in_features": 5}})
    path = po.save_pretrained(source, tmp_path / "po.pt")
    torch.manual_seed(1)
    target = MultimodalSDM(["landsat", "env"], 6, encoder_kwargs={"env": {"in_features": 5}})
    landsat_before = {k: v.clone() for k, v in target.encoders["landsat"].state_dict().items()}
    bias_before = target.output.bias.detach().clone()
    done = po.load_pretrained(target, path)
    assert done == {"encoders": ["env"], "head_columns": source.embed_dim}
    for k, v in source.encoders["env"].state_dict().items():
        assert torch.equal(target.encoders["env"].state_dict()[k], v)
    for k, v in target.encoders["landsat"].state_dict().items():
        assert torch.equal(v, landsat_before[k])
    width = target.encoders["landsat"].out_dim
    assert torch.equal(target.output.weight[:, width:], source.output.weight)
    assert torch.equal(target.output.bias, bias_before)  # the PA model keeps its own bias
    assert ex.weights_sources(target)["env"] == "pretrained:po.pt"
    other = MultimodalSDM(["landsat"], 6)
    with pytest.raises(GeoplantError, match="no encoder"):
        po.load_pretrained(other, path)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(GeoplantError, match="pretrained-weights"):
        po.load_pretrained(target, tmp_path / "bad.pt")


@pytest.mark.usefixtures("one_torch_thread")
def test_fit_po_then_pa_fine_tuning_from_its_weights(raster_store: Path, tmp_path: Path) -> None:
    store = open_store(raster_store)
    plan = ex.make_plan(store)
    val, test, result = po.fit_po(store, plan, loss="po_maxent", epochs=1, progress=False,
                                  out_dir=tmp_path / "po")
    assert val.probs.shape == (len(plan.val_ids), len(store.species))
    assert test.probs.shape[0] == len(plan.test_ids) and val.labels is not None
    assert val.info["po_rows"] == val.info["cells"] > 0 and val.info["calibrated"]
    # calibrated on PA train: each species' mean probability there is its PA prevalence
    train = po._pa_dataset(store, "pa_train", plan.train_ids,
                           ex.training_stats(store, plan, ["env"]))
    probs = 1 / (1 + np.exp(-po._logits(result.model, train.loader(256, shuffle=False))))
    np.testing.assert_allclose(probs.mean(axis=0),
                               np.clip(ex._frequency(store, plan.train_ids), 1e-4, 1 - 1e-4),
                               atol=1e-4)
    metrics = ex.score(store, plan, test, ex.choose_decoder(val, progress=False), val,
                       bootstrap=50)
    assert 0 < metrics["test_samples_f1"] <= 1

    weights = po.save_pretrained(result.model, tmp_path / "po.pt")
    out = tmp_path / "pa"
    pa_val, _, _ = ex.fit_torch(store, plan, ["env"], epochs=1, out_dir=out, init_from=weights,
                                progress=False)
    assert pa_val.info["init_from"] == str(weights)
    assert pa_val.info["weights_source"]["env"] == "pretrained:po.pt"
    # the digest is of the weights, not of the file's bytes or name
    same = po.save_pretrained(result.model, tmp_path / "copy.pt")
    assert po.pretrained_digest(same) == po.pretrained_digest(weights)
    # resuming with other initial weights is refused (their digest is a checkpoint setting)
    import torch

    with torch.no_grad():
        result.model.output.bias.add_(1.0)
    po.save_pretrained(result.model, weights)
    assert po.pretrained_digest(same) != po.pretrained_digest(weights)
    with pytest.raises(GeoplantError, match="other settings"):
        ex.fit_torch(store, plan, ["env"], epochs=2, out_dir=out, init_from=weights,
                     progress=False)
    with pytest.raises(GeoplantError, match="not found"):
        ex.fit_torch(store, plan, ["env"], epochs=1, init_from=tmp_path / "none.pt",
                     progress=False)
    with pytest.raises(GeoplantError, match="unknown PO loss"):
        po.fit_po(store, plan, loss="bce")


def test_po_env_reads_the_po_cube_or_samples_the_rasters(raster_store: Path) -> None:
    from dataclasses import replace

    from geoplant.points import point_features

    store = open_store(raster_store)
    sites = po.po_sites(store)
    some = replace(sites, survey_ids=sites.survey_ids[:300], lon=sites.lon[:300],
                   lat=sites.lat[:300], labels=sites.labels[:300], n_surveys=sites.n_surveys[:300])
    names = po._env_names(store)
    sampled = np.asarray(point_features(store.rasters(), some.lon, some.lat, names), np.float32)
    env = po.po_env(store, some)
    assert env.shape == (300, len(names)) and env.dtype == np.float32
    assert "env" in store.modalities("po_train")  # read from the cube the build sampled
    np.testing.assert_array_equal(env, sampled)
    # columns the cube lacks come from the rasters
    np.testing.assert_array_equal(po.po_env(store, some, names[:3]), sampled[:, :3])


def test_match_prevalence_in_species_blocks_is_the_same() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 7)).astype(np.float32)
    target = rng.uniform(0.01, 0.6, 7)
    np.testing.assert_allclose(po.match_prevalence(logits, target, block=2),
                               po.match_prevalence(logits, target), atol=1e-9)


def test_fit_maxent_on_a_feature_subset_and_unknown_features(raster_store: Path) -> None:
    store = open_store(raster_store)
    plan = ex.make_plan(store)
    features = list(po.MAXENT_FEATURES[:3])
    val, test, model = po.fit_maxent(store, plan, background="target-group", features=features,
                                     n_background=300, max_species=2)
    assert model.feature_names_ == features and len(model.fitted_species_) == 2
    assert val.probs.shape == (len(plan.val_ids), len(store.species))
    # the test surveys' predictions are the model's on their env columns, in its order
    env = store.cube(plan.test_split)["env"].sel(surveyId=plan.test_ids,
                                                 env_variable=features).values
    assert np.allclose(test.probs, model.predict_proba(env))
    with pytest.raises(GeoplantError, match="unknown MaxEnt features"):
        po.fit_maxent(store, plan, features=["Bio1", "NoSuchColumn"])
