"""Real HTTP servers on 127.0.0.1, a socket guard and a tiny release, shared by the download
tests.

Not a test module: the ``test_download*.py`` files import it as ``from local_http import ...``
(pytest's default ``prepend`` import mode puts ``tests/`` on ``sys.path``, as for
``ddp_script``).

``LocalServer`` serves ``files`` (URL path -> bytes) over HTTP/1.1 with ``Range: bytes=N-``
(206, 416 past the end) and ``If-Range`` (the whole file when the validator is not the current
``ETag`` or ``Last-Modified`` of ``headers``, unless ``ignore_if_range``), logs every request,
and can fault once per path: ``cut`` drops the connection after some bytes of the body,
``corrupt`` flips one byte of the next body. Paths in ``no_length`` are sent without
``Content-Length`` (until the connection closes); with ``digest`` every response carries the
file's md5 the way Google Cloud Storage (where Kaggle downloads come from) sends it. Test
files extend it where their servers differ: ``resolve`` maps a request target to the served
path (other URL forms), ``handle_post`` answers POSTs (API routes). ``MirrorServer`` adds the
Kaggle API routes; ``make_release`` publishes a small release in the glc24 layout on it and
writes its catalog.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import re
import socket
import sys
import threading
import urllib.parse
import zipfile
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from geoplant.downloader import KAGGLE_INPUT_ENV

LOCALHOST = "127.0.0.1"


def offline_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process refuse any IP connection that is not to 127.0.0.1."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] != LOCALHOST:
            raise OSError(f"test tried to reach {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`offline_guard`, and no Kaggle setup, proxy or ``/kaggle/input`` of the user's."""
    offline_guard(monkeypatch)
    for var in [v for v in os.environ if v.startswith("KAGGLE_") or v.lower().endswith("_proxy")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv(KAGGLE_INPUT_ENV, str(tmp_path / "no-kaggle-input"))


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.owner`` (the ``LocalServer``): GET from its files, POST by its hook."""

    protocol_version = "HTTP/1.1"

    @property
    def owner(self) -> LocalServer:
        return self.server.owner  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.owner
        path = srv.resolve(self.path)
        asked = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        entry: dict[str, Any] = {"method": "GET", "path": path, "raw": self.path,
                                 "range": asked, "if_range": if_range, "status": 404, "sent": 0,
                                 "auth": self.headers.get("Authorization")}
        srv.log.append(entry)
        data = srv.files.get(path)
        if data is None:
            self.reply(404, b"not found")
            return
        start, status = 0, 200
        current = (srv.headers.get("ETag"), srv.headers.get("Last-Modified"))
        if if_range is not None and if_range not in current and not srv.ignore_if_range:
            asked = None  # another version than the client has: send the whole file
        if asked:
            match = re.fullmatch(r"bytes=(\d+)-", asked)
            assert match, f"unsupported Range {asked!r}"
            start, status = int(match[1]), 206
            if start >= len(data):
                entry["status"] = 416
                self.reply(416, b"")
                return
        body = bytearray(data[start:])
        if path in srv.corrupt:
            srv.corrupt.discard(path)
            body[len(body) // 2] ^= 0xFF
        entry["status"] = status
        self.send_response(status)
        if path in srv.no_length:
            self.close_connection = True  # the body ends when the connection closes
        else:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", srv.content_type)
        for name, value in srv.headers.items():
            self.send_header(name, value)
        if srv.digest:
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        n = srv.cut.pop(path, None)
        if n is not None:  # the connection drops mid-body
            self.wfile.write(body[:n])
            self.wfile.flush()
            entry["sent"] = n
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)
        entry["sent"] = len(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.owner.handle_post(self, self.owner.resolve(self.path), body)

    def reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    """Quiet about clients that hang up mid-body (a refused download does)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalServer:
    """Threaded HTTP/1.1 server on 127.0.0.1 (a free port) with Range support, a request log
    (one dict per request: method, path, raw target, range, status, bytes sent, auth) and
    one-shot faults. ``content_type`` and ``headers`` go with every file it serves."""

    def __init__(self, content_type: str = "application/octet-stream",
                 headers: Mapping[str, str] | None = None) -> None:
        self.files: dict[str, bytes] = {}  # URL path -> body
        self.log: list[dict[str, Any]] = []
        self.cut: dict[str, int] = {}  # path -> bytes sent before the connection drops, once
        self.corrupt: set[str] = set()  # paths whose next body has one flipped byte
        self.no_length: set[str] = set()  # paths sent without Content-Length
        self.digest = False  # send x-goog-hash: md5=... (the whole file's) with every body
        self.ignore_if_range = False  # answer Range even when If-Range names another version
        self.content_type = content_type
        self.headers = dict(headers or {})
        self.httpd = _Server((LOCALHOST, 0), Handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.httpd.server_address[1]}"

    def gets(self, path: str) -> list[dict[str, Any]]:
        """The logged GETs of ``path``, in order."""
        return [e for e in self.log if e["method"] == "GET" and e["path"] == path]

    def resolve(self, target: str) -> str:
        """The served path a request target names: its URL path, unquoted (a proxied request
        carries an absolute URL). Override to serve other URL forms."""
        return urllib.parse.unquote(urllib.parse.urlsplit(target).path)

    def handle_post(self, handler: Handler, path: str, body: bytes) -> None:
        """Answer a POST to ``path`` (override to add routes): logged, 405 by default."""
        self.log.append({"method": "POST", "path": path, "body": body,
                         "auth": handler.headers.get("Authorization")})
        handler.reply(405, b"method not allowed")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------------------- mirror + Kaggle


class MirrorServer(LocalServer):
    """The mirror (Range, one-shot faults, a request log) plus the Kaggle API routes: a
    download POST is answered with a redirect to ``/files/<name>``."""

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

    def mirror_gets(self, path: str) -> list[dict[str, Any]]:
        """The logged GETs of release path ``path`` on the mirror."""
        return self.gets("/mirror/" + path)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A stored (uncompressed) zip of ``members`` (name -> bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def sha(data: bytes) -> str:
    """The hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def make_release(server: MirrorServer, root: Path) -> tuple[Path, dict[str, bytes]]:
    """A small release in the glc24 layout, served under /mirror/, with its catalog YAML.

    Returns the catalog path and the served files (release path -> bytes).
    """
    rng = random.Random(0)
    csv = b"lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId\n" + b"".join(
        f"{rng.uniform(-10, 30):.5f},{rng.uniform(35, 70):.5f},2019,5.0,100.0,ATLANTIC,France,"
        f"{rng.randrange(11255)}.0,{1000 + i}\n".encode() for i in range(200))
    landcover = zip_bytes({"LandCover/LandCover_MODIS_Terra-Aqua_500m.tif": rng.randbytes(3000)})
    patches = zip_bytes({f"pa_train_patches_rgb/{i:02d}/23/{i}1323.jpeg": rng.randbytes(40_000)
                         for i in range(30)})  # ~1.2 MB, incompressible: the resume fixture
    vol = [zip_bytes({f"PO-Train/{k}/0/{k}00{j}.tiff": rng.randbytes(500) for j in range(3)})
           for k in range(2)]
    cubes = zip_bytes({f"GLC24-PA-test-bioclimatic_monthly/{i}_cube.pt": rng.randbytes(2000)
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
             "kind": "archive", "size": len(landcover), **common, "sha256": sha(landcover),
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
             "volumes": [{"path": p, "size": len(files[p]), "sha256": sha(files[p])}
                         for p in ("Cubes/PA-test-cubes.zip.001", "Cubes/PA-test-cubes.zip.002")],
             "extract_to": "TimeSeries-Cubes", "size": len(cubes), "splits": ["pa_test"],
             "modalities": ["climate"], "evidence": "DOC", "sources": {"mirror": {}}},
        ],
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    return path, files


def set_part(catalog: Path, name: str, **fields: Any) -> None:
    """Change fields of part ``name`` in the catalog YAML ``catalog`` (e.g. an approximate
    ``size`` with ``size_approx=True``)."""
    data = yaml.safe_load(catalog.read_text())
    part = next(p for p in data["parts"] if p["name"] == name)
    part.update(fields)
    catalog.write_text(yaml.safe_dump(data, sort_keys=False))
