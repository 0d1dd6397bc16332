"""geoplant.torch.readers: direct chunk reads equal zarr-python's, or fall back to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

import geoplant.torch as gt
from geoplant.errors import GeoplantError
from geoplant.torch.readers import DirectChunkReader, ZarrChunkReader, open_chunk_reader

LOCAL = fsspec.filesystem("file")


def _array(path: Path, data: np.ndarray, chunk: int, **kwargs: Any) -> zarr.Array:
    array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                              chunks=(chunk, *data.shape[1:]), **kwargs)
    array[:] = data
    return zarr.open_array(str(path), mode="r")


def _all_chunks(reader: Any) -> np.ndarray:
    n_chunks = -(-reader.n // reader.chunk_surveys)
    return np.concatenate([reader.read(c) for c in range(n_chunks)])


@pytest.mark.parametrize("codecs", [
    {"serializer": BytesCodec(endian="big"), "compressors": [ZstdCodec()]},
    {"compressors": [GzipCodec()]},
    {"compressors": [BloscCodec(cname="lz4")]},
    {"compressors": None},
])
def test_direct_reads_equal_zarr(tmp_path: Path, codecs: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(11, 3, 5)).astype(np.float32)
    data[2, 1] = np.nan
    array = _array(tmp_path / "a", data, 4, fill_value=np.nan, **codecs)
    reader = open_chunk_reader(array, LOCAL, str(tmp_path / "a"), "auto", threads=2)
    assert reader.name == "direct"
    np.testing.assert_array_equal(_all_chunks(reader), data)  # last chunk: 3 of 4 rows
    outs = [reader.empty() for _ in range(3)]
    reader.read_many_into([2, 0, 1], outs)  # concurrently, into given arrays
    np.testing.assert_array_equal(outs[1][:4], data[:4])
    np.testing.assert_array_equal(outs[0][:3], data[8:])


def test_missing_chunks_are_the_fill_value(tmp_path: Path) -> None:
    array = zarr.create_array(str(tmp_path / "a"), shape=(8, 4), dtype="uint8", chunks=(4, 4),
                              fill_value=7)
    array[:4] = 1  # chunk 1 is never written
    array = zarr.open_array(str(tmp_path / "a"), mode="r")
    reader = DirectChunkReader(array, LOCAL, str(tmp_path / "a"))
    np.testing.assert_array_equal(_all_chunks(reader), array[:])
    assert (reader.read(1) == 7).all()


def test_unsupported_layouts_fall_back_to_zarr(tmp_path: Path) -> None:
    data = np.arange(8 * 6, dtype=np.int16).reshape(8, 6)
    sharded = _array(tmp_path / "s", data, 2, shards=(4, 6))
    assert "codecs" in (DirectChunkReader.unsupported(sharded) or "")
    two_axes = zarr.create_array(str(tmp_path / "t"), shape=(8, 6), dtype="int16",
                                 chunks=(4, 3))
    two_axes[:] = data
    assert "other than the first" in (DirectChunkReader.unsupported(two_axes) or "")
    for array, path in ((sharded, "s"), (two_axes, "t")):
        reader = open_chunk_reader(array, LOCAL, str(tmp_path / path))
        assert isinstance(reader, ZarrChunkReader)
        with pytest.raises(GeoplantError, match="direct chunk reads do not support"):
            open_chunk_reader(array, LOCAL, str(tmp_path / path), "direct")
    np.testing.assert_array_equal(_all_chunks(open_chunk_reader(sharded, LOCAL, "")), data)
    with pytest.raises(GeoplantError, match="unknown reader"):
        open_chunk_reader(sharded, LOCAL, "", "tensorstore")  # type: ignore[arg-type]


def test_dataset_readers_agree(loader_store: Path, loader_stats: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"normalize": False, "stats": loader_stats, "cache_mb": 1}
    direct = gt.SurveyDataset(loader_store, "pa_train", in_memory=False, **kwargs)
    slow = gt.SurveyDataset(loader_store, "pa_train", in_memory=False, reader="zarr",
                            io_threads=1, **kwargs)
    assert set(direct.readers.values()) == {"direct"} and set(slow.readers.values()) == {"zarr"}
    rng = np.random.default_rng(1)
    for idx in (rng.permutation(len(direct))[:64], np.arange(100, 164), [949, 0, 949]):
        a, b = direct.get_batch(idx), slow.get_batch(idx)
        for key in a:
            assert torch_equal_nan(a[key], b[key]), key
    # the in-memory load goes through the same readers (whole chunks straight into place)
    sub = direct.survey_ids[np.r_[0:9, 13, 400:420]]
    mem = gt.SurveyDataset(loader_store, "pa_train", in_memory=True, survey_ids=sub, **kwargs)
    disk = gt.SurveyDataset(loader_store, "pa_train", in_memory=False, survey_ids=sub, **kwargs)
    a, b = mem.get_batch(np.arange(len(sub))), disk.get_batch(np.arange(len(sub)))
    for key in a:
        assert torch_equal_nan(a[key], b[key]), key


def torch_equal_nan(a: Any, b: Any) -> bool:
    return bool(np.array_equal(a.numpy(), b.numpy(), equal_nan=a.dtype.is_floating_point))


def test_blosc_rows_read_straight_into_the_batch(tmp_path: Path) -> None:
    # incompressible patches are stored "memcpyed" by blosc (read with preadv, no decoding);
    # compressible ones are decoded; a missing chunk is the fill value
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (14, 2, 8, 8), dtype=np.uint8)
    data[4:8] = 3  # chunk 1 compresses
    array = _array(tmp_path / "p", data, 4, compressors=[BloscCodec(cname="lz4")],
                   fill_value=9)
    header = (tmp_path / "p" / "c" / "0" / "0" / "0" / "0").read_bytes()[:16]
    assert header[2] & 0x02 and not (tmp_path / "p/c/1/0/0/0").read_bytes()[2] & 0x02
    reader = open_chunk_reader(array, LOCAL, str(tmp_path / "p"))
    assert isinstance(reader, DirectChunkReader) and reader.gathers_rows
    np.testing.assert_array_equal(_all_chunks(reader), data)
    for rows in (np.arange(14), np.array([13, 0, 5, 4, 4, 1, 2, 3, 12, 6]), np.array([7])):
        out = np.full((len(rows), 2, 8, 8), 77, np.uint8)
        reader.gather_into(rows, out)
        np.testing.assert_array_equal(out, data[rows])
    (tmp_path / "p/c/2/0/0/0").unlink()
    out = np.empty((3, 2, 8, 8), np.uint8)
    reader.gather_into(np.array([9, 0, 8]), out)
    assert (out[0] == 9).all() and (out[2] == 9).all()
    np.testing.assert_array_equal(out[1], data[0])
    # other codecs and byte orders do not gather rows (whole chunks through the cache)
    floats = _array(tmp_path / "f", data.astype(np.float32), 4, compressors=[ZstdCodec()])
    assert not DirectChunkReader(floats, LOCAL, str(tmp_path / "f")).gathers_rows
