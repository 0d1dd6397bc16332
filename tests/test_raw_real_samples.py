"""The raw readers on the only real GeoPlant bytes we have (shared/real-samples/geoplant)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplant.errors import GeoplantError
from geoplant.raw import (
    RawRelease,
    decode_jpeg,
    read_metadata_csv,
    read_patch_jpeg,
    read_patch_tiff,
    read_pt_cube,
    read_pt_cube_torch,
    read_tiff_profile,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "real-samples" / "geoplant"
pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"real sample folder {SAMPLES} is absent (sibling shared/)"
)
G24 = SAMPLES / "glc24-kaggle-layout"
G25 = SAMPLES / "glc25-kaggle-layout"
CUBES24 = G24 / "TimeSeries-Cubes" / "TimeSeries-Cubes"
CLIM24 = CUBES24 / "GLC24-PA-train-bioclimatic_monthly" / (
    "GLC24-PA-train-bioclimatic_monthly_1322301_cube.pt")
LAND24 = CUBES24 / "GLC24-PA-train-landsat_time_series" / (
    "GLC24-PA-train-landsat-time-series_1322301_cube.pt")
CLIM25 = G25 / "BioclimTimeSeries/cubes/PA-test/GLC25-PA-test-bioclimatic_monthly_5000108_cube.pt"
LAND25 = (G25 / "SateliteTimeSeries-Landsat/cubes/PA-test"
          / "GLC25-PA-test-landsat_time_series_5000108_cube.pt")
RGB = G24 / "PA_Train_SatellitePatches_RGB/pa_train_patches_rgb/01/23/1322301.jpeg"
NIR = G24 / "PA_Train_SatellitePatches_NIR/pa_train_patches_nir/01/23/1322301.jpeg"
TIFF = G25 / "SatelitePatches/PA-test/08/01/5000108.tiff"


# -- metadata ---------------------------------------------------------------------------------


def _glc25_without_reused_id(tmp_path: Path) -> Path:
    """malpolon's GLC25 fixture gives surveyId 1027998 three different places (one of them in
    Belgium though 'Denmark'): a reused id, which the reader refuses. Keep its first row."""
    lines = (G25 / "metadata.csv").read_text().splitlines(keepends=True)
    kept = [line for i, line in enumerate(lines) if i < 2 or ",1027998," not in line]
    out = tmp_path / "metadata.csv"
    out.write_text("".join(kept))
    return out


def test_glc25_fixture_reused_survey_id_is_refused() -> None:
    with pytest.raises(GeoplantError, match=r"metadata\.csv: line 3: surveyId 1027998 has lon "
                       r"10\.1432\d* but 10\.3555\d* on line 2"):
        read_metadata_csv(G25 / "metadata.csv", "pa")


@pytest.mark.parametrize("folder", [G24, G25])
def test_metadata_sample_dtypes_and_values(folder: Path, tmp_path: Path) -> None:
    path = folder / "metadata.csv" if folder == G24 else _glc25_without_reused_id(tmp_path)
    df = read_metadata_csv(path, "pa")
    assert len(df) == (100 if folder == G24 else 98)
    assert df["speciesId"].dtype == np.int32
    assert df["surveyId"].dtype == np.int64
    assert df["year"].dtype == np.int16
    assert df["lon"].dtype == np.float64 and df["lat"].dtype == np.float64
    assert isinstance(df["region"].dtype, pd.CategoricalDtype)
    assert isinstance(df["country"].dtype, pd.CategoricalDtype)
    assert "subset" in df.columns  # malpolon's extra column is kept
    assert df["year"].between(2017, 2021).all()
    assert set(df["region"].cat.categories) <= {
        "ALPINE", "ATLANTIC", "BLACK SEA", "BOREAL", "CONTINENTAL", "MEDITERRANEAN",
        "PANNONIAN", "STEPPIC"}


def test_glc24_metadata_quirks() -> None:
    df = read_metadata_csv(G24 / "metadata.csv", "pa")
    first = df.iloc[0]
    # '6310.0' in the file -> the integer 6310
    assert (int(first["speciesId"]), int(first["surveyId"])) == (6310, 1167600)
    row = df.loc[df["surveyId"] == 1322301].iloc[0]
    assert row["areaInM2"] == -np.inf  # -inf kept as a real value
    assert (row["speciesId"], row["country"], row["region"]) == (8748, "Belgium", "ATLANTIC")
    assert row["lon"] == pytest.approx(5.19824) and row["lat"] == pytest.approx(51.08484)
    # empty areaInM2 -> NaN (third row, surveyId 594792)
    assert np.isnan(df.loc[df["surveyId"] == 594792, "areaInM2"]).all()
    assert np.isinf(df["areaInM2"]).sum() == 2  # 1322301 and 663200


def test_glc25_metadata_dummy_test_labels(tmp_path: Path) -> None:
    df = read_metadata_csv(_glc25_without_reused_id(tmp_path), "pa")
    test = df[df["surveyId"] == 5000108]
    assert sorted(test["speciesId"].tolist()) == [1, 2]
    assert (test["subset"] == "test").all()


# -- cubes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CLIM24, CLIM25])
def test_climate_cube_real(path: Path) -> None:
    cube = read_pt_cube(path, (4, 19, 12))
    assert cube.dtype == np.float32 and cube.flags.c_contiguous
    assert not np.isnan(cube).any()
    pr, tas, tasmax, tasmin = cube
    assert (tasmax >= tas).all() and (tas >= tasmin).all()
    assert (pr >= 0).all()
    # seasonal cycle on the month axis (both surveys are in Europe, northern hemisphere)
    assert tas[:, 6].mean() > tas[:, 0].mean() + 50  # July warmer than January, 0.1 K units


def test_climate_cube_1322301_values() -> None:
    cube = read_pt_cube(CLIM24, (4, 19, 12))
    tas = cube[1]
    assert 2700 < tas.min() and tas.max() < 3050  # Belgium: 0.1 K around 270-300 K
    assert 300 < cube[0].min() and cube[0].max() < 25_000  # spec: pr spread 328-21042


@pytest.mark.parametrize("path", [LAND24, LAND25])
def test_landsat_cube_real(path: Path) -> None:
    cube = read_pt_cube(path, (6, 4, 21))
    assert cube.dtype == np.float32
    assert not np.isnan(cube).any()
    red, _green, blue, nir, swir1, swir2 = cube.reshape(6, -1).mean(axis=1)
    assert nir > swir1 > swir2 and nir > red and nir > blue  # vegetation signature


@pytest.mark.parametrize("path", [CLIM24, CLIM25, LAND24, LAND25])
def test_fast_pt_path_equals_torch_load(path: Path) -> None:
    torch = pytest.importorskip("torch")
    ref = torch.load(path, weights_only=True).numpy()
    fast = read_pt_cube(path.read_bytes(), ref.shape)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(read_pt_cube_torch(path, ref.shape), ref)


def test_real_cube_wrong_family_is_named() -> None:
    with pytest.raises(GeoplantError, match="GLC24-PA-train-bioclimatic_monthly_1322301") as e:
        read_pt_cube(CLIM24, (6, 4, 21))
    assert "shape (4, 19, 12)" in str(e.value)


# -- patches ----------------------------------------------------------------------------------


def test_jpeg_pair_real() -> None:
    patch = read_patch_jpeg(RGB, NIR)
    assert patch.shape == (4, 128, 128) and patch.dtype == np.uint8
    means = patch.reshape(4, -1).mean(axis=1)
    assert 30 < means[:3].min() and means[:3].max() < 160
    assert means[3] > means[:3].max()  # NIR brighter than visible over vegetation
    assert patch.std(axis=(1, 2)).min() > 3  # real texture, not a grey fill


def test_jpeg_channels_real() -> None:
    assert decode_jpeg(RGB.read_bytes(), 3).shape == (128, 128, 3)
    assert decode_jpeg(NIR.read_bytes(), 1).shape == (128, 128, 1)
    with pytest.raises(GeoplantError, match=r"1322301\.jpeg.*1 channel"):
        decode_jpeg(NIR.read_bytes(), 3, name=str(NIR))
    with pytest.raises(GeoplantError, match=r"pa_train_patches_nir/.*has 1 channel"):
        read_patch_jpeg(NIR, RGB, names=(str(NIR), str(RGB)))  # swapped trees


def test_jpeg_backends_agree_real() -> None:
    pytest.importorskip("simplejpeg")
    a = read_patch_jpeg(RGB, NIR, backend="simplejpeg")
    b = read_patch_jpeg(RGB, NIR, backend="pillow")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_truncated_real_jpeg(tmp_path: Path) -> None:
    bad = tmp_path / "1322301.jpeg"
    bad.write_bytes(RGB.read_bytes()[:1500])
    with pytest.raises(GeoplantError, match=r"1322301\.jpeg.*truncated"):
        read_patch_jpeg(bad, NIR)


def test_tiff_real() -> None:
    arr = read_patch_tiff(TIFF)
    assert arr.shape == (4, 64, 64) and arr.dtype == np.int16
    assert (arr.min(axis=(1, 2))[[0, 3]].tolist(), arr.max(axis=(1, 2))[[0, 3]].tolist()) == (
        [219, 1595], [1294, 5308])  # red and nir ranges from SOURCES.md
    prof = read_tiff_profile(TIFF)
    assert prof["crs"] == "EPSG:3035"
    assert prof["descriptions"] == ("red", "green", "blue", "nir")
    assert prof["nodata"] == -1 and prof["transform"][0] == 10.0  # 10 m pixels
    assert np.array_equal(read_patch_tiff(io.BytesIO(TIFF.read_bytes()).getvalue()), arr)


# -- the real glc24 tree through RawRelease ---------------------------------------------------


def test_raw_release_reads_real_glc24_tree() -> None:
    # Not a complete release (no metadata tables), so no detection: the layout is given.
    with pytest.raises(GeoplantError, match="no GeoPlant release found"):
        RawRelease(G24)
    with RawRelease(G24, layout="glc24") as rel:
        np.testing.assert_array_equal(rel.read_climate_cube("pa_train", 1322301),
                                      read_pt_cube(CLIM24))
        np.testing.assert_array_equal(rel.read_landsat_cube("pa_train", 1322301),
                                      read_pt_cube(LAND24))
        np.testing.assert_array_equal(rel.read_s2_jpeg("pa_train", 1322301),
                                      read_patch_jpeg(RGB, NIR))
        batch = rel.read_climate_cubes("pa_train", [1322301, 42], on_error="skip")
        assert batch.ok.tolist() == [True, False]
        assert np.isnan(batch.data[1]).all() and not np.isnan(batch.data[0]).any()
        assert "42_cube.pt" in str(batch.errors[42])
        with pytest.raises(GeoplantError, match=r"02/23/1322302\.jpeg: missing file"):
            rel.read_s2_jpeg("pa_train", 1322302)
