"""`geoplant.downloader.lockfile`: the lock file in DEST and the present/verified check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from local_http import MirrorServer, set_part, sha

from geoplant.catalog import PartFile
from geoplant.downloader import LOCK_FILE, download
from geoplant.downloader import lockfile as lockfile_module
from geoplant.downloader.expect import mismatch
from geoplant.downloader.lockfile import LockFile, check_file
from geoplant.errors import GeoplantError

pytestmark = pytest.mark.usefixtures("offline")


def test_corrupted_byte_on_disk_is_detected_and_refetched(release, server: MirrorServer,
                                                          tmp_path: Path) -> None:
    catalog, files = release
    dest = tmp_path / "dest"
    path = "GLC24_PA_metadata_train.csv"  # no checksum in the catalog: the lock file has it
    download(["meta-pa-train", "cubes-pa-test"], dest=dest, catalog=catalog, source="http",
             progress=False)
    data = bytearray((dest / path).read_bytes())
    data[100] ^= 0x01
    (dest / path).write_bytes(bytes(data))
    dry = download(["meta-pa-train", "cubes-pa-test"], dest=dest, catalog=catalog, dry_run=True)
    assert [p.status for p in dry.parts] == ["present, unverified", "present"]
    report = download(["meta-pa-train", "cubes-pa-test"], dest=dest, catalog=catalog,
                      source="http", progress=False)
    assert [p.status for p in report.parts] == ["downloaded", "present"]
    gets = server.mirror_gets(path)
    assert len(gets) == 2 and gets[1]["range"] is None
    assert (dest / path).read_bytes() == files[path]


def test_lock_file_round_trip_and_damage(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"abc")
    LockFile(tmp_path, "tiny", write=False).record("a.bin", target, sha256=sha(b"abc"),
                                                   source="http")
    assert not (tmp_path / LOCK_FILE).exists()  # a dry run writes nothing

    lock = LockFile(tmp_path, "tiny", write=True)
    lock.record("a.bin", target, sha256=sha(b"abc"), source="http", url="http://h/a.bin",
                part="p")
    data = json.loads((tmp_path / LOCK_FILE).read_text())
    assert data["version"] == 1 and data["release"] == "tiny"
    entry = data["files"]["a.bin"]
    assert entry["size"] == 3 and entry["sha256"] == sha(b"abc") and entry["part"] == "p"
    assert entry["source"] == "http" and entry["url"] == "http://h/a.bin" and entry["recorded"]
    assert entry["mtime_ns"] == target.stat().st_mtime_ns
    assert LockFile(tmp_path, "tiny", write=False).get("a.bin") == entry
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", LOCK_FILE]  # no temporary

    (tmp_path / LOCK_FILE).write_text("{not json")
    assert LockFile(tmp_path, "tiny", write=False).get("a.bin") is None  # only costs a re-hash


def test_check_file_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"0123456789"
    lock = LockFile(tmp_path, "tiny", write=True)
    target = tmp_path / "f.bin"
    exact = PartFile("f.bin", len(data))
    assert check_file(target, exact, lock, verify=False).status == "missing"
    (tmp_path / "f.bin.part").write_bytes(data[:4])
    res = check_file(target, exact, lock, verify=False)
    assert (res.status, res.size) == ("partial", 4)

    target.write_bytes(data + b"!")
    assert check_file(target, exact, lock, verify=False).status == "unverified"  # wrong size
    target.write_bytes(data)
    nothing_known = PartFile("f.bin", len(data), size_approx=True)
    assert check_file(target, nothing_known, lock, verify=False).status == "unverified"
    wrong_sha = PartFile("f.bin", None, sha256=sha(b"other"))
    assert check_file(target, wrong_sha, lock, verify=False).status == "unverified"

    res = check_file(target, exact, lock, verify=False)  # an exact size is enough: hashed
    assert (res.status, res.sha256) == ("present", sha(data))
    assert lock.get("f.bin")["source"] == "local"  # type: ignore[index]

    def no_hashing(path: object) -> str:
        raise AssertionError("re-hashed a file the lock file vouches for")

    monkeypatch.setattr(lockfile_module, "sha256_file", no_hashing)
    assert check_file(target, nothing_known, lock, verify=False).status == "present"
    with pytest.raises(AssertionError, match="re-hashed"):
        check_file(target, nothing_known, lock, verify=True)


def test_mismatch_messages() -> None:
    assert mismatch(None, None, 5, "ab") is None
    assert mismatch(5, "ab", 5, "ab") is None
    assert mismatch(4, None, 5, "ab") == "size 5 != catalog size 4"
    assert mismatch(None, "c" * 64, 5, "d" * 64).startswith("sha256 dddddddddddd… != expected")


def test_verify_refetches_a_file_whose_size_is_not_the_announced_one(
        release, server: MirrorServer, tmp_path: Path) -> None:
    """The adversarial run: no published sha256, a bad file was recorded with its own hash,
    and --verify called it present. The lock now also holds the size the server announced:
    a file of another size is not present (with or without --verify) and is fetched again."""
    catalog, files = release
    path = "SatellitePatches/PA-Train-SatellitePatches-RGB.zip"
    set_part(catalog, "patches-rgb-pa-train", size=len(files[path]), size_approx=True)
    dest = tmp_path / "dest"
    download(["patches-rgb-pa-train"], dest=dest, catalog=catalog, source="http",
             progress=False)
    lock_path = dest / LOCK_FILE
    data = json.loads(lock_path.read_text())
    assert data["files"][path]["source_size"] == len(files[path])
    # A short file whose hash and size are the lock's: only the announced size tells.
    short = files[path][:-1000]
    (dest / path).write_bytes(short)
    data["files"][path].update(sha256=sha(short), size=len(short),
                               mtime_ns=(dest / path).stat().st_mtime_ns)
    lock_path.write_text(json.dumps(data))
    for verify in (True, False):
        dry = download(["patches-rgb-pa-train"], dest=dest, catalog=catalog, dry_run=True,
                       verify=verify)
        assert dry.parts[0].status == "present, unverified"
    report = download(["patches-rgb-pa-train"], dest=dest, catalog=catalog, source="http",
                      verify=True, progress=False)
    assert report.parts[0].status == "downloaded"
    assert (dest / path).read_bytes() == files[path]
    assert len(server.mirror_gets(path)) == 2


def test_check_file_refuses_a_size_far_from_the_approximate_one(tmp_path: Path) -> None:
    lock = LockFile(tmp_path, "tiny", write=True)
    target = tmp_path / "f.bin"
    target.write_bytes(b"x" * 100)
    lock.record("f.bin", target, sha256=sha(b"x" * 100), source="http")
    far = PartFile("f.bin", 1000, size_approx=True)  # ~1000 bytes: 100 is 0.1x
    assert check_file(target, far, lock, verify=False).status == "unverified"
    assert check_file(target, far, lock, verify=False, accept_size=True).status == "present"
    near = PartFile("f.bin", 150, size_approx=True)
    assert check_file(target, near, lock, verify=True).status == "present"
    lock.record("f.bin", target, sha256=sha(b"x" * 100), source="http", size_accepted=True)
    assert check_file(target, far, lock, verify=True).status == "present"  # accepted once


def test_lock_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    """Not 0600 (what the temporary of an atomic write used to get): 0644 under umask 022."""
    target = tmp_path / "a.bin"
    target.write_bytes(b"abc")
    old = os.umask(0o022)
    try:
        LockFile(tmp_path, "tiny", write=True).record("a.bin", target, sha256=sha(b"abc"),
                                                      source="http")
    finally:
        os.umask(old)
    assert (tmp_path / LOCK_FILE).stat().st_mode & 0o777 == 0o644


def test_recorded_hash_binds_the_same_version_only(release, server: MirrorServer,
                                                   tmp_path: Path) -> None:
    """A re-fetch must match the sha256 the lock recorded (same ETag: a different body is
    corrupt), unless the server now announces another version (new ETag): then the new
    bytes are taken, not refused forever against the old hash."""
    catalog, files = release
    dest = tmp_path / "dest"
    path = "GLC24_PA_metadata_train.csv"  # exact size, no checksum in the catalog
    download(["meta-pa-train"], dest=dest, catalog=catalog, source="http", progress=False)
    (dest / path).write_bytes(b"#" + files[path][1:])  # damaged on disk
    new = files[path].replace(b"ATLANTIC", b"atlantic")  # v2: same size, other bytes
    server.files["/mirror/" + path] = new
    with pytest.raises(GeoplantError, match=r"failed its check \(sha256 .* != expected"):
        download(["meta-pa-train"], dest=dest, catalog=catalog, source="http", retries=0,
                 progress=False)  # still "v1": the recorded hash applies
    server.headers["ETag"] = '"v2"'
    report = download(["meta-pa-train"], dest=dest, catalog=catalog, source="http",
                      progress=False)
    assert report.parts[0].status == "downloaded" and (dest / path).read_bytes() == new
    entry = json.loads((dest / LOCK_FILE).read_text())["files"][path]
    assert entry["etag"] == '"v2"' and entry["sha256"] == sha(new)
