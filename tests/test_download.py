"""``geoplant download`` against real servers on 127.0.0.1 (HTTP mirror and a fake Kaggle API)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_http import Handler, LocalServer, offline_guard

from geoplant import cli
from geoplant.catalog import load_catalog
from geoplant.downloader import KAGGLE_INPUT_ENV, LOCK_FILE, _mirror_kind, download, file_url
from geoplant.errors import GeoplantError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Refuse any connection that is not to 127.0.0.1; isolate from the user's Kaggle setup."""
    offline_guard(monkeypatch)
    for var in [v for v in os.environ if v.startswith("KAGGLE_") or v.lower().endswith("_proxy")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv(KAGGLE_INPUT_ENV, str(tmp_path / "no-kaggle-input"))


# ------------------------------------------------------------------------------- test server


class Server(LocalServer):
    """The mirror (``local_http.LocalServer``: Range, one-shot faults, a request log) plus the
    Kaggle API routes: a download POST is answered with a redirect to ``/files/<name>``."""

    def __init__(self) -> None:
        super().__init__(headers={"ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})

    def handle_post(self, handler: Handler, path: str, body: bytes) -> None:
        request = json.loads(body)
        self.log.append({"method": "POST", "path": path, "body": request,
                         "auth": handler.headers.get("Authorization")})
        if path.endswith("/competitions.CompetitionApiService/DownloadDataFile"):
            target = "/files/" + request["fileName"]
        elif path.endswith("/competitions.CompetitionApiService/DownloadDataFiles"):
            target = f"/files/{request['competitionName']}.zip"
        else:
            target = ""
        if target not in self.files:
            handler.reply(404, json.dumps({"code": 404, "message": "not found"}).encode(),
                          "application/json")
            return
        handler.send_response(302)
        handler.send_header("Location", "http://localhost" + urllib.parse.quote(target))
        handler.send_header("Content-Length", "0")
        handler.end_headers()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


# ------------------------------------------------------------------------------- fixture release


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_release(server: Server, root: Path) -> tuple[Path, dict[str, bytes]]:
    """A small release in the glc24 layout, served under /mirror/, with its catalog YAML."""
    rng = random.Random(0)
    csv = b"lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId\n" + b"".join(
        f"{rng.uniform(-10, 30):.5f},{rng.uniform(35, 70):.5f},2019,5.0,100.0,ATLANTIC,France,"
        f"{rng.randrange(11255)}.0,{1000 + i}\n".encode() for i in range(200))
    landcover = _zip({"LandCover/LandCover_MODIS_Terra-Aqua_500m.tif": rng.randbytes(3000)})
    patches = _zip({f"pa_train_patches_rgb/{i:02d}/23/{i}1323.jpeg": rng.randbytes(40_000)
                    for i in range(30)})  # ~1.2 MB, incompressible: the resume fixture
    vol = [_zip({f"PO-Train/{k}/0/{k}00{j}.tiff": rng.randbytes(500) for j in range(3)})
           for k in range(2)]
    cubes = _zip({f"GLC24-PA-test-bioclimatic_monthly/{i}_cube.pt": rng.randbytes(2000)
                  for i in range(4)})
    half = len(cubes) // 2
    files = {
        "GLC24_PA_metadata_train.csv": csv,
        "EnvironmentalRasters/LandCover.zip": landcover,
        "SatellitePatches/PA-Train-SatellitePatches-RGB.zip": patches,
        "Tiff/PO-Train-part-00.zip": vol[0],
        "Tiff/PO-Train-part-01.zip": vol[1],
        "Cubes/PA-test-cubes.zip.001": cubes[:half],
        "Cubes/PA-test-cubes.zip.002": cubes[half:],
    }
    for path, data in files.items():
        server.files["/mirror/" + path] = data
    common = {"splits": ["pa_train"], "evidence": "VERIFIED", "sha256": None}
    catalog = {
        "schema_version": 1, "release": "tiny", "title": "test release", "layout": "glc24",
        "licence": {"id": "MIT"}, "citation": {"text": "test"},
        "sources": {
            "kaggle": {"type": "kaggle-competition", "ref": "geolifeclef-2024",
                       "mount": "geolifeclef-2024"},
            "mirror": {"type": "http", "url": server.url + "/mirror"},
        },
        "parts": [
            {"name": "meta-pa-train", "path": "GLC24_PA_metadata_train.csv", "kind": "file",
             "size": len(csv), **common, "modalities": ["metadata"],
             "sources": {"kaggle": {"file": "GLC24_PA_metadata_train.csv"}, "mirror": {}}},
            {"name": "rasters-landcover", "path": "EnvironmentalRasters/LandCover.zip",
             "kind": "archive", "size": len(landcover), **common, "sha256": _sha(landcover),
             "splits": [], "modalities": ["rasters"], "sources": {"mirror": {}}},
            {"name": "patches-rgb-pa-train", "kind": "archive", **common,
             "path": "SatellitePatches/PA-Train-SatellitePatches-RGB.zip",
             "extract_to": "PA_Train_SatellitePatches_RGB", "size": len(patches),
             "modalities": ["sentinel2"], "sources": {"mirror": {}}},
            {"name": "tiff-po-train", "kind": "archive", "volume_format": "zips",
             "volumes": [{"path": p, "size": len(files[p]), "sha256": None}
                         for p in ("Tiff/PO-Train-part-00.zip", "Tiff/PO-Train-part-01.zip")],
             "size": len(vol[0]) + len(vol[1]), "splits": ["po_train"],
             "modalities": ["sentinel2"], "evidence": "DOC", "sources": {"mirror": {}}},
            {"name": "cubes-pa-test", "kind": "archive", "volume_format": "split",
             "volumes": [{"path": p, "size": len(files[p]), "sha256": _sha(files[p])}
                         for p in ("Cubes/PA-test-cubes.zip.001", "Cubes/PA-test-cubes.zip.002")],
             "extract_to": "TimeSeries-Cubes", "size": len(cubes), "splits": ["pa_test"],
             "modalities": ["climate"], "evidence": "DOC", "sources": {"mirror": {}}},
        ],
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path, files


@pytest.fixture
def release(server: Server, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    return make_release(server, tmp_path)


def _get(server: Server, path: str) -> list[dict[str, Any]]:
    return server.gets("/mirror/" + path)


# ------------------------------------------------------------------------------- tests


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


def test_http_download_extract_and_rerun_fetches_nothing(release, server: Server,
                                                         tmp_path: Path) -> None:
    catalog, files = release
    dest = tmp_path / "dest"
    report = download("all", dest=dest, catalog=catalog, mirror=server.url + "/mirror",
                      extract=True, jobs=3, progress=False)
    assert {p.status for p in report.parts} == {"downloaded"}
    for path, data in files.items():
        assert (dest / path).read_bytes() == data
        assert len(_get(server, path)) == 1
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
    assert {p: e["sha256"] for p, e in lock.items()} == {p: _sha(d) for p, d in files.items()}
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


def test_interrupted_download_resumes_with_range(release, server: Server, tmp_path: Path) -> None:
    catalog, files = release
    path = "SatellitePatches/PA-Train-SatellitePatches-RGB.zip"
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
    first, second = _get(server, path)
    assert first["range"] is None and first["sent"] == 700_000
    assert second["range"] == f"bytes={have}-" and second["status"] == 206
    assert second["sent"] == size - have  # only the missing bytes
    assert report.fetched_bytes == size - have
    assert (dest / path).read_bytes() == files[path] and not partial.exists()
    lock = json.loads((dest / LOCK_FILE).read_text())["files"][path]
    assert lock["sha256"] == _sha(files[path])  # hash covers the resumed prefix too


def test_dropped_connection_is_retried_within_one_run(release, server: Server,
                                                      tmp_path: Path) -> None:
    catalog, files = release
    path = "SatellitePatches/PA-Train-SatellitePatches-RGB.zip"
    server.cut["/mirror/" + path] = 600_000
    download(["patches-*"], dest=tmp_path / "d", catalog=catalog, source="http", backoff=0,
             progress=False)
    first, second = _get(server, path)
    assert second["range"] is not None and first["sent"] + second["sent"] >= len(files[path])
    assert second["sent"] < len(files[path])
    assert (tmp_path / "d" / path).read_bytes() == files[path]


def test_corrupted_byte_on_disk_is_detected_and_refetched(release, server: Server,
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
    assert len(_get(server, path)) == 2 and _get(server, path)[1]["range"] is None
    assert (dest / path).read_bytes() == files[path]


def test_corrupted_transfer_fails_checksum_and_is_refetched(release, server: Server,
                                                            tmp_path: Path) -> None:
    catalog, files = release
    path = "EnvironmentalRasters/LandCover.zip"  # the catalog knows its sha256
    server.corrupt.add("/mirror/" + path)
    download(["rasters-landcover"], dest=tmp_path / "a", catalog=catalog, source="http",
             backoff=0, progress=False)
    assert [e["status"] for e in _get(server, path)] == [200, 200]
    assert (tmp_path / "a" / path).read_bytes() == files[path]

    server.corrupt.add("/mirror/" + path)
    with pytest.raises(GeoplantError, match="corrupt: sha256"):
        download(["rasters-landcover"], dest=tmp_path / "b", catalog=catalog, source="http",
                 retries=0, progress=False)
    assert not (tmp_path / "b" / path).exists()


def test_missing_kaggle_credentials(release, server: Server, tmp_path: Path, capsys) -> None:
    catalog, _ = release
    with pytest.raises(GeoplantError) as info:
        download(["meta-pa-train"], dest=tmp_path / "d", catalog=catalog, source="kaggle")
    message = str(info.value)
    assert "KAGGLE_USERNAME" in message and "KAGGLE_KEY" in message and "kaggle.json" in message
    code = cli.main(["download", "meta-pa-train", "--catalog", str(catalog), "--source", "kaggle",
                     "--dest", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Kaggle credentials not found" in err
    assert server.log == []
    dry = download(["meta-pa-train"], dest=tmp_path / "d", catalog=catalog, dry_run=True)
    assert dry.kaggle_credentials is False and "Kaggle credentials not found" in dry.lines()[-1]


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


def test_unwritable_destination(release, server: Server, tmp_path: Path, capsys) -> None:
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


def test_kaggle_input_mount_is_used_not_downloaded(release, server: Server, tmp_path: Path,
                                                   monkeypatch) -> None:
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


def test_mirror_url_forms() -> None:
    share = "https://lab.plantnet.org/seafile/d/bdb829337aa44a9489f6"
    assert _mirror_kind(share) == "seafile" and _mirror_kind(share + "/") == "seafile"
    assert _mirror_kind("http://127.0.0.1:8000/mirror") == "http"
    assert file_url(share, "EnvironmentalRasters/Climate/Average 1981-2010.csv", "seafile") == (
        share + "/files/?p=/EnvironmentalRasters/Climate/Average%201981-2010.csv&dl=1")
    assert file_url("http://h/m/", "a b/c.zip") == "http://h/m/a%20b/c.zip"
    cat = load_catalog("glc24")
    dry = download(["s24-metadata-pa-test"], dest="/nonexistent/x", catalog=cat, dry_run=True)
    assert dry.parts[0].method == "http" and dry.parts[0].origin == share


def test_kaggle_download_through_the_real_client(release, server: Server, tmp_path: Path) -> None:
    catalog, files = release
    bundle = _zip({"GLC24_PA_metadata_test.csv": b"surveyId\n642\n",
                   "PA_Test_SatellitePatches_RGB/pa_test_patches_rgb/42/6/642.jpeg": b"\xff\xd8"})
    server.files["/files/GLC24_PA_metadata_train.csv"] = files["GLC24_PA_metadata_train.csv"]
    server.files["/files/geolifeclef-2024.zip"] = bundle
    data = yaml.safe_load(catalog.read_text())
    data["parts"].append({
        "name": "k24-all", "path": "geolifeclef-2024.zip", "kind": "archive", "extract_to": ".",
        "size": len(bundle), "sha256": None, "splits": ["pa_test"], "modalities": ["metadata"],
        "sources": {"kaggle": {"bundle": True}}, "evidence": "VERIFIED"})
    catalog.write_text(yaml.safe_dump(data, sort_keys=False))
    home = tmp_path / "kaggle-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAGGLE_") and not k.lower().endswith("_proxy")}
    env |= {  # kaggle 2.x with LOCALHOST calls http://localhost/api/v1/...: proxy it to us
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_USERNAME": "alice",
        "KAGGLE_KEY": "s3cret", "HTTP_PROXY": server.url, "http_proxy": server.url,
        "NO_PROXY": "", "no_proxy": "", KAGGLE_INPUT_ENV: str(tmp_path / "none"),
    }
    dest = tmp_path / "dest"
    cmd = [sys.executable, "-m", "geoplant.cli", "download", "meta-pa-train", "k24-all",
           "--catalog", str(catalog), "--source", "kaggle", "--dest", str(dest), "--extract",
           "--no-progress", "--jobs", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    posts = [e for e in server.log if e["method"] == "POST"]
    assert {e["path"] for e in posts} == {
        "/api/v1/competitions.CompetitionApiService/DownloadDataFile",
        "/api/v1/competitions.CompetitionApiService/DownloadDataFiles"}
    assert posts[0]["auth"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert any(e["body"].get("fileName") == "GLC24_PA_metadata_train.csv" for e in posts)
    csv = dest / "GLC24_PA_metadata_train.csv"
    assert csv.read_bytes() == files["GLC24_PA_metadata_train.csv"]
    assert (dest / "PA_Test_SatellitePatches_RGB/pa_test_patches_rgb/42/6/642.jpeg").is_file()
    lock = json.loads((dest / LOCK_FILE).read_text())["files"]
    assert lock["geolifeclef-2024.zip"]["source"] == "kaggle"
    assert lock["GLC24_PA_metadata_train.csv"]["sha256"] == _sha(csv.read_bytes())

    n = len(server.log)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert len(server.log) == n  # re-run: nothing fetched, Kaggle not even asked
    assert "fetched this run: 0 B" in proc.stdout
