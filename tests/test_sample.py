"""The synthetic release: real names, columns, dtypes, shapes, quirks, determinism, truth."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geoplant import layouts
from geoplant.errors import GeoplantError
from geoplant.layouts import (
    CLIMATE_VARIABLES,
    ENV_COLUMNS,
    LANDSAT_BANDS,
    METADATA_COLUMNS,
    PA_TEST_COLUMNS,
    PA_TRAIN_COLUMNS,
    PO_COLUMNS,
    SPLITS,
    Location,
)
from geoplant.raw import RawRelease
from geoplant.synthetic.maps import load_world
from geoplant.synthetic.release import (
    HFP_V2_COLUMNS,
    iter_release_files,
    pa_split_sizes,
    write_release,
)
from geoplant.synthetic.world import PRESETS


def read_bytes(root: Path, loc: Location) -> bytes:
    if loc.member is None:
        return (root / loc.path).read_bytes()
    with zipfile.ZipFile(root / loc.path) as archive:
        return archive.read(loc.member)


def read_csv(root: Path, loc: Location, **kwargs: object) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(read_bytes(root, loc)), **kwargs)  # type: ignore[arg-type]


def release(request: pytest.FixtureRequest, layout: str) -> Path:
    return request.getfixturevalue(f"{layout}_tiny")


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_metadata_files_have_the_real_columns_and_dtypes(request: pytest.FixtureRequest,
                                                         layout: str) -> None:
    root = release(request, layout)
    po = read_csv(root, layouts.location(layout, "metadata.po"))
    assert tuple(po.columns) == METADATA_COLUMNS[layout]["po"]
    assert tuple(po.columns[:len(PO_COLUMNS)]) == PO_COLUMNS
    assert len(po) == PRESETS["tiny"].n_po_rows
    assert po["speciesId"].dtype == np.float64 and po["month"].dtype == np.float64
    assert po["taxonRank"].eq("SPECIES").all()
    assert (pd.to_datetime(po["date"]).dt.day_of_year == po["dayOfYear"]).all()
    for split in SPLITS[layout][1:]:
        loc = layouts.location(layout, "metadata.pa", split)
        meta = read_csv(root, loc)
        text = read_bytes(root, loc).decode()
        if split == "pa_train":
            assert tuple(meta.columns) == METADATA_COLUMNS[layout]["pa"]
            assert tuple(meta.columns[:len(PA_TRAIN_COLUMNS)]) == PA_TRAIN_COLUMNS
            # speciesId is written as a float, one row per (survey, species), grouped by survey
            assert re.search(r",\d+\.0,\d+[,\n]", text)
            assert meta["surveyId"].is_monotonic_increasing
            assert not meta.duplicated(["surveyId", "speciesId"]).any()
            assert meta.groupby("surveyId")["lon"].nunique().eq(1).all()
        else:
            assert tuple(meta.columns) == METADATA_COLUMNS[layout]["pa_test"]
            assert tuple(meta.columns[:len(PA_TEST_COLUMNS)]) == PA_TEST_COLUMNS
            assert meta["surveyId"].is_unique
        assert meta["year"].between(2017, 2021).all()
        assert set(meta["region"]) <= {
            "ALPINE", "ATLANTIC", "BLACK SEA", "BOREAL", "CONTINENTAL", "MEDITERRANEAN",
            "PANNONIAN", "STEPPIC"}
        assert meta["lon"].between(-10, 32).all() and meta["lat"].between(35, 71).all()
    train = read_csv(root, layouts.location(layout, "metadata.pa", "pa_train"))
    # The real quirks: blank and -inf plot areas, blank uncertainties.
    assert train["areaInM2"].isna().any()
    assert np.isneginf(train["areaInM2"]).any()
    richness = train.groupby("surveyId").size()
    assert richness.min() >= 1 and 5 < richness.mean() < 15
    # Long tail: the commonest species is far commoner than the median one.
    freq = train["speciesId"].value_counts()
    assert freq.iloc[0] > 10 * freq.median()


def test_geoplant_metadata_has_the_columns_geoplant_code_reads(geoplant_tiny: Path) -> None:
    """PA taxonRank/county/district and PO region/district (plantnet/GeoPlant @ 88b090c); the
    places come from the location alone, so a survey and a nearby one share its district."""
    train = read_csv(geoplant_tiny, layouts.location("geoplant", "metadata.pa", "pa_train"))
    assert train["taxonRank"].eq("SPECIES").all()
    per_survey = train.groupby("surveyId")[["county", "district"]].nunique()
    assert per_survey.eq(1).all().all()
    sites = train.drop_duplicates("surveyId")
    assert 5 < sites["district"].nunique() < len(sites)  # several surveys per district
    assert sites.groupby("district")["county"].nunique().eq(1).all()  # districts nest
    spread = sites.groupby("district")[["lon", "lat"]].agg(lambda v: v.max() - v.min())
    assert (spread <= 0.5).all().all()
    po = read_csv(geoplant_tiny, layouts.location("geoplant", "metadata.po"))
    assert set(po["region"]) <= {"ALPINE", "ATLANTIC", "BLACK SEA", "BOREAL", "CONTINENTAL",
                                 "MEDITERRANEAN", "PANNONIAN", "STEPPIC"}
    assert po["district"].notna().all() and po["district"].nunique() > 20
    test = read_csv(geoplant_tiny, layouts.location("geoplant", "metadata.pa", "pa_test_iid"))
    assert {"county", "district"} <= set(test.columns) and "taxonRank" not in test.columns
    # the reader keeps them all
    records = RawRelease(geoplant_tiny).read_metadata("pa_train")
    assert records["district"].astype(str).tolist() == train["district"].tolist()


def test_geoplant_human_footprint_is_the_v2_product(geoplant_tiny: Path) -> None:
    """The default download: v2 tables (a header unlike v1's; the IID one under the
    manifest's name) and the v2 raster archive only."""
    values = geoplant_tiny / "GeoPlantData/EnvironmentalValues/HumanFootprint"
    assert sorted(p.name for p in (values / "v2").iterdir()) == [
        "PA-test-glc25-human_footprint.csv", "PA-test-human_footprint.csv",
        "PA-test-ood-human_footprint.csv", "PA-train-human_footprint.csv",
        "PO-train-human_footprint.csv"]
    assert not (values / "v1").exists()
    header = (values / "v2/PA-train-human_footprint.csv").read_text().split("\n", 1)[0]
    assert header.split(",")[1:] == list(HFP_V2_COLUMNS)
    assert not set(HFP_V2_COLUMNS) & set(ENV_COLUMNS["human_footprint"])
    rasters = geoplant_tiny / "GeoPlantData/EnvironmentalRasters/HumanFootprint"
    assert [p.name for p in rasters.rglob("*.zip")] == ["OSM_detailed.zip"]


def test_surveyids_never_collide_between_po_and_pa(glc24_tiny: Path) -> None:
    po = read_csv(glc24_tiny, layouts.location("glc24", "metadata.po"))
    pa = [read_csv(glc24_tiny, layouts.location("glc24", "metadata.pa", s))["surveyId"]
          for s in ("pa_train", "pa_test")]
    assert not set(po["surveyId"]) & set(pa[0])
    assert not set(pa[0]) & set(pa[1])
    assert min(pa[0].min(), pa[1].min()) >= 212


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_env_values_climate_and_landsat_tables(request: pytest.FixtureRequest,
                                               layout: str) -> None:
    root = release(request, layout)
    for split in SPLITS[layout][1:]:
        ids = read_csv(root, layouts.location(layout, "metadata.pa", split))["surveyId"].unique()
        for family, columns in ENV_COLUMNS.items():
            if layout == "geoplant" and family == "human_footprint":
                columns = HFP_V2_COLUMNS  # v2, not the v1 (K24) columns
            table = read_csv(root, layouts.location(layout, f"env.{family}", split))
            assert tuple(table.columns) == ("surveyId", *columns)
            assert np.array_equal(table["surveyId"], ids)
        bio = read_csv(root, layouts.location(layout, "env.bioclimatic", split))
        assert bio.drop(columns="surveyId").dtypes.eq(np.int64).all()
        climate = read_csv(root, layouts.location(layout, "climate.values", split))
        assert climate.shape == (len(ids), 913)
        assert list(climate.columns[1:5]) == ["Bio-pr_01_2000", "Bio-tas_01_2000",
                                              "Bio-tasmax_01_2000", "Bio-tasmin_01_2000"]
        assert climate.columns[-1] == "Bio-tasmin_12_2018"
        for band in LANDSAT_BANDS:
            landsat = read_csv(root, layouts.location(layout, "landsat.values", split, band=band))
            assert landsat.shape == (len(ids), 85)
            assert landsat.columns[1] == "2000_1" and landsat.columns[-1] == "2020_4"


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_cubes_match_their_csv_values_and_hide_years_after_the_survey(
        request: pytest.FixtureRequest, layout: str) -> None:
    root = release(request, layout)
    split = SPLITS[layout][2]  # a test split
    meta = read_csv(root, layouts.location(layout, "metadata.pa", split))
    climate = read_csv(root, layouts.location(layout, "climate.values", split))
    bands = {b: read_csv(root, layouts.location(layout, "landsat.values", split, band=b))
             for b in LANDSAT_BANDS}
    for row in range(0, len(meta), 7):
        sid, year = int(meta["surveyId"][row]), int(meta["year"][row])
        c = torch.load(io.BytesIO(read_bytes(root, layouts.location(
            layout, "climate.cube", split, survey_id=sid))), weights_only=True)
        assert c.dtype == torch.float32 and tuple(c.shape) == (4, 19, 12)
        assert (c[2] >= c[1]).all() and (c[1] >= c[3]).all()  # tasmax >= tas >= tasmin
        for v, var in enumerate(CLIMATE_VARIABLES):
            assert c[v, 18, 11] == climate.loc[row, f"Bio-{var}_12_2018"]
            assert c[v, 0, 0] == climate.loc[row, f"Bio-{var}_01_2000"]
        ls = torch.load(io.BytesIO(read_bytes(root, layouts.location(
            layout, "landsat.cube", split, survey_id=sid))), weights_only=True)
        assert tuple(ls.shape) == (6, 4, 21)
        for b, band in enumerate(LANDSAT_BANDS):
            csv_row = bands[band].loc[row, "2000_1":].to_numpy(dtype=np.float32).reshape(21, 4)
            np.testing.assert_array_equal(ls[b].numpy().T, csv_row)
        after = np.arange(2000, 2021) > year
        assert torch.isnan(ls[:, :, after]).all()
        if not torch.isnan(ls[:, :, ~after]).all():
            assert not torch.isnan(ls[:, :, ~after]).any()


def test_glc24_cube_files_are_named_like_the_real_ones(glc24_tiny: Path) -> None:
    cubes = glc24_tiny / "TimeSeries-Cubes" / "TimeSeries-Cubes"
    train = sorted((cubes / "GLC24-PA-train-landsat_time_series").iterdir())[0]
    test = sorted((cubes / "GLC24-PA-test-landsat_time_series").iterdir())[0]
    assert re.fullmatch(r"GLC24-PA-train-landsat-time-series_\d+_cube\.pt", train.name)
    assert re.fullmatch(r"GLC24-PA-test-landsat_time_series_\d+_cube\.pt", test.name)
    # The archive's record prefix is the file stem, as in the real files.
    with zipfile.ZipFile(train) as archive:
        assert archive.namelist()[0].startswith(train.stem + "/")
    env = glc24_tiny / "EnvironmentalRasters" / "EnvironmentalRasters"
    assert (env / "Climate" / "Average 1981-2010").is_dir()
    assert (env / "Human Footprint").is_dir()


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_sentinel_patches(request: pytest.FixtureRequest, layout: str) -> None:
    root = release(request, layout)
    meta = read_csv(root, layouts.location(layout, "metadata.pa", "pa_train"))
    for sid in meta["surveyId"].unique()[:5]:
        rgb_loc = layouts.location(layout, "s2.rgb", "pa_train", survey_id=sid)
        cd, ab = layouts.patch_folders(sid)
        assert str(rgb_loc).endswith(f"/{cd}/{ab}/{sid}.jpeg")
        rgb = Image.open(io.BytesIO(read_bytes(root, rgb_loc)))
        nir = Image.open(io.BytesIO(read_bytes(
            root, layouts.location(layout, "s2.nir", "pa_train", survey_id=sid))))
        assert (rgb.format, rgb.mode, rgb.size) == ("JPEG", "RGB", (128, 128))
        assert (nir.format, nir.mode, nir.size) == ("JPEG", "L", (128, 128))
        if layout == "geoplant":
            import rasterio
            from rasterio.io import MemoryFile

            blob = read_bytes(root, layouts.location(layout, "s2.tiff", "pa_train",
                                                     survey_id=sid))
            with MemoryFile(blob) as memory, memory.open() as tif:
                assert (tif.count, tif.height, tif.width) == (4, 64, 64)
                assert tif.dtypes[0] == "int16" and tif.crs == rasterio.crs.CRS.from_epsg(3035)
                assert tif.descriptions == ("red", "green", "blue", "nir")
                assert tif.read().min() >= 0


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_environmental_rasters_are_geotiffs_in_epsg4326(request: pytest.FixtureRequest,
                                                        layout: str) -> None:
    import rasterio

    root = release(request, layout)
    raw = RawRelease(root)
    names = raw.raster_names()
    assert {"bio1", "bio19", "elevation", "landcover", "soil_phh2o"} <= set(names)
    # the default download's human footprint: v1 (Venter) in glc24, v2 (OSM) in geoplant
    footprint = "hfp_OSM_roads" if layout == "geoplant" else "hfp_HFP2009"
    assert footprint in names and len([n for n in names if n.startswith("hfp_")]) == (
        7 if layout == "geoplant" else 16)
    for name in names:
        loc = raw.location(f"raster.{name}")
        path = f"/vsizip/{root / loc.path}/{loc.member}" if loc.member else root / loc.path
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 4326
            assert src.count == (13 if name == "landcover" else 1)
            assert src.bounds.left == -10 and src.bounds.top == 71


def test_pa_signal_and_truth_agree(glc24_tiny: Path) -> None:
    truth = glc24_tiny / "truth"
    ids = np.load(truth / "pa_test_survey_ids.npy")
    prob = np.load(truth / "pa_test_probabilities.npy")
    species = pd.read_csv(truth / "species.csv")["speciesId"].to_numpy()
    test = read_csv(glc24_tiny, layouts.location("glc24", "metadata.pa", "pa_test"))
    assert np.array_equal(ids, test["surveyId"].to_numpy())
    assert prob.shape == (len(ids), len(species)) and prob.dtype == np.float32
    presences = pd.read_csv(truth / "pa_test_presences.csv")
    assert set(presences["surveyId"]) == set(ids)  # every survey lists >= 1 species
    labels = np.zeros_like(prob, dtype=bool)
    labels[np.searchsorted(ids, presences["surveyId"]),
           np.searchsorted(species, presences["speciesId"])] = True
    # Labels are draws from the probabilities: calibrated on average, and informative.
    assert abs(labels.mean() - prob.mean()) < 0.3 * prob.mean()
    assert prob[labels].mean() > 3 * prob[~labels].mean()
    solution = pd.read_csv(truth / "pa_test_solution.csv")
    assert dict(zip(solution["surveyId"], solution["predictions"].str.split().map(len),
                    strict=True)) == presences.groupby("surveyId").size().to_dict()


def test_same_seed_same_bytes_other_seed_other_world(tmp_path: Path, glc24_tiny: Path) -> None:
    again = write_release(tmp_path / "again", preset="tiny", seed=0, progress=False).root
    first = {p.relative_to(glc24_tiny): p for p in iter_release_files(glc24_tiny)}
    second = {p.relative_to(again): p for p in iter_release_files(again)}
    assert first.keys() == second.keys()
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    differing = [k for k in first if digest(first[k]) != digest(second[k])]
    assert differing == []
    other = write_release(tmp_path / "other", preset="tiny", seed=1, progress=False).root
    a = (glc24_tiny / "GLC24_PA_metadata_train.csv").read_bytes()
    assert a != (other / "GLC24_PA_metadata_train.csv").read_bytes()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoplant.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_help_and_version() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("sample", "download"):
        assert re.search(rf"^\s+{command}\s+\S", out.stdout, re.M)
    assert run_cli("--version").stdout.startswith("geoplant ")


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--layout", "glc99"], "invalid choice: 'glc99'"),
    (["--seed", "x"], "invalid int value"),
])
def test_cli_bad_arguments_give_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                    message: str) -> None:
    out = run_cli("sample", "--out", str(tmp_path / "o"), *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_refuses_non_empty_and_unwritable_out(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    out = run_cli("sample", "--out", str(busy))
    assert out.returncode == 2 and "--overwrite" in out.stderr and str(busy) in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and (busy / "keep.txt").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = run_cli("sample", "--out", str(blocker / "below"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(blocker / "below") in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_truth_has_a_status_table_for_the_map_indicators(glc24_tiny: Path) -> None:
    truth = glc24_tiny / "truth"
    status = pd.read_csv(truth / "status.csv")
    species = pd.read_csv(truth / "species.csv")
    assert sorted(status["speciesId"]) == sorted(species["speciesId"])
    counts = status["status"].value_counts()
    assert set(counts.index) == {"CR", "EN", "VU", "NT", "LC"}
    rarest = species.sort_values(["prevalence", "speciesId"])["speciesId"].iloc[0]
    assert status.set_index("speciesId").loc[rarest, "status"] == "CR"


def _cell_values(grid: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    rows = np.clip(((71.0 - lat) / 0.1).astype(int), 0, grid.shape[0] - 1)
    cols = np.clip(((lon + 10.0) / 0.1).astype(int), 0, grid.shape[1] - 1)
    return grid[rows, cols]


def test_po_and_pa_keep_the_real_release_proportions(glc24_tiny: Path) -> None:
    """Real: 5.08M PO vs 1.48M PA rows, 9,709 PO species ⊃ 5,016 PA species, PO dense where
    PA is sparse, PO drawn to towns and roads."""
    po = read_csv(glc24_tiny, layouts.location("glc24", "metadata.po"))
    pa = read_csv(glc24_tiny, layouts.location("glc24", "metadata.pa", "pa_train"))
    test = pd.read_csv(glc24_tiny / "truth" / "pa_test_presences.csv")
    assert 3.0 < len(po) / len(pa) < 3.8
    po_species = set(po["speciesId"].astype(int))
    pa_species = set(pa["speciesId"].astype(int)) | set(test["speciesId"])
    assert pa_species <= po_species
    assert len(po_species) > 1.5 * len(pa_species)
    # The species PA misses are the gap species, whose ranges lie where PA has no plots.
    species = pd.read_csv(glc24_tiny / "truth" / "species.csv")
    gap = set(species.loc[species["gap_species"] == 1, "speciesId"])
    assert 0.4 < len(gap) / len(species) < 0.6
    assert len(po_species - pa_species) > 0.6 * len(gap) and not (po_species - pa_species) - gap
    world = load_world(glc24_tiny / "truth")
    sites = pa.drop_duplicates("surveyId")
    pa_cov = _cell_values(world.archive_coverage(), sites["lon"].to_numpy(),
                          sites["lat"].to_numpy())
    po_cov = _cell_values(world.archive_coverage(), po["lon"].to_numpy(), po["lat"].to_numpy())
    assert (pa_cov == 0).mean() < 0.02 and (po_cov == 0).mean() > 0.3  # PO fills PA's gaps
    assert po_cov.mean() < 0.7 * pa_cov.mean()
    hfp = world.grids["hfp"]
    assert (_cell_values(hfp, po["lon"].to_numpy(), po["lat"].to_numpy()).mean()
            > 2 * _cell_values(hfp, sites["lon"].to_numpy(), sites["lat"].to_numpy()).mean())


def test_demo_preset_holds_out_most_surveys_and_keeps_tiny_training() -> None:
    demo = PRESETS["demo"]
    assert demo.n_species <= 150 and demo.n_po_rows > 3 * 1_000 * 7
    sizes = pa_split_sizes("demo")
    assert 1_000 <= sizes["pa_train"] <= 1_500
    assert sizes["pa_test"] >= 2_400  # +-0.01 on samples-F1 needs ~1,100 at sd 0.17
    assert sum(sizes.values()) == demo.n_pa_surveys
    # two test splits of a large fraction share it, leaving surveys to train on
    split = pa_split_sizes("demo", layout="geoplant")
    assert split["pa_train"] >= 1_000 and min(split["pa_test_iid"], split["pa_test_glc25"]) > 1_000
    with pytest.raises(GeoplantError, match="unknown preset 'huge'"):
        pa_split_sizes("huge")
