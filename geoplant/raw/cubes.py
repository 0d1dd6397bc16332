"""Fast, safe reader of the ``torch.save`` ``.pt`` cubes (climate and Landsat time series).

A ``.pt`` file is a zip archive holding ``<prefix>/data.pkl`` (a pickle that rebuilds the
tensor), ``<prefix>/byteorder`` and the raw storage ``<prefix>/data/<key>``. The prefix varies
in the real files (the file stem, ``archive``, or odd names such as
``GLC25-PA-test-bioclimatic_monthly.csv_5000108_cube``), so it is found, not assumed.

The fast path parses the zip directory by hand and runs the pickle through an unpickler that
only knows the handful of globals a plain tensor needs (anything else is refused, so arbitrary
objects are never built), then views the storage with the tensor's own strides: the real cubes
are *not* C-contiguous (the Landsat cube has strides (84, 1, 4)). ``torch.load`` is the slow
fallback for archives the fast path does not understand (e.g. the legacy non-zip format).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoplant.errors import GeoplantError

__all__ = ["read_pt_cube", "read_pt_cube_torch"]

#: torch storage class name -> numpy little-endian dtype.
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "IntStorage": "<i4",
    "LongStorage": "<i8",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

_EOCD = b"PK\x05\x06"
_CDIR = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"

Source = str | os.PathLike[str] | bytes


class _FastPathUnsupported(Exception):
    """The archive is valid-looking but outside what the fast path handles."""


@dataclass(frozen=True)
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class _TensorSpec:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any
) -> _TensorSpec:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor storage is not a plain storage reference")
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise pickle.UnpicklingError("malformed tensor header")
    if len(size) != len(stride) or not all(isinstance(v, int) for v in size + stride):
        raise pickle.UnpicklingError("malformed tensor shape/stride")
    return _TensorSpec(storage, offset, size, stride)


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = _STORAGE_DTYPES[name]


class _SafeUnpickler(pickle.Unpickler):
    """Builds only a tensor description; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[4], int)
        ):
            return _Storage(pid[1].dtype, str(pid[2]), pid[4])
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")


def _zip_members(data: bytes) -> dict[str, bytes]:
    """Parse a small stored (uncompressed) zip by hand: name -> member bytes."""
    end = data.rfind(_EOCD, max(0, len(data) - 65_557))
    if end < 0 or end + 22 > len(data):
        raise zipfile.BadZipFile("no end-of-central-directory record")
    n_entries, _cdir_size, cdir_offset = struct.unpack_from("<HII", data, end + 10)
    if n_entries == 0xFFFF or cdir_offset == 0xFFFFFFFF:
        raise _FastPathUnsupported("zip64 archive")
    members: dict[str, bytes] = {}
    pos = cdir_offset
    for _ in range(n_entries):
        if data[pos : pos + 4] != _CDIR:
            raise zipfile.BadZipFile("corrupt central directory")
        (method, csize, usize, nlen, xlen, clen, local) = struct.unpack_from(
            "<H8xII HHH 8x I".replace(" ", ""), data, pos + 10
        )
        name = data[pos + 46 : pos + 46 + nlen].decode("utf-8")
        pos += 46 + nlen + xlen + clen
        if method != 0 or csize != usize:
            raise _FastPathUnsupported(f"compressed member {name}")
        if local == 0xFFFFFFFF or data[local : local + 4] != _LOCAL:
            raise zipfile.BadZipFile(f"corrupt local header of {name}")
        lnlen, lxlen = struct.unpack_from("<HH", data, local + 26)
        start = local + 30 + lnlen + lxlen
        if start + usize > len(data):
            raise zipfile.BadZipFile(f"member {name} is truncated")
        members[name] = data[start : start + usize]
    return members


def _zip_members_slow(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _decode(data: bytes) -> np.ndarray:
    try:
        members = _zip_members(data)
    except _FastPathUnsupported:
        members = _zip_members_slow(data)
    pkl_names = [n for n in members if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl_names) != 1:
        raise _FastPathUnsupported(f"{len(pkl_names)} data.pkl records")
    prefix = pkl_names[0][: -len("data.pkl")]
    order = members.get(prefix + "byteorder", b"little").strip()
    if order not in (b"little", b"big"):
        raise pickle.UnpicklingError(f"unknown byteorder {order!r}")
    spec = _SafeUnpickler(io.BytesIO(members[pkl_names[0]])).load()
    if not isinstance(spec, _TensorSpec):
        raise pickle.UnpicklingError(f"holds a {type(spec).__name__}, not a single tensor")
    storage = members.get(f"{prefix}data/{spec.storage.key}")
    if storage is None:
        raise zipfile.BadZipFile(f"storage record data/{spec.storage.key} is missing")
    dtype = np.dtype(spec.storage.dtype)
    if order == b"big":
        dtype = dtype.newbyteorder(">")
    if len(storage) != spec.storage.numel * dtype.itemsize:
        raise zipfile.BadZipFile(
            f"storage holds {len(storage)} bytes, header says {spec.storage.numel} x "
            f"{dtype.itemsize}"
        )
    flat = np.frombuffer(storage, dtype=dtype, count=spec.storage.numel)
    shape, stride, offset = spec.shape, spec.stride, spec.offset
    if any(s < 0 for s in shape + stride) or offset < 0:
        raise pickle.UnpicklingError("negative shape, stride or offset")
    if 0 not in shape:
        last = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
        if last >= spec.storage.numel:
            raise pickle.UnpicklingError("tensor view runs past its storage")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:],
        shape=shape,
        strides=tuple(s * dtype.itemsize for s in stride),
        writeable=False,
    )
    out = np.ascontiguousarray(view)
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def _read_source(source: Source, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), name or "<bytes>"
    path = Path(source)
    try:
        return path.read_bytes(), name or str(path)
    except FileNotFoundError:
        raise GeoplantError(
            "missing cube file", path=name or path,
            fix="check the release is complete (re-download or re-extract it)",
        ) from None
    except OSError as exc:
        raise GeoplantError(f"cannot read cube file: {exc}", path=name or path) from exc


def _check(
    arr: np.ndarray, name: str, expected_shape: tuple[int, ...] | None, dtype: np.dtype | None
) -> np.ndarray:
    if expected_shape is not None and arr.shape != tuple(expected_shape):
        raise GeoplantError(
            f"cube has shape {arr.shape}, expected {tuple(expected_shape)}",
            path=name,
            fix="the file is not a cube of this family, or is corrupt; replace it",
        )
    if dtype is not None and arr.dtype != dtype:
        raise GeoplantError(
            f"cube has dtype {arr.dtype}, expected {dtype}", path=name,
            fix="replace the file with the one from the official release",
        )
    return arr


def read_pt_cube(
    source: Source,
    expected_shape: tuple[int, ...] | None = None,
    *,
    dtype: np.typing.DTypeLike | None = np.float32,
    name: str | None = None,
) -> np.ndarray:
    """Read one tensor saved with ``torch.save`` into a C-contiguous numpy array.

    Parameters
    ----------
    source
        Path of the ``.pt`` file, or its bytes (e.g. a member read from a zip).
    expected_shape
        Shape the tensor must have, e.g. ``(4, 19, 12)``; ``None`` accepts any shape.
    dtype
        dtype the tensor must have (default float32); ``None`` accepts any.
    name
        Name used in error messages (defaults to the path).

    Returns
    -------
    numpy.ndarray
        The tensor's values, in its logical (not storage) order.

    Raises
    ------
    GeoplantError
        If the file is missing, not a ``torch.save`` archive, holds anything but one plain
        tensor, or has the wrong shape or dtype. The message names the file.
    """
    data, label = _read_source(source, name)
    want = None if dtype is None else np.dtype(dtype)
    try:
        arr = _decode(data)
    except _FastPathUnsupported:
        arr = _torch_decode(data, label)
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, struct.error, KeyError,
            UnicodeDecodeError, ValueError, TypeError, IndexError) as exc:
        raise GeoplantError(
            f"corrupt or unsupported .pt cube ({exc})", path=label,
            fix="re-download the file; it must hold one tensor saved with torch.save",
        ) from exc
    return _check(arr, label, expected_shape, want)


def _torch_decode(data: bytes, label: str) -> np.ndarray:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise GeoplantError(
            "this .pt cube needs torch to be read", path=label, fix="pip install torch"
        ) from exc
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt archives
        raise GeoplantError(
            f"corrupt .pt cube ({type(exc).__name__}: {str(exc)[:200]})", path=label,
            fix="re-download the file; it must hold one tensor saved with torch.save",
        ) from exc
    if not isinstance(obj, torch.Tensor):
        raise GeoplantError(
            f"holds a {type(obj).__name__}, not a tensor", path=label,
            fix="the file is not a GeoPlant cube",
        )
    return obj.detach().contiguous().numpy()


def read_pt_cube_torch(
    source: Source,
    expected_shape: tuple[int, ...] | None = None,
    *,
    dtype: np.typing.DTypeLike | None = np.float32,
    name: str | None = None,
) -> np.ndarray:
    """Reference reader: like :func:`read_pt_cube` but always through ``torch.load``.

    Slower (hundreds of µs per file); kept to cross-check the fast path.
    """
    data, label = _read_source(source, name)
    arr = _torch_decode(data, label)
    return _check(arr, label, expected_shape, None if dtype is None else np.dtype(dtype))
