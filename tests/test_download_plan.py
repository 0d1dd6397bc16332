"""`geoplant.downloader.plan` and `geoplant.downloader.mount`: mirror URL forms, the source
each part comes from, and parts a Kaggle kernel already has under ``/kaggle/input``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from local_http import MirrorServer, isolate, make_release

from geoplant.catalog import load_catalog
from geoplant.downloader import KAGGLE_INPUT_ENV, download, file_url
from geoplant.downloader.plan import mirror_kind, plan_part
from geoplant.errors import GeoplantError


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


def test_mirror_url_forms() -> None:
    share = "https://lab.plantnet.org/seafile/d/bdb829337aa44a9489f6"
    assert mirror_kind(share) == "seafile" and mirror_kind(share + "/") == "seafile"
    assert mirror_kind("http://127.0.0.1:8000/mirror") == "http"
    assert file_url(share, "EnvironmentalRasters/Climate/Average 1981-2010.csv", "seafile") == (
        share + "/files/?p=/EnvironmentalRasters/Climate/Average%201981-2010.csv&dl=1")
    assert file_url("http://h/m/", "a b/c.zip") == "http://h/m/a%20b/c.zip"
    cat = load_catalog("glc24")
    dry = download(["s24-metadata-pa-test"], dest="/nonexistent/x", catalog=cat, dry_run=True)
    assert dry.parts[0].method == "http" and dry.parts[0].origin == share


def test_plan_part_chooses_the_source(release, server: MirrorServer) -> None:
    catalog, _ = release
    cat = load_catalog(catalog)
    meta, rasters = cat.part("meta-pa-train"), cat.part("rasters-landcover")
    auto = plan_part(cat, meta, "auto", None)  # its first source is Kaggle
    assert (auto.method, auto.origin, auto.urls) == ("kaggle", "competition geolifeclef-2024", {})
    http = plan_part(cat, meta, "http", None)  # the catalog's own mirror source
    assert http.method == "http" and http.origin == server.url + "/mirror"
    assert http.urls == {meta.path: f"{server.url}/mirror/{meta.path}"}
    mirror = plan_part(cat, meta, "auto", "http://copy/r/")  # --mirror wins over Kaggle
    assert mirror.urls == {meta.path: "http://copy/r/GLC24_PA_metadata_train.csv"}
    assert mirror.source is None
    with pytest.raises(GeoplantError, match="has no Kaggle source"):
        plan_part(cat, rasters, "kaggle", None)


def test_kaggle_input_mount_is_used_not_downloaded(release, server: MirrorServer,
                                                   tmp_path: Path, monkeypatch) -> None:
    catalog, files = release
    mount = tmp_path / "kaggle-input" / "geolifeclef-2024"
    mount.mkdir(parents=True)
    (mount / "GLC24_PA_metadata_train.csv").write_bytes(files["GLC24_PA_metadata_train.csv"])
    monkeypatch.setenv(KAGGLE_INPUT_ENV, str(tmp_path / "kaggle-input"))
    dest = tmp_path / "dest"
    report = download(["meta-pa-train"], dest=dest, catalog=catalog, progress=False)
    assert report.parts[0].status == "mounted" and report.fetched_bytes == 0
    link = dest / "GLC24_PA_metadata_train.csv"
    assert link.is_symlink() and link.resolve() == (mount / "GLC24_PA_metadata_train.csv")
    assert server.log == []
    # an explicit HTTP source ignores the mount
    download(["meta-pa-train"], dest=tmp_path / "h", catalog=catalog, source="http",
             progress=False)
    assert len(server.log) == 1
