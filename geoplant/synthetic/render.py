"""Render per-survey predictors from a :class:`~geoplant.synthetic.world.World`'s sites.

* monthly climate series (4 variables x 19 years x 12 months) around the site's climatology,
  with a warming trend and year anomalies; the 19 bioclim variables of the climatology;
* Landsat quarterly series (6 bands x 4 quarters x 21 years) from the local habitat's
  spectrum and phenology, with NaN after the survey year;
* Sentinel-2 128x128 RGB+NIR scenes: a patchwork of habitats around the local one.

Units follow the real files (see ``../shared/geoplant-format.md``): temperatures in 0.1 K,
precipitation in 0.01 kg m-2 per month, bioclim in CHELSA scaling, Landsat on a 0-255 scale.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from scipy import ndimage

from geoplant.layouts import CLIMATE_YEARS, LANDSAT_YEARS
from geoplant.synthetic.world import Sites, smooth_noise

_MONTH_PHASE: Final = -np.cos(2 * np.pi * np.arange(12) / 12)  # -1 in January, +1 in July


def climatology(env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Monthly climatology (..., 12) in degrees C and mm from the sites' or grid's fields."""
    t = env["temperature"][..., None]
    amp = env["temp_amplitude"][..., None]
    tas = t + amp * _MONTH_PHASE
    dtr = env["diurnal_range"][..., None] * (1 + 0.15 * _MONTH_PHASE)
    med = env["mediterranean"][..., None]
    shape = 1 + 0.15 * np.cos(2 * np.pi * (np.arange(12) - 10) / 12) \
        - 0.85 * med * np.clip(_MONTH_PHASE, 0, None)
    shape = shape / shape.sum(axis=-1, keepdims=True)
    pr = env["precipitation"][..., None] * shape
    return {"tas": tas, "tasmax": tas + dtr / 2, "tasmin": tas - dtr / 2, "pr": pr}


def bioclim(clim: dict[str, np.ndarray]) -> np.ndarray:
    """The 19 bioclimatic variables (..., 19) in CHELSA's integer scaling.

    Temperatures are in 0.1 K (``bio1 = 2883`` is 15.15 degrees C), temperature ranges in 0.1 K,
    precipitation in 0.1 kg m-2.
    """
    tas, tmax, tmin, pr = clim["tas"], clim["tasmax"], clim["tasmin"], clim["pr"]
    # Rolling 3-month quarters, circular.
    def quarters(x: np.ndarray) -> np.ndarray:
        return (x + np.roll(x, -1, axis=-1) + np.roll(x, -2, axis=-1)) / 3

    q_t, q_p = quarters(tas), quarters(pr) * 3
    def pick(values: np.ndarray, key: np.ndarray, fn: str) -> np.ndarray:
        idx = (np.argmax if fn == "max" else np.argmin)(key, axis=-1)[..., None]
        return np.take_along_axis(values, idx, axis=-1)[..., 0]

    bio2 = (tmax - tmin).mean(axis=-1)
    bio5, bio6 = tmax.max(axis=-1), tmin.min(axis=-1)
    bio7 = bio5 - bio6
    kelvin = 273.15
    values = [
        (tas.mean(axis=-1) + kelvin) * 10,  # bio1 annual mean temperature
        bio2 * 10,  # bio2 mean diurnal range
        bio2 / np.maximum(bio7, 1e-6) * 100,  # bio3 isothermality (%)
        tas.std(axis=-1) * 100,  # bio4 temperature seasonality
        (bio5 + kelvin) * 10, (bio6 + kelvin) * 10, bio7 * 10,  # bio5-7
        (pick(q_t, q_p, "max") + kelvin) * 10, (pick(q_t, q_p, "min") + kelvin) * 10,  # bio8-9
        (q_t.max(axis=-1) + kelvin) * 10, (q_t.min(axis=-1) + kelvin) * 10,  # bio10-11
        pr.sum(axis=-1) * 10, pr.max(axis=-1) * 10, pr.min(axis=-1) * 10,  # bio12-14
        pr.std(axis=-1) / np.maximum(pr.mean(axis=-1), 1e-6) * 100,  # bio15 precip. CV (%)
        q_p.max(axis=-1) * 10, q_p.min(axis=-1) * 10,  # bio16-17
        pick(q_p, q_t, "max") * 10, pick(q_p, q_t, "min") * 10,  # bio18-19
    ]
    return np.rint(np.stack(values, axis=-1)).astype(np.int32)


def climate_series(rng: np.random.Generator, sites: Sites,
                   year_anomaly: np.ndarray) -> np.ndarray:
    """Monthly climate cubes (n, 4, 19, 12) = [pr, tas, tasmax, tasmin] x year x month.

    Integer-valued float32 in the real files' units (0.1 K, 0.01 kg m-2). ``year_anomaly``
    (19, 12) is the continent-wide anomaly shared by all sites of a world.
    """
    n = len(sites)
    clim = climatology(sites.env)
    years = np.asarray(CLIMATE_YEARS, dtype=np.float64)
    trend = sites.env["warming"][:, None, None] * ((years - 1995) / 10)[None, :, None]
    anomaly = year_anomaly[None] + rng.normal(0, 0.45, (n, len(years), 1))
    tas = clim["tas"][:, None, :] + trend + anomaly + rng.normal(0, 0.35, (n, len(years), 12))
    half_dtr = (clim["tasmax"] - clim["tas"])[:, None, :]
    pr = clim["pr"][:, None, :] * rng.lognormal(0, 0.35, (n, len(years), 12))
    cube = np.stack([pr * 100, (tas + 273.15) * 10, (tas + half_dtr + 273.15) * 10,
                     (tas - half_dtr + 273.15) * 10], axis=1)
    return np.rint(cube).astype(np.float32)


# Landsat spectra per habitat on the 0-255 scale: red, green, blue, nir, swir1, swir2.
_SPECTRA: Final = np.array([
    [8, 12, 6, 60, 35, 15],  # forest_needleleaf
    [7, 13, 6, 85, 40, 16],  # forest_broadleaf
    [14, 20, 10, 70, 55, 30],  # grassland
    [18, 22, 12, 65, 60, 35],  # cropland
    [22, 25, 15, 45, 65, 45],  # shrubland
    [10, 14, 9, 40, 25, 12],  # wetland
    [35, 35, 30, 40, 50, 45],  # urban
    [40, 42, 35, 45, 70, 60],  # bare
], dtype=np.float64)
# Seasonal amplitude of the vegetation signal per habitat, and the quarterly phenology.
_PHENOLOGY_AMP: Final = np.array([0.1, 0.55, 0.45, 0.8, 0.25, 0.35, 0.05, 0.02])
_PHENOLOGY: Final = np.array([-0.7, 0.3, 0.8, -0.1])


def landsat_series(rng: np.random.Generator, sites: Sites, survey_year: np.ndarray,
                   missing_fraction: float = 3e-4) -> np.ndarray:
    """Landsat cubes (n, 6, 4, 21) = band x quarter x year 2000-2020, float32, integral values.

    Quarters of years after the survey year are NaN (as in the real data); a small fraction of
    surveys has no data at all.
    """
    n = len(sites)
    base = _SPECTRA[sites.habitat]  # (n, 6)
    g = sites.greenness[:, None]
    season = _PHENOLOGY_AMP[sites.habitat][:, None] * _PHENOLOGY[None, :]  # (n, 4)
    vigour = (0.55 + 0.9 * g)[:, :, None] * (1 + season[:, :, None])  # (n, 4, 1)
    n_years = len(LANDSAT_YEARS)
    year_noise = rng.normal(1.0, 0.06, (n, 1, 1, n_years))
    cube = np.repeat(base[:, :, None, None], 4, axis=2).repeat(n_years, axis=3)
    cube[:, 3] *= vigour  # NIR follows vegetation vigour and phenology
    cube[:, 0] *= (1.4 - 0.7 * g)[:, :, None] / (1 + 0.5 * season[:, :, None])  # red absorbed
    wet = np.clip(1 - 0.12 * sites.wetness, 0.5, 1.5)[:, None, None]
    cube[:, 4:] *= wet[:, None]  # water absorbs SWIR
    cube = cube * year_noise * rng.normal(1.0, 0.05, cube.shape)
    cube = np.rint(np.clip(cube, 0, 255)).astype(np.float32)
    years = np.asarray(LANDSAT_YEARS)
    cube[np.broadcast_to(years[None, None, None, :] > survey_year[:, None, None, None],
                         cube.shape)] = np.nan
    cube[rng.random(n) < missing_fraction] = np.nan
    return cube


# Sentinel-2 look of each habitat after the real processing (uint8, gamma 1/2.5): R, G, B, NIR.
_PALETTE: Final = np.array([
    [36, 50, 34, 125], [46, 66, 38, 170], [78, 93, 58, 165], [106, 98, 74, 150],
    [114, 101, 80, 120], [50, 62, 58, 100], [122, 117, 112, 110], [141, 133, 120, 130],
], dtype=np.float64)
_WATER: Final = np.array([30.0, 42.0, 56.0, 20.0])


class PatchRenderer:
    """Renders 128x128 RGB+NIR scenes: the local habitat around the centre, a patchwork beyond.

    A bank of smooth noise tiles, made once per world, gives texture cheaply.
    """

    size: Final = 128

    def __init__(self, rng: np.random.Generator, n_tiles: int = 24) -> None:
        self.tiles = np.stack([smooth_noise(rng, (self.size, self.size), s)
                               for s in np.linspace(1.0, 6.0, n_tiles)]).astype(np.float32)
        yy, xx = np.mgrid[0 : self.size, 0 : self.size]
        self._yy, self._xx = yy.astype(np.float32), xx.astype(np.float32)

    def render(self, rng: np.random.Generator, habitat: int, coarse_habitat: int,
               greenness: float, wetness: float, on_coast: bool) -> np.ndarray:
        """One scene as uint8 (4, 128, 128) = R, G, B, NIR."""
        n_cells = int(rng.integers(5, 12))
        seeds = rng.uniform(0, self.size, (n_cells, 2)).astype(np.float32)
        seeds[0] = self.size / 2 + rng.normal(0, 6, 2)
        classes = np.where(rng.random(n_cells) < 0.5, coarse_habitat,
                           rng.integers(0, len(_PALETTE), n_cells))
        classes[0] = habitat
        d2 = (self._yy[None] - seeds[:, 0, None, None]) ** 2 \
            + (self._xx[None] - seeds[:, 1, None, None]) ** 2
        d2[0] *= rng.uniform(0.3, 0.7)  # the local habitat holds the centre
        owner = np.argmin(d2, axis=0)
        colours = _PALETTE[classes].copy()  # (cells, 4)
        green = np.clip(greenness + rng.normal(0, 0.1, n_cells), 0, 1)
        green[0] = greenness
        colours[:, 3] += 90 * (green - 0.5)
        colours[:, 0] -= 25 * (green - 0.5)
        colours[:, 1] += 12 * (green - 0.5)
        colours[:, :3] -= 6 * wetness
        scene = colours[owner].transpose(2, 0, 1)  # (4, H, W)
        crop = classes[owner] == 3
        if crop.any():  # fields show furrows
            angle = rng.uniform(0, np.pi)
            stripes = np.sin((self._xx * np.cos(angle) + self._yy * np.sin(angle)) * 0.9)
            scene = scene + np.where(crop, 10 * stripes, 0)[None]
        if on_coast and rng.random() < 0.5:
            edge = rng.uniform(0, self.size)
            water = (self._xx + 0.4 * self._yy) < edge * 0.6
            scene = np.where(water[None], _WATER[:, None, None], scene)
        tile = self.tiles[int(rng.integers(len(self.tiles)))]
        tile = np.roll(tile, tuple(rng.integers(0, self.size, 2)), axis=(0, 1))
        scene = scene + 9 * tile[None] + rng.normal(0, 4, scene.shape)
        return np.clip(np.rint(scene), 0, 255).astype(np.uint8)


def scene_to_reflectance(scene: np.ndarray) -> np.ndarray:
    """Invert the uint8 processing (gamma 1/2.5, clip at 10000) to int16 reflectance x 10000."""
    refl = (scene.astype(np.float64) / 255.0) ** 2.5 * 10000
    return np.rint(refl).astype(np.int16)


def downsample(scene: np.ndarray) -> np.ndarray:
    """The central 64x64 pixels of a scene (the G26/GLC25 TIFF patches cover 640 m)."""
    c = scene.shape[-1] // 2
    return scene[..., c - 32 : c + 32, c - 32 : c + 32]


def coast_nearby(land_grid: np.ndarray) -> np.ndarray:
    """Land cells within one cell of the sea."""
    return (land_grid > 0) & ~ndimage.binary_erosion(land_grid > 0)
