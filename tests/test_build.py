"""geoplant build / open_store: exact values, resume after kill -9, bad items, LocalCluster."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from geoplant import layouts
from geoplant.builder import LOCK_NAME, build
from geoplant.builder.spec import PO_ENV_BLOCKS
from geoplant.raw import RawRelease
from geoplant.store import open_store


@pytest.fixture(scope="module")
def glc24_store(glc24_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "glc24"
    build(glc24_tiny, out, progress=False, block_surveys=256)
    return out


@pytest.fixture(scope="module")
def geoplant_store(geoplant_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "geoplant"
    build(geoplant_tiny, out, progress=False, rasters=False)
    return out


def tree_digest(root: Path, *subdirs: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in subdirs for p in sorted((root / sub).rglob("*")) if p.is_file()}


def store_digest(root: Path) -> dict[str, str]:
    """Every file of a store (hidden ones too) by content; stats.json without its timestamp."""
    out = tree_digest(root, ".")
    stats = json.loads((root / "stats.json").read_text())
    stats.pop("created", None)
    out["stats.json"] = json.dumps(stats, sort_keys=True)
    return out


#: Runs a build in a subprocess whose ``os.replace`` (every atomic write of the kit and every
#: zarr chunk or metadata write) acts at the Nth write whose target contains WHERE:
#: ``kill-before`` / ``kill-after`` (os._exit(137) before or after that write), ``sigint``
#: (Ctrl-C then), ``pause`` (touch $PAUSED, wait for $GO). Then either ``build(**KWARGS_JSON)``
#: or, after ``--``, the ``geoplant`` command line.
HOOKED_BUILD = r"""
import json, os, signal, sys, time
where, nth, action = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real, seen = os.replace, [0]

def replace(src, dst, *args, **kwargs):
    if where in os.fspath(dst):
        seen[0] += 1
        if seen[0] == nth:
            if action == "kill-after":
                real(src, dst, *args, **kwargs)
            if action.startswith("kill"):
                os._exit(137)
            if action == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            if action == "pause":
                open(os.environ["PAUSED"], "w").close()
                while not os.path.exists(os.environ["GO"]):
                    time.sleep(0.02)
    return real(src, dst, *args, **kwargs)

os.replace = replace
if sys.argv[4] == "--":
    from geoplant.cli import main
    sys.exit(main(sys.argv[5:]))
from geoplant.builder import LOCK_NAME, build
build(**json.loads(sys.argv[4]))
"""


def n_blocks(raw_root: Path, block_surveys: int) -> int:
    """How many blocks a build of every split writes: the PA cubes' and the PO env's (sampled
    from the rasters in tasks of ``PO_ENV_BLOCKS`` blocks)."""
    raw = RawRelease(raw_root)
    pa = sum(-(-len(raw.survey_ids(s)) // block_surveys) for s in raw.splits if s != "po_train")
    return pa + -(-len(raw.survey_ids("po_train")) // (block_surveys * PO_ENV_BLOCKS))


def run_hooked(where: str, nth: int, action: str, *args: str, wait: bool = True,
               env: dict[str, str] | None = None) -> Any:
    """Run :data:`HOOKED_BUILD`; the CompletedProcess (or the Popen when not ``wait``)."""
    cmd = [sys.executable, "-c", HOOKED_BUILD, where, str(nth), action, *args]
    full_env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_store_values_equal_the_raw_files(request: pytest.FixtureRequest, layout: str) -> None:
    raw_root: Path = request.getfixturevalue(f"{layout}_tiny")
    store = open_store(request.getfixturevalue(f"{layout}_store"))
    raw = RawRelease(raw_root)
    for split in layouts.SPLITS[layout]:
        records = store.records(split)
        source = raw.read_metadata(split)
        if "date" in source:  # Parquet has no second-resolution timestamps: stored as ms
            source["date"] = source["date"].astype("datetime64[ms]")
        pd.testing.assert_frame_equal(records.reset_index(drop=True),
                                      source.reset_index(drop=True), check_categorical=False)
        if split == "po_train":
            if layout == "geoplant":  # PO env tables: the PO cube holds their values
                po = store.cube(split)
                assert store.manifest["po_env_source"] == "tables"
                table = raw.read_env("soilgrids", split).set_index("surveyId")
                np.testing.assert_array_equal(
                    po["env"].sel(env_variable=list(table.columns)).values,
                    table.reindex(po["surveyId"].values).to_numpy(np.float32))
            continue
        cube = store.cube(split)
        ids = raw.survey_ids(split)
        assert np.array_equal(cube["surveyId"].to_numpy(), ids)
        assert cube["landsat"].chunks is not None  # dask-backed: opening read no data
        pick = ids[:: max(1, len(ids) // 40)]
        sub = cube.sel(surveyId=pick).load()
        np.testing.assert_array_equal(sub["landsat"].values,
                                      raw.read_landsat_cubes(split, pick).data)
        np.testing.assert_array_equal(sub["climate"].values,
                                      raw.read_climate_cubes(split, pick).data)
        if "sentinel2" in sub:
            np.testing.assert_array_equal(sub["sentinel2"].values,
                                          raw.read_s2_jpegs(split, pick).data)
        if "sentinel2_tiff" in sub:
            np.testing.assert_array_equal(sub["sentinel2_tiff"].values,
                                          raw.read_s2_tiffs(split, pick).data)
        env = raw.read_env("soilgrids", split).set_index("surveyId").loc[pick]
        got = sub["env"].sel(env_variable=list(env.columns)).values
        np.testing.assert_array_equal(got, env.to_numpy(np.float32))
        for name in sub.data_vars:
            if name.startswith("valid_"):
                assert sub[name].values.all()


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_source_paths_list_the_release_files(request: pytest.FixtureRequest,
                                             layout: layouts.LayoutName) -> None:
    root: Path = request.getfixturevalue(f"{layout}_tiny")
    raw = RawRelease(root)
    splits = layouts.SPLITS[layout]
    every = {f for split in splits for f in layouts.families(layout, split)}
    paths = layouts.source_paths(layout, splits, every)
    assert len(paths) == len(set(paths))  # an archive of several families is listed once
    assert all((root / path).exists() for path in paths)
    for split in splits:
        for family in layouts.families(layout, split):
            source = layouts.source_path(layout, family, split)
            assert source in paths
            if family.endswith(".cube") or family.startswith("s2."):
                sid = int(raw.survey_ids(split)[0])
                loc = raw.location(family, split, survey_id=sid)
            else:
                loc = raw.location(family, split, band=layouts.LANDSAT_BANDS[0]) \
                    if family == "landsat.values" else raw.location(family, split)
            # the file itself, its archive, or the folder holding it
            assert loc.path == source or loc.path.startswith(f"{source}/")
            assert (root / source).is_dir() == (loc.path != source)
    # only the families asked for, and only where the split has them
    assert layouts.source_paths(layout, ["po_train"], {"metadata.po", "s2.rgb"}) == \
        [layouts.location(layout, "metadata.po", "po_train").path]
    with pytest.raises(KeyError):
        layouts.source_path(layout, "s2.rgb", "po_train")


def test_labels_species_and_info(glc24_store: Path) -> None:
    store = open_store(glc24_store)
    records = store.records("pa_train")
    labels = store.labels("pa_train")
    assert labels.matrix.shape == (records["surveyId"].nunique(), len(store.species))
    assert labels.matrix.sum() == len(records)
    row = int(np.searchsorted(labels.survey_ids, records["surveyId"].iloc[0]))
    present = set(labels.species_ids[labels.matrix[row].indices])
    expected = set(records.loc[records["surveyId"] == records["surveyId"].iloc[0], "speciesId"])
    assert present == expected
    species = store.species
    assert species["index"].tolist() == list(range(len(species)))
    assert species["n_pa_train"].sum() == len(records)
    geo = store.records("pa_test", geo=True)
    assert geo.crs.to_epsg() == 4326
    np.testing.assert_allclose(geo.geometry.x, geo["lon"])
    rasters = store.rasters()
    assert rasters["bio1"].rio.crs.to_epsg() == 4326 and rasters["landcover"].shape[0] == 13
    out = subprocess.run([sys.executable, "-m", "geoplant.cli", "info", str(glc24_store),
                          "--json"], capture_output=True, text=True, timeout=120)
    info = json.loads(out.stdout)
    assert info["counts"]["pa_train_surveys"] == records["surveyId"].nunique()
    assert info["skipped"] == 0


def test_resume_after_kill_9_equals_an_uninterrupted_build(glc24_tiny: Path, glc24_store: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "store"
    code = ("import sys; from geoplant.builder import build; "
            "build(sys.argv[1], sys.argv[2], progress=False, workers=1, block_surveys=64)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(glc24_tiny), str(out)])
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "_build").glob("pa_train/block-*.json")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = list((out / "_build").glob("pa_train/block-*.json"))
    assert finished and not (out / "manifest.json").exists()  # killed mid-way
    summary = build(glc24_tiny, out, progress=False, workers=1, block_surveys=64)
    assert summary.blocks_resumed >= len(finished)
    assert summary.blocks_done + summary.blocks_resumed == n_blocks(glc24_tiny, 64)
    reference = tmp_path / "reference"
    build(glc24_tiny, reference, progress=False, block_surveys=64)
    assert tree_digest(out, "cubes", "records", "rasters.zarr") == \
        tree_digest(reference, "cubes", "records", "rasters.zarr")
    assert not (out / "_build").exists()


#: Where the resume test kills a build, in build order: (target contains, Nth write, action).
KILL_POINTS = [
    ("settings.json", 1, "kill-before"),
    ("records/pa_train.parquet", 1, "kill-after"),  # records written, not marked
    ("pa_train.zarr", 2, "kill-after"),  # inside the template: its first zarr.json is there
    ("pa_train.zarr", 6, "kill-before"),  # inside the template again
    ("cube-pa_train.json", 1, "kill-before"),  # template written, not marked complete
    ("/block-", 2, "kill-after"),  # two blocks done
    ("sentinel2/c/", 30, "kill-before"),  # inside a block
    ("rasters.zarr", 40, "kill-after"),  # inside a raster
    ("_build/rasters/", 12, "kill-before"),  # a raster written, not marked
    ("po_train.zarr/env/c/", 1, "kill-after"),  # inside the PO env sampled from the rasters
    ("_build/po_train/block-", 1, "kill-before"),  # PO env written, not marked
    ("manifest.json", 1, "kill-after"),  # manifest written, statistics not
    ("._build.tmp-", 1, "kill-before"),  # everything written, _build not yet removed
]


def test_resume_after_kills_at_many_points_equals_an_uninterrupted_build(
        glc24_tiny: Path, glc24_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    kwargs = json.dumps({"raw_root": str(glc24_tiny), "out": str(out), "progress": False,
                         "workers": 1, "block_surveys": 256})
    for where, nth, action in KILL_POINTS:  # each run resumes the last one, then is killed
        killed = run_hooked(where, nth, action, kwargs)
        assert killed.returncode == 137, (where, killed.stderr[-2000:])
        assert (out / "_build").exists() and LOCK_NAME in os.listdir(out)  # a stale lock
    summary = build(glc24_tiny, out, progress=False, workers=1, block_surveys=256)
    assert summary.blocks_resumed == n_blocks(glc24_tiny, 256)  # all done before
    assert store_digest(out) == store_digest(glc24_store)  # no leftover temporary either


def test_ctrl_c_in_a_cube_template_then_a_rerun_finishes(glc24_tiny: Path, glc24_store: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "store"
    args = ("--", "build", str(glc24_tiny), "--out", str(out), "--quiet", "--workers", "1")
    stopped = run_hooked("pa_train.zarr", 2, "sigint", *args)
    assert stopped.returncode == 130 and "interrupted; rerun to resume" in stopped.stderr
    assert "Traceback" not in stopped.stderr and not (out / LOCK_NAME).exists()
    rerun = subprocess.run([sys.executable, "-m", "geoplant.cli", *args[1:]],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    reference = tree_digest(glc24_store, "records")
    assert tree_digest(out, "records") == reference
    assert open_store(out).cube("pa_train")["valid_sentinel2"].values.all()


def test_bad_items_are_skipped_counted_and_listed(glc24_tiny: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(glc24_tiny, raw)
    release = RawRelease(raw)
    ids = release.survey_ids("pa_train")
    jpeg = raw / release.location("s2.rgb", "pa_train", survey_id=ids[3]).path
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    (raw / release.location("landsat.cube", "pa_train", survey_id=ids[5]).path).unlink()
    meta_path = raw / release.location("metadata.pa", "pa_train").path
    meta = pd.read_csv(meta_path)
    meta.loc[0, "lat"] = np.nan  # NaN coordinates
    meta.loc[1, "speciesId"] = 99_999.0  # unknown species id
    meta.to_csv(meta_path, index=False)
    summary = build(raw, tmp_path / "store", progress=False, rasters=False)
    reasons = {(s["kind"], s["surveyId"]) for s in summary.skipped}
    assert ("sentinel2", ids[3]) in reasons and ("landsat", ids[5]) in reasons
    kinds = pd.Series([s["kind"] for s in summary.skipped]).value_counts()
    assert kinds["record"] >= 2
    assert any("99999" in s["reason"] for s in summary.skipped)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["skipped"]["total"] == len(summary.skipped)
    cube = open_store(tmp_path / "store").cube("pa_train")
    assert not bool(cube["valid_sentinel2"].sel(surveyId=ids[3]))
    assert not bool(cube["valid_landsat"].sel(surveyId=ids[5]))
    assert bool(cube["valid_landsat"].sel(surveyId=ids[4]))
    # --strict: the first bad item is fatal, one line, exit code 2.
    out = subprocess.run([sys.executable, "-m", "geoplant.cli", "build", str(raw), "--out",
                          str(tmp_path / "strict"), "--strict", "--quiet", "--no-rasters"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "--strict" in out.stderr


def test_build_on_a_local_dask_cluster_gives_the_same_store(glc24_tiny: Path, glc24_store: Path,
                                                            tmp_path: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        build(glc24_tiny, tmp_path / "store", scheduler=cluster.scheduler_address,
              progress=False, block_surveys=256)
    assert tree_digest(tmp_path / "store", "cubes", "records") == \
        tree_digest(glc24_store, "cubes", "records")


def test_build_cli_errors(tmp_path: Path, glc24_store: Path, glc24_tiny: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "geoplant.cli", *args],
                              capture_output=True, text=True, timeout=120)

    missing = cli("build", str(tmp_path / "nope"), "--out", str(tmp_path / "s"))
    assert missing.returncode == 2 and str(tmp_path / "nope") in missing.stderr
    done = cli("build", str(glc24_tiny), "--out", str(glc24_store))
    assert done.returncode == 2 and "already exists" in done.stderr
    bad_split = cli("build", str(glc24_tiny), "--out", str(tmp_path / "s"), "--splits", "x")
    assert bad_split.returncode == 2 and "unknown split" in bad_split.stderr
    not_store = cli("info", str(tmp_path))
    assert not_store.returncode == 2 and "not a geoplant store" in not_store.stderr
    for result in (missing, done, bad_split, not_store):
        assert len(result.stderr.strip().splitlines()) == 1


#: As a user runs it: ``geoplant.build`` twice, with the builder package imported in between.
BUILD_TWICE = r"""
import sys
import geoplant
first = geoplant.build(sys.argv[1], sys.argv[2], splits=["pa_test"], rasters=False,
                       progress=False)
import geoplant.builder
from geoplant.builder import BuildSummary
assert geoplant.build is geoplant.builder.build, geoplant.build
second = geoplant.build(sys.argv[1], sys.argv[3], splits=["pa_test"], rasters=False,
                        progress=False)
assert isinstance(second, BuildSummary) and second.counts == first.counts
"""


def test_geoplant_build_stays_the_function_once_the_builder_is_imported(
        glc24_tiny: Path, tmp_path: Path) -> None:
    # A submodule named `geoplant.build` would replace the lazy function on first import, so
    # the second call would fail. A fresh interpreter: this session imports modules of its own.
    out = subprocess.run([sys.executable, "-c", BUILD_TWICE, str(glc24_tiny),
                          str(tmp_path / "first"), str(tmp_path / "second")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
