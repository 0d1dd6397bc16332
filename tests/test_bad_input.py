"""Bad input for ``geoplant build`` / ``geoplant info``: each case ends in a one-line message
(never a traceback), the right exit code, and a store that is either usable or clearly
unfinished (no manifest) and resumable.

The table covers the classes an adversarial run found: a store another build holds, stale
locks, a damaged raster inside a zip, an ``--out`` that is no store, a full disk, a damaged
manifest, what killed builds leave behind, a bad JPEG under ``--strict``. Sequences that need
more than one run (two builds at once, repair after ``--strict``) have their own tests below.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_build import run_hooked

from geoplant.builder import LOCK_NAME, build
from geoplant.errors import GeoplantError
from geoplant.raw import RawRelease
from geoplant.store import open_store

RASTER_ZIP = "EnvironmentalRasters/Climate.zip"
RASTER_MEMBER = "Climate/BioClimatic_Average_1981-2010/bio2.tif"


def cli(*args: str, preexec_fn: Callable[[], None] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoplant.cli", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=preexec_fn)


def copy_release(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(out: Path, pid: int, host: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01 00:00:00"}))
    return lock


def temporaries(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if ".tmp-" in p.name or p.name.endswith(".partial")]


def corrupt_raster_member(raw: Path) -> None:
    """Scramble the pixels of one GeoTIFF stored in a raster zip (its header stays readable)."""
    archive = raw / RASTER_ZIP
    info = zipfile.ZipFile(archive).getinfo(RASTER_MEMBER)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(archive.read_bytes())
    for k in range(start + 2000, start + info.compress_size - 2000):
        data[k] = (data[k] * 7 + 13) & 0xFF
    archive.write_bytes(bytes(data))


def truncate_jpeg(raw: Path, index: int = 3) -> tuple[int, Path, bytes]:
    """Cut a PA-train RGB JPEG short; its surveyId, path and the original bytes."""
    release = RawRelease(raw)
    sid = int(release.survey_ids("pa_train")[index])
    path = raw / release.location("s2.rgb", "pa_train", survey_id=sid).path
    original = path.read_bytes()
    path.write_bytes(original[:200])
    return sid, path, original


# --- the table -------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input: ``setup(tmp, glc24_tiny)`` returns the command line and a context."""

    name: str
    setup: Callable[[Path, Path], tuple[list[str], dict[str, Any]]]
    code: int
    stderr_has: list[str] = field(default_factory=list)
    check: Callable[[Path, dict[str, Any]], None] = lambda out, ctx: None
    preexec_fn: Callable[[], None] | None = None


def _build_args(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["build", str(raw), "--out", str(out), "--quiet", *extra]


def _held_lock(tmp: Path, raw: Path) -> tuple[list[str], dict[str, Any]]:
    out = tmp / "store"
    lock = write_lock(out, os.getpid(), socket.gethostname())
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held like a live build holds it
    return _build_args(raw, out), {"fd": fd, "lock": lock.read_text()}


def _check_held_lock(out: Path, ctx: dict[str, Any]) -> None:
    os.close(ctx["fd"])
    assert (out / LOCK_NAME).read_text() == ctx["lock"]  # the holder's lock is untouched
    assert not (out / "manifest.json").exists() and not (out / "_build").exists()


def _stale_lock(tmp: Path, raw: Path) -> tuple[list[str], dict[str, Any]]:
    out = tmp / "store"
    write_lock(out, dead_pid(), socket.gethostname())
    return _build_args(raw, out, "--no-rasters"), {}


def _check_complete(out: Path, ctx: dict[str, Any]) -> None:
    store = open_store(out)
    store.rasters()  # every raster group listed is there
    assert not (out / LOCK_NAME).exists() and not (out / "_build").exists()
    assert not temporaries(out)


def _foreign_lock(tmp: Path, raw: Path) -> tuple[list[str], dict[str, Any]]:
    out = tmp / "store"
    write_lock(out, 1, "elsewhere.example")
    return _build_args(raw, out), {}


def _check_unbuilt(out: Path, ctx: dict[str, Any]) -> None:
    assert not (out / "manifest.json").exists() and not (out / "_build").exists()


def _corrupt_raster(tmp: Path, raw: Path, *extra: str) -> tuple[list[str], dict[str, Any]]:
    bad = copy_release(raw, tmp / "raw")
    corrupt_raster_member(bad)
    return _build_args(bad, tmp / "store", "--modalities", "env", *extra), {}


def _check_raster_skipped(out: Path, ctx: dict[str, Any]) -> None:
    _check_complete(out, ctx)
    store = open_store(out)
    assert "bio2" not in store.rasters() and "bio1" in store.rasters()
    items = store.manifest["skipped"]["items"]
    assert [i["kind"] for i in items] == ["raster"] and RASTER_MEMBER in items[0]["file"]


def _check_no_manifest(out: Path, ctx: dict[str, Any]) -> None:
    assert not (out / "manifest.json").exists() and not (out / LOCK_NAME).exists()


def _not_a_store(tmp: Path, raw: Path, *extra: str) -> tuple[list[str], dict[str, Any]]:
    out = tmp / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    return _build_args(raw, out, "--modalities", "env", "--no-rasters", *extra), {}


def _check_notes_kept(out: Path, ctx: dict[str, Any]) -> None:
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(out)) == ["notes.txt"]


def _check_notes_replaced(out: Path, ctx: dict[str, Any]) -> None:
    assert not (out / "notes.txt").exists()
    _check_complete(out, ctx)


def _out_is_the_release(tmp: Path, raw: Path) -> tuple[list[str], dict[str, Any]]:
    bad = copy_release(raw, tmp / "raw")
    return _build_args(bad, bad, "--overwrite"), {"raw": bad}


def _check_release_kept(out: Path, ctx: dict[str, Any]) -> None:
    RawRelease(ctx["raw"]).survey_ids("pa_train")


def _small_files_only() -> None:
    # a disk that fills up: writes past 200 kB fail (EFBIG) instead of killing the process
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def _disk_full(tmp: Path, raw: Path) -> tuple[list[str], dict[str, Any]]:
    return _build_args(raw, tmp / "store", "--no-rasters"), {"raw": raw}


def _check_resumes(out: Path, ctx: dict[str, Any]) -> None:
    assert (out / "_build").exists() and not (out / "manifest.json").exists()
    assert not (out / LOCK_NAME).exists()
    again = cli(*_build_args(ctx["raw"], out, "--no-rasters"))
    assert again.returncode == 0, again.stderr
    _check_complete(out, ctx)


def _damaged_manifest(tmp: Path, raw: Path) -> tuple[list[str], dict[str, Any]]:
    out = tmp / "store"
    build(raw, out, modalities=["env"], rasters=False, progress=False)
    manifest = out / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])
    return ["info", str(out)], {}


def _killed_leaving_temporaries(tmp: Path, raw: Path) -> tuple[list[str], dict[str, Any]]:
    out = tmp / "store"
    for where, nth in (("records/pa_train.parquet", 1), ("sentinel2/c/", 20)):
        killed = run_hooked(where, nth, "kill-before", "--", *_build_args(raw, out))
        assert killed.returncode == 137
    assert temporaries(out)  # what the kills left: a parquet temporary, zarr partial chunks
    return _build_args(raw, out), {}


def _bad_jpeg_strict(tmp: Path, raw: Path) -> tuple[list[str], dict[str, Any]]:
    bad = copy_release(raw, tmp / "raw")
    truncate_jpeg(bad)
    return _build_args(bad, tmp / "store", "--strict", "--no-rasters"), {}


def _check_strict_stopped(out: Path, ctx: dict[str, Any]) -> None:
    _check_no_manifest(out, ctx)
    # the block holding the bad JPEG is not marked done: a rerun reads it again
    assert not list((out / "_build" / "pa_train").glob("block-*.json"))


CASES = [
    Case("store locked by a live build", _held_lock, 2,
         ["another build", f"pid {os.getpid()}", LOCK_NAME], _check_held_lock),
    Case("stale lock of a dead build", _stale_lock, 0, [], _check_complete),
    Case("lock from another host", _foreign_lock, 2, ["elsewhere.example", LOCK_NAME],
         _check_unbuilt),
    Case("damaged raster in a zip", _corrupt_raster, 0, [], _check_raster_skipped),
    Case("damaged raster in a zip, --strict", lambda t, r: _corrupt_raster(t, r, "--strict"), 2,
         [RASTER_MEMBER, "cannot read raster"], _check_no_manifest),
    Case("--out holds other files", _not_a_store, 2, ["holds no geoplant store", "--overwrite"],
         _check_notes_kept),
    Case("--out holds other files, --overwrite",
         lambda t, r: _not_a_store(t, r, "--overwrite"), 0, [], _check_notes_replaced),
    Case("--overwrite on the raw release", _out_is_the_release, 2,
         ["would delete the raw release"], _check_release_kept),
    Case("disk full (file size limit)", _disk_full, 2, ["File too large", "resumes"],
         _check_resumes, _small_files_only),
    Case("damaged manifest.json", _damaged_manifest, 2, ["manifest.json", "damaged", "rebuild"]),
    Case("temporaries left by kills", _killed_leaving_temporaries, 0, [], _check_complete),
    Case("truncated JPEG, --strict", _bad_jpeg_strict, 2, ["truncated JPEG", "--strict"],
         _check_strict_stopped),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, glc24_tiny: Path, tmp_path: Path) -> None:
    args, ctx = case.setup(tmp_path, glc24_tiny)
    result = cli(*args, preexec_fn=case.preexec_fn)
    assert result.returncode == case.code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    if case.code:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    else:
        assert result.stderr == ""
    for text in case.stderr_has:
        assert text in result.stderr
    out = Path(args[args.index("--out") + 1]) if "--out" in args else Path(args[1])
    case.check(out, ctx)


# --- sequences -------------------------------------------------------------------------------


def test_a_second_build_of_the_same_store_is_refused_and_the_first_completes(
        glc24_tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    paused, go = tmp_path / "paused", tmp_path / "go"
    first = run_hooked("rasters.zarr", 3, "pause", "--", *_build_args(glc24_tiny, out),
                       wait=False, env={"PAUSED": str(paused), "GO": str(go)})
    deadline = time.time() + 120
    while not paused.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert paused.exists(), first.communicate()
    second = cli(*_build_args(glc24_tiny, out))  # while the first one writes its rasters
    go.touch()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert f"pid {first.pid}" in second.stderr and "is writing this store" in second.stderr
    store = open_store(out)
    assert sorted(store.rasters()) == sorted(store.manifest["rasters"])
    assert len(store.manifest["rasters"]) == 46 and not (out / LOCK_NAME).exists()


def test_strict_failure_then_repair_gives_the_right_data(glc24_tiny: Path,
                                                          tmp_path: Path) -> None:
    raw = copy_release(glc24_tiny, tmp_path / "raw")
    sid, path, original = truncate_jpeg(raw)
    out = tmp_path / "store"
    with pytest.raises(GeoplantError, match="--strict"):
        build(raw, out, modalities=["sentinel2"], strict=True, rasters=False, progress=False)
    path.write_bytes(original)  # repaired: --strict passes, the survey has its image
    summary = build(raw, out, modalities=["sentinel2"], strict=True, rasters=False,
                    progress=False)
    assert summary.skipped == []
    cube = open_store(out).cube("pa_train")
    assert bool(cube["valid_sentinel2"].sel(surveyId=sid))
    expected = RawRelease(raw).read_s2_jpeg("pa_train", sid)
    assert (cube["sentinel2"].sel(surveyId=sid).values == expected).all()


def test_a_skip_is_read_again_after_a_repair(glc24_tiny: Path, tmp_path: Path) -> None:
    raw = copy_release(glc24_tiny, tmp_path / "raw")
    sid, path, original = truncate_jpeg(raw, index=300)
    out = tmp_path / "store"
    kwargs = json.dumps({"raw_root": str(raw), "out": str(out), "progress": False,
                         "workers": 1, "block_surveys": 256, "modalities": ["sentinel2"],
                         "rasters": False})
    # a normal build that skipped the JPEG is killed once every block is read
    assert run_hooked("manifest.json", 1, "kill-before", kwargs).returncode == 137
    assert store_blocks(out) == {"block-000000000.json", "block-000000512.json",
                                 "block-000000768.json"}  # the block with the skip: no marker
    path.write_bytes(original)
    summary = build(raw, out, modalities=["sentinel2"], rasters=False, progress=False,
                    workers=1, block_surveys=256)
    assert summary.skipped == [] and summary.blocks_done == 1  # only that block again
    cube = open_store(out).cube("pa_train")
    assert bool(cube["valid_sentinel2"].sel(surveyId=sid))
    assert cube["sentinel2"].sel(surveyId=sid).values.any()


def store_blocks(out: Path) -> set[str]:
    return {p.name for p in (out / "_build" / "pa_train").glob("block-*.json")}


def test_strict_stops_at_the_first_bad_cube_item(glc24_tiny: Path, tmp_path: Path) -> None:
    raw = copy_release(glc24_tiny, tmp_path / "raw")
    for index in range(0, 950, 64):  # a bad JPEG first in each of the 15 blocks
        truncate_jpeg(raw, index=index)
    out = tmp_path / "store"
    with pytest.raises(GeoplantError, match="truncated JPEG"):
        build(raw, out, modalities=["sentinel2"], strict=True, rasters=False, progress=False,
              workers=1, block_surveys=64)
    # one worker: the first block read ends the run, no other block is started
    assert not store_blocks(out) and not (out / LOCK_NAME).exists()
