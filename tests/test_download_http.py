"""`geoplant.downloader.http` through `download`: Range resume of an interrupted ``.part``
file, retries of a dropped connection, a corrupt transfer caught by its checksum (the
catalog's or the server's digest), ``If-Range`` when the file changed between two runs, and a
size far from the catalog's approximate size refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from local_http import MirrorServer, set_part, sha

from geoplant import cli
from geoplant.downloader import LOCK_FILE, download
from geoplant.downloader.report import human_size
from geoplant.errors import GeoplantError

PATCHES = "SatellitePatches/PA-Train-SatellitePatches-RGB.zip"  # ~1.2 MB, no checksum
PATCHES_PART = "patches-rgb-pa-train"


pytestmark = pytest.mark.usefixtures("offline")


def test_interrupted_download_resumes_with_range(release, server: MirrorServer,
                                                 tmp_path: Path) -> None:
    catalog, files = release
    path = PATCHES
    size = len(files[path])
    server.cut["/mirror/" + path] = 700_000
    dest = tmp_path / "dest"
    with pytest.raises(GeoplantError, match="interrupted") as info:
        download(["patches-rgb-pa-train"], dest=dest, catalog=catalog, source="http",
                 retries=0, progress=False)
    assert "rerun the same command to resume" in str(info.value)
    partial = dest / (path + ".part")
    have = partial.stat().st_size
    assert 0 < have <= 700_000 and not (dest / path).exists()
    # the message says what is really on disk: the bytes received, kept for the resume
    assert f"the {have} bytes received are kept in {partial.name} to resume" in str(info.value)
    dry = download(["patches-rgb-pa-train"], dest=dest, catalog=catalog, dry_run=True)
    assert dry.parts[0].status.startswith("partial")

    report = download(["patches-rgb-pa-train"], dest=dest, catalog=catalog, source="http",
                      progress=False)
    first, second = server.mirror_gets(path)
    assert first["range"] is None and first["sent"] == 700_000
    assert second["range"] == f"bytes={have}-" and second["status"] == 206
    assert second["sent"] == size - have  # only the missing bytes
    assert report.fetched_bytes == size - have
    assert (dest / path).read_bytes() == files[path] and not partial.exists()
    lock = json.loads((dest / LOCK_FILE).read_text())["files"][path]
    assert lock["sha256"] == sha(files[path])  # hash covers the resumed prefix too


def test_dropped_connection_is_retried_within_one_run(release, server: MirrorServer,
                                                      tmp_path: Path) -> None:
    catalog, files = release
    path = PATCHES
    server.cut["/mirror/" + path] = 600_000
    download(["patches-*"], dest=tmp_path / "d", catalog=catalog, source="http", backoff=0,
             progress=False)
    first, second = server.mirror_gets(path)
    assert second["range"] is not None and first["sent"] + second["sent"] >= len(files[path])
    assert second["sent"] < len(files[path])
    assert (tmp_path / "d" / path).read_bytes() == files[path]


def test_corrupted_transfer_fails_checksum_and_is_refetched(release, server: MirrorServer,
                                                            tmp_path: Path) -> None:
    catalog, files = release
    path = "EnvironmentalRasters/LandCover.zip"  # the catalog knows its sha256
    server.corrupt.add("/mirror/" + path)
    download(["rasters-landcover"], dest=tmp_path / "a", catalog=catalog, source="http",
             backoff=0, progress=False)
    assert [e["status"] for e in server.mirror_gets(path)] == [200, 200]
    assert (tmp_path / "a" / path).read_bytes() == files[path]

    server.corrupt.add("/mirror/" + path)
    with pytest.raises(GeoplantError, match=r"failed its check \(sha256") as info:
        download(["rasters-landcover"], dest=tmp_path / "b", catalog=catalog, source="http",
                 retries=0, progress=False)
    assert not (tmp_path / "b" / path).exists()
    # the message says what the code did: the corrupt file is gone, nothing is kept
    message = str(info.value)
    assert "was deleted" in message and "no partial file is kept" in message
    assert "kept in" not in message and "to resume" not in message
    assert not (tmp_path / "b" / (path + ".part")).exists()


def _lock(dest: Path) -> dict:
    return json.loads((dest / LOCK_FILE).read_text())["files"]


def test_size_far_from_the_approximate_catalog_size_is_refused(release, server: MirrorServer,
                                                               tmp_path: Path, capsys) -> None:
    """A ~24 MiB part served as 1.2 MB (the adversarial run: 20 MB for a ~359 MiB part) is
    refused, whether the server announces the size or only sends it; --accept-size takes it."""
    catalog, files = release
    size = len(files[PATCHES])
    set_part(catalog, PATCHES_PART, size=20 * size, size_approx=True)
    dest = tmp_path / "dest"
    with pytest.raises(GeoplantError) as info:
        download([PATCHES_PART], dest=dest, catalog=catalog, source="http", progress=False)
    message = str(info.value)
    assert f"part '{PATCHES_PART}'" in message and "the server announces" in message
    assert f"{size} bytes" in message and f"catalog expects {human_size(20 * size, True)}" \
        in message
    assert "0.5x-2x" in message and "not recorded as present" in message
    assert "--accept-size" in message and "--mirror" in message
    assert "nothing more was downloaded; no partial file is kept" in message
    assert not (dest / PATCHES).exists() and not (dest / (PATCHES + ".part")).exists()
    assert not (dest / LOCK_FILE).exists() or PATCHES not in _lock(dest)

    server.no_length.add("/mirror/" + PATCHES)  # no Content-Length: judged once received
    with pytest.raises(GeoplantError, match=r"received .* the file received was deleted"):
        download([PATCHES_PART], dest=dest, catalog=catalog, source="http", progress=False)
    assert not (dest / PATCHES).exists() and not (dest / (PATCHES + ".part")).exists()
    dry = download([PATCHES_PART], dest=dest, catalog=catalog, dry_run=True)
    assert dry.parts[0].status == "missing"

    server.no_length.clear()
    argv = ["download", PATCHES_PART, "--catalog", str(catalog), "--dest", str(dest),
            "--source", "http", "--no-progress"]
    assert cli.main(argv) == 2  # one line on stderr, the same error
    assert "--accept-size" in capsys.readouterr().err
    assert cli.main([*argv, "--accept-size"]) == 0
    assert "downloaded" in capsys.readouterr().out
    assert (dest / PATCHES).read_bytes() == files[PATCHES]
    assert _lock(dest)[PATCHES]["size_accepted"] is True
    n = len(server.log)
    again = download([PATCHES_PART], dest=dest, catalog=catalog, source="http",
                     progress=False, verify=True)  # accepted once: no flag needed again
    assert again.parts[0].status == "present" and len(server.log) == n


def test_size_within_the_band_of_an_approximate_size_is_accepted(
        release, server: MirrorServer, tmp_path: Path) -> None:
    catalog, files = release
    size = len(files[PATCHES])
    for factor in (0.55, 1.9):  # the catalog says ~0.55x / ~1.9x of what is served
        set_part(catalog, PATCHES_PART, size=int(size / factor), size_approx=True)
        dest = tmp_path / f"x{factor}"
        report = download([PATCHES_PART], dest=dest, catalog=catalog, source="http",
                          progress=False)
        assert report.parts[0].status == "downloaded"
        assert "size_accepted" not in _lock(dest)[PATCHES]


def test_lock_records_the_announced_size_and_validators(release, server: MirrorServer,
                                                        tmp_path: Path) -> None:
    catalog, files = release
    dest = tmp_path / "dest"
    download([PATCHES_PART], dest=dest, catalog=catalog, source="http", progress=False)
    entry = _lock(dest)[PATCHES]
    assert entry["sha256"] == sha(files[PATCHES])  # no published hash: the first one's
    assert entry["source_size"] == len(files[PATCHES])  # and the size the server announced
    assert entry["etag"] == '"v1"' and entry["last_modified"].startswith("Mon, 01 Jan 2024")
    assert not list(dest.rglob("*.part*"))  # no .part, no .part.json left


def _interrupt_then_publish_v2(server: MirrorServer, catalog: Path, files: dict[str, bytes],
                               dest: Path) -> bytes:
    """Cut the patches download at 500 kB, then serve a version 2 (ETag "v2") of the same
    size with other bytes; return its bytes."""
    server.cut["/mirror/" + PATCHES] = 500_000
    with pytest.raises(GeoplantError, match="interrupted"):
        download([PATCHES_PART], dest=dest, catalog=catalog, source="http", retries=0,
                 progress=False)
    new = bytes(b ^ 0x5A for b in files[PATCHES])
    server.files["/mirror/" + PATCHES] = new
    server.headers["ETag"] = '"v2"'
    return new


def test_changed_file_on_resume_starts_over_with_if_range(release, server: MirrorServer,
                                                          tmp_path: Path) -> None:
    """A .part file of version v1, and the mirror now serves v2: the resume asks
    ``If-Range: "v1"``, gets the whole v2 (200), and never glues v1's head to v2's tail
    (which, with no checksum published, nothing would have caught)."""
    catalog, files = release
    dest = tmp_path / "dest"
    new = _interrupt_then_publish_v2(server, catalog, files, dest)
    download([PATCHES_PART], dest=dest, catalog=catalog, source="http", progress=False)
    first, second = server.mirror_gets(PATCHES)
    assert first["if_range"] is None and first["status"] == 200
    assert second["range"] is not None and second["if_range"] == '"v1"'
    assert second["status"] == 200 and second["sent"] == len(new)
    assert (dest / PATCHES).read_bytes() == new
    assert _lock(dest)[PATCHES]["etag"] == '"v2"'


def test_server_ignoring_if_range_with_a_new_etag_starts_over(release, server: MirrorServer,
                                                              tmp_path: Path) -> None:
    """A server that answers the Range anyway (206) with another ETag: the .part file is of
    another version, so it is dropped and the file fetched from byte 0."""
    catalog, files = release
    dest = tmp_path / "dest"
    new = _interrupt_then_publish_v2(server, catalog, files, dest)
    server.ignore_if_range = True
    download([PATCHES_PART], dest=dest, catalog=catalog, source="http", progress=False)
    gets = server.mirror_gets(PATCHES)
    assert [(g["status"], g["range"] is not None) for g in gets] == \
        [(200, False), (206, True), (200, False)]
    assert (dest / PATCHES).read_bytes() == new


def test_server_digest_catches_a_corrupt_transfer_without_a_catalog_checksum(
        release, server: MirrorServer, tmp_path: Path) -> None:
    """No sha256 in the catalog (as for every real file), but the server sends the file's md5
    (``x-goog-hash``, as the storage behind Kaggle does): a flipped byte is caught."""
    catalog, files = release
    server.digest = True
    server.corrupt.add("/mirror/" + PATCHES)
    download([PATCHES_PART], dest=tmp_path / "a", catalog=catalog, source="http", backoff=0,
             progress=False)
    assert [g["status"] for g in server.mirror_gets(PATCHES)] == [200, 200]
    assert (tmp_path / "a" / PATCHES).read_bytes() == files[PATCHES]
    assert _lock(tmp_path / "a")[PATCHES]["md5"] == hashlib.md5(files[PATCHES]).hexdigest()

    server.corrupt.add("/mirror/" + PATCHES)
    with pytest.raises(GeoplantError, match=r"failed its check \(md5 .* was deleted"):
        download([PATCHES_PART], dest=tmp_path / "b", catalog=catalog, source="http",
                 retries=0, progress=False)
    assert not (tmp_path / "b" / PATCHES).exists()
    assert not (tmp_path / "b" / (PATCHES + ".part")).exists()
