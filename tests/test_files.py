"""The shared file helpers: atomic writes leave the old file or the new one, never a half."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geoplant.files import (
    TMP_MARK,
    atomic_write_bytes,
    atomic_write_text,
    atomic_write_url,
    atomic_write_with,
    join_path,
    remove_stale_temporaries,
    sha256_file,
)


def test_join_path_keeps_urls_and_strips_trailing_slash() -> None:
    assert join_path("s3://bucket/store/", "cubes", "pa_train.zarr") == \
        "s3://bucket/store/cubes/pa_train.zarr"
    assert join_path("/tmp/x", "a") == "/tmp/x/a"


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "manifest.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new", fsync=True)
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]


def test_failed_writer_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "best.pt"
    target.write_text("old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("ha")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_atomic_write_url_local(tmp_path: Path) -> None:
    atomic_write_url(str(tmp_path / "stats.json"), b"{}")
    assert (tmp_path / "stats.json").read_bytes() == b"{}"
    atomic_write_url(f"file://{tmp_path}/stats.json", b"[]")
    assert (tmp_path / "stats.json").read_bytes() == b"[]"


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several read blocks and a remainder
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / "cubes" / f".zarr.json{TMP_MARK}{dead_pid}-abc"
    stale.parent.mkdir()
    stale.write_text("x")
    live = tmp_path / f".manifest.json{TMP_MARK}{os.getpid()}-def"
    live.write_text("y")
    keep = tmp_path / "data.tmp"  # not one of ours
    keep.write_text("z")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and keep.exists() and not stale.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path: Path, umask: int) -> None:
    """``mkstemp`` makes 0600 temporaries, and the rename used to carry that to the target
    (the download lock file came out 0600): files get ``0o666 & ~umask`` like ``open()``."""
    old = os.umask(umask)
    try:
        written = [atomic_write_text(tmp_path / "lock.json", "{}"),
                   atomic_write_bytes(tmp_path / "sub" / "a.bin", b"x", fsync=True),
                   atomic_write_with(tmp_path / "b.bin", lambda p: p.write_bytes(b"y"))]
        (tmp_path / "plain.txt").write_text("z")  # what open() gives, for comparison
    finally:
        os.umask(old)
    for path in [*written, tmp_path / "plain.txt"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
