"""``geoplant download`` end to end (`geoplant.downloader.core` and its CLI) against a real
mirror on 127.0.0.1: dry runs, a full download with extraction, argument and destination
errors. The fetch, lock-file, planning, Kaggle and extraction details have their own
``test_download_*.py`` files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from local_http import MirrorServer, sha

from geoplant import cli
from geoplant.catalog import load_catalog
from geoplant.downloader import LOCK_FILE, download
from geoplant.errors import GeoplantError

pytestmark = pytest.mark.usefixtures("offline")  # only 127.0.0.1; no Kaggle set-up


def test_dry_run_lists_every_glc24_part_offline(tmp_path: Path, capsys) -> None:
    code = cli.main(["download", "--release", "glc24", "--dry-run", "--dest", str(tmp_path / "d")])
    out = capsys.readouterr().out
    assert code == 0
    cat = load_catalog("glc24")
    for part in cat.parts:
        line = next(ln for ln in out.splitlines() if ln.startswith(part.name + " "))
        assert ("unknown" in line) == (part.size is None)
        assert "missing" in line
    assert "s24-rasters-climate" in out and "~24.9 GiB" in out
    assert f"total: {len(cat.parts)} part(s)" in out
    assert "present and verified (or mounted): 0 part(s)" in out
    assert not (tmp_path / "d").exists()  # a dry run creates nothing


def test_http_download_extract_and_rerun_fetches_nothing(release, server: MirrorServer,
                                                         tmp_path: Path) -> None:
    catalog, files = release
    dest = tmp_path / "dest"
    report = download("all", dest=dest, catalog=catalog, mirror=server.url + "/mirror",
                      extract=True, jobs=3, progress=False)
    assert {p.status for p in report.parts} == {"downloaded"}
    for path, data in files.items():
        assert (dest / path).read_bytes() == data
        assert len(server.mirror_gets(path)) == 1
    assert report.fetched_bytes == sum(map(len, files.values()))
    # extracted where the catalog says, once each
    assert (dest / "EnvironmentalRasters/LandCover/LandCover_MODIS_Terra-Aqua_500m.tif").is_file()
    assert (dest / "PA_Train_SatellitePatches_RGB/pa_train_patches_rgb/07/23/71323.jpeg").is_file()
    assert (dest / "Tiff/PO-Train/0/0/0000.tiff").is_file()  # both volumes of a multi-part zip
    assert (dest / "Tiff/PO-Train/1/0/1002.tiff").is_file()
    assert (dest / "TimeSeries-Cubes/GLC24-PA-test-bioclimatic_monthly/3_cube.pt").is_file()
    assert all(p.extracted for p in report.parts if p.name != "meta-pa-train")
    assert len(list((dest / ".geoplant/extracted").glob("*.json"))) == 4
    lock = json.loads((dest / LOCK_FILE).read_text())["files"]
    assert {p: e["sha256"] for p, e in lock.items()} == {p: sha(d) for p, d in files.items()}
    assert not list(dest.rglob("*.part"))

    n_requests = len(server.log)
    (dest / "Tiff/PO-Train/0/0/0000.tiff").unlink()  # the marker, not the tree, decides
    again = download(["all"], dest=dest, catalog=catalog, mirror=server.url + "/mirror",
                     extract=True, progress=False)
    assert len(server.log) == n_requests  # nothing downloaded
    assert {p.status for p in again.parts} == {"present"}
    assert again.fetched_bytes == 0 and not any(p.extracted for p in again.parts)
    dry = download(None, dest=dest, catalog=catalog, dry_run=True, mirror=server.url + "/mirror")
    assert {p.status for p in dry.parts} == {"present"}


def test_unknown_part_and_bad_arguments(release, tmp_path: Path, capsys) -> None:
    catalog, _ = release
    with pytest.raises(GeoplantError, match=r"unknown part 'meta-pa-trian'.*meta-pa-train"):
        download(["meta-pa-trian"], dest=tmp_path, catalog=catalog)
    assert cli.main(["download", "nope", "--release", "glc24", "--dry-run"]) == 2
    assert "unknown part 'nope'" in capsys.readouterr().err
    with pytest.raises(GeoplantError, match="no part named"):
        download(None, dest=tmp_path, catalog=catalog)
    with pytest.raises(SystemExit) as info:
        cli.main(["download", "all", "--jobs", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["download", "all", "--source", "ftp"])
    assert cli.main(["download", "all", "--mirror", "ftp://x", "--dest", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_unwritable_destination(release, server: MirrorServer, tmp_path: Path, capsys) -> None:
    catalog, _ = release
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for dest in (blocker, blocker / "sub" / "dest"):
        with pytest.raises(GeoplantError, match="is a file, not a folder"):
            download(["meta-pa-train"], dest=dest, catalog=catalog, source="http")
        code = cli.main(["download", "meta-pa-train", "--catalog", str(catalog), "--dest",
                         str(dest), "--source", "http"])
        assert code == 2
    assert "a-file" in capsys.readouterr().err
    assert server.log == []
