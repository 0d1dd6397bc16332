"""Train/validation splits of surveys that respect space (torch-free).

Nearby surveys share habitat and species, so a random split leaks: a validation survey
100 m from a training one is scored on what the model has memorised. Splitting by whole
spatial blocks keeps that autocorrelation from inflating validation scores.
:func:`spatial_block_split` is re-exported by :mod:`geoplant.train` and used by
:func:`geoplant.experiment.make_plan`; it needs only NumPy, so planning a split does not
import torch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from geoplant.errors import GeoplantError

__all__ = ["spatial_block_split"]

#: km per degree of latitude, and of longitude at the equator (sinusoidal projection).
_KM_PER_DEG_LAT = 110.574
_KM_PER_DEG_LON = 111.320


def spatial_block_split(lon: npt.ArrayLike, lat: npt.ArrayLike, block_km: float = 10.0,
                        val_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Validation mask from spatial blocks: whole ~``block_km`` squares go to validation.

    Parameters
    ----------
    lon, lat
        Survey coordinates (WGS84 degrees), same length.
    block_km
        Side of the blocks. Coordinates are mapped to km with the sinusoidal projection
        (``x = lon * 111.32 * cos(lat)``, ``y = lat * 110.57``), so blocks are about
        ``block_km`` wide at every latitude.
    val_fraction
        Target fraction of surveys in validation; blocks are drawn in a random order until
        it is reached (so the fraction is met within one block's surveys).
    seed
        Seed of the block order.

    Returns
    -------
    numpy.ndarray
        Boolean mask, True for validation surveys. Nearby surveys (same block) are never
        split between training and validation, which keeps spatial autocorrelation from
        inflating validation scores.

    Raises
    ------
    GeoplantError
        ``lon`` and ``lat`` differ in length or hold NaN/inf, ``val_fraction`` is not in
        (0, 1), or ``block_km`` is not positive.
    """
    lon = np.asarray(lon, dtype=np.float64).ravel()
    lat = np.asarray(lat, dtype=np.float64).ravel()
    if lon.shape != lat.shape:
        raise GeoplantError(f"lon and lat differ in length ({len(lon)} vs {len(lat)})")
    if not (0.0 < val_fraction < 1.0):
        raise GeoplantError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if block_km <= 0:
        raise GeoplantError(f"block_km must be > 0, got {block_km}")
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise GeoplantError("lon/lat hold NaN or inf", fix="drop surveys without coordinates")
    y = lat * _KM_PER_DEG_LAT
    x = lon * _KM_PER_DEG_LON * np.cos(np.deg2rad(lat))
    keys = np.stack([np.floor(x / block_km), np.floor(y / block_km)], axis=1).astype(np.int64)
    _, block = np.unique(keys, axis=0, return_inverse=True)
    block = block.ravel()
    counts = np.bincount(block)
    order = np.random.default_rng(seed).permutation(len(counts))
    target = val_fraction * len(lon)
    cumulative = np.cumsum(counts[order])
    n_blocks = int(np.searchsorted(cumulative, target) + 1)
    chosen = np.zeros(len(counts), dtype=bool)
    chosen[order[:n_blocks]] = True
    if chosen.all() and len(counts) > 1:  # keep at least one training block
        chosen[order[n_blocks - 1]] = False
    return chosen[block]
