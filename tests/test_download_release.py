"""``geoplant download`` end to end on a whole synthetic GLC24 release served over HTTP.

The session fixture ``glc24_tiny`` (``geoplant sample``'s writer) gives the Kaggle GLC24 tree
plus the Seafile raster zips. Here that release is published the way ``data_catalog/glc24.yaml``
describes it, on a real HTTP server bound to 127.0.0.1:

* the Kaggle tree (everything but ``truth/`` and the raster zips) becomes the competition
  archive of part ``k24-all`` (``geolifeclef-2024.zip``, ``extract_to: .``). The catalog serves
  that part only through the Kaggle API, so over HTTP it comes from ``--mirror`` (a plain copy
  of the release: part paths appended to the base URL);
* the raster zips are served by a Seafile look-alike at the catalog's ``seafile-2024`` share
  (``/seafile/d/<id>/files/?p=/<path>&dl=1``), fetched through the catalog's own source.

The catalog given to ``--catalog`` is derived from the real one: same parts, names, paths,
kinds, ``extract_to``, splits and sources; only the sizes and sha256 of the served parts (the real
ones are for the real data) and the host of the Seafile share URL differ, which the first test
checks. Exact sizes and checksums make the downloader verify every transfer.

The downloads run the CLI in a subprocess (``python -m geoplant.cli download ...``) whose only
possible connections are to 127.0.0.1: proxies are off, and a ``sitecustomize`` module put on
its PYTHONPATH refuses any other address, as the in-process guard below does for this process
(the re-run, which must fetch nothing, calls ``geoplant.cli.main`` in-process with the same
arguments: a subprocess pays ~3 s of imports for each command).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_http import LocalServer, offline_guard

from geoplant import cli
from geoplant.catalog import load_catalog
from geoplant.downloader import KAGGLE_INPUT_ENV, LOCK_FILE, STATE_DIR, download
from geoplant.errors import GeoplantError
from geoplant.raw import RawRelease

REPO = Path(__file__).resolve().parents[1]
REAL_CATALOG = REPO / "data_catalog" / "glc24.yaml"
BUNDLE = "k24-all"  # the whole Kaggle competition as one zip
SEAFILE = "seafile-2024"
MIRROR = "/kaggle-copy"  # URL path of the plain HTTP copy that serves the competition zip
# Fields a derived catalog may change in a served part (the real values describe the real data).
SIZE_FIELDS = ("size", "size_approx", "size_note", "sha256")

GUARD = '''\
"""Loaded at start-up by the download subprocess: no connection except to 127.0.0.1."""
import socket

_connect = socket.socket.connect


def _guarded(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
        raise OSError(f"test guard: connection to {address!r} refused (only 127.0.0.1)")
    return _connect(self, address)


socket.socket.connect = _guarded
'''


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process code may reach 127.0.0.1 only (the subprocess has its own guard)."""
    offline_guard(monkeypatch)


# ------------------------------------------------------------------------------- server


class Server(LocalServer):
    """``local_http.LocalServer`` (Range, a request log, one-shot connection drops) that also
    answers Seafile's share download form ``<share>/files/?p=/<path>&dl=1`` (served from
    ``<share>/<path>``)."""

    def __init__(self) -> None:
        super().__init__(content_type="application/zip")

    def resolve(self, target: str) -> str:
        path = super().resolve(target)
        share = re.fullmatch(r"(/(?:seafile/)?d/[0-9a-f]+)/files/", path)
        if share:  # Seafile: the file is named by the query, dl=1 asks for its bytes
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
            if query.get("dl") == ["1"] and query.get("p", [""])[0].startswith("/"):
                return share[1] + query["p"][0]
        return path


# ------------------------------------------------------------------------------- helpers


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for every file under ``root``."""
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def _raster_zips(sample: Path) -> dict[str, Path]:
    """The Seafile raster zips ``geoplant sample`` writes beside the Kaggle tree."""
    return {rel: p for rel, p in _tree(sample).items()
            if re.fullmatch(r"EnvironmentalRasters/[^/]+\.zip", rel)}


def _kaggle_tree(sample: Path) -> dict[str, Path]:
    """What the Kaggle competition zip holds: the sample minus ``truth/`` and the raster zips."""
    rasters = _raster_zips(sample)
    return {rel: p for rel, p in sorted(_tree(sample).items())
            if not rel.startswith("truth/") and rel not in rasters}


def _part_by_path(raw: dict[str, Any], path: str) -> dict[str, Any]:
    found = [p for p in raw["parts"] if p.get("path") == path]
    assert len(found) == 1, f"{len(found)} catalog parts have path {path!r}"
    return found[0]


def _derive_catalog(real: dict[str, Any], served: dict[str, bytes], seafile_url: str,
                    ) -> dict[str, Any]:
    """The real catalog with the served parts' sizes/checksums and the share's host replaced."""
    data = copy.deepcopy(real)
    data["sources"][SEAFILE]["url"] = seafile_url
    for path, body in served.items():
        part = _part_by_path(data, path)
        part.pop("size_note", None)
        part.update(size=len(body), size_approx=False, sha256=_sha(body))
    return data


@dataclass
class Published:
    """The release as published on the test server, and what the first download did."""

    sample: Path
    server: Server
    catalog: Path
    real: dict[str, Any]
    derived: dict[str, Any]
    served: dict[str, bytes]  # catalog path -> bytes (the competition zip, the raster zips)
    urls: dict[str, str]  # catalog path -> server path it is served at
    parts: dict[str, str]  # catalog path -> part name
    dest: Path
    commands: list[list[str]]
    env: dict[str, str]
    outputs: list[str]
    first_log: list[dict[str, Any]]
    cut_at: int


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd[2:])}\n{proc.stderr}{proc.stdout}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def published(glc24_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    root = tmp_path_factory.mktemp("download-release")
    real = yaml.safe_load(REAL_CATALOG.read_text(encoding="utf-8"))
    bundle = next(p for p in real["parts"] if p["name"] == BUNDLE)

    # The competition zip, as Kaggle serves it: the K24 tree at the zip's root.
    archive = root / "served" / bundle["path"]
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for rel, path in _kaggle_tree(glc24_tiny).items():
            zf.write(path, rel)
    served = {bundle["path"]: archive.read_bytes()}
    served |= {rel: p.read_bytes() for rel, p in _raster_zips(glc24_tiny).items()}

    server = Server()
    try:
        share = urllib.parse.urlsplit(real["sources"][SEAFILE]["url"]).path.rstrip("/")
        urls: dict[str, str] = {}
        parts: dict[str, str] = {}
        for path, body in served.items():
            part = _part_by_path(real, path)
            parts[path] = part["name"]
            if path == bundle["path"]:
                assert list(part["sources"]) == ["kaggle"] and part["sources"]["kaggle"]["bundle"]
                urls[path] = f"{MIRROR}/{path}"
            else:
                assert SEAFILE in part["sources"], f"{part['name']} is not on the Seafile share"
                urls[path] = f"{share}/{path}"
            server.files[urls[path]] = body
        derived = _derive_catalog(real, served, server.url + share)
        catalog = root / "glc24-local.yaml"
        catalog.write_text(yaml.safe_dump(derived, sort_keys=False, allow_unicode=True))

        guard = root / "guard"
        guard.mkdir()
        (guard / "sitecustomize.py").write_text(GUARD)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KAGGLE_") and not k.lower().endswith("_proxy")
               and k not in ("PYTHONPATH", "GEOPLANT_CATALOG_DIR")}
        env |= {"HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "", "https_proxy": "",
                "NO_PROXY": "*", "no_proxy": "*", "PYTHONPATH": str(guard),
                "HOME": str(root / "home"), "XDG_CONFIG_HOME": str(root / "home" / ".config"),
                KAGGLE_INPUT_ENV: str(root / "no-kaggle-input")}

        probe = subprocess.run(  # the guard is live in a child started with this environment
            [sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 5)"],
            env=env, cwd=root, capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "test guard: connection to" in probe.stderr, probe.stderr

        dest = root / "dest"
        common = ["--dest", str(dest), "--source", "http", "--extract", "--catalog", str(catalog),
                  "--no-progress"]
        rasters = [parts[p] for p in served if p != bundle["path"]]
        commands = [
            # k24-all is Kaggle-only in the catalog: over HTTP it needs a copy of the release.
            [sys.executable, "-m", "geoplant.cli", "download", BUNDLE, *common,
             "--mirror", server.url + MIRROR],
            # the raster zips come from the catalog's own Seafile source (host swapped).
            [sys.executable, "-m", "geoplant.cli", "download", *rasters, *common],
        ]
        cut_at = len(served[bundle["path"]]) // 3
        server.cut[urls[bundle["path"]]] = cut_at  # the big archive drops once: Range resume
        outputs = [_run(cmd, env, root).stdout for cmd in commands]
        yield Published(glc24_tiny, server, catalog, real, derived, served, urls, parts, dest,
                        commands, env, outputs, list(server.log), cut_at)
    finally:
        server.close()


# ------------------------------------------------------------------------------- tests


def test_derived_catalog_differs_from_the_real_one_only_in_sizes_and_host(
        published: Published) -> None:
    real, derived = published.real, published.derived
    assert published.parts.keys() == published.served.keys()
    assert {k: v for k, v in derived.items() if k not in ("sources", "parts")} == \
        {k: v for k, v in real.items() if k not in ("sources", "parts")}
    assert [p["name"] for p in derived["parts"]] == [p["name"] for p in real["parts"]]
    for r, d in zip(real["parts"], derived["parts"], strict=True):
        if r.get("path") in published.served:
            assert {k: v for k, v in d.items() if k not in SIZE_FIELDS} == \
                {k: v for k, v in r.items() if k not in SIZE_FIELDS}
        else:
            assert d == r
    real_src, derived_src = copy.deepcopy(real["sources"]), copy.deepcopy(derived["sources"])
    real_url = urllib.parse.urlsplit(real_src[SEAFILE].pop("url"))
    local_url = urllib.parse.urlsplit(derived_src[SEAFILE].pop("url"))
    assert derived_src == real_src
    assert local_url.netloc.startswith("127.0.0.1:") and local_url.path == real_url.path
    # it loads and validates like the real one, with the settings the test relies on
    cat = load_catalog(published.catalog)
    bundle = cat.part(BUNDLE)
    assert bundle.is_archive and bundle.extract_dir == "." and bundle.path == "geolifeclef-2024.zip"
    for path, name in published.parts.items():
        part = cat.part(name)
        assert part.path == path and part.is_archive
        assert part.files[0].exact_size == len(published.served[path])
    # and, as the catalog says, k24-all has no HTTP source of its own
    with pytest.raises(GeoplantError, match="served only by Kaggle"):
        download([BUNDLE], dest=published.dest.parent / "nowhere", catalog=published.catalog,
                 source="http", dry_run=True)


def test_first_run_fetched_every_served_file_once_and_resumed_the_cut(
        published: Published) -> None:
    log = published.first_log
    assert {e["status"] for e in log} <= {200, 206}, log
    bundle_path = next(p for p, n in published.parts.items() if n == BUNDLE)
    for path, body in published.served.items():
        gets = [e for e in log if e["path"] == published.urls[path]]
        if path == bundle_path:  # dropped once, then resumed from where it stopped
            first, second = gets
            assert first["range"] is None and first["sent"] == published.cut_at
            # the client keeps what it wrote to the .part file (whole chunks it received)
            have = int(re.fullmatch(r"bytes=(\d+)-", second["range"] or "")[1])
            assert 0 < have <= published.cut_at
            assert second["status"] == 206 and second["sent"] == len(body) - have
        else:
            assert [(e["status"], e["range"]) for e in gets] == [(200, None)], gets
            assert gets[0]["raw"].endswith("&dl=1") and "/files/?p=/" in gets[0]["raw"]
    assert len(log) == len(published.served) + 1
    lock = json.loads((published.dest / LOCK_FILE).read_text())["files"]
    assert {p: e["sha256"] for p, e in lock.items()} == \
        {p: _sha(b) for p, b in published.served.items()}
    assert {e["source"] for e in lock.values()} == {"http"}
    for path, body in published.served.items():
        assert (published.dest / path).read_bytes() == body
    markers = published.dest / STATE_DIR / "extracted"
    assert sorted(p.stem for p in markers.glob("*.json")) == sorted(published.parts.values())
    assert not list(published.dest.rglob("*.part"))
    for out in published.outputs:
        lines = [ln for ln in out.splitlines() if ln.split(" ")[0] in published.parts.values()]
        assert lines and all("downloaded" in ln for ln in lines), out


def test_extracted_tree_is_byte_identical_to_the_sample(published: Published) -> None:
    dest = _tree(published.dest)
    kaggle = _kaggle_tree(published.sample)
    # every file of the competition zip landed at its K24 path (extract_to: .), unchanged
    missing = sorted(kaggle.keys() - dest.keys())
    assert not missing, f"{len(missing)} K24 files not at their path, e.g. {missing[:5]}"
    differ = [rel for rel, p in kaggle.items()
              if _sha(p.read_bytes()) != _sha(dest[rel].read_bytes())]
    assert not differ, f"{len(differ)} files differ, e.g. {differ[:5]}"
    metadata = [rel for rel in kaggle if "/" not in rel and rel.endswith(".csv")]
    assert sorted(metadata) == ["GLC24_P0_metadata_train.csv", "GLC24_PA_metadata_test.csv",
                                "GLC24_PA_metadata_train.csv", "GLC24_SAMPLE_SUBMISSION.csv"]
    for rel in metadata:
        assert dest[rel].read_bytes() == kaggle[rel].read_bytes()
    assert sum(rel.endswith(".csv") for rel in kaggle) > 20
    # the raster zips are kept (the layout reads inside them) and were unzipped where the
    # catalog says (no extract_to: the archive's folder)
    cat = load_catalog(published.catalog)
    extracted: set[str] = set()
    for path, name in published.parts.items():
        into = cat.part(name).extract_dir
        with zipfile.ZipFile(published.dest / path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                rel = info.filename if into == "." else f"{into}/{info.filename}"
                assert dest[rel].read_bytes() == zf.read(info), rel
                extracted.add(rel)
    # nothing else: no stray or misplaced file
    bookkeeping = {rel for rel in dest if rel.startswith(STATE_DIR + "/") or rel == LOCK_FILE}
    assert dest.keys() - bookkeeping == kaggle.keys() | published.served.keys() | extracted


def test_raw_release_reads_the_download(published: Published) -> None:
    with RawRelease(published.dest) as rel:
        assert rel.layout == "glc24"
        for split in ("pa_train", "pa_test"):
            report = rel.check_consistency(split)
            assert report.ok, report.summary()
            assert report.n_surveys > 0 and len(report.files) >= 9
        missing = [n for n in rel.raster_names() if not rel.exists(rel.location(f"raster.{n}"))]
        assert not missing, missing
    # every folder k24-all's catalog entry says the competition zip holds is there
    bundle = next(p for p in published.real["parts"] if p["name"] == BUNDLE)
    absent = [c["path"] for c in bundle["contents"] if not (published.dest / c["path"]).exists()]
    assert not absent, absent


def test_second_run_fetches_nothing(published: Published, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The same two commands again, in-process this time (same argv, same DEST; this
    process's socket guard applies): nothing is requested, nothing re-extracted."""
    for var in [v for v in os.environ if v.startswith("KAGGLE_") or v.lower().endswith("_proxy")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv(KAGGLE_INPUT_ENV, published.env[KAGGLE_INPUT_ENV])
    markers = {p: p.read_bytes() for p in (published.dest / STATE_DIR / "extracted").iterdir()}
    lock = (published.dest / LOCK_FILE).read_bytes()
    n = len(published.server.log)
    for cmd in published.commands:
        assert cmd[1:3] == ["-m", "geoplant.cli"]
        assert cli.main(cmd[3:]) == 0
        out = capsys.readouterr().out
        assert "fetched this run: 0 B" in out, out
        lines = [ln for ln in out.splitlines() if ln.split(" ")[0] in published.parts.values()]
        assert lines and all(" present " in ln for ln in lines), out
    assert published.server.log[n:] == []
    assert {p: p.read_bytes() for p in markers} == markers  # not re-extracted either
    assert (published.dest / LOCK_FILE).read_bytes() == lock
