"""Readers of the Sentinel-2 patches: JPEG pairs (RGB + NIR, 128x128 uint8) and GeoTIFFs
(4 bands R, G, B, NIR, 64x64 int16, EPSG:3035).

JPEGs are decoded with ``simplejpeg`` when it is importable (libjpeg-turbo, the fastest
option) and with Pillow otherwise; both give identical pixels for baseline JPEGs within the
usual IDCT rounding (tests compare them). GeoTIFFs are LZW-compressed, which ``tifffile``
cannot decode without ``imagecodecs``, so they go through rasterio (GDAL).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geoplant.errors import GeoplantError

try:  # optional, much faster than Pillow
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    _simplejpeg = None

__all__ = [
    "JPEG_SHAPE",
    "TIFF_SHAPE",
    "decode_jpeg",
    "jpeg_backend",
    "read_patch_jpeg",
    "read_patch_tiff",
    "read_tiff_profile",
]

#: Shape of a stacked JPEG patch (R, G, B, NIR) and of a GeoTIFF patch.
JPEG_SHAPE: tuple[int, int, int] = (4, 128, 128)
TIFF_SHAPE: tuple[int, int, int] = (4, 64, 64)

Source = str | os.PathLike[str] | bytes
Backend = Literal["auto", "simplejpeg", "pillow"]


def jpeg_backend() -> str:
    """Name of the JPEG decoder :func:`decode_jpeg` uses by default."""
    return "simplejpeg" if _simplejpeg is not None else "pillow"


def _load(source: Source, name: str | None, what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), name or "<bytes>"
    path = Path(source)
    try:
        return path.read_bytes(), name or str(path)
    except FileNotFoundError:
        raise GeoplantError(
            f"missing {what} file", path=name or path,
            fix="check the release is complete (re-download or re-extract the patches)",
        ) from None
    except OSError as exc:
        raise GeoplantError(f"cannot read {what} file: {exc}", path=name or path) from exc


def decode_jpeg(
    data: bytes, channels: int, *, name: str = "<bytes>", backend: Backend = "auto"
) -> np.ndarray:
    """Decode a baseline JPEG to ``uint8`` (H, W, channels), checking the channel count.

    Parameters
    ----------
    data
        The JPEG file's bytes.
    channels
        3 for an RGB patch, 1 for a NIR (grayscale) patch. A file with another number of
        components is an error (an RGB file where NIR is expected is a swapped tree).
    name
        Name used in error messages.
    backend
        ``"auto"`` (simplejpeg if importable, else Pillow), ``"simplejpeg"`` or ``"pillow"``.
    """
    use = jpeg_backend() if backend == "auto" else backend
    fix = "re-download or re-extract the satellite patches; this file is damaged"
    if not data.startswith(b"\xff\xd8"):
        raise GeoplantError("not a JPEG file (no SOI marker)", path=name, fix=fix)
    # libjpeg silently pads a truncated scan with grey; refuse files without an EOI marker.
    if data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        raise GeoplantError("truncated JPEG (no end-of-image marker)", path=name, fix=fix)
    try:
        if use == "simplejpeg":
            if _simplejpeg is None:
                raise GeoplantError("simplejpeg is not installed", fix="pip install simplejpeg")
            _, _, _, sub = _simplejpeg.decode_jpeg_header(data)
            found = 1 if sub == "Gray" else 3
            if found != channels:
                raise GeoplantError(
                    f"JPEG has {found} channel(s), expected {channels}", path=name,
                    fix="RGB and NIR trees may be swapped, or the file is not a patch",
                )
            arr = _simplejpeg.decode_jpeg(
                data, colorspace="GRAY" if channels == 1 else "RGB", fastdct=False,
                fastupsample=False,
            )
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                want = "L" if channels == 1 else "RGB"
                if img.mode != want:
                    # Same wording as the simplejpeg path: the channel count is the fact.
                    raise GeoplantError(
                        f"JPEG has {len(img.getbands())} channel(s) (mode {img.mode}), "
                        f"expected {channels}", path=name,
                        fix="RGB and NIR trees may be swapped, or the file is not a patch",
                    )
                img.load()
                arr = np.asarray(img)
    except GeoplantError:
        raise
    except Exception as exc:  # decoders raise ValueError/OSError/RuntimeError variants
        raise GeoplantError(f"corrupt JPEG ({exc})", path=name, fix=fix) from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def read_patch_jpeg(
    rgb: Source,
    nir: Source,
    *,
    expected_size: tuple[int, int] | None = JPEG_SHAPE[1:],
    backend: Backend = "auto",
    names: tuple[str, str] | None = None,
) -> np.ndarray:
    """Read an RGB + NIR JPEG pair into one ``uint8`` array (4, H, W): R, G, B, NIR.

    Parameters
    ----------
    rgb, nir
        Paths of the two JPEGs, or their bytes.
    expected_size
        (H, W) both images must have; ``None`` only requires them to match each other.
    backend
        JPEG decoder, see :func:`decode_jpeg`.
    names
        Names of the two files for error messages (defaults to the paths).

    Raises
    ------
    GeoplantError
        Missing, truncated or corrupt file, wrong number of channels or wrong size; the
        message names the offending file.
    """
    rgb_bytes, rgb_name = _load(rgb, names[0] if names else None, "RGB patch")
    nir_bytes, nir_name = _load(nir, names[1] if names else None, "NIR patch")
    a = decode_jpeg(rgb_bytes, 3, name=rgb_name, backend=backend)
    b = decode_jpeg(nir_bytes, 1, name=nir_name, backend=backend)
    for arr, label in ((a, rgb_name), (b, nir_name)):
        if expected_size is not None and arr.shape[:2] != tuple(expected_size):
            raise GeoplantError(
                f"patch is {arr.shape[0]}x{arr.shape[1]} px, expected "
                f"{expected_size[0]}x{expected_size[1]}", path=label,
                fix="replace the file with the one from the official release",
            )
    if a.shape[:2] != b.shape[:2]:
        raise GeoplantError(
            f"NIR patch is {b.shape[0]}x{b.shape[1]} px but RGB is {a.shape[0]}x{a.shape[1]}",
            path=nir_name, fix="the RGB and NIR files must be of the same survey",
        )
    out = np.empty((4, *a.shape[:2]), dtype=np.uint8)
    out[:3] = a.transpose(2, 0, 1)
    out[3] = b[:, :, 0]
    return out


def _open_tiff(data: bytes, label: str) -> Any:
    from rasterio.io import MemoryFile

    try:
        return MemoryFile(data)
    except Exception as exc:  # pragma: no cover - MemoryFile only fails on odd input
        raise GeoplantError(f"corrupt GeoTIFF ({exc})", path=label) from exc


def read_patch_tiff(
    source: Source,
    *,
    expected_shape: tuple[int, int, int] | None = TIFF_SHAPE,
    dtype: np.typing.DTypeLike | None = np.int16,
    name: str | None = None,
) -> np.ndarray:
    """Read a Sentinel-2 GeoTIFF patch into an array (bands, H, W).

    Parameters
    ----------
    source
        Path of the ``.tiff`` file, or its bytes.
    expected_shape
        Shape it must have (default (4, 64, 64)); ``None`` accepts any.
    dtype
        dtype it must have (default int16); ``None`` accepts any.
    name
        Name used in error messages.

    Raises
    ------
    GeoplantError
        Missing, truncated or corrupt file, wrong shape or dtype; the message names the file.
    """
    data, label = _load(source, name, "GeoTIFF patch")
    fix = "re-download or re-extract the satellite patches; this file is damaged"
    if data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise GeoplantError("not a TIFF file (bad header)", path=label, fix=fix)
    try:
        with _open_tiff(data, label) as mem, mem.open() as ds:
            arr = ds.read()
    except GeoplantError:
        raise
    except Exception as exc:  # rasterio raises RasterioIOError/CPLE_* for damaged files
        raise GeoplantError(f"corrupt GeoTIFF ({exc})", path=label, fix=fix) from exc
    if expected_shape is not None and arr.shape != tuple(expected_shape):
        raise GeoplantError(
            f"GeoTIFF patch has shape {arr.shape}, expected {tuple(expected_shape)}",
            path=label, fix="replace the file with the one from the official release",
        )
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise GeoplantError(
            f"GeoTIFF patch has dtype {arr.dtype}, expected {np.dtype(dtype)}", path=label,
            fix="replace the file with the one from the official release",
        )
    return arr


def read_tiff_profile(source: Source, *, name: str | None = None) -> dict[str, Any]:
    """Georeferencing of a GeoTIFF patch: ``crs`` (e.g. ``"EPSG:3035"``), ``transform``,
    ``nodata``, ``descriptions`` (band names), ``dtype``, ``shape``.
    """
    data, label = _load(source, name, "GeoTIFF patch")
    try:
        with _open_tiff(data, label) as mem, mem.open() as ds:
            return {
                "crs": _crs_name(ds.crs),
                "transform": tuple(ds.transform)[:6],
                "nodata": ds.nodata,
                "descriptions": tuple(ds.descriptions),
                "dtype": ds.dtypes[0],
                "shape": (ds.count, ds.height, ds.width),
            }
    except Exception as exc:
        raise GeoplantError(f"corrupt GeoTIFF ({exc})", path=label) from exc


def _crs_name(crs: Any) -> str | None:
    """``"EPSG:<code>"`` when the CRS matches an EPSG code, else its WKT.

    The real patches carry an unnamed LAEA-Europe WKT that GDAL does not tie to EPSG:3035 by
    itself; pyproj's looser matching (parameters, not names) does.
    """
    if crs is None:
        return None
    code = crs.to_epsg()
    if code is None:
        try:
            import pyproj

            code = pyproj.CRS.from_wkt(crs.to_wkt()).to_epsg(min_confidence=20)
        except Exception:  # pyproj missing or WKT it cannot parse: report the WKT
            code = None
    return f"EPSG:{code}" if code else crs.to_wkt()
