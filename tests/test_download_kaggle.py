"""`geoplant.downloader.kaggle`: credentials, error mapping, and a download through the real
``kaggle`` client talking to a fake Kaggle API on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from local_http import MirrorServer, set_part, sha, zip_bytes

from geoplant import cli
from geoplant.catalog import load_catalog
from geoplant.downloader import KAGGLE_INPUT_ENV, LOCK_FILE, download, kaggle_credentials_present
from geoplant.downloader.kaggle import kaggle_error
from geoplant.downloader.plan import plan_part
from geoplant.errors import GeoplantError

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("offline")


def test_missing_kaggle_credentials(release, server: MirrorServer, tmp_path: Path,
                                    capsys) -> None:
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


def test_credentials_are_found_where_the_client_looks(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert not kaggle_credentials_present()
    config = tmp_path / "home" / ".kaggle"
    config.mkdir(parents=True)
    (config / "kaggle.json").write_text(json.dumps({"username": "alice", "key": ""}))
    assert not kaggle_credentials_present()  # an empty key is no credential
    (config / "access_token").write_text("tok\n")
    assert kaggle_credentials_present()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "elsewhere"))
    assert not kaggle_credentials_present()  # KAGGLE_CONFIG_DIR replaces ~/.kaggle
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "s3cret")
    assert kaggle_credentials_present()


def test_kaggle_errors_are_one_line_with_a_fix(release, tmp_path: Path) -> None:
    catalog, _ = release
    cat = load_catalog(catalog)
    plan = plan_part(cat, cat.part("meta-pa-train"), "kaggle", None)
    target = tmp_path / "x.csv"

    def failure(status: int | None) -> Exception:
        err = RuntimeError("boom")
        err.response = SimpleNamespace(status_code=status)  # type: ignore[attr-defined]
        return err

    assert "rejected the credentials" in str(kaggle_error(failure(401), plan, target))
    assert "accept the rules/terms of geolifeclef-2024" in str(
        kaggle_error(failure(403), plan, target))
    assert "not found on Kaggle: geolifeclef-2024 GLC24_PA_metadata_train.csv" in str(
        kaggle_error(failure(404), plan, target))
    other = kaggle_error(ValueError("bad"), plan, target)
    assert "Kaggle download failed: ValueError: bad" in str(other) and "\n" not in str(other)


def test_kaggle_download_through_the_real_client(release, server: MirrorServer,
                                                 tmp_path: Path) -> None:
    catalog, files = release
    bundle = zip_bytes({
        "GLC24_PA_metadata_test.csv": b"surveyId\n642\n",
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
    assert lock["GLC24_PA_metadata_train.csv"]["sha256"] == sha(csv.read_bytes())

    n = len(server.log)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert len(server.log) == n  # re-run: nothing fetched, Kaggle not even asked
    assert "fetched this run: 0 B" in proc.stdout


def _kaggle_in_process(monkeypatch: pytest.MonkeyPatch, server: MirrorServer) -> None:
    """The real kaggle client in this process, talking to ``server`` (as in the subprocess
    test above: LOCALHOST API through HTTP_PROXY)."""
    for name, value in {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_USERNAME": "alice",
                        "KAGGLE_KEY": "s3cret", "HTTP_PROXY": server.url,
                        "http_proxy": server.url, "NO_PROXY": "", "no_proxy": ""}.items():
        monkeypatch.setenv(name, value)


def test_kaggle_size_far_from_the_catalog_is_refused_before_downloading(
        release, server: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, files = release
    path = "GLC24_PA_metadata_train.csv"
    server.files["/files/" + path] = files[path]
    set_part(catalog, "meta-pa-train", size=50 * len(files[path]), size_approx=True)
    _kaggle_in_process(monkeypatch, server)
    dest = tmp_path / "dest"
    with pytest.raises(GeoplantError) as info:
        download(["meta-pa-train"], dest=dest, catalog=catalog, source="kaggle", progress=False)
    message = str(info.value)
    assert "part 'meta-pa-train': Kaggle announces" in message
    assert f"{len(files[path])} bytes" in message and "nothing was downloaded" in message
    assert "--accept-size" in message
    assert not (dest / path).exists() and not (dest / (path + ".part")).exists()
    assert not any(p.is_file() for p in (dest / ".geoplant").rglob("*"))  # no staged bytes
    assert not (dest / LOCK_FILE).exists()

    report = download(["meta-pa-train"], dest=dest, catalog=catalog, source="kaggle",
                      accept_size=True, progress=False)
    assert report.parts[0].status == "downloaded"
    entry = json.loads((dest / LOCK_FILE).read_text())["files"][path]
    assert entry["size_accepted"] is True and entry["source_size"] == len(files[path])


def test_kaggle_corrupt_file_is_caught_by_the_storage_digest_and_deleted(
        release, server: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No sha256 in the catalog: the md5 the storage behind Kaggle sends (``x-goog-hash``)
    catches a flipped byte; the message says the file was deleted, and it was."""
    catalog, files = release
    path = "GLC24_PA_metadata_train.csv"
    server.files["/files/" + path] = files[path]
    server.digest = True
    server.corrupt.add("/files/" + path)
    _kaggle_in_process(monkeypatch, server)
    dest = tmp_path / "dest"
    with pytest.raises(GeoplantError, match=r"failed its check \(md5 .*\) and was deleted"):
        download(["meta-pa-train"], dest=dest, catalog=catalog, source="kaggle", progress=False)
    assert not (dest / path).exists() and not (dest / (path + ".part")).exists()
    assert not (dest / LOCK_FILE).exists()

    download(["meta-pa-train"], dest=dest, catalog=catalog, source="kaggle", progress=False)
    assert (dest / path).read_bytes() == files[path]
    entry = json.loads((dest / LOCK_FILE).read_text())["files"][path]
    assert entry["source_size"] == len(files[path]) and entry["etag"] == '"v1"'
    assert entry["md5"] == hashlib.md5(files[path]).hexdigest()
