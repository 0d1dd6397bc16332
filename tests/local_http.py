"""A real HTTP server on 127.0.0.1 and a socket guard, shared by the download tests.

Not a test module: ``test_download.py`` and ``test_download_release.py`` import it as
``from local_http import ...`` (pytest's default ``prepend`` import mode puts ``tests/`` on
``sys.path``, as for ``ddp_script``).

``LocalServer`` serves ``files`` (URL path -> bytes) over HTTP/1.1 with ``Range: bytes=N-``
(206, 416 past the end), logs every request, and can fault once per path: ``cut`` drops the
connection after some bytes of the body, ``corrupt`` flips one byte of the next body. Test
files extend it where their servers differ: ``resolve`` maps a request target to the served
path (other URL forms), ``handle_post`` answers POSTs (API routes).
"""

from __future__ import annotations

import re
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

LOCALHOST = "127.0.0.1"


def offline_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process refuse any IP connection that is not to 127.0.0.1."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] != LOCALHOST:
            raise OSError(f"test tried to reach {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


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
        entry: dict[str, Any] = {"method": "GET", "path": path, "raw": self.path,
                                 "range": asked, "status": 404, "sent": 0,
                                 "auth": self.headers.get("Authorization")}
        srv.log.append(entry)
        data = srv.files.get(path)
        if data is None:
            self.reply(404, b"not found")
            return
        start, status = 0, 200
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
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", srv.content_type)
        for name, value in srv.headers.items():
            self.send_header(name, value)
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
        self.content_type = content_type
        self.headers = dict(headers or {})
        self.httpd = ThreadingHTTPServer((LOCALHOST, 0), Handler)
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
