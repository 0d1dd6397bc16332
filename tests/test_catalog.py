"""The data catalogs: schema validity, facts from the format spec, agreement with the layouts."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from geoplant import layouts
from geoplant.catalog import (
    CATALOG_DIR_ENV,
    available_releases,
    catalog_dirs,
    load_catalog,
    load_schema,
    parse,
    validate,
)
from geoplant.errors import GeoplantError

CATALOG_DIR = Path(__file__).resolve().parents[1] / "data_catalog"
YAMLS = sorted(CATALOG_DIR.glob("*.yaml"))
GiB = 1024**3


def _raw(name: str) -> dict:
    return yaml.safe_load((CATALOG_DIR / f"{name}.yaml").read_text())


def test_both_releases_are_catalogued() -> None:
    assert {p.stem for p in YAMLS} == {"glc24", "geoplant"}
    assert available_releases() == ["geoplant", "glc24"]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_catalog_satisfies_the_schema(path: Path) -> None:
    schema = json.loads((CATALOG_DIR / "catalog.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))
    catalog = load_catalog(path.stem)  # schema + semantic checks
    assert catalog.release == path.stem
    assert all(p.licence.id and p.citation.text for p in catalog.parts)
    assert all(p.splits or p.modalities == ("rasters",) or "regions" in p.modalities
               for p in catalog.parts)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["parts"][1].update(name=c["parts"][0]["name"]), "duplicate part name"),
        (lambda c: c["parts"][0].pop("size"), "'size' is a required property"),
        (lambda c: c["parts"][0].update(sha256="abc"), "does not match"),
        (lambda c: c["parts"][0].update(path="../etc/passwd"), "does not match"),
        (lambda c: c["parts"][0].update(sources={"nowhere": {}}), "unknown source"),
        (lambda c: c["parts"][1].update(splits=["pa_test_ood"]), "not a split of the 'glc24'"),
        (lambda c: c["parts"][1].update(sources={"kaggle": {}}), "needs 'file' or 'bundle'"),
        (lambda c: c["parts"][1].update(kind="file", extract_to="x"), "should not be valid"),
        (lambda c: c.update(layout="glc99"), "is not one of"),
    ],
)
def test_invalid_catalogs_are_rejected(mutate, message: str) -> None:
    data = copy.deepcopy(_raw("glc24"))
    mutate(data)
    with pytest.raises(GeoplantError, match="invalid data catalog") as info:
        validate(data, where="glc24.yaml")
    assert message in str(info.value)


def test_glc24_sizes_follow_the_spec() -> None:
    cat = load_catalog("glc24")
    exact = {
        "s24-metadata-po-train": 376_527_330,
        "s24-metadata-pa-train": 97_677_806,
        "s24-metadata-pa-test": 275_277,
    }
    for name, size in exact.items():
        part = cat.part(name)
        assert part.size == size and not part.size_approx and part.files[0].exact_size == size
    assert cat.part("s24-rasters-climate").size == round(24.90 * GiB)
    assert cat.part("s24-rasters-climate").size_approx
    # The DSGT listing totals 98.54 GiB for S24 without the two cube folders.
    s24 = [p for p in cat.parts if p.name.startswith("s24-")]
    known, unknown = cat.total_size(s24)
    assert known / GiB == pytest.approx(98.54, rel=0.01)
    assert unknown == 6  # 3 climate + 3 Landsat cube zips, sizes not listed
    assert all(p.sha256 is None for p in (f for part in cat.parts for f in part.files))
    assert cat.sources["kaggle"].ref == "geolifeclef-2024"
    assert cat.sources["seafile-2024"].url.endswith("/d/bdb829337aa44a9489f6")


def _covered(catalog, path: str) -> bool:
    """Whether a release path is a part's file or lies inside an archive part's listed contents."""
    if any(path == f.path for p in catalog.parts for f in p.files):
        return True
    return any(path == c.path or (c.path.endswith("/") and path.startswith(c.path))
               for p in catalog.parts for c in p.contents)


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_every_layout_location_is_served_by_a_part(layout: str) -> None:
    cat = load_catalog(layout)
    assert cat.layout == layout
    missing = []
    for split in layouts.SPLITS[layout]:
        for family in layouts.families(layout, split):
            kwargs: dict = {"survey_id": 1322301}
            if family == "landsat.values":
                kwargs["band"] = "red"
            loc = layouts.location(layout, family, split, **kwargs)
            if not _covered(cat, loc.path):
                missing.append(str(loc))
    for name in layouts.raster_names(layout):
        loc = layouts.location(layout, f"raster.{name}")
        if not _covered(cat, loc.path):
            missing.append(str(loc))
    assert not missing, missing


def test_geoplant_catalog_structure() -> None:
    cat = load_catalog("geoplant")
    assert cat.sources["kaggle"].type == "kaggle-dataset"
    assert cat.sources["kaggle"].ref == "picekl/geoplant"
    assert cat.sources["seafile-2026"].url.endswith("/d/59325675470447b38add")
    tiff = cat.part("s2-tiff-po-train")
    assert tiff.volume_format == "zips" and len(tiff.files) == 24
    assert tiff.files[-1].path.endswith("PO-Train-Sentinel2Patches-part-23.zip")
    for split in layouts.SPLITS["geoplant"]:
        assert any(split in p.splits and "metadata" in p.modalities for p in cat.parts), split
    assert all(f.path.startswith("GeoPlantData/") for p in cat.parts if p.name != "kaggle-all"
               for f in p.files)


def test_select_names_globs_and_unknown() -> None:
    cat = load_catalog("glc24")
    assert [p.name for p in cat.select(["s24-rasters-*"])] == [
        "s24-rasters-climate", "s24-rasters-elevation", "s24-rasters-human-footprint",
        "s24-rasters-landcover", "s24-rasters-soilgrids"]
    assert len(cat.select(["all"])) == len(cat.parts)
    assert [p.name for p in cat.select(["k24-all", "k24-all"])] == ["k24-all"]
    with pytest.raises(GeoplantError, match="did you mean s24-rasters-climate"):
        cat.select(["s24-raster-climate"])


def test_catalog_dir_override_and_bad_files(tmp_path: Path, monkeypatch) -> None:
    for f in (*YAMLS, CATALOG_DIR / "catalog.schema.json"):
        shutil.copy(f, tmp_path)
    data = _raw("glc24")
    data["title"] = "overridden"
    (tmp_path / "glc24.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv(CATALOG_DIR_ENV, str(tmp_path))
    assert catalog_dirs()[0] == tmp_path
    assert load_catalog("glc24").title == "overridden"
    assert load_schema()["title"].startswith("geoplant data catalog")
    with pytest.raises(GeoplantError, match="no data catalog for release 'glc99'"):
        load_catalog("glc99")
    (tmp_path / "broken.yaml").write_text("parts: [")
    with pytest.raises(GeoplantError, match="cannot read catalog"):
        load_catalog(tmp_path / "broken.yaml")
    with pytest.raises(GeoplantError, match="catalog file not found"):
        load_catalog(tmp_path / "absent.yaml")


def test_parse_builds_typed_parts() -> None:
    cat = parse(_raw("glc24"))
    bundle = cat.part("k24-all")
    assert bundle.is_archive and bundle.extract_dir == "."
    assert bundle.sources["kaggle"].bundle
    assert any(c.path == "PA_Train_SatellitePatches_RGB/" and c.splits == ("pa_train",)
               for c in bundle.contents)
    raster = cat.part("s24-rasters-landcover")
    assert raster.extract_dir == "EnvironmentalRasters"
    assert cat.part("k24-metadata-pa-train").sources["kaggle"].file == "GLC24_PA_metadata_train.csv"
