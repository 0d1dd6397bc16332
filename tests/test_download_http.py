"""`geoplant.downloader.http` through `download`: Range resume of an interrupted ``.part``
file, retries of a dropped connection, and a corrupt transfer caught by its checksum."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_http import MirrorServer, isolate, make_release, sha

from geoplant.downloader import LOCK_FILE, download
from geoplant.errors import GeoplantError

PATCHES = "SatellitePatches/PA-Train-SatellitePatches-RGB.zip"  # ~1.2 MB, no checksum


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate(monkeypatch, tmp_path)


@pytest.fixture
def server() -> Iterator[MirrorServer]:
    srv = MirrorServer()
    yield srv
    srv.close()


@pytest.fixture
def release(server: MirrorServer, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    return make_release(server, tmp_path)


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
    with pytest.raises(GeoplantError, match="corrupt: sha256"):
        download(["rasters-landcover"], dest=tmp_path / "b", catalog=catalog, source="http",
                 retries=0, progress=False)
    assert not (tmp_path / "b" / path).exists()
