"""PO Landsat and bioclimatic cubes: written by the synthetic geoplant release (G26 paths),
read into the store's ``po_train`` cube next to its env; absent from glc24."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from geoplant import layouts
from geoplant.builder import build
from geoplant.raw import RawRelease
from geoplant.store import open_store
from geoplant.synthetic.release import PO_CUBE_EVERY

_FAMILIES = {"landsat": "landsat.cube", "climate": "climate.cube"}


@pytest.fixture(scope="module")
def po_store(geoplant_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``po_train`` alone of the tiny geoplant release, built."""
    out = tmp_path_factory.mktemp("po_cubes") / "store"
    build(geoplant_tiny, out, splits=["po_train"], rasters=False, progress=False)
    return out


def _some_ids(raw: RawRelease) -> np.ndarray:
    ids = raw.survey_ids("po_train")
    return ids[[0, 1, len(ids) // 2, len(ids) - 1]]


def test_release_has_the_po_cubes_at_the_g26_paths(geoplant_tiny: Path) -> None:
    raw = RawRelease(geoplant_tiny)
    ids = raw.survey_ids("po_train")
    for family, zip_name in (("landsat.cube", "Landsat/cubes/PO-train-landsat-time-series.zip"),
                             ("climate.cube", "Bioclim/cubes/PO-train-bioclimatic-monthly.zip")):
        loc = layouts.location("geoplant", family, "po_train", survey_id=int(ids[0]))
        assert loc.path == f"GeoPlantData/TimeSeries/{zip_name}"
        with zipfile.ZipFile(geoplant_tiny / loc.path) as archive:
            names = archive.namelist()
        assert len(names) == len(ids[::PO_CUBE_EVERY]) and loc.member in names


def test_po_cube_equals_the_raw_cubes(geoplant_tiny: Path, po_store: Path) -> None:
    import torch

    store = open_store(po_store)
    assert store.modalities("po_train") == ["landsat", "climate", "env"]
    cube = store.cube("po_train")
    raw = RawRelease(geoplant_tiny)
    ids = _some_ids(raw)
    for name, read in (("landsat", raw.read_landsat_cubes), ("climate", raw.read_climate_cubes)):
        batch = read("po_train", ids)
        assert batch.ok.all()
        got = cube[name].sel(surveyId=ids).values
        np.testing.assert_array_equal(got, batch.data)
        loc = raw.location(_FAMILIES[name], "po_train", survey_id=int(ids[1]))
        with zipfile.ZipFile(geoplant_tiny / loc.path) as archive:
            assert loc.member is not None
            tensor = torch.load(io.BytesIO(archive.read(loc.member)), weights_only=True)
        np.testing.assert_array_equal(got[1], tensor.numpy())
        assert cube[f"valid_{name}"].values.all()
    assert np.isfinite(cube["climate"].sel(surveyId=ids).values).all()
    assert cube["valid_env"].values.all()
    sources = {s["path"] for s in store.manifest["sources"]}
    for family in _FAMILIES.values():
        assert raw.location(family, "po_train", survey_id=1).path in sources


def test_po_surveys_without_a_cube_are_not_valid(geoplant_tiny: Path, tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    shutil.copytree(geoplant_tiny, raw_dir, copy_function=os.link)
    raw = RawRelease(raw_dir)
    ids = raw.survey_ids("po_train")
    dropped = {int(ids[3]), int(ids[-2])}
    path = raw_dir / layouts.location("geoplant", "landsat.cube", "po_train", survey_id=1).path
    with zipfile.ZipFile(path) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    path.unlink()  # a hard link: the fixture's zip stays whole
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in members:
            if int(info.filename.rsplit("/", 1)[-1].split("_")[0]) not in dropped:
                dst.writestr(info, data)
    bioclim = raw_dir / layouts.location("geoplant", "climate.cube", "po_train",
                                         survey_id=1).path
    bioclim.unlink()  # no PO bioclimatic archive at all: no climate in the PO cube
    summary = build(raw_dir, tmp_path / "store", splits=["po_train"], rasters=False,
                    progress=False)
    store = open_store(tmp_path / "store")
    assert store.modalities("po_train") == ["landsat", "env"]
    cube = store.cube("po_train")
    valid = cube["valid_landsat"].values
    assert set(cube["surveyId"].values[~valid].tolist()) == dropped
    assert np.isnan(cube["landsat"].sel(surveyId=sorted(dropped)).values).all()
    assert {(s["split"], s["kind"], s["surveyId"]) for s in summary.skipped} == \
        {("po_train", "landsat", sid) for sid in dropped}
    assert cube["valid_env"].values.all()


def test_glc24_has_no_po_cubes(glc24_tiny: Path, raster_store: Path) -> None:
    assert not {"landsat.cube", "climate.cube"} & set(layouts.families("glc24", "po_train"))
    assert RawRelease(glc24_tiny).families("po_train") == ("metadata.po",)
    store = open_store(raster_store)
    assert store.modalities("po_train") == ["env"]
    assert set(store.cube("po_train").data_vars) == {"env", "valid_env"}
