"""Raw readers on small hand-built files and releases: validation and error messages."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplant import layouts
from geoplant.errors import GeoplantError
from geoplant.layouts import CLIMATE_VARIABLES, ENV_COLUMNS, LANDSAT_BANDS
from geoplant.raw import (
    CLIMATE_VALUE_COLUMNS,
    LANDSAT_VALUE_COLUMNS,
    RawRelease,
    RowProblem,
    iter_metadata_csv,
    read_metadata_csv,
    read_patch_jpeg,
    read_patch_tiff,
    read_pt_cube,
    read_values_csv,
)

torch = pytest.importorskip("torch")

PA_HEADER = "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId\n"


def _jpeg(channels: int, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (128, 128, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if channels == 1 else arr).save(buf, format="JPEG")
    return buf.getvalue()


def _pt(tensor: object) -> bytes:
    buf = io.BytesIO()
    torch.save(tensor, buf)
    return buf.getvalue()


def _tiff(arr: np.ndarray) -> bytes:
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                      count=arr.shape[0], dtype=arr.dtype, crs="EPSG:3035",
                      transform=from_origin(4e6, 3e6, 10, 10), compress="lzw") as ds:
            ds.write(arr)
        return mem.read()


# -- .pt cubes --------------------------------------------------------------------------------


def test_pt_fast_path_views_match_torch(tmp_path: Path) -> None:
    base = torch.arange(2 * 6 * 4 * 21, dtype=torch.float32).reshape(2, 21, 4, 6)
    for t in (base[1].permute(2, 1, 0), base[0].permute(2, 1, 0).flip(2)):
        data = _pt(t)
        np.testing.assert_array_equal(read_pt_cube(data, (6, 4, 21)), t.numpy())
    t = base[1].permute(2, 1, 0)  # non-contiguous view with a storage offset
    t[0, 0, 0] = float("nan")
    assert np.isnan(read_pt_cube(_pt(t), (6, 4, 21))[0, 0, 0])


def test_pt_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "GLC24-PA-train-bioclimatic_monthly_7_cube.pt"
    p.write_bytes(_pt(torch.zeros(3, 3)))
    with pytest.raises(GeoplantError, match=r"_7_cube\.pt: cube has shape \(3, 3\)"):
        read_pt_cube(p, (4, 19, 12))
    p.write_bytes(_pt(torch.zeros(4, 19, 12, dtype=torch.float64)))
    with pytest.raises(GeoplantError, match=r"_7_cube\.pt: cube has dtype float64"):
        read_pt_cube(p, (4, 19, 12))
    p.write_bytes(_pt(torch.zeros(4, 19, 12))[:-300])
    with pytest.raises(GeoplantError, match=r"_7_cube\.pt: corrupt"):
        read_pt_cube(p, (4, 19, 12))
    p.write_bytes(_pt({"a": torch.zeros(2)}))
    with pytest.raises(GeoplantError, match=r"_7_cube\.pt"):
        read_pt_cube(p)
    with pytest.raises(GeoplantError, match=r"nothere\.pt: missing"):
        read_pt_cube(tmp_path / "nothere.pt")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch EVIL_MARKER",))


def test_pt_never_unpickles_arbitrary_objects(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(_Evil(), protocol=2))
        zf.writestr("archive/byteorder", "little")
    with pytest.raises(GeoplantError, match="refusing to load global"):
        read_pt_cube(buf.getvalue(), name="evil.pt")
    assert not (tmp_path / "EVIL_MARKER").exists()


# -- patches ----------------------------------------------------------------------------------


def test_jpeg_errors(tmp_path: Path) -> None:
    rgb, nir = tmp_path / "1.jpeg", tmp_path / "n1.jpeg"
    rgb.write_bytes(_jpeg(3))
    nir.write_bytes(_jpeg(1))
    assert read_patch_jpeg(rgb, nir).shape == (4, 128, 128)
    rgb.write_bytes(_jpeg(3)[:-400])
    with pytest.raises(GeoplantError, match=r"1\.jpeg: truncated JPEG"):
        read_patch_jpeg(rgb, nir)
    rgb.write_bytes(b"not a jpeg at all")
    with pytest.raises(GeoplantError, match=r"1\.jpeg: not a JPEG"):
        read_patch_jpeg(rgb, nir)
    with pytest.raises(GeoplantError, match=r"missing\.jpeg: missing RGB patch file"):
        read_patch_jpeg(tmp_path / "missing.jpeg", nir)


def test_tiff_errors(tmp_path: Path) -> None:
    good = np.arange(4 * 64 * 64, dtype=np.int16).reshape(4, 64, 64)
    np.testing.assert_array_equal(read_patch_tiff(_tiff(good)), good)
    p = tmp_path / "5.tiff"
    p.write_bytes(_tiff(good[:3]))
    with pytest.raises(GeoplantError, match=r"5\.tiff: GeoTIFF patch has shape \(3, 64, 64\)"):
        read_patch_tiff(p)
    p.write_bytes(_tiff(good)[:500])
    with pytest.raises(GeoplantError, match=r"5\.tiff: corrupt GeoTIFF"):
        read_patch_tiff(p)


# -- tables -----------------------------------------------------------------------------------


def test_metadata_missing_column_names_file_and_column(tmp_path: Path) -> None:
    p = tmp_path / "GLC24_PA_metadata_train.csv"
    p.write_text(PA_HEADER.replace(",region", "") + "1,2,2019,1,,X,6.0,5\n")
    with pytest.raises(GeoplantError, match=r"metadata_train\.csv: 1 missing column\(s\) 'region'"):
        read_metadata_csv(p, "pa")


def test_metadata_bad_species_raise_drop_keep(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text(PA_HEADER + "1,45,2019,1,-inf,ATLANTIC,France,6.0,5\n"
                 "1,45,2019,1,10,ATLANTIC,France,6.5,6\n"
                 "1,,2019,1,10,ATLANTIC,France,7.0,7\n")
    with pytest.raises(GeoplantError, match=r"m\.csv: 2 bad row.*line 3: speciesId is not an "
                                             r"integer; line 4: lat is empty/NaN"):
        read_metadata_csv(p, "pa")
    probs: list[RowProblem] = []
    df = read_metadata_csv(p, "pa", bad_rows="drop", problems=probs)
    assert df["surveyId"].tolist() == [5] and df["areaInM2"].tolist() == [-np.inf]
    assert [(q.line, q.survey_id, q.column) for q in probs] == [(3, 6, "speciesId"),
                                                                 (4, 7, "lat")]
    probs.clear()
    df = read_metadata_csv(p, "pa", bad_rows="keep", problems=probs)
    assert df["surveyId"].tolist() == [5, 7] and np.isnan(df["lat"].iloc[1])
    assert [q.action for q in probs] == ["dropped", "kept"]
    with pytest.warns(UserWarning, match="2 row problem"):
        read_metadata_csv(p, "pa", bad_rows="keep")


def test_metadata_unparseable_text(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text(PA_HEADER + "east,45,2019,1,1,A,B,6.0,5\n")
    with pytest.raises(GeoplantError, match=r"m\.csv: cannot parse CSV.*'east'"):
        read_metadata_csv(p, "pa")


def test_po_streaming_blocks(tmp_path: Path) -> None:
    p = tmp_path / "po.csv"
    n = 3000
    rows = [",".join(layouts.PO_COLUMNS)]
    for i in range(n):
        sp = "12.5" if i == 2500 else f"{i % 7}.0"
        rows.append(f"Pl@ntNet,2019,5.0,5.0,43.7,1.5,6.0,SPECIES,2019-05-05,125,{sp},{i + 1}")
    p.write_text("\n".join(rows) + "\n")
    probs: list[RowProblem] = []
    blocks = list(iter_metadata_csv(p, "po", block_bytes=20_000, bad_rows="drop",
                                    problems=probs))
    assert len(blocks) > 3
    df = pd.concat(blocks, ignore_index=True)
    assert len(df) == n - 1 and df["surveyId"].is_monotonic_increasing
    assert [(q.line, q.survey_id) for q in probs] == [(2502, 2501)]  # line numbers span blocks
    with pytest.warns(UserWarning, match=r"po\.csv: 1 row problem"):
        full = read_metadata_csv(p, "po", bad_rows="drop")
    assert full["month"].dtype == "Int16" and full["date"].dt.year.eq(2019).all()
    assert isinstance(full["publisher"].dtype, pd.CategoricalDtype)


def test_values_inf_rules(tmp_path: Path) -> None:
    p = tmp_path / "hfp.csv"
    cols = ENV_COLUMNS["human_footprint"]
    p.write_text("surveyId," + ",".join(cols) + "\n1," + ",".join(["inf"] * len(cols)) + "\n")
    assert np.isinf(read_values_csv(p, cols, allow_inf=True).iloc[0, 1:]).all()
    with pytest.raises(GeoplantError, match=r"hfp\.csv: .*is infinite"):
        read_values_csv(p, cols)
    p.write_text("surveyId,Elevation\n1,3\n1,4\n")
    with pytest.raises(GeoplantError, match="duplicated surveyId"):
        read_values_csv(p, ("Elevation",))


# -- hand-built releases ----------------------------------------------------------------------


def _put(root: Path, loc: layouts.Location, data: bytes) -> None:
    path = root / loc.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if loc.member is None:
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "a" if path.exists() else "w") as zf:
            zf.writestr(loc.member, data)


def _climate(sid: int) -> np.ndarray:
    return (np.arange(4 * 19 * 12, dtype=np.float32).reshape(4, 19, 12) + sid)


def _tiny(root: Path, layout: str, split: str, sids: list[int]) -> None:
    loc = layouts.location
    meta = PA_HEADER + "".join(f"2.5,48.1,2019,1,10,ALPINE,France,{s % 5}.0,{s}\n" for s in sids)
    _put(root, loc(layout, "metadata.pa", split), meta.encode())
    clim = pd.DataFrame([_climate(s).ravel() for s in sids], columns=CLIMATE_VALUE_COLUMNS)
    clim.insert(0, "surveyId", sids)
    # shuffle the column order: readers must go by name
    clim = clim[["surveyId", *sorted(CLIMATE_VALUE_COLUMNS)]]
    _put(root, loc(layout, "climate.values", split), clim.to_csv(index=False).encode())
    for b, band in enumerate(LANDSAT_BANDS):
        vals = pd.DataFrame([[b * 1000 + s + j for j in range(84)] for s in sids[::-1]],
                            columns=LANDSAT_VALUE_COLUMNS, dtype=float)
        vals.insert(0, "surveyId", sids[::-1])
        _put(root, loc(layout, "landsat.values", split, band=band),
             vals.to_csv(index=False).encode())
    for s in sids:
        _put(root, loc(layout, "climate.cube", split, survey_id=s),
             _pt(torch.from_numpy(_climate(s))))
        _put(root, loc(layout, "s2.rgb", split, survey_id=s), _jpeg(3, s))
        _put(root, loc(layout, "s2.nir", split, survey_id=s), _jpeg(1, s))


@pytest.mark.parametrize("layout", ["glc24", "geoplant"])
def test_tiny_release_roundtrip(tmp_path: Path, layout: str) -> None:
    split = "pa_train"
    sids = [642, 1322301, 2000123]
    _tiny(tmp_path, layout, split, sids)
    rel = RawRelease(tmp_path)
    assert rel.layout == layout
    assert rel.survey_ids(split).tolist() == sids
    assert rel.read_metadata(split)["speciesId"].tolist() == [2, 1, 3]
    ids, cube = rel.climate_values_cube(split)
    assert ids.tolist() == sids
    for i, s in enumerate(sids):
        np.testing.assert_array_equal(cube[i], _climate(s))
        np.testing.assert_array_equal(rel.read_climate_cube(split, s), _climate(s))
    ids, land = rel.landsat_values_cube(split)
    assert land.shape == (3, 6, 4, 21) and ids.tolist() == sids[::-1]
    # cube[b, q-1, y-2000] == CSV_b["y_q"]; the value written encodes band, survey and column
    j = LANDSAT_VALUE_COLUMNS.index("2003_2")
    assert land[0, 4, 1, 3] == 4000 + sids[-1] + j
    with pytest.raises(GeoplantError, match=r"99\.jpeg: missing file"):
        rel.read_s2_jpegs(split, [*sids, 99])
    batch = rel.read_s2_jpegs(split, [*sids, 99], on_error="skip")
    assert batch.ok.tolist() == [True, True, True, False] and list(batch.errors) == [99]
    np.testing.assert_array_equal(batch.data[1], rel.read_s2_jpeg(split, sids[1]))
    assert batch.data[1].std() > 10 and not batch.data[3].any()


def test_consistency_and_padded_short_ids(tmp_path: Path) -> None:
    split, sids = "pa_train", [642, 1322301, 2000123]
    _tiny(tmp_path, "glc24", split, sids)
    rel = RawRelease(tmp_path)
    loc = layouts.location("glc24", "s2.nir", split, survey_id=642)
    sliced = tmp_path / loc.path
    padded = Path(str(sliced).replace("/42/6/642.", "/42/06/642."))
    padded.parent.mkdir(parents=True)
    sliced.rename(padded)  # zero-padded folder variant is accepted
    assert rel.read_s2_jpeg(split, 642).shape == (4, 128, 128)
    (tmp_path / layouts.location("glc24", "climate.cube", split, survey_id=1322301).path).unlink()
    _put(tmp_path, layouts.location("glc24", "climate.cube", split, survey_id=5),
         _pt(torch.zeros(4, 19, 12)))
    report = rel.check_consistency(split)
    by = {f.family: f for f in report.files if f.family != "landsat.values"}
    assert by["climate.cube"].missing.tolist() == [1322301]
    assert by["climate.cube"].extra.tolist() == [5]
    assert by["s2.nir"].ok and by["s2.rgb"].ok and by["climate.values"].ok
    assert by["env.elevation"].problem == "file not found"
    assert not report.ok
    with pytest.raises(GeoplantError, match="disagree with the metadata"):
        report.raise_if_bad()
    batch = rel.read_climate_cubes(split, sids, on_error="skip")
    assert batch.ok.tolist() == [True, False, True]
    assert "1322301_cube.pt: missing file" in str(batch.errors[1322301])


def test_geoplant_zip_members_and_raster(tmp_path: Path) -> None:
    split = "pa_test_ood"
    _put(tmp_path, layouts.location("geoplant", "metadata.pa", split),
         (PA_HEADER.replace(",speciesId", "") + "2.5,48.1,2019,1,10,ALPINE,France,77\n").encode())
    arr = np.full((4, 64, 64), 7, dtype=np.int16)
    _put(tmp_path, layouts.location("geoplant", "s2.tiff", split, survey_id=77), _tiff(arr))
    rel = RawRelease(tmp_path)
    assert rel.layout == "geoplant"
    assert "speciesId" not in rel.read_metadata(split).columns
    np.testing.assert_array_equal(rel.read_s2_tiff(split, 77), arr)
    with pytest.raises(GeoplantError, match=r"Sentinel2Patches\.zip::.*78\.tiff: missing file"):
        rel.read_s2_tiff(split, 78)
    # a raster inside a zip, opened through /vsizip/
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=5, height=4, count=1, dtype="float32",
                      crs="EPSG:4326", transform=from_origin(-10, 60, 0.5, 0.5)) as ds:
            ds.write(np.arange(20, dtype=np.float32).reshape(1, 4, 5))
        _put(tmp_path, layouts.location("geoplant", "raster.bio1"), mem.read())
    da = rel.raster("bio1")
    assert da.rio.crs.to_epsg() == 4326 and da.shape == (1, 4, 5)
    assert float(da.sel(x=-9.75, y=59.75, method="nearest")[0]) == 0.0
    with pytest.raises(GeoplantError, match=r"bio2\.tif: missing file"):
        rel.raster("bio2")
    assert "soil_clay" in rel.raster_names() and CLIMATE_VARIABLES[0] == "pr"


def test_layout_detection_errors(tmp_path: Path) -> None:
    with pytest.raises(GeoplantError, match="no GeoPlant release found"):
        RawRelease(tmp_path)
    with pytest.raises(GeoplantError, match="not a folder"):
        RawRelease(tmp_path / "nope")
    with pytest.raises(GeoplantError, match="unknown layout"):
        RawRelease(tmp_path, layout="k25")
