"""A seeded GeoPlant-like world: environmental fields, species niches, occurrence probabilities.

Everything a release needs is derived from one :class:`World`:

* smooth gridded fields over a European extent (EPSG:4326, 0.1 degree): elevation, a monthly
  climatology (temperature, diurnal range, precipitation) with its 19 bioclim variables, soil,
  human footprint (towns, roads, lights, ...), MODIS-like land cover and a land mask;
* per-site *hidden* local habitat (class, greenness, wetness) that the environmental rasters do
  not carry but the rendered Sentinel-2 patches and Landsat series do, and a recent warming
  trend that only the monthly climate series carry;
* species with Gaussian niches on a few standardised drivers plus habitat preferences, their
  intercepts calibrated so species prevalences follow a long tail;
* where the two kinds of survey go. Vegetation archives (PA) are clustered where a smooth
  *archive coverage* field (:meth:`World.archive_coverage`, 0..1) is high, and a share
  (:data:`COVERAGE_GAP_SHARE`) of the land has none at all; presence-only observers (PO,
  :meth:`World.po_effort`) follow towns and roads, and more so where the archives are sparse.

Why: in the real release PO is ~3.4 times as many rows as PA, covers about twice as many
species (9,709 vs 5,016, PO's ⊃ PA's) and is dense where PA is sparse. Here a share
:data:`GAP_SPECIES_SHARE` of the species are *gap species*: each lives in a compact
geographic range (a Gaussian in distance, radius 0.4-1 degree) centred deep inside an
archive gap (at least two radii + 0.4 degrees from any covered cell), so PA rarely or never
records it while PO, whose effort reaches the gaps, does. Their intercepts are calibrated on
sites inside the range (a local prevalence), the others' on PA-like sites (the long tail
summing to the target PA richness). PO proposes species by detectability x maximum
probability and accepts with the true probability at the site, so a record names species
``s`` with a chance proportional to ``detectability_s * p_s(site)``.

The true occurrence probability of species ``s`` at site ``i`` is
``sigmoid(a_s - 0.5 * sum_k ((z_ik - mu_sk) / sd_sk)**2 + beta_s[h_i] - 0.5 * (d_is / r_s)**2
+ area_effect_i)``, with ``d_is`` the distance (degrees, longitude scaled by cos latitude) to
the range centre of a gap species and ``r_s`` its radius (infinite for the other species).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from scipy import ndimage
from scipy.special import expit

#: Extent of the world grid (lon_min, lat_min, lon_max, lat_max), EPSG:4326.
EXTENT: Final = (-10.0, 35.0, 32.0, 71.0)
RESOLUTION: Final = 0.1

#: Local habitat classes seen by the satellite renderers (index = class id).
HABITATS: Final = (
    "forest_needleleaf", "forest_broadleaf", "grassland", "cropland", "shrubland", "wetland",
    "urban", "bare",
)
#: Drivers of species niches (standardised); the last three are hidden from the env vectors.
DRIVERS: Final = (
    "temperature", "precipitation", "seasonality", "elevation", "soil_ph", "soil_sand",
    "human_footprint", "greenness", "wetness", "warming",
)
#: Biogeographic regions (upper case as in the real files).
REGIONS: Final = (
    "ALPINE", "ATLANTIC", "BLACK SEA", "BOREAL", "CONTINENTAL", "MEDITERRANEAN", "PANNONIAN",
    "STEPPIC",
)
#: Countries with rough centroids (lon, lat); sites take the nearest one.
COUNTRIES: Final = (
    ("Portugal", -8.2, 39.6), ("Spain", -3.6, 40.2), ("France", 2.4, 46.6),
    ("Belgium", 4.6, 50.6), ("Netherlands", 5.6, 52.2), ("Luxembourg", 6.1, 49.8),
    ("United Kingdom", -2.0, 53.5), ("Ireland", -8.0, 53.2), ("Germany", 10.3, 51.1),
    ("Denmark", 9.4, 56.0), ("Switzerland", 8.2, 46.8), ("Austria", 14.5, 47.6),
    ("Italy", 12.5, 42.8), ("Czech Republic", 15.3, 49.8), ("Poland", 19.4, 52.1),
    ("Slovakia", 19.6, 48.7), ("Hungary", 19.4, 47.2), ("Slovenia", 14.8, 46.1),
    ("Croatia", 16.4, 45.1), ("Bosnia and Herzegovina", 17.8, 44.2), ("Serbia", 20.8, 44.0),
    ("Montenegro", 19.3, 42.8), ("The former Yugoslav Republic of Macedonia", 21.7, 41.6),
    ("Greece", 22.0, 39.5), ("Bulgaria", 25.2, 42.7), ("Romania", 24.9, 45.9),
    ("Norway", 9.0, 61.0), ("Sweden", 15.0, 62.0), ("Finland", 26.0, 63.0),
    ("Estonia", 25.5, 58.7), ("Latvia", 24.8, 56.9), ("Lithuania", 23.9, 55.3),
    ("Ukraine", 30.0, 49.0),
)
#: Grid cell sizes (degrees) of the invented counties and districts (see World.admin_of).
ADMIN_CELLS: Final = (2.0, 0.5)
_SYLLABLES: Final = (
    "al", "ber", "ca", "dor", "en", "fel", "gar", "hel", "is", "jor", "ka", "lin", "mar",
    "nor", "os", "pra", "ri", "sal", "tor", "ul", "ven", "wes", "yor", "zan",
)
#: IGBP (MODIS LC_Type1) classes used by the land-cover raster and their habitat group.
IGBP_TO_HABITAT: Final = {
    1: 0, 4: 1, 5: 1, 7: 4, 9: 4, 10: 2, 11: 5, 12: 3, 13: 6, 14: 3, 15: 7, 16: 7, 17: 5,
}
#: Share of the land without any vegetation-archive coverage (no PA cluster centre there).
COVERAGE_GAP_SHARE: Final = 0.3
#: Share of the species whose range lies inside an archive gap (PO records them, PA rarely).
GAP_SPECIES_SHARE: Final = 0.5
#: Calibration sites drawn around each gap species' range centre.
_RANGE_SITES: Final = 48


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return ((field_ - field_.mean()) / field_.std()).astype(np.float64)


@dataclass(frozen=True)
class Preset:
    """Size of a synthetic release.

    Attributes
    ----------
    name
        Preset name (``geoplant sample --preset``).
    n_pa_surveys
        PA surveys, train and test together.
    n_species
        Species of the world: about what PO records; PA records about half of them (the gap
        species of :mod:`geoplant.synthetic.world` it rarely reaches).
    n_po_rows
        PO rows (records); ~3.4 x the PA train rows, as in the real release.
    mean_richness
        Target mean number of species present per PA survey.
    test_fraction
        Share of the PA surveys in each test split (spatial blocks); with two test splits
        (``geoplant`` layout) a share above 0.25 is divided between them.
    """

    name: str
    n_pa_surveys: int
    n_species: int
    n_po_rows: int
    mean_richness: float
    test_fraction: float = 0.05


#: The sizes. PO rows are ~3.4 x the PA train rows (surveys x mean richness) and PA lists
#: about half of ``n_species`` (the rest are gap species), as in the real release. ``demo``
#: keeps tiny's training size but holds out 2/3 of its surveys (~2,500) so that a
#: bootstrap interval of samples-F1 over the test surveys is within +-0.01.
PRESETS: Final[dict[str, Preset]] = {
    "tiny": Preset("tiny", 1_000, 200, 26_000, 9.0),
    "small": Preset("small", 10_000, 1_000, 375_000, 13.0),
    "demo": Preset("demo", 3_750, 120, 31_000, 9.0, test_fraction=2 / 3),
    # The real PA part: 88,987 train + 4,716 test surveys, 5,016 species, 5,079,797 PO rows,
    # 9,709 PO species: 5,016 widespread species (PA's) and as many gap species.
    "large": Preset("large", 93_703, 10_032, 5_079_797, 16.7, test_fraction=4_716 / 93_703),
}


@dataclass
class Sites:
    """Locations and everything known about them (one row per site)."""

    lon: np.ndarray
    lat: np.ndarray
    env: dict[str, np.ndarray]  # continuous site values of the gridded fields
    habitat: np.ndarray  # hidden local habitat class (int8)
    greenness: np.ndarray  # hidden, 0..1
    wetness: np.ndarray  # hidden, standardised
    z: np.ndarray = field(repr=False)  # (n, len(DRIVERS)) standardised drivers

    def __len__(self) -> int:
        return len(self.lon)

    def take(self, index: np.ndarray) -> Sites:
        """Subset of the sites."""
        return Sites(
            self.lon[index], self.lat[index], {k: v[index] for k, v in self.env.items()},
            self.habitat[index], self.greenness[index], self.wetness[index], self.z[index],
        )


class World:
    """The seeded synthetic world (fields, species); all randomness flows from ``seed``.

    Parameters
    ----------
    seed
        Master seed; the same seed gives the same world, bit for bit.
    n_species
        Number of species.
    mean_richness
        Target mean number of species present per PA survey.
    """

    def __init__(self, seed: int, n_species: int, mean_richness: float) -> None:
        self.seed = seed
        self.n_species = n_species
        self.mean_richness = mean_richness
        rng = self.rng("fields")
        lon_min, lat_min, lon_max, lat_max = EXTENT
        self.lons = np.round(np.arange(lon_min + RESOLUTION / 2, lon_max, RESOLUTION), 6)
        self.lats = np.round(np.arange(lat_max - RESOLUTION / 2, lat_min, -RESOLUTION), 6)
        self.shape = (len(self.lats), len(self.lons))
        self.grids = self._make_fields(rng)
        self.coverage = self._archive_coverage(self.rng("archive-coverage"))
        self._driver_stats = self._reference_driver_stats()
        self._make_species(self.rng("species"))

    # -- randomness ---------------------------------------------------------------------------
    def rng(self, *keys: str | int) -> np.random.Generator:
        """An independent generator for a named purpose (stable across code changes elsewhere)."""
        words = [self.seed]
        for key in keys:
            digest = hashlib.sha256(str(key).encode()).digest()[:8]
            words.append(int.from_bytes(digest, "little"))
        return np.random.default_rng(np.random.SeedSequence(words))

    # -- gridded fields -----------------------------------------------------------------------
    def _make_fields(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        lon2, lat2 = np.meshgrid(self.lons, self.lats)
        g: dict[str, np.ndarray] = {}
        # Land: a continent fraying towards the west and south, with a wobbly coast.
        centre_dist = np.hypot((lon2 - 13.0) / 26.0, (lat2 - 52.0) / 20.0)
        landness = 1.15 - centre_dist + 0.3 * smooth_noise(rng, self.shape, 25)
        g["land"] = (landness > 0.12).astype(np.float64)
        ridges = np.clip(smooth_noise(rng, self.shape, 14) + 0.4 * smooth_noise(rng, self.shape, 4)
                         - 0.9, 0, None)
        elevation = 150 + 1500 * ridges + 90 * smooth_noise(rng, self.shape, 8)
        g["elevation"] = np.where(g["land"] > 0, np.clip(elevation, -20, 3800), 0.0)
        continentality = np.clip((lon2 + 10) / 42 + 0.12 * smooth_noise(rng, self.shape, 15),
                                 0, 1)
        g["continentality"] = continentality
        g["temperature"] = (19.5 - 0.52 * (lat2 - 35) - 0.0062 * g["elevation"]
                            + 1.2 * smooth_noise(rng, self.shape, 14))
        g["temp_amplitude"] = 5.5 + 9.0 * continentality + 1.5 * np.clip((lat2 - 45) / 25, 0, 1)
        g["diurnal_range"] = 6.5 + 5.0 * continentality + 0.8 * smooth_noise(rng, self.shape, 10)
        med = expit((41.5 - lat2) / 1.8)
        g["mediterranean"] = med
        g["precipitation"] = np.clip(
            1150 - 550 * continentality + 0.35 * g["elevation"] - 350 * med
            + 220 * smooth_noise(rng, self.shape, 9), 180, None)
        g["warming"] = 0.25 + 0.15 * (lat2 - 35) / 36 + 0.1 * smooth_noise(rng, self.shape, 20)
        # Soil (SoilGrids mapped units).
        g["soil_phh2o"] = np.clip(72 - 0.012 * (g["precipitation"] - 700)
                                  + 6 * smooth_noise(rng, self.shape, 5), 38, 85)
        g["soil_sand"] = np.clip(380 + 140 * smooth_noise(rng, self.shape, 4), 50, 900)
        g["soil_clay"] = np.clip(230 + 70 * smooth_noise(rng, self.shape, 4), 20, 600)
        g["soil_silt"] = np.clip(1000 - g["soil_sand"] - g["soil_clay"], 20, None)
        g["soil_soc"] = np.clip(250 - 8 * g["temperature"] + 0.08 * g["precipitation"]
                                + 40 * smooth_noise(rng, self.shape, 6), 20, None)
        g["soil_bdod"] = np.clip(135 - 0.1 * (g["soil_soc"] - 150)
                                 + 6 * smooth_noise(rng, self.shape, 6), 70, 175)
        g["soil_cec"] = np.clip(150 + 0.3 * g["soil_clay"] + 30 * smooth_noise(rng, self.shape, 6),
                                40, None)
        g["soil_cfvo"] = np.clip(
            100 + 0.05 * g["elevation"] + 40 * smooth_noise(rng, self.shape, 5), 0, 600)
        g["soil_nitrogen"] = np.clip(2 * g["soil_soc"] + 50 * smooth_noise(rng, self.shape, 6),
                                     100, None)
        self._make_human_footprint(rng, g, lon2, lat2)
        g["igbp"] = self._land_cover(rng, g)
        return g

    def _make_human_footprint(self, rng: np.random.Generator, g: dict[str, np.ndarray],
                              lon2: np.ndarray, lat2: np.ndarray) -> None:
        land_cells = np.flatnonzero(g["land"] > 0)
        # Towns prefer mild lowlands.
        weight = np.exp(-g["elevation"].ravel()[land_cells] / 500.0)
        weight /= weight.sum()
        n_towns = 160
        towns = rng.choice(land_cells, n_towns, replace=False, p=weight)
        iy, ix = np.unravel_index(towns, self.shape)
        size = np.minimum(rng.pareto(1.3, n_towns) + 1.0, 25.0)
        self.towns = np.column_stack([self.lons[ix], self.lats[iy], size])
        pop = np.zeros(self.shape)
        for (tlon, tlat, s) in self.towns:
            d2 = ((lon2 - tlon) * np.cos(np.radians(tlat))) ** 2 + (lat2 - tlat) ** 2
            pop += s * 600 * np.exp(-d2 / (2 * (0.12 * np.sqrt(s)) ** 2))
        roads = np.full(self.shape, np.inf)
        xy = self.towns[:, :2]
        for a in range(n_towns):  # each town joins its 2 nearest neighbours
            dist = np.hypot(*(xy - xy[a]).T)
            for b in np.argsort(dist)[1:3]:
                roads = np.minimum(roads, _segment_distance(lon2, lat2, xy[a], xy[b]))
        road_access = np.exp(-roads / 0.08)
        g["popdensity"] = pop * (g["land"] > 0)
        g["roads"] = road_access * (g["land"] > 0)
        g["railways"] = np.exp(-roads / 0.03) * (smooth_noise(rng, self.shape, 8) > 0.3)
        g["lights"] = np.clip(np.log1p(pop) * 6, 0, 63)
        g["built"] = np.clip(np.log1p(pop) * 2.5 - 5, 0, 10)
        g["navwater"] = np.clip(3 * smooth_noise(rng, self.shape, 2) - 4, 0, 4)
        g["hfp"] = np.clip(2.5 * np.log1p(pop) + 12 * road_access + 2 * g["navwater"], 0, 50) \
            * (g["land"] > 0)

    def _land_cover(self, rng: np.random.Generator, g: dict[str, np.ndarray]) -> np.ndarray:
        """MODIS IGBP LC_Type1 class per cell from climate, elevation and people."""
        t, p, e = g["temperature"], g["precipitation"], g["elevation"]
        noise = {c: 0.6 * smooth_noise(rng, self.shape, 2) for c in (1, 4, 5, 7, 10, 11, 12, 14)}
        scores = {
            1: 2.0 - 0.35 * np.abs(t - 3) + 0.001 * e + noise[1],  # evergreen needleleaf
            4: 2.2 - 0.3 * np.abs(t - 10) + 0.0008 * (p - 700) + noise[4],  # deciduous broadleaf
            5: 1.9 - 0.3 * np.abs(t - 7) + noise[5],  # mixed forest
            7: 1.6 + 2.5 * g["mediterranean"] - 0.002 * (p - 400) + noise[7],  # open shrubland
            10: 1.7 + 0.0006 * e + 0.8 * g["continentality"] + noise[10],  # grassland
            11: 0.6 + 0.001 * (p - 900) + noise[11],  # wetland
            12: 2.4 - 0.002 * e - 0.25 * np.abs(t - 11) + 0.05 * g["hfp"] + noise[12],  # cropland
            14: 1.6 - 0.002 * e + 0.04 * g["hfp"] + noise[14],  # cropland/natural mosaic
        }
        classes = np.array(list(scores))
        igbp = classes[np.argmax(np.stack(list(scores.values())), axis=0)].astype(np.float64)
        igbp[g["popdensity"] > 2000] = 13  # urban
        igbp[(e > 2300) & (t < 0)] = 15  # snow and ice
        igbp[(e > 1900) & (igbp != 15)] = 16  # barren
        igbp[g["land"] <= 0] = 17  # water
        return igbp

    # -- where surveys go ----------------------------------------------------------------------
    def _archive_coverage(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth 0..1 vegetation-archive coverage per cell; 0 on COVERAGE_GAP_SHARE of land."""
        land = self.grids["land"] > 0
        noise = smooth_noise(rng, self.shape, 30)  # ~3 degree patches: national archives
        gap, full = np.quantile(noise[land], [COVERAGE_GAP_SHARE, 0.9])
        return np.where(land, np.clip((noise - gap) / (full - gap), 0.0, 1.0), 0.0)

    def archive_coverage(self) -> np.ndarray:
        """The vegetation-archive coverage grid (0..1): PA cluster centres are drawn with it."""
        return self.coverage

    def po_effort(self) -> np.ndarray:
        """Presence-only observer effort per grid cell (relative weight).

        Observers favour towns and roads (``(hfp / 50) ** 1.5 + 0.3 * roads + 0.01``: the
        bias a target-group background corrects), and record more where the vegetation
        archives are sparse (a factor 0.3 where the coverage is full, 3.0 in the gaps), so PO is
        dense where PA is sparse, as in the real release.
        """
        g = self.grids
        towns = (g["hfp"] / 50) ** 1.5 + 0.3 * g["roads"] + 0.01
        return towns * (0.3 + 2.7 * (1.0 - self.coverage))

    # -- sampling sites -----------------------------------------------------------------------
    def grid_values(self, lon: np.ndarray, lat: np.ndarray, name: str,
                    order: int = 1) -> np.ndarray:
        """Values of a gridded field at points (bilinear, or nearest with ``order=0``)."""
        rows = (EXTENT[3] - RESOLUTION / 2 - lat) / RESOLUTION
        cols = (lon - EXTENT[0] - RESOLUTION / 2) / RESOLUTION
        return ndimage.map_coordinates(self.grids[name], [rows, cols], order=order,
                                       mode="nearest")

    def random_land_points(self, rng: np.random.Generator, n: int,
                           weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points on land, optionally weighted per grid cell, jittered inside the cell."""
        w = (self.grids["land"] > 0).ravel().astype(np.float64)
        if weight is not None:
            w = w * weight.ravel()
        cells = rng.choice(w.size, n, p=w / w.sum())
        iy, ix = np.unravel_index(cells, self.shape)
        lon = self.lons[ix] + rng.uniform(-RESOLUTION / 2, RESOLUTION / 2, n)
        lat = self.lats[iy] + rng.uniform(-RESOLUTION / 2, RESOLUTION / 2, n)
        return lon, lat

    def clustered_land_points(self, rng: np.random.Generator, n: int,
                              per_cluster: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
        """PA-like sites: clusters of surveys (as vegetation archives are) around centres drawn
        with the archive coverage (none in its gaps)."""
        n_clusters = max(1, int(n / per_cluster))
        clon, clat = self.random_land_points(rng, n_clusters, self.coverage)
        member = rng.integers(0, n_clusters, n)
        spread = rng.uniform(0.03, 0.35, n_clusters)[member]
        lon = clon[member] + rng.normal(0, 1, n) * spread / np.cos(np.radians(clat[member]))
        lat = clat[member] + rng.normal(0, 1, n) * spread
        lon = np.clip(lon, EXTENT[0] + 0.01, EXTENT[2] - 0.01)
        lat = np.clip(lat, EXTENT[1] + 0.01, EXTENT[3] - 0.01)
        on_land = self.grid_values(lon, lat, "land", order=0) > 0
        # Points that fell in the sea move to their cluster centre (which is on land).
        lon = np.where(on_land, lon, clon[member])
        lat = np.where(on_land, lat, clat[member])
        return lon, lat

    def sites(self, rng: np.random.Generator, lon: np.ndarray, lat: np.ndarray) -> Sites:
        """Everything known about sites at ``lon``/``lat``, including the hidden local habitat."""
        env = {name: self.grid_values(lon, lat, name) for name in self.grids
               if name not in ("igbp", "land")}
        env["igbp"] = self.grid_values(lon, lat, "igbp", order=0)
        # Local elevation varies below the grid resolution.
        env["elevation"] = env["elevation"] + rng.normal(0, 40, len(lon))
        coarse = np.array([IGBP_TO_HABITAT.get(int(c), 2) for c in env["igbp"]], dtype=np.int8)
        # The local habitat is the coarse class most of the time, else a climate-driven pick.
        alt = self._climate_habitat(rng, env)
        habitat = np.where(rng.random(len(lon)) < 0.55, coarse, alt).astype(np.int8)
        base_green = np.array([0.85, 0.8, 0.6, 0.45, 0.35, 0.65, 0.15, 0.05])[habitat]
        greenness = np.clip(base_green + rng.normal(0, 0.12, len(lon))
                            - 0.004 * np.clip(env["temperature"] - 16, 0, None) * 10, 0.0, 1.0)
        wetness = rng.normal(0, 1, len(lon)) + 1.5 * (habitat == 5)
        z = self._drivers(env, greenness, wetness)
        return Sites(lon, lat, env, habitat, greenness, wetness, z)

    def _climate_habitat(self, rng: np.random.Generator, env: dict[str, np.ndarray]) -> np.ndarray:
        t, e = env["temperature"], env["elevation"]
        logits = np.stack([
            0.4 - 0.25 * np.abs(t - 3),  # needleleaf
            0.6 - 0.2 * np.abs(t - 10),  # broadleaf
            0.8 + 0.0005 * e,  # grassland
            0.5 - 0.001 * e + 0.03 * env["hfp"],  # cropland
            -0.3 + 2.0 * env["mediterranean"],  # shrubland
            -0.8 + 0.0008 * (env["precipitation"] - 800),  # wetland
            -2.0 + 0.08 * env["hfp"],  # urban
            -2.5 + 0.0015 * e,  # bare
        ], axis=1)
        gumbel = -np.log(-np.log(rng.random(logits.shape)))
        return np.argmax(logits + gumbel, axis=1)

    def _drivers(self, env: dict[str, np.ndarray], greenness: np.ndarray,
                 wetness: np.ndarray) -> np.ndarray:
        raw = np.column_stack([
            env["temperature"], np.log(env["precipitation"]), env["continentality"],
            env["elevation"], env["soil_phh2o"], env["soil_sand"], env["hfp"], greenness,
            wetness, env["warming"],
        ])
        stats = getattr(self, "_driver_stats", None)
        if stats is None:
            return raw
        return (raw - stats[0]) / stats[1]

    def _reference_driver_stats(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng("reference-stats")
        lon, lat = self.random_land_points(rng, 20_000)
        raw = self.sites(rng, lon, lat).z
        return raw.mean(axis=0), raw.std(axis=0)

    # -- species ------------------------------------------------------------------------------
    def _make_species(self, rng: np.random.Generator) -> None:
        n = self.n_species
        # Real ids are sparse in 0..11254.
        self.species_ids = np.sort(rng.choice(11_255, n, replace=False)).astype(np.int64)
        n_drivers = len(DRIVERS)
        k = rng.choice([2, 3, 4], n, p=[0.3, 0.45, 0.25])
        # Climate drivers are the commonest niche axes; hidden ones are common enough to matter.
        driver_p = np.array([0.2, 0.15, 0.07, 0.1, 0.08, 0.05, 0.06, 0.13, 0.1, 0.06])
        self.niche_mask = np.zeros((n, n_drivers), dtype=bool)
        for s in range(n):
            self.niche_mask[s, rng.choice(n_drivers, k[s], replace=False, p=driver_p)] = True
        self.niche_mu = rng.normal(0, 0.9, (n, n_drivers))
        self.niche_sd = rng.uniform(0.45, 1.4, (n, n_drivers))
        self.habitat_beta = rng.normal(0, 1.2, (n, len(HABITATS)))
        self.detectability = rng.lognormal(0, 1.0, n)  # how readily PO observers record it
        self._make_ranges(self.rng("species-ranges"))
        # Long-tailed prevalences (over PA-like sites) of the other species, summing to the
        # target richness; gap species get a local prevalence inside their range instead.
        wide = np.flatnonzero(~self.gap_species)
        prevalence = np.zeros(n)
        prevalence[wide] = (rng.permutation(len(wide)) + 1.0) ** -0.7
        prevalence *= self.mean_richness / max(prevalence.sum(), 1e-12)
        self.local_prevalence = np.where(
            self.gap_species, np.exp(rng.uniform(np.log(0.1), np.log(0.6), n)), np.nan)
        self.prevalence = np.clip(prevalence, 1e-5, 0.6)
        self.intercept = np.zeros(n)
        self.intercept = self._calibrate_intercepts(self.rng("calibration"))

    def _make_ranges(self, rng: np.random.Generator) -> None:
        """Gap species: a range centre deep inside an archive gap and a radius (degrees)."""
        n = self.n_species
        n_gap = round(GAP_SPECIES_SHARE * n)
        self.gap_species = np.zeros(n, dtype=bool)
        self.gap_species[rng.choice(n, n_gap, replace=False)] = True
        # Deep inside: the range centre is at least 2 radii + 0.4 degrees (the reach of PA
        # clusters from their centres) from any covered cell.
        depth = self._gap_depth().ravel()
        radius = rng.uniform(0.4, 1.0, n)
        order = np.argsort(-depth, kind="stable")  # deepest cells first
        deep_enough = np.searchsorted(-depth[order], -(2 * radius + 0.4), side="right")
        pick = order[(rng.random(n) * np.maximum(deep_enough, 1)).astype(np.int64)]
        iy, ix = np.unravel_index(pick, self.shape)
        self.range_lon = np.where(self.gap_species, self.lons[ix], np.nan)
        self.range_lat = np.where(self.gap_species, self.lats[iy], np.nan)
        self.range_radius = np.where(self.gap_species, radius, np.inf)

    def _gap_depth(self) -> np.ndarray:
        """Distance (degrees, longitude scaled by cos latitude) from each uncovered land cell to
        the nearest covered cell; 0 elsewhere."""
        from scipy.spatial import cKDTree

        lon2, lat2 = np.meshgrid(self.lons, self.lats)
        xy = np.column_stack([(lon2 * np.cos(np.radians(lat2))).ravel(), lat2.ravel()])
        covered = self.coverage.ravel() > 0
        gap = (self.grids["land"].ravel() > 0) & ~covered
        depth = np.zeros(lon2.size)
        if covered.any() and gap.any():
            depth[gap] = cKDTree(xy[covered]).query(xy[gap])[0]
        return depth.reshape(self.shape)

    def _range_penalty(self, lon: np.ndarray, lat: np.ndarray, species: np.ndarray,
                       pairs: bool) -> np.ndarray:
        """``0.5 * (d / r) ** 2`` of gap species; ``pairs``: site i with species[i], else every
        site with every species of ``species`` (n_sites, len(species))."""
        clon, clat, r = self.range_lon[species], self.range_lat[species], \
            self.range_radius[species]
        if not pairs:
            lon, lat = lon[:, None], lat[:, None]
        dx = (lon - clon) * np.cos(np.radians(lat))
        return 0.5 * (dx**2 + (lat - clat) ** 2) / r**2

    def _calibrate_intercepts(self, rng: np.random.Generator) -> np.ndarray:
        """Bisection on each species' intercept so its mean probability equals its prevalence:
        over PA-like sites for most species, over sites inside its range for a gap species."""
        lon, lat = self.clustered_land_points(rng, 4_000)
        sites = self.sites(rng, lon, lat)
        wide = np.flatnonzero(~self.gap_species)
        gap = np.flatnonzero(self.gap_species)
        shape = self.niche_logits(sites, wide)  # (n_sites, n_wide) without intercept
        intercept = np.zeros(self.n_species)
        intercept[wide] = _bisect(shape, self.prevalence[wide])
        max_p = np.zeros(self.n_species)
        max_p[wide] = expit(shape + intercept[wide]).max(axis=0)
        if gap.size:
            rsites, rspecies = self._range_sites(rng, gap)
            logit = self.pair_logits(rsites, np.arange(len(rsites)), rspecies)
            logit = logit.reshape(len(gap), _RANGE_SITES).T
            intercept[gap] = _bisect(logit, self.local_prevalence[gap])
            max_p[gap] = expit(logit + intercept[gap]).max(axis=0)
            # What PA sees of them: their mean probability over the PA-like sites.
            pa_mean = expit(self.niche_logits(sites, gap) + intercept[gap]).mean(axis=0)
            self.prevalence[gap] = np.clip(pa_mean, 1e-7, 0.6)
        # Upper bound of each species' probability, for rejection sampling of PO records.
        self.max_probability = np.clip(max_p * 1.25, 1e-4, 1.0)
        return intercept

    def _range_sites(self, rng: np.random.Generator, gap: np.ndarray) -> tuple[Sites, np.ndarray]:
        """_RANGE_SITES land sites inside each gap species' range (within one radius)."""
        k = _RANGE_SITES
        species = np.repeat(gap, k)
        lon = np.empty(len(species))
        lat = np.empty(len(species))
        todo = np.arange(len(species))
        for _ in range(50):  # redraw points that fell in the sea
            s = species[todo]
            rad = self.range_radius[s] * np.sqrt(rng.random(len(todo)))
            ang = rng.uniform(0, 2 * np.pi, len(todo))
            lat[todo] = np.clip(self.range_lat[s] + rad * np.sin(ang), EXTENT[1] + 0.01,
                                EXTENT[3] - 0.01)
            lon[todo] = np.clip(self.range_lon[s] + rad * np.cos(ang)
                                / np.cos(np.radians(lat[todo])), EXTENT[0] + 0.01,
                                EXTENT[2] - 0.01)
            todo = todo[self.grid_values(lon[todo], lat[todo], "land", order=0) <= 0]
            if todo.size == 0:
                break
        lon[todo], lat[todo] = self.range_lon[species[todo]], self.range_lat[species[todo]]
        return self.sites(rng, lon, lat), species

    def niche_logits(self, sites: Sites, species: np.ndarray | None = None) -> np.ndarray:
        """Logits without intercept and area effect: (n_sites, n_species)."""
        index = np.arange(self.n_species) if species is None else np.asarray(species)
        mask, mu, sd = self.niche_mask[index], self.niche_mu[index], self.niche_sd[index]
        out = np.zeros((len(sites), mask.shape[0]), dtype=np.float64)
        for d in range(len(DRIVERS)):
            users = np.flatnonzero(mask[:, d])
            if users.size:
                dev = (sites.z[:, d : d + 1] - mu[users, d]) / sd[users, d]
                out[:, users] -= 0.5 * dev**2
        out += self.habitat_beta[index][:, sites.habitat].T
        ranged = np.flatnonzero(self.gap_species[index])
        if ranged.size:
            out[:, ranged] -= self._range_penalty(sites.lon, sites.lat, index[ranged], False)
        return out

    def probabilities(self, sites: Sites, area_m2: np.ndarray | None = None) -> np.ndarray:
        """True occurrence probabilities (n_sites, n_species), float32.

        Larger plots hold more species: the logit gains ``0.25 * log(area / 100)`` where the
        plot area is known and finite.
        """
        logits = self.niche_logits(sites) + self.intercept
        if area_m2 is not None:
            area = np.where(np.isfinite(area_m2) & (area_m2 > 0), area_m2, 100.0)
            logits += 0.25 * np.log(area / 100.0)[:, None]
        return expit(logits).astype(np.float32)

    def pair_logits(self, sites: Sites, site: np.ndarray, species: np.ndarray) -> np.ndarray:
        """Logit without intercept of ``species[i]`` at site ``site[i]`` of ``sites``."""
        mask, mu, sd = self.niche_mask[species], self.niche_mu[species], self.niche_sd[species]
        dev = np.where(mask, (sites.z[site] - mu) / sd, 0.0)
        logit = -0.5 * (dev**2).sum(axis=1) + self.habitat_beta[species, sites.habitat[site]]
        ranged = self.gap_species[species]
        if ranged.any():
            logit[ranged] -= self._range_penalty(sites.lon[site[ranged]],
                                                 sites.lat[site[ranged]], species[ranged], True)
        return logit

    def pair_probabilities(self, sites: Sites, site: np.ndarray,
                           species: np.ndarray) -> np.ndarray:
        """Probability of ``species[i]`` at site ``site[i]`` of ``sites``."""
        return expit(self.pair_logits(sites, site, species) + self.intercept[species])

    def parameters(self) -> dict[str, object]:
        """The generator's parameters as plain JSON-able values."""
        return {
            "seed": self.seed,
            "extent_lon_lat": list(EXTENT),
            "grid_resolution_deg": RESOLUTION,
            "n_species": self.n_species,
            "mean_richness_target": self.mean_richness,
            "drivers": list(DRIVERS),
            "hidden_drivers": ["greenness", "wetness", "warming"],
            "habitats": list(HABITATS),
            "driver_mean": self._driver_stats[0].tolist(),
            "driver_std": self._driver_stats[1].tolist(),
            "species": [
                {
                    "speciesId": int(self.species_ids[s]),
                    "prevalence": float(self.prevalence[s]),
                    "intercept": float(self.intercept[s]),
                    "detectability": float(self.detectability[s]),
                    "niche": {
                        DRIVERS[d]: {"mu": float(self.niche_mu[s, d]),
                                     "sd": float(self.niche_sd[s, d])}
                        for d in np.flatnonzero(self.niche_mask[s])
                    },
                    "habitat_beta": [float(b) for b in self.habitat_beta[s]],
                    **({"range": {"lon": float(self.range_lon[s]),
                                  "lat": float(self.range_lat[s]),
                                  "radius_deg": float(self.range_radius[s]),
                                  "local_prevalence": float(self.local_prevalence[s])}}
                       if self.gap_species[s] else {}),
                }
                for s in range(self.n_species)
            ],
            "probability_model": (
                "p = sigmoid(intercept - 0.5*sum_k((z_k-mu_k)/sd_k)^2 + habitat_beta[habitat]"
                " - 0.5*(d/radius_deg)^2 + 0.25*log(areaInM2/100)), z = standardised drivers,"
                " d = distance (degrees, lon scaled by cos lat) to the range centre of a gap"
                " species (no such term for the others)"
            ),
            "survey_design": {
                "coverage_gap_share": COVERAGE_GAP_SHARE,
                "gap_species_share": GAP_SPECIES_SHARE,
                "pa_sites": "clusters around centres drawn with the archive coverage (0..1)",
                "po_effort": "((hfp/50)^1.5 + 0.3*roads + 0.01) * (0.3 + 2.7*(1 - coverage))",
            },
        }

    def region_of(self, sites: Sites) -> np.ndarray:
        """Biogeographic region name per site, from climate and elevation."""
        env = sites.env
        lon, lat = sites.lon, sites.lat
        out = np.full(len(sites), "CONTINENTAL", dtype=object)
        out[(env["continentality"] < 0.42) & (lat > 43)] = "ATLANTIC"
        out[(lat > 58) | (env["temperature"] < 2.5)] = "BOREAL"
        out[(lon > 17) & (lon < 23) & (lat > 45) & (lat < 48.5)] = "PANNONIAN"
        out[(lon > 27) & (lat > 41) & (lat < 46)] = "BLACK SEA"
        out[(lon > 28) & (lat >= 46) & (lat < 50) & (env["precipitation"] < 650)] = "STEPPIC"
        out[env["mediterranean"] > 0.5] = "MEDITERRANEAN"
        out[env["elevation"] > 1100] = "ALPINE"
        return out

    def admin_of(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """County (admin1) and district (admin2) names per site, as GeoPlant's reverse
        geocoding adds them (``metadata-preprocessing/upscale-location.py``).

        Invented names of coarse grid cells (2 degrees for counties, 0.5 for districts), so
        they are spatially coherent and depend on the location only (no random draw).
        """
        return (_cell_names(lon, lat, ADMIN_CELLS[0], 2, "shire"),
                _cell_names(lon, lat, ADMIN_CELLS[1], 3, ""))

    def country_of(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Nearest country centroid's name per site."""
        names = np.array([c[0] for c in COUNTRIES], dtype=object)
        cxy = np.array([(c[1], c[2]) for c in COUNTRIES])
        dx = (lon[:, None] - cxy[:, 0]) * np.cos(np.radians(lat))[:, None]
        dy = lat[:, None] - cxy[:, 1]
        return names[np.argmin(dx**2 + dy**2, axis=1)]


def _bisect(shape: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-column intercept ``a`` with ``mean(sigmoid(shape + a), axis=0) == target``."""
    lo = np.full(shape.shape[1], -25.0)
    hi = np.full(shape.shape[1], 25.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        too_high = expit(shape + mid).mean(axis=0) > target
        hi = np.where(too_high, mid, hi)
        lo = np.where(too_high, lo, mid)
    return (lo + hi) / 2


def _cell_names(lon: np.ndarray, lat: np.ndarray, size: float, syllables: int,
                suffix: str) -> np.ndarray:
    """A made-up place name per grid cell of ``size`` degrees: distinct cells, distinct names
    (over the world's extent), the same name for every site of a cell."""
    cols = int(np.ceil((EXTENT[2] - EXTENT[0]) / size)) + 1
    ix = np.floor((np.asarray(lon) - EXTENT[0]) / size).astype(np.int64)
    iy = np.floor((np.asarray(lat) - EXTENT[1]) / size).astype(np.int64)
    codes = np.clip(iy, 0, None) * cols + np.clip(ix, 0, cols - 1)
    names = {}
    for code in np.unique(codes).tolist():
        left, parts = code, []
        for _ in range(syllables):
            parts.append(_SYLLABLES[left % len(_SYLLABLES)])
            left //= len(_SYLLABLES)
        names[code] = ("".join(parts) + suffix).capitalize()
    return np.array([names[c] for c in codes.tolist()], dtype=object)


def _segment_distance(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (degrees) from grid points to the segment a-b."""
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / max(float(ab @ ab), 1e-12), 0, 1)
    return np.hypot(x - (a[0] + t * ab[0]), y - (a[1] + t * ab[1]))
