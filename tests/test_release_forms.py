"""A GeoPlant release in each form users have it on disk (the zips as published, extracted by
the maintainers' downloader, extracted by ``geoplant download``) reads and builds alike; zip
members under the names seen in the wild; the v1 and v2 human footprint."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplant import layouts
from geoplant.builder import build
from geoplant.downloader.extract import safe_extract
from geoplant.errors import GeoplantError
from geoplant.layouts import ENV_COLUMNS, LANDSAT_BANDS, Location
from geoplant.raw import CLIMATE_VALUE_COLUMNS, LANDSAT_VALUE_COLUMNS, RawRelease

torch = pytest.importorskip("torch")

FORMS = ("zipped", "theirs", "ours")


def unzip_theirs(release: Path, dest: Path) -> Path:
    """What plantnet/GeoPlant's downloader (``dataset/data_download.py``, main @ 88b090c) leaves
    after ``download ... --data DEST --extract``: the manifest's paths right under DEST (no
    ``GeoPlantData/``), each zip extracted into a folder named after it (``extract_file``,
    ~L169), the parts of a multi-part archive into one folder (``multipart_extract_dir``,
    ~L198). The zips are then deleted, so only the extracted files can be read."""
    shutil.copytree(release / "GeoPlantData", dest)
    for archive in sorted(dest.rglob("*.zip")):
        stem = re.sub(r"[-_.]part[-_.]?\d+$", "", archive.stem, flags=re.IGNORECASE)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(archive.with_name(stem))
        archive.unlink()
    return dest


def unzip_ours(release: Path, dest: Path) -> Path:
    """What ``geoplant download --extract`` leaves: each zip extracted into its own folder (a
    catalog part's default ``extract_dir``) by the downloader's ``safe_extract``; the zips are
    then deleted."""
    shutil.copytree(release, dest, ignore=shutil.ignore_patterns("truth"))
    for archive in sorted(dest.rglob("*.zip")):
        with zipfile.ZipFile(archive) as zf:
            safe_extract(zf, archive.parent)
        archive.unlink()
    return dest


@pytest.fixture(scope="module")
def forms(geoplant_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("forms")
    return {"zipped": geoplant_tiny, "theirs": unzip_theirs(geoplant_tiny, base / "theirs"),
            "ours": unzip_ours(geoplant_tiny, base / "ours")}


def test_the_forms_are_what_each_tool_leaves(forms: dict[str, Path]) -> None:
    member = "PA-train-bioclimatic_monthly"
    assert (forms["zipped"] / "GeoPlantData/TimeSeries/Bioclim/cubes"
            / "PA-train-bioclimatic-monthly.zip").is_file()
    theirs, ours = forms["theirs"], forms["ours"]
    assert not list(theirs.rglob("*.zip")) and not list(ours.rglob("*.zip"))
    assert not (theirs / "GeoPlantData").exists()
    assert (theirs / "TimeSeries/Bioclim/cubes/PA-train-bioclimatic-monthly" / member).is_dir()
    assert (ours / "GeoPlantData/TimeSeries/Bioclim/cubes" / member).is_dir()
    assert (ours / "GeoPlantData/EnvironmentalRasters/HumanFootprint/v2/OSM_roads.tif").is_file()


def _same_frames(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_categorical=False)


def test_raw_release_reads_every_form_alike(forms: dict[str, Path]) -> None:
    ref = RawRelease(forms["zipped"])
    assert not ref.bare
    for form in ("theirs", "ours"):
        raw = RawRelease(forms[form])
        assert raw.layout == "geoplant" and raw.bare == (form == "theirs")
        assert raw.raster_names() == ref.raster_names()
        every = {f for split in raw.splits for f in raw.families(split)}
        sources = raw.source_paths(raw.splits, every)
        assert len(sources) == len(set(sources)) and not any(p.endswith(".zip")
                                                             for p in sources)
        assert all((forms[form] / p).exists() for p in sources)
        assert set(ref.source_paths(ref.splits, every)) == set(
            layouts.source_paths("geoplant", ref.splits, every))  # zipped: the layout's own
        np.testing.assert_array_equal(raw.raster("hfp_OSM_roads").values,
                                      ref.raster("hfp_OSM_roads").values)
        for split in raw.splits:
            report = raw.check_consistency(split)
            assert report.ok, (form, split, report.summary())
            _same_frames(raw.read_metadata(split), ref.read_metadata(split))
            for family in ("bioclimatic", "elevation", "human_footprint", "landcover",
                           "soilgrids"):
                _same_frames(raw.read_env(family, split), ref.read_env(family, split))
            if split == "po_train":
                continue
            for got, want in ((raw.climate_values_cube(split), ref.climate_values_cube(split)),
                              (raw.landsat_values_cube(split), ref.landsat_values_cube(split))):
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
            ids = raw.survey_ids(split)[::7]
            for read in ("read_climate_cubes", "read_landsat_cubes", "read_s2_tiffs"):
                np.testing.assert_array_equal(getattr(raw, read)(split, ids).data,
                                              getattr(ref, read)(split, ids).data)
            if "s2.rgb" in raw.families(split):
                np.testing.assert_array_equal(raw.read_s2_jpegs(split, ids).data,
                                              ref.read_s2_jpegs(split, ids).data)


def _store_content(store: Path) -> tuple[dict[str, str], dict, dict]:
    """A store's files by content; its manifest without where the raw files were."""
    files = {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(store.rglob("*"))
             if p.is_file() and p.name not in ("manifest.json", "stats.json")}
    manifest = json.loads((store / "manifest.json").read_text())
    for key in ("raw_root", "sources"):
        manifest.pop(key)
    stats = json.loads((store / "stats.json").read_text())
    stats.pop("created", None)
    return files, manifest, stats


def test_each_form_builds_the_same_store(forms: dict[str, Path], tmp_path: Path) -> None:
    content = {}
    for form, root in forms.items():
        summary = build(root, tmp_path / form, progress=False)
        assert not summary.skipped, (form, summary.skipped[:3])
        content[form] = _store_content(tmp_path / form)
    files, manifest, _ = content["zipped"]
    assert any(name.startswith("rasters.zarr/hfp_OSM_") for name in files)
    assert manifest["skipped"]["total"] == 0
    assert content["theirs"] == content["zipped"]
    assert content["ours"] == content["zipped"]
    for form, root in forms.items():  # sources are listed as found: zips or extracted folders
        sources = json.loads((tmp_path / form / "manifest.json").read_text())["sources"]
        kinds = {s["kind"] for s in sources}
        assert len(sources) >= 10 and all((root / s["path"]).exists() for s in sources), form
        assert "folder" in kinds if form != "zipped" else "file" in kinds


# -- member names seen in the wild -------------------------------------------------------------


def _pt(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.from_numpy(array), buffer)
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _values(sids: list[int], columns: tuple[str, ...], offset: float) -> bytes:
    frame = pd.DataFrame([[offset + s + j for j in range(len(columns))] for s in sids],
                         columns=list(columns), dtype=float)
    frame.insert(0, "surveyId", sids)
    return frame.to_csv(index=False).encode()


def _notebook_named_release(root: Path, sids: list[int]) -> None:
    """A geoplant release whose time-series zips hold members named as in the GeoPlant
    notebooks (Landsat-resnet6, MME: ``GLC24-PA-train-landsat-time-series_<sid>_cube.pt``;
    MME: ``GLC24-PA-train-bioclimatic_monthly_<sid>_cube.pt``, here at the zip's root) and the
    hyphenated values CSVs of the earlier manifests (``…-landsat-time-series-<band>.csv``,
    ``…-bioclimatic-monthly.csv``)."""
    meta = layouts.location("geoplant", "metadata.pa", "pa_train")
    (root / meta.path).parent.mkdir(parents=True)
    (root / meta.path).write_text(
        ",".join(layouts.PA_TRAIN_COLUMNS) + "\n"
        + "".join(f"2.5,48.1,2019,1,10,ALPINE,France,3.0,{s}\n" for s in sids))
    ts = root / "GeoPlantData/TimeSeries"
    _zip(ts / "Landsat/cubes/PA-train-landsat-time-series.zip", {
        f"PA-train-landsat_time_series/GLC24-PA-train-landsat-time-series_{s}_cube.pt":
            _pt(np.full((6, 4, 21), s, np.float32)) for s in sids})
    _zip(ts / "Bioclim/cubes/PA-train-bioclimatic-monthly.zip", {
        f"GLC24-PA-train-bioclimatic_monthly_{s}_cube.pt": _pt(np.full((4, 19, 12), -s,
                                                                        np.float32))
        for s in sids})
    _zip(ts / "Landsat/values/PA-train-landsat_time_series.zip", {
        f"PA-train-landsat-time-series-{band}.csv": _values(sids, LANDSAT_VALUE_COLUMNS, b)
        for b, band in enumerate(LANDSAT_BANDS)})
    _zip(ts / "Bioclim/values/PA-train-bioclimatic_time_series.zip", {
        "GLC24-PA-train-bioclimatic-monthly.csv": _values(sids, CLIMATE_VALUE_COLUMNS, 0.5)})


@pytest.mark.parametrize("form", FORMS)
def test_members_are_found_by_family_and_survey_whatever_their_names(
        tmp_path: Path, form: str) -> None:
    sids = [642, 1322301]
    _notebook_named_release(tmp_path / "zipped", sids)
    root = {"zipped": lambda: tmp_path / "zipped",
            "theirs": lambda: unzip_theirs(tmp_path / "zipped", tmp_path / "theirs"),
            "ours": lambda: unzip_ours(tmp_path / "zipped", tmp_path / "ours")}[form]()
    raw = RawRelease(root)
    for s in sids:
        assert (raw.read_landsat_cube("pa_train", s) == s).all()
        assert (raw.read_climate_cube("pa_train", s) == -s).all()
    ids, cube = raw.landsat_values_cube("pa_train")
    assert ids.tolist() == sids and cube[1, 2, 0, 0] == 2 + sids[1]  # band 2, first column
    ids, cube = raw.climate_values_cube("pa_train")
    assert ids.tolist() == sids and cube[0, 0, 0, 0] == 0.5 + sids[0]
    report = {f.family: f for f in raw.check_consistency("pa_train").files}
    assert report["landsat.cube"].ok and report["climate.cube"].ok
    assert report["landsat.values"].ok and report["climate.values"].ok
    with pytest.raises(GeoplantError, match="missing file"):
        raw.read_landsat_cube("pa_train", 999)


# -- human footprint: v1 (legacy) or v2 --------------------------------------------------------


def _geotiff(value: float) -> bytes:
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=4, height=3, count=1, dtype="float32",
                      crs="EPSG:4326", transform=from_origin(-10, 71, 1, 1)) as ds:
            ds.write(np.full((1, 3, 4), value, np.float32))
        return bytes(mem.read())


def _to_v1(root: Path) -> None:
    """Replace the v2 human footprint of a release with the v1 (legacy) one: the tables the
    maintainers' downloader fetches with ``--legacy`` and the two v1 raster zips."""
    values = root / "GeoPlantData/EnvironmentalValues/HumanFootprint"
    cols = ENV_COLUMNS["human_footprint"]
    for stem in ("PO-train", "PA-train", "PA-test"):
        v2 = pd.read_csv(values / "v2" / f"{stem}-human_footprint.csv")
        v1 = pd.DataFrame(np.arange(len(v2) * len(cols)).reshape(len(v2), -1) % 7, columns=cols)
        v1.insert(0, "surveyId", v2["surveyId"])
        (values / "v1").mkdir(exist_ok=True)
        v1.to_csv(values / "v1" / f"{stem}-human-footprint.csv", index=False)
    shutil.rmtree(values / "v2")
    rasters = root / "GeoPlantData/EnvironmentalRasters/HumanFootprint"
    shutil.rmtree(rasters / "v2")
    _zip(rasters / "v1/detailed.zip", {f"{n}_WGS84.tif": _geotiff(i)
                                       for i, n in enumerate(layouts.HFP_DETAILED)})
    _zip(rasters / "v1/summarized.zip", {f"{n}_WGS84.tif": _geotiff(i + 20)
                                         for i, n in enumerate(layouts.HFP_SUMMARIZED)})


def test_v2_human_footprint_columns_and_rasters_are_read_as_found(geoplant_tiny: Path) -> None:
    raw = RawRelease(geoplant_tiny)
    assert raw.env_version("human_footprint") == "current"
    table = raw.read_env("human_footprint", "pa_test_iid")  # the manifest's name for IID
    assert raw.location("env.human_footprint", "pa_test_iid").path.endswith(
        "v2/PA-test-human_footprint.csv")
    v1 = set(ENV_COLUMNS["human_footprint"])
    assert table.shape[1] > 1 and not v1 & set(table.columns)
    footprint = [n for n in raw.raster_names() if n.startswith("hfp_")]
    assert footprint and all(n.startswith("hfp_OSM_") for n in footprint)


def test_the_iid_table_under_either_name(geoplant_tiny: Path, tmp_path: Path) -> None:
    root = shutil.copytree(geoplant_tiny / "GeoPlantData/EnvironmentalValues",
                           tmp_path / "GeoPlantData/EnvironmentalValues")
    shutil.copytree(geoplant_tiny / "GeoPlantData/PresenceAbsenceSurveys",
                    tmp_path / "GeoPlantData/PresenceAbsenceSurveys")
    v2 = root / "HumanFootprint/v2"
    want = RawRelease(geoplant_tiny).read_env("human_footprint", "pa_test_iid")
    (v2 / "PA-test-human_footprint.csv").rename(v2 / "PA-test-iid-human_footprint.csv")
    raw = RawRelease(tmp_path)
    assert raw.location("env.human_footprint", "pa_test_iid").path.endswith(
        "v2/PA-test-iid-human_footprint.csv")
    pd.testing.assert_frame_equal(raw.read_env("human_footprint", "pa_test_iid"), want)


def test_a_v1_release_builds_with_the_v1_footprint(geoplant_tiny: Path, tmp_path: Path) -> None:
    root = shutil.copytree(geoplant_tiny, tmp_path / "raw",
                           ignore=shutil.ignore_patterns("truth"))
    _to_v1(root)
    raw = RawRelease(root)
    assert raw.env_version("human_footprint") == "v1"
    table = raw.read_env("human_footprint", "pa_train")
    assert tuple(table.columns[1:]) == ENV_COLUMNS["human_footprint"]
    footprint = [n for n in raw.raster_names() if n.startswith("hfp_")]
    assert footprint == [f"hfp_{n}" for n in (*layouts.HFP_DETAILED, *layouts.HFP_SUMMARIZED)]
    assert float(raw.raster("hfp_HFP2009").values.max()) == 21.0
    with pytest.raises(GeoplantError, match="missing file"):  # v1 has no OOD table
        raw.read_env("human_footprint", "pa_test_ood")
    summary = build(root, tmp_path / "store", splits=["pa_train"], progress=False)
    manifest = json.loads((tmp_path / "store/manifest.json").read_text())
    assert "hfp_Built1994" in manifest["rasters"] and not summary.skipped
    from geoplant.store import open_store

    cube = open_store(tmp_path / "store").cube("pa_train")
    assert set(ENV_COLUMNS["human_footprint"]) <= set(cube["env_variable"].values.tolist())


def test_neither_footprint_names_the_default_download(geoplant_tiny: Path,
                                                      tmp_path: Path) -> None:
    root = tmp_path / "raw"
    shutil.copytree(geoplant_tiny / "GeoPlantData/PresenceAbsenceSurveys",
                    root / "GeoPlantData/PresenceAbsenceSurveys")
    raw = RawRelease(root)
    assert [n for n in raw.raster_names() if n.startswith("hfp_")] == ["hfp_v2"]
    with pytest.raises(GeoplantError, match=r"v2/OSM_detailed\.zip: missing file"):
        raw.raster("hfp_v2")
    assert raw.location("raster.hfp_v2") == Location(
        "GeoPlantData/EnvironmentalRasters/HumanFootprint/v2/OSM_detailed.zip")
