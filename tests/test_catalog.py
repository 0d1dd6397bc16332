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


# -- the GeoPlant maintainers' manifest ------------------------------------------------------

#: Every path of the maintainers' manifest, transcribed from plantnet/GeoPlant
#: ``dataset/config.py`` at main @ 88b090c (2026-05-29): METADATA, PRESENCE_ONLY and
#: PRESENCE_ABSENCE (``csvs``, ``legacy_csvs``, ``cubes``), RASTERS and LEGACY_RASTERS. They are
#: relative to the Seafile share (their downloader writes them under ``--data``).
_PO_TIFF_PARTS = tuple(
    f"SatelliteData/Sentinel2Patches-tiff/PO-Train-Sentinel2Patches-part-{part:02d}.zip"
    for part in range(24)
)
_SPLITS4 = ("PA-train", "PA-test-iid", "PA-test-ood", "PA-test-glc25")
GEOPLANT_MANIFEST_88B090C: tuple[str, ...] = (
    # METADATA
    "PresenceOnlyOccurrences/PO_metadata_train.csv",
    "PresenceAbsenceSurveys/PA_metadata_train.csv",
    "PresenceAbsenceSurveys/PA_metadata_test_iid.csv",
    "PresenceAbsenceSurveys/PA_metadata_test_ood.csv",
    "PresenceAbsenceSurveys/PA_metadata_test_glc25.csv",
    # PRESENCE_ONLY
    "EnvironmentalValues/Climate/PO-train-bioclimatic.csv",
    "EnvironmentalValues/Climate/legacy/PO-train-bioclimatic-average.csv",
    "TimeSeries/Bioclim/values/PO-train-bioclimatic_time_series.zip",
    "TimeSeries/Bioclim/cubes/PO-train-bioclimatic-monthly.zip",
    "EnvironmentalValues/Elevation/PO-train-elevation.csv",
    "EnvironmentalValues/HumanFootprint/v2/PO-train-human_footprint.csv",
    "EnvironmentalValues/HumanFootprint/v1/PO-train-human-footprint.csv",
    "EnvironmentalValues/LandCover/PO-train-landcover.csv",
    "EnvironmentalValues/SoilGrids/v2/PO-train-soilgrids.csv",
    "EnvironmentalValues/SoilGrids/v1/PO-train-soilgrids.csv",
    "SatelliteData/Sentinel2Patches-jpeg/PO-Train-Sentinel2Patches-NIR.zip",
    "SatelliteData/Sentinel2Patches-jpeg/PO-Train-Sentinel2Patches-RGB.zip",
    *_PO_TIFF_PARTS,
    "SatelliteData/AlphaEarth/PO-train-alphaearth.parquet",
    "TimeSeries/Landsat/values/PO-train-landsat-time-series.zip",
    "TimeSeries/Landsat/cubes/PO-train-landsat-time-series.zip",
    # PRESENCE_ABSENCE
    *(f"EnvironmentalValues/Climate/{s}-bioclimatic.csv" for s in _SPLITS4),
    "EnvironmentalValues/Climate/legacy/PA-train-bioclimatic-average.csv",
    "EnvironmentalValues/Climate/legacy/PA-test-bioclimatic-average.csv",
    *(f"TimeSeries/Bioclim/values/{s}-bioclimatic_time_series.zip" for s in _SPLITS4),
    *(f"TimeSeries/Bioclim/cubes/{s}-bioclimatic-monthly.zip" for s in _SPLITS4),
    *(f"EnvironmentalValues/Elevation/{s}-elevation.csv" for s in _SPLITS4),
    "EnvironmentalValues/HumanFootprint/v2/PA-train-human_footprint.csv",
    "EnvironmentalValues/HumanFootprint/v2/PA-test-human_footprint.csv",  # sic: no -iid- (L131)
    "EnvironmentalValues/HumanFootprint/v2/PA-test-ood-human_footprint.csv",
    "EnvironmentalValues/HumanFootprint/v2/PA-test-glc25-human_footprint.csv",
    "EnvironmentalValues/HumanFootprint/v1/PA-train-human-footprint.csv",
    "EnvironmentalValues/HumanFootprint/v1/PA-test-human-footprint.csv",
    *(f"EnvironmentalValues/LandCover/{s}-landcover.csv" for s in _SPLITS4),
    *(f"EnvironmentalValues/SoilGrids/v2/{s}-soilgrids.csv" for s in _SPLITS4),
    "EnvironmentalValues/SoilGrids/v1/PA-train-soilgrids.csv",
    "EnvironmentalValues/SoilGrids/v1/PA-test-soilgrids.csv",
    "SatelliteData/Sentinel2Patches-jpeg/PA-Train-Sentinel2Patches-RGB+NIR.zip",
    "SatelliteData/Sentinel2Patches-jpeg/PA-Test-IID-Sentinel2Patches.zip",
    "SatelliteData/Sentinel2Patches-tiff/PA-Train-Sentinel2Patches.zip",
    "SatelliteData/Sentinel2Patches-tiff/PA-Test-IID-Sentinel2Patches.zip",
    "SatelliteData/Sentinel2Patches-tiff/PA-Test-OOD-Sentinel2Patches.zip",
    "SatelliteData/Sentinel2Patches-tiff/PA-Test-GLC25-Sentinel2Patches.zip",
    "SatelliteData/AlphaEarth/PA-train-alphaearth.parquet",
    "SatelliteData/AlphaEarth/PA-test-iid-alphaearth.parquet",
    "SatelliteData/AlphaEarth/PA-test-ood-alphaearth.parquet",
    "SatelliteData/AlphaEarth/PA-test-glc25-alphaearth.parquet",
    *(f"TimeSeries/Landsat/values/{s}-landsat_time_series.zip" for s in _SPLITS4),
    *(f"TimeSeries/Landsat/cubes/{s}-landsat-time-series.zip" for s in _SPLITS4),
    # RASTERS, LEGACY_RASTERS
    "EnvironmentalRasters/BiogeographicalRegions/Bioregions-Europe-2016-v1.geojson",
    "EnvironmentalRasters/Climate/BioClimatic_Average_1981-2010.zip",
    "EnvironmentalRasters/Climate/Climatic_Monthly_1979-2019.zip",
    "EnvironmentalRasters/Elevation/ASTER_Elevation.tif",
    "EnvironmentalRasters/HumanFootprint/v2/OSM_detailed.zip",
    "EnvironmentalRasters/LandCover/LandCover_MODIS_Terra-Aqua_500m.tif",
    "EnvironmentalRasters/Soilgrids/soilgrids.zip",
    "EnvironmentalRasters/HumanFootprint/v1/summarized.zip",
    "EnvironmentalRasters/HumanFootprint/v1/detailed.zip",
)


def test_the_geoplant_manifest_transcription_is_whole() -> None:
    manifest = GEOPLANT_MANIFEST_88B090C
    # METADATA 5, PRESENCE_ONLY 39 (24 TIFF parts), PRESENCE_ABSENCE 52, RASTERS 7, LEGACY 2
    assert len(manifest) == len(set(manifest)) == 5 + 39 + 52 + 7 + 2


def test_geoplant_catalog_lists_every_manifest_path_and_no_other() -> None:
    cat = load_catalog("geoplant")
    release_paths = {f.path for p in cat.parts if p.name != "kaggle-all" for f in p.files}
    assert release_paths == {f"GeoPlantData/{p}" for p in GEOPLANT_MANIFEST_88B090C}
    # ... and fetches each from the share at the manifest's own path (no GeoPlantData/)
    raw = {p["name"]: p for p in _raw("geoplant")["parts"]}
    remote = set()
    for part in cat.parts:
        if part.name == "kaggle-all":
            continue
        how = part.sources["seafile-2026"]
        if len(part.files) == 1:
            remote.add(how.path)
        else:
            remote |= {v["remote_path"] for v in raw[part.name]["volumes"]}
    assert remote == set(GEOPLANT_MANIFEST_88B090C)


def test_the_iid_human_footprint_table_is_tried_under_both_names() -> None:
    cat = load_catalog("geoplant")
    part = cat.part("env-human-footprint-pa-test-iid")
    manifest_name = "EnvironmentalValues/HumanFootprint/v2/PA-test-human_footprint.csv"
    assert part.path == f"GeoPlantData/{manifest_name}"
    assert part.sources["seafile-2026"].path == manifest_name
    source = next(p for p in _raw("geoplant")["parts"] if p["name"] == part.name)["sources"]
    assert source["seafile-2026"]["alt_paths"] == [
        "EnvironmentalValues/HumanFootprint/v2/PA-test-iid-human_footprint.csv"]
    # the readers look under both names too
    variants = [str(loc) for _, loc in layouts.env_variants("geoplant", "env.human_footprint",
                                                            "pa_test_iid")]
    assert variants[:2] == [part.path, part.path.replace("PA-test-", "PA-test-iid-")]


def test_geoplant_catalog_notes_are_current() -> None:
    text = (CATALOG_DIR / "geoplant.yaml").read_text()
    assert "guessed" not in text and "wildcard" not in text
    cat = load_catalog("geoplant")
    for name in ("landsat-cubes-pa-train", "climate-cubes-pa-train", "landsat-values-pa-train",
                 "climate-values-pa-train"):
        part = cat.part(name)
        assert part.evidence == "DOC" and "UNVERIFIED" in (part.note or "")
    assert "GLC24-PA-train-landsat-time-series_<surveyId>_cube.pt" in \
        (cat.part("landsat-cubes-pa-train").note or "")
    assert "bioclimatic-monthly.csv" in (cat.part("climate-values-pa-train").note or "")
    for name in ("rasters-human-footprint-summarized", "rasters-human-footprint-detailed"):
        assert "--legacy" in (cat.part(name).note or "")
    legacy = [p for p in cat.parts if "legacy" in p.name or "-v1-" in p.name]
    assert len(legacy) == 9 and all(p.splits for p in legacy)
