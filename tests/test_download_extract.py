"""`geoplant.downloader.extract`: split volumes read as one zip, members kept inside the
destination, one extraction per set of files (the marker), bad zips reported."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from local_http import sha, zip_bytes

from geoplant.catalog import Citation, Licence, Part, PartFile
from geoplant.downloader import STATE_DIR
from geoplant.downloader.extract import ConcatReader, extract_part, safe_extract
from geoplant.downloader.lockfile import LockFile
from geoplant.errors import GeoplantError


def _part(name: str, paths: list[str], volume_format: str | None = None,
          extract_to: str | None = None) -> Part:
    return Part(name=name, kind="archive", files=tuple(PartFile(p, None) for p in paths),
                size=None, splits=(), modalities=("rasters",), sources={},
                licence=Licence("MIT"), citation=Citation("test"), evidence="DOC",
                volume_format=volume_format, extract_to=extract_to)  # type: ignore[arg-type]


def test_concat_reader_reads_and_seeks_across_volumes(tmp_path: Path) -> None:
    pieces = [b"abc", b"", b"defgh", b"ij"]
    paths = []
    for i, data in enumerate(pieces):
        paths.append(tmp_path / f"v{i}")
        paths[-1].write_bytes(data)
    with ConcatReader(paths) as raw:
        assert raw.read() == b"abcdefghij"
        assert raw.seek(-4, io.SEEK_END) == 6 and raw.read(3) == b"ghi"
        assert raw.seek(2) == 2 and raw.read(4) == b"cdef" and raw.tell() == 6
        assert raw.seek(1, io.SEEK_CUR) == 7 and raw.read() == b"hij"


def test_split_zip_extracts_once_and_again_when_its_files_change(tmp_path: Path) -> None:
    whole = zip_bytes({f"cubes/{i}.pt": bytes([i]) * 3000 for i in range(3)})
    (tmp_path / "c.zip.001").write_bytes(whole[:1000])
    (tmp_path / "c.zip.002").write_bytes(whole[1000:])
    part = _part("cubes", ["c.zip.001", "c.zip.002"], "split", extract_to="out")
    lock = LockFile(tmp_path, "tiny", write=False)
    assert extract_part(part, tmp_path, lock)
    assert (tmp_path / "out/cubes/2.pt").read_bytes() == bytes([2]) * 3000
    marker = tmp_path / STATE_DIR / "extracted" / "cubes.json"
    assert json.loads(marker.read_text()) == {
        "part": "cubes", "into": "out", "files": {"c.zip.001": None, "c.zip.002": None}}
    assert not extract_part(part, tmp_path, lock)  # the marker matches: nothing to do
    for path in ("c.zip.001", "c.zip.002"):  # new files (new sha256 in the lock): again
        lock.record(path, tmp_path / path, sha256=sha((tmp_path / path).read_bytes()),
                    source="http")
    assert extract_part(part, tmp_path, lock)


def test_member_escaping_the_destination_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr("../evil.txt", b"no")
    out = tmp_path / "out"
    out.mkdir()
    with zipfile.ZipFile(buf) as zf, pytest.raises(GeoplantError, match="escapes"):
        safe_extract(zf, out)
    assert not (tmp_path / "evil.txt").exists() and not (out / "ok.txt").exists()


def test_a_bad_zip_is_reported_and_leaves_no_marker(tmp_path: Path) -> None:
    (tmp_path / "a.zip").write_bytes(b"not a zip")
    part = _part("a", ["a.zip"])
    with pytest.raises(GeoplantError, match="not a valid zip archive") as info:
        extract_part(part, tmp_path, LockFile(tmp_path, "tiny", write=False))
    assert "delete it and rerun" in str(info.value)
    assert not (tmp_path / STATE_DIR / "extracted" / "a.json").exists()
