"""`geoplant.downloader.plan` and `geoplant.downloader.mount`: mirror URL forms, the source
each part comes from, and parts a Kaggle kernel already has under ``/kaggle/input``."""

from __future__ import annotations

from pathlib import Path

import pytest
from local_http import MirrorServer

from geoplant.catalog import load_catalog
from geoplant.downloader import KAGGLE_INPUT_ENV, download, file_url
from geoplant.downloader.plan import mirror_kind, plan_part
from geoplant.errors import GeoplantError

pytestmark = pytest.mark.usefixtures("offline")


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


def test_volume_remote_path_and_alt_paths_are_fetched(release, server: MirrorServer,
                                                      tmp_path: Path) -> None:
    """A volume the source serves under its own name (`remote_path`), and a file the source
    serves under another spelling (`alt_paths`, tried after a 404), land at the release path."""
    import yaml

    catalog, files = release
    data = yaml.safe_load(catalog.read_text())
    volumes = next(p for p in data["parts"] if p["name"] == "tiff-po-train")["volumes"]
    for v in volumes:  # the server keeps them without the release's folder
        server.files["/mirror/" + Path(v["path"]).name] = server.files.pop("/mirror/" + v["path"])
        v["remote_path"] = Path(v["path"]).name
    meta = next(p for p in data["parts"] if p["name"] == "meta-pa-train")
    server.files["/mirror/PA-metadata-train.csv"] = server.files.pop(
        "/mirror/GLC24_PA_metadata_train.csv")
    meta["sources"]["mirror"] = {"alt_paths": ["PA-metadata-train.csv"]}
    catalog.write_text(yaml.safe_dump(data, sort_keys=False))
    dest = tmp_path / "d"
    download(["tiff-po-train", "meta-pa-train"], dest=dest, catalog=catalog, source="http")
    for path in ("Tiff/PO-Train-part-00.zip", "Tiff/PO-Train-part-01.zip",
                 "GLC24_PA_metadata_train.csv"):
        assert (dest / path).read_bytes() == files[path]
    asked = [e["path"] for e in server.log if e["method"] == "GET"]
    assert "/mirror/GLC24_PA_metadata_train.csv" in asked  # the catalog name first, then the alt
    assert "/mirror/Tiff/PO-Train-part-00.zip" not in asked
