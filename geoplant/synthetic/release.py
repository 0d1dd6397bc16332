"""Write a synthetic world as a raw GeoPlant release, in the real file layout, with its truth.

The proportions of the real release are kept at every preset (see
:mod:`geoplant.synthetic.world`): PO rows ~3.4 x the PA train rows; PO records about twice as
many species as PA (the world's gap species live where the vegetation archives have no plots),
and every species PA lists has at least one PO record (:meth:`_ReleaseWriter._record_pa_species`);
PA survey clusters follow the archive coverage while PO observer effort follows towns and roads
and is higher where the coverage is low (``World.po_effort``).

Generation streams block by block (PA surveys in blocks of :data:`BLOCK`, PO records in chunks),
so memory stays flat as the preset grows. Each block draws from its own generator keyed by
(seed, split, block), and every archive member gets a fixed timestamp, so the same seed gives
byte-identical files. The release is written into a hidden sibling folder and renamed into
place at the end: a crash never leaves a half-written release at ``out``.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from geoplant import __version__
from geoplant.errors import GeoplantError
from geoplant.layouts import (
    CLIMATE_MONTHS,
    CLIMATE_VARIABLES,
    CLIMATE_YEARS,
    ENV_COLUMNS,
    FOOTPRINT_PREFIX,
    FOOTPRINT_V2_ARCHIVE,
    LANDSAT_BANDS,
    LANDSAT_QUARTERS,
    LANDSAT_YEARS,
    METADATA_COLUMNS,
    SPLITS,
    LayoutName,
    Location,
    check_layout,
    families,
    location,
)
from geoplant.synthetic import render
from geoplant.synthetic.world import (
    HABITATS,
    IGBP_TO_HABITAT,
    PRESETS,
    REGIONS,
    Preset,
    Sites,
    World,
)

#: Surveys per generation block.
BLOCK: Final = 1_000
#: Surveys per PO generation chunk.
PO_CHUNK: Final = 100_000
#: Every how many-th PO survey (of each chunk) has Landsat and bioclimatic cubes (geoplant
#: layout only; see ``_ReleaseWriter._write_po_cubes``).
PO_CUBE_EVERY: Final = 1
_ZIP_TIME: Final = (1980, 1, 1, 0, 0, 0)

#: Stand-in for the v2 human footprint (geoplant layout): a 30 m OpenStreetMap-derived product
#: whose layer names are not published; these are invented, only their differing from v1's
#: 16 Venter layers is meant (readers take the columns from the header, the rasters from the
#: archive's listing).
HFP_V2_LAYERS: Final = ("built", "roads", "railways", "waterways", "croplands", "pasture",
                        "total")
HFP_V2_COLUMNS: Final = tuple(f"HumanFootprint-OSM-{name}" for name in HFP_V2_LAYERS)

_PUBLISHERS: Final = (
    ("Pl@ntNet", 0.38), ("iNaturalist.org", 0.27), ("Observation.org", 0.15),
    ("The Norwegian Biodiversity Information Centre (NBIC)", 0.08),
    ("Artportalen (Swedish Species Observation System)", 0.07), ("naturgucker.de", 0.05),
)


@dataclass(frozen=True)
class ReleaseSummary:
    """What :func:`write_release` wrote."""

    root: Path
    layout: LayoutName
    preset: str
    seed: int
    counts: dict[str, int]
    n_species: int
    n_files: int
    bytes: int


class _Sink:
    """Files of a release being written: plain files, zip members, and appendable CSVs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._archives: dict[str, zipfile.ZipFile] = {}
        self._csvs: dict[str, _CsvFile] = {}
        self._scratch = Path(tempfile.mkdtemp(prefix="csv-", dir=root))

    def _archive(self, path: str) -> zipfile.ZipFile:
        if path not in self._archives:
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            self._archives[path] = zipfile.ZipFile(target, "w", allowZip64=True)
        return self._archives[path]

    def write_bytes(self, loc: Location, data: bytes, *, compress: bool = False) -> None:
        if loc.member is None:
            target = self.root / loc.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        else:
            self._archive(loc.path).writestr(_zip_info(loc.member, compress), data)

    def write_tensor(self, loc: Location, cube: np.ndarray) -> None:
        """``torch.save`` one float32 tensor, as the real ``*_cube.pt`` files hold."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(cube))
        if loc.member is None:
            target = self.root / loc.path
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.save(tensor, target)  # records are then prefixed with the file stem, as real
        else:
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            self._archive(loc.path).writestr(_zip_info(loc.member, True), buffer.getvalue())

    def csv(self, loc: Location) -> _CsvFile:
        key = str(loc)
        if key not in self._csvs:
            if loc.member is None:
                target = self.root / loc.path
                target.parent.mkdir(parents=True, exist_ok=True)
            else:
                target = self._scratch / f"{len(self._csvs)}.csv"
            self._csvs[key] = _CsvFile(target, loc)
        return self._csvs[key]

    def close(self) -> None:
        for csv_file in self._csvs.values():
            csv_file.close()
            if csv_file.loc.member is not None:
                info = _zip_info(csv_file.loc.member, compress=True)
                with open(csv_file.path, "rb") as src, \
                        self._archive(csv_file.loc.path).open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        for archive in self._archives.values():
            archive.close()
        shutil.rmtree(self._scratch, ignore_errors=True)


class _CsvFile:
    """A CSV written in appended blocks; the header goes with the first block."""

    def __init__(self, path: Path, loc: Location) -> None:
        self.path, self.loc = path, loc
        self._handle: IO[str] | None = None

    def append(self, frame: pd.DataFrame) -> None:
        first = self._handle is None
        if self._handle is None:
            self._handle = open(self.path, "w", newline="", encoding="utf-8")
        frame.to_csv(self._handle, index=False, header=first, lineterminator="\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _zip_info(member: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(member, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info




def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _geotiff_bytes(array: np.ndarray, *, crs: str, transform: Any, nodata: float | None,
                   descriptions: tuple[str, ...] | None = None, compress: str = "deflate") -> bytes:
    from rasterio.io import MemoryFile

    count = array.shape[0]
    profile = {
        "driver": "GTiff", "height": array.shape[1], "width": array.shape[2], "count": count,
        "dtype": array.dtype.name, "crs": crs, "transform": transform, "nodata": nodata,
        "compress": compress,
    }
    if array.shape[1] >= 256:
        profile |= {"tiled": True, "blockxsize": 256, "blockysize": 256}
    with MemoryFile() as memory:
        with memory.open(**profile) as dataset:
            dataset.write(array)
            if descriptions:
                for band, text in enumerate(descriptions, start=1):
                    dataset.set_band_description(band, text)
        return bytes(memory.read())


# ---------------------------------------------------------------------------------------------
# PA surveys


def _assign_splits(layout: LayoutName, world: World, lon: np.ndarray, lat: np.ndarray,
                   test_fraction: float) -> np.ndarray:
    """Split names per survey: spatial hold-out of ~10 km blocks (as GeoPlant's test split).

    Each test split takes ``test_fraction`` of the surveys in whole blocks; where that would
    leave less than half of them for training (two test splits of a large fraction, as the
    ``demo`` preset's 0.75 in the ``geoplant`` layout), the fraction is divided between them.
    """
    rng = world.rng("splits")
    split = np.full(len(lon), "pa_train", dtype=object)
    if layout == "geoplant":
        split[lon > np.quantile(lon, 0.96)] = "pa_test_ood"  # a region never seen in training
    block = np.floor(lat / 0.09).astype(np.int64) * 100_000 + np.floor(lon / 0.13).astype(np.int64)
    tests = ["pa_test"] if layout == "glc24" else ["pa_test_iid", "pa_test_glc25"]
    if len(tests) > 1 and len(tests) * test_fraction > 0.5:
        test_fraction /= len(tests)
    for name in tests:
        free = split == "pa_train"
        blocks = rng.permutation(np.unique(block[free]))
        sizes = pd.Series(block[free]).value_counts().reindex(blocks).to_numpy()
        chosen = blocks[: int(np.searchsorted(np.cumsum(sizes), test_fraction * len(lon))) + 1]
        split[free & np.isin(block, chosen)] = name
    return split


def _pa_plan(world: World, preset: Preset, layout: LayoutName
             ) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray]:
    """The PA surveys' generator (for what follows), locations and split names."""
    rng = world.rng("pa-sites")
    lon, lat = world.clustered_land_points(rng, preset.n_pa_surveys)
    return rng, lon, lat, _assign_splits(layout, world, lon, lat, preset.test_fraction)


def pa_split_sizes(preset: str, *, layout: str = "glc24", seed: int = 0) -> dict[str, int]:
    """Surveys per PA split that :func:`write_release` would write, without writing anything.

    Parameters
    ----------
    preset, layout, seed
        As for :func:`write_release`.

    Returns
    -------
    dict
        Split name (``pa_train``, ``pa_test``, ...) -> number of surveys.
    """
    layout_name = check_layout(layout)
    size = _preset(preset)
    world = World(seed, size.n_species, size.mean_richness)
    split = _pa_plan(world, size, layout_name)[3]
    names, counts = np.unique(split.astype(str), return_counts=True)
    return {str(k): int(v) for k, v in zip(names, counts, strict=True)}


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise GeoplantError(f"unknown preset {name!r}", fix=f"use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def _survey_attributes(rng: np.random.Generator, world: World, sites: Sites) -> pd.DataFrame:
    """The site columns of the PA metadata."""
    n = len(sites)
    unc = rng.choice([0.0, 1.0, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 250.0, 1000.0], n,
                     p=[0.12, 0.1, 0.18, 0.25, 0.08, 0.07, 0.08, 0.06, 0.04, 0.02])
    unc[rng.random(n) < 0.006] = np.nan
    area = rng.choice([1.0, 4.0, 10.0, 16.0, 25.0, 50.0, 79.0, 100.0, 200.0, 400.0, 707.0], n,
                      p=[0.03, 0.08, 0.08, 0.12, 0.14, 0.08, 0.1, 0.18, 0.08, 0.07, 0.04])
    u = rng.random(n)
    area[u < 0.1] = np.nan
    area[(u >= 0.1) & (u < 0.104)] = -np.inf  # a real quirk of areaInM2
    return pd.DataFrame({
        "lon": np.round(sites.lon, 5), "lat": np.round(sites.lat, 5),
        "year": rng.integers(2017, 2022, n), "geoUncertaintyInM": unc, "areaInM2": area,
        "region": world.region_of(sites), "country": world.country_of(sites.lon, sites.lat),
    })


def _draw_presences(rng: np.random.Generator, prob: np.ndarray) -> np.ndarray:
    """Presence/absence draws; a survey lists at least one species, as every real one does."""
    present = rng.random(prob.shape) < prob
    for _ in range(20):
        empty = np.flatnonzero(~present.any(axis=1))
        if empty.size == 0:
            break
        present[empty] = rng.random((empty.size, prob.shape[1])) < prob[empty]
    empty = np.flatnonzero(~present.any(axis=1))
    present[empty, np.argmax(prob[empty], axis=1)] = True
    return present


def _env_columns(layout: LayoutName, family: str) -> tuple[str, ...]:
    """Columns after surveyId of an env table: layouts.ENV_COLUMNS, but the geoplant human
    footprint is the v2 product (:data:`HFP_V2_COLUMNS`)."""
    if layout == "geoplant" and family == "human_footprint":
        return HFP_V2_COLUMNS
    return ENV_COLUMNS[family]


def _env_tables(world: World, sites: Sites, rng: np.random.Generator,
                layout: LayoutName) -> dict[str, np.ndarray]:
    """Values of the five pre-extracted env CSV families (columns of :func:`_env_columns`)."""
    env, n = sites.env, len(sites)
    bio = render.bioclim(render.climatology(env)).astype(np.int64)
    elevation = np.round(env["elevation"], 1)
    elevation[rng.random(n) < 3e-4] = np.nan
    hfp = _hfp_v2_layers(env) if layout == "geoplant" else _hfp_layers(env)
    hfp[rng.random(hfp.shape) < 5e-5] = np.inf
    hfp[rng.random(hfp.shape) < 5e-5] = -np.inf
    soil = np.column_stack([env[f"soil_{v}"] for v in
                            ("bdod", "cec", "cfvo", "clay", "nitrogen", "phh2o", "sand", "silt",
                             "soc")])
    return {
        "bioclimatic": bio, "elevation": elevation[:, None], "human_footprint": hfp,
        "landcover": env["igbp"][:, None].astype(np.float64), "soilgrids": np.rint(soil),
    }


def _hfp_layers(env: dict[str, np.ndarray]) -> np.ndarray:
    """The 16 Venter human-footprint layers (0-10 pressure scores; HFP 0-50), in CSV order."""
    crop = np.isin(env["igbp"], (12, 14)) * 7.0
    pasture = np.isin(env["igbp"], (10,)) * 4.0
    pop = np.clip(3.333 * np.log10(env["popdensity"] + 1), 0, 10)
    rail = np.where(env["railways"] > 0.5, 8.0, 0.0)
    roads = np.round(8 * env["roads"], 3)
    layers = [
        env["built"] * 0.85, env["built"], crop * 0.95, crop, env["lights"] * 0.15,
        env["lights"] * 0.16, env["navwater"], env["navwater"], pasture, pasture, pop * 0.9, pop,
        rail, roads, env["hfp"] * 0.9, env["hfp"],
    ]
    return np.round(np.stack(layers, axis=-1).astype(np.float64), 3)


def _hfp_v2_layers(env: dict[str, np.ndarray]) -> np.ndarray:
    """The synthetic v2 human-footprint layers (:data:`HFP_V2_LAYERS`, 0-10; total 0-50)."""
    crop = np.isin(env["igbp"], (12, 14)) * 7.0
    pasture = np.isin(env["igbp"], (10,)) * 4.0
    layers = [env["built"], 8 * env["roads"], np.where(env["railways"] > 0.5, 8.0, 0.0),
              env["navwater"], crop, pasture, env["hfp"]]
    return np.round(np.stack(layers, axis=-1).astype(np.float64), 3)


def _frame(survey_id: np.ndarray, columns: tuple[str, ...], values: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(values, columns=list(columns))
    frame.insert(0, "surveyId", survey_id)
    return frame


_CLIMATE_COLUMNS: Final = tuple(
    f"Bio-{var}_{month:02d}_{year}"
    for year in CLIMATE_YEARS for month in CLIMATE_MONTHS for var in CLIMATE_VARIABLES
)
_LANDSAT_COLUMNS: Final = tuple(f"{y}_{q}" for y in LANDSAT_YEARS for q in LANDSAT_QUARTERS)


class _ReleaseWriter:
    def __init__(self, root: Path, layout: LayoutName, preset: Preset, seed: int,
                 progress: bool) -> None:
        self.root, self.layout, self.preset, self.seed = root, layout, preset, seed
        self.progress = progress
        self.sink = _Sink(root)
        self.world = World(seed, preset.n_species, preset.mean_richness)
        self.renderer = render.PatchRenderer(self.world.rng("patch-tiles"))
        self.coast = render.coast_nearby(self.world.grids["land"])
        self.year_anomaly = self.world.rng("year-anomaly").normal(0, 0.8, (len(CLIMATE_YEARS), 12))
        self.counts: dict[str, int] = {}
        self.pa_recorded = np.zeros(self.world.n_species, dtype=bool)  # species PA lists
        self.truth = root / "truth"
        self.truth.mkdir()

    # -- PA ----------------------------------------------------------------------------------
    def write_pa(self, po_survey_ids: np.ndarray) -> dict[str, np.ndarray]:
        rng, lon, lat, split = _pa_plan(self.world, self.preset, self.layout)
        survey_ids = self._pa_ids(rng, split, po_survey_ids)
        written = {}
        for name in SPLITS[self.layout]:
            if name == "po_train":
                continue
            idx = np.flatnonzero(split == name)
            idx = idx[np.argsort(survey_ids[idx])]
            self._write_pa_split(name, lon[idx], lat[idx], survey_ids[idx])
            written[name] = survey_ids[idx]
        return written

    def _pa_ids(self, rng: np.random.Generator, split: np.ndarray,
                po_ids: np.ndarray) -> np.ndarray:
        """PA surveyIds interleave with PO ones in one id space and never collide (as real)."""
        n = len(split)
        top = int(po_ids.max(initial=0)) + n + 1000
        taken = np.zeros(top + 1, dtype=bool)
        taken[po_ids] = True
        taken[:212] = True  # the real PA ids start at 212
        free = np.flatnonzero(~taken)
        ids = np.sort(rng.choice(free, n, replace=False)).astype(np.int64)
        ids = rng.permutation(ids)
        glc25 = split == "pa_test_glc25"  # GLC25 test ids start at 5,000,000
        ids[glc25] = 5_000_000 + np.arange(int(glc25.sum()))
        return ids

    def _write_pa_split(self, split: str, lon: np.ndarray, lat: np.ndarray,
                        survey_ids: np.ndarray) -> None:
        world, layout = self.world, self.layout
        n = len(survey_ids)
        self.counts[f"{split}_surveys"] = n
        is_test = split != "pa_train"
        fams = families(layout, split)
        if is_test:
            prob_out = np.lib.format.open_memmap(
                self.truth / f"{split}_probabilities.npy", mode="w+", dtype=np.float32,
                shape=(n, world.n_species))
            np.save(self.truth / f"{split}_survey_ids.npy", survey_ids)
        n_rows = 0
        blocks = range(0, n, BLOCK)
        for b, start in enumerate(tqdm(blocks, desc=f"{split} surveys", unit="block",
                                       disable=not self.progress)):
            sl = slice(start, min(start + BLOCK, n))
            rng = world.rng(split, b)
            sites = world.sites(rng, lon[sl], lat[sl])
            sid = survey_ids[sl]
            meta = _survey_attributes(rng, world, sites)
            meta["county"], meta["district"] = world.admin_of(sites.lon, sites.lat)
            meta["taxonRank"] = "SPECIES"
            prob = world.probabilities(sites, meta["areaInM2"].to_numpy())
            present = _draw_presences(rng, prob)
            self.pa_recorded |= present.any(axis=0)
            site_i, species_i = np.nonzero(present)
            if is_test:
                prob_out[sl] = prob
                meta.insert(len(meta.columns), "surveyId", sid)
                self.sink.csv(location(layout, "metadata.pa", split)).append(
                    meta[list(METADATA_COLUMNS[layout]["pa_test"])])
                truth_rows = pd.DataFrame({"surveyId": sid[site_i],
                                           "speciesId": world.species_ids[species_i]})
                self._truth_csv(f"{split}_presences.csv").append(truth_rows)
                self._truth_csv(f"{split}_hidden.csv").append(pd.DataFrame({
                    "surveyId": sid, "habitat": np.asarray(HABITATS)[sites.habitat],
                    "greenness": np.round(sites.greenness, 4),
                    "wetness": np.round(sites.wetness, 4),
                    "warming": np.round(sites.env["warming"], 4)}))
            else:
                rows = meta.iloc[site_i].reset_index(drop=True)
                rows["speciesId"] = world.species_ids[species_i].astype(np.float64)
                rows["surveyId"] = sid[site_i]
                self.sink.csv(location(layout, "metadata.pa", split)).append(
                    rows[list(METADATA_COLUMNS[layout]["pa"])])
            n_rows += len(site_i)
            self._write_predictors(split, fams, rng, sites, sid, meta["year"].to_numpy())
        self.counts[f"{split}_rows" if not is_test else f"{split}_presences"] = n_rows
        if is_test:
            prob_out.flush()
            del prob_out

    def _truth_csv(self, name: str) -> _CsvFile:
        return self.sink.csv(Location(f"truth/{name}"))

    def _write_predictors(self, split: str, fams: tuple[str, ...], rng: np.random.Generator,
                          sites: Sites, sid: np.ndarray, year: np.ndarray) -> None:
        layout, sink = self.layout, self.sink
        for family, values in _env_tables(self.world, sites, rng, layout).items():
            sink.csv(location(layout, f"env.{family}", split)).append(
                _frame(sid, _env_columns(layout, family), values))
        climate = render.climate_series(rng, sites, self.year_anomaly)
        sink.csv(location(layout, "climate.values", split)).append(
            _frame(sid, _CLIMATE_COLUMNS, climate.transpose(0, 2, 3, 1).reshape(len(sid), -1)
                   .astype(np.int64)))
        landsat = render.landsat_series(rng, sites, year)
        for b, band in enumerate(LANDSAT_BANDS):
            sink.csv(location(layout, "landsat.values", split, band=band)).append(
                _frame(sid, _LANDSAT_COLUMNS,
                       landsat[:, b].transpose(0, 2, 1).reshape(len(sid), -1).astype(np.float64)))
        for i, survey in enumerate(sid):
            for family, cube in (("climate.cube", climate[i]), ("landsat.cube", landsat[i])):
                sink.write_tensor(location(layout, family, split, survey_id=survey), cube)
        coarse = np.array([IGBP_TO_HABITAT.get(int(c), 2) for c in sites.env["igbp"]])
        coast = self.world.grid_values(sites.lon, sites.lat, "land", order=0) > 0
        coast &= self.coast[self._cell(sites)]
        for i, survey in enumerate(sid):
            scene = self.renderer.render(rng, int(sites.habitat[i]), int(coarse[i]),
                                         float(sites.greenness[i]), float(sites.wetness[i]),
                                         bool(coast[i]))
            if "s2.rgb" in fams:
                rgb = location(layout, "s2.rgb", split, survey_id=survey)
                nir = location(layout, "s2.nir", split, survey_id=survey)
                sink.write_bytes(rgb, _jpeg_bytes(scene[:3].transpose(1, 2, 0)))
                sink.write_bytes(nir, _jpeg_bytes(scene[3]))
            if "s2.tiff" in fams:
                sink.write_bytes(location(layout, "s2.tiff", split, survey_id=survey),
                                 self._patch_tiff(scene, sites.lon[i], sites.lat[i]))

    def _cell(self, sites: Sites) -> tuple[np.ndarray, np.ndarray]:
        from geoplant.synthetic.world import EXTENT, RESOLUTION

        rows = np.clip(((EXTENT[3] - sites.lat) / RESOLUTION).astype(int), 0,
                       self.world.shape[0] - 1)
        cols = np.clip(((sites.lon - EXTENT[0]) / RESOLUTION).astype(int), 0,
                       self.world.shape[1] - 1)
        return rows, cols

    def _patch_tiff(self, scene: np.ndarray, lon: float, lat: float) -> bytes:
        from pyproj import Transformer
        from rasterio.transform import from_origin

        if not hasattr(self, "_to_laea"):
            self._to_laea = Transformer.from_crs("EPSG:4326", "EPSG:3035", always_xy=True)
        x, y = self._to_laea.transform(lon, lat)
        x, y = round(x / 10) * 10, round(y / 10) * 10
        return _geotiff_bytes(
            render.scene_to_reflectance(render.downsample(scene)), crs="EPSG:3035",
            transform=from_origin(x - 320, y + 320, 10, 10), nodata=-1, compress="lzw",
            descriptions=("red", "green", "blue", "nir"))

    # -- PO ----------------------------------------------------------------------------------
    def po_survey_ids(self) -> np.ndarray:
        """Sorted PO surveyIds (1 ...), drawn first so PA ids can avoid them."""
        n_surveys = max(1, round(self.preset.n_po_rows / 1.32))
        rng = self.world.rng("po-ids")
        space = int(n_surveys * 1.02) + 10
        return np.sort(rng.choice(np.arange(1, space + 1), n_surveys, replace=False))

    def write_po(self, survey_ids: np.ndarray) -> None:
        world, layout, preset = self.world, self.layout, self.preset
        rng = world.rng("po-counts")
        n_surveys = len(survey_ids)
        extra = preset.n_po_rows - n_surveys
        weights = rng.lognormal(0, 1.6, n_surveys)
        counts = 1 + rng.multinomial(extra, weights / weights.sum())
        bias = world.po_effort()
        # Proposal x acceptance p / max_p: at a site, species s is recorded with a chance
        # proportional to detectability_s x p_s(site).
        proposal = world.detectability * world.max_probability
        proposal = proposal / proposal.sum()
        publishers = np.array([p for p, _ in _PUBLISHERS], dtype=object)
        pub_p = np.array([w for _, w in _PUBLISHERS])
        fams = families(layout, "po_train")
        # Chunks of equal size (at most PO_CHUNK), so the last one is never a small remainder.
        bounds = np.linspace(0, n_surveys, -(-n_surveys // PO_CHUNK) + 1).astype(np.int64)
        recorded = np.zeros(world.n_species, dtype=np.int64)
        for c, (start, stop) in enumerate(tqdm(list(itertools.pairwise(bounds)),
                                               desc="po_train records", unit="chunk",
                                               disable=not self.progress)):
            sl = slice(int(start), int(stop))
            crng = world.rng("po", c)
            n = sl.stop - sl.start
            lon, lat = world.random_land_points(crng, n, bias)
            sites = world.sites(crng, lon, lat)
            per_survey = counts[sl]
            site_of = np.repeat(np.arange(n), per_survey)
            species = self._po_species(crng, sites, site_of, proposal)
            recorded += np.bincount(species, minlength=world.n_species)
            if stop == n_surveys:
                self._record_pa_species(sites, site_of, species, recorded)
            unc = np.round(np.clip(crng.lognormal(np.log(12), 1.3, n), 1, 50_000), 1)
            # Reported coordinates are off by about the stated uncertainty.
            jitter = crng.normal(0, 1, (2, n)) * unc / 111_320
            rlat = np.round(lat + jitter[0], 5)
            rlon = np.round(lon + jitter[1] / np.cos(np.radians(lat)), 5)
            year = crng.integers(2017, 2022, n)
            doy = np.clip(np.rint(crng.normal(165, 55, n)), 1, 365).astype(np.int64)
            dates = pd.to_datetime(year.astype(str), format="%Y") + pd.to_timedelta(doy - 1, "D")
            survey = pd.DataFrame({
                "publisher": crng.choice(publishers, n, p=pub_p), "year": year,
                "month": dates.month.astype(np.float64), "day": dates.day.astype(np.float64),
                "lat": rlat, "lon": rlon, "geoUncertaintyInM": unc, "taxonRank": "SPECIES",
                "date": dates.strftime("%Y-%m-%d"), "dayOfYear": dates.day_of_year,
                "region": world.region_of(sites), "district": world.admin_of(rlon, rlat)[1],
            })
            rows = survey.iloc[site_of].reset_index(drop=True)
            rows["speciesId"] = world.species_ids[species].astype(np.float64)
            rows["surveyId"] = survey_ids[sl][site_of]
            self.sink.csv(location(layout, "metadata.po")).append(
                rows[list(METADATA_COLUMNS[layout]["po"])])
            if len(fams) > 1:  # geoplant layout: PO env values too
                for family, values in _env_tables(world, sites, crng, layout).items():
                    if f"env.{family}" in fams:
                        self.sink.csv(location(layout, f"env.{family}", "po_train")).append(
                            _frame(survey_ids[sl], _env_columns(layout, family), values))
            if "landsat.cube" in fams:  # geoplant layout: PO time-series cubes too
                self._write_po_cubes(c, sites, survey_ids[sl], year)
        self.counts["po_train_rows"] = int(preset.n_po_rows)
        self.counts["po_train_surveys"] = int(n_surveys)

    def _write_po_cubes(self, chunk: int, sites: Sites, survey_ids: np.ndarray,
                        year: np.ndarray) -> None:
        """Landsat and bioclimatic cubes of one PO chunk's surveys, as a PA site's.

        Only every :data:`PO_CUBE_EVERY`-th survey of the chunk (positions 0, k, 2k, ...) gets
        cubes, as the real release may lack some; the others have none. The cubes come from
        their own generator (``"po-cubes"``, chunk), so every other file is as without them,
        and are rendered :data:`BLOCK` sites at a time (memory bounded per block).
        """
        rng = self.world.rng("po-cubes", chunk)
        keep = np.arange(0, len(survey_ids), PO_CUBE_EVERY)
        for start in range(0, len(keep), BLOCK):
            idx = keep[start : start + BLOCK]
            block = sites.take(idx)
            climate = render.climate_series(rng, block, self.year_anomaly)
            landsat = render.landsat_series(rng, block, year[idx])
            for i, survey in enumerate(survey_ids[idx]):
                for family, cube in (("climate.cube", climate[i]), ("landsat.cube", landsat[i])):
                    self.sink.write_tensor(
                        location(self.layout, family, "po_train", survey_id=survey), cube)

    def _record_pa_species(self, sites: Sites, site_of: np.ndarray, species: np.ndarray,
                           recorded: np.ndarray) -> None:
        """Give every species PA lists at least one PO record (PO's species contain PA's, as in
        the real release): a PA species PO's draw missed (a low-detectability species of a
        small world) takes over one record, at the chunk's site where it is likeliest, from a
        species recorded more than once. Updates ``species`` and ``recorded`` in place."""
        world = self.world
        missing = np.flatnonzero(self.pa_recorded & (recorded == 0))
        if missing.size == 0:
            return
        p = world.niche_logits(sites, missing) + world.intercept[missing]  # order = p order
        for j, m in enumerate(missing.tolist()):
            spare = np.flatnonzero(recorded[species] > 1)
            if spare.size == 0:
                break
            pick = spare[np.argmax(p[site_of[spare], j])]
            recorded[species[pick]] -= 1
            species[pick] = m
            recorded[m] += 1

    def _po_species(self, rng: np.random.Generator, sites: Sites, site_of: np.ndarray,
                    proposal: np.ndarray) -> np.ndarray:
        """Species of PO records: observers record detectable species where they occur.

        Rejection sampling: propose from detectability x maximum probability, accept with the
        true probability at the site over the species' maximum probability; records still
        rejected after many rounds take their site's likeliest record (detectability x p).
        """
        world = self.world
        n = len(site_of)
        species = np.empty(n, dtype=np.int64)
        todo = np.arange(n)
        for _ in range(80):
            proposed = rng.choice(world.n_species, len(todo), p=proposal)
            site = site_of[todo]
            p = world.pair_probabilities(sites, site, proposed)
            accept = rng.random(len(todo)) * world.max_probability[proposed] < p
            species[todo[accept]] = proposed[accept]
            todo = todo[~accept]
            if todo.size == 0:
                break
        if todo.size:
            left, where = np.unique(site_of[todo], return_inverse=True)
            weight = world.probabilities(sites.take(left)) * world.detectability
            species[todo] = np.argmax(weight, axis=1)[where]
        return species

    # -- rasters, submission, truth ------------------------------------------------------------
    def write_rasters(self) -> None:
        from rasterio.transform import from_origin

        from geoplant.layouts import raster_names
        from geoplant.synthetic.world import EXTENT, RESOLUTION

        world, g = self.world, self.world.grids
        land = g["land"] > 0
        transform = from_origin(EXTENT[0], EXTENT[3], RESOLUTION, RESOLUTION)
        bio = render.bioclim(render.climatology(g))
        hfp = _hfp_layers(g)
        hfp_names = ("Built1994", "Built2009", "Croplands1992", "Croplands2005", "Lights1994",
                     "Lights2009", "Navwater1994", "Navwater2009", "Pasture1993", "Pasture2009",
                     "Popdensity1990", "Popdensity2010", "Railways", "Roads", "HFP1993",
                     "HFP2009")
        layers: dict[str, tuple[np.ndarray, float | None]] = {}
        for i in range(19):
            layers[f"bio{i + 1}"] = (np.where(land, bio[..., i], -32768).astype(np.int32),
                                     -32768)
        layers["elevation"] = (np.where(land, np.rint(g["elevation"]), -9999).astype(np.int16),
                               -9999)
        for i, name in enumerate(hfp_names):
            layers[f"hfp_{name}"] = (np.where(land, hfp[..., i], -1).astype(np.float32), -1)
        for v in ("bdod", "cec", "cfvo", "clay", "nitrogen", "phh2o", "sand", "silt", "soc"):
            layers[f"soil_{v}"] = (np.where(land, np.rint(g[f"soil_{v}"]), -32768)
                                   .astype(np.int16), -32768)
        v2 = FOOTPRINT_V2_ARCHIVE[self.layout]
        names = [n for n in raster_names(self.layout)
                 if v2 is None or not n.startswith(FOOTPRINT_PREFIX)]
        for name in names:
            loc = location(self.layout, f"raster.{name}")
            if name == "landcover":
                data = self._landcover_bands()
                blob = _geotiff_bytes(data, crs="EPSG:4326", transform=transform, nodata=255,
                                      descriptions=_landcover_descriptions())
            else:
                array, nodata = layers[name]
                blob = _geotiff_bytes(array[None], crs="EPSG:4326", transform=transform,
                                      nodata=nodata)
            self.sink.write_bytes(loc, blob)
        if v2 is not None:  # the default download has the v2 human footprint only
            layers_v2 = _hfp_v2_layers(g)
            for i, layer in enumerate(HFP_V2_LAYERS):
                array = np.where(land, layers_v2[..., i], -1).astype(np.float32)
                self.sink.write_bytes(
                    Location(v2, f"OSM_{layer}.tif"),
                    _geotiff_bytes(array[None], crs="EPSG:4326", transform=transform, nodata=-1),
                    compress=True)
            names += [f"{FOOTPRINT_PREFIX}OSM_{layer}" for layer in HFP_V2_LAYERS]
        if self.layout == "geoplant":
            self._write_bioregions(transform)
        self.counts["rasters"] = len(names)
        del world

    def _landcover_bands(self) -> np.ndarray:
        from geoplant.layouts import LANDCOVER_BANDS

        g = self.world.grids
        igbp = g["igbp"].astype(np.uint8)
        land = g["land"] > 0
        bands = np.zeros((len(LANDCOVER_BANDS), *igbp.shape), dtype=np.uint8)
        bands[0] = igbp
        bands[1:5] = np.where(igbp == 17, 0, igbp)  # other schemes: same classes here
        bands[5:8] = np.clip(igbp, 1, 16)
        bands[8:11] = 80
        bands[11] = 0  # QC: good
        bands[12] = np.where(land, 1, 2)  # land/water mask
        return bands

    def _write_bioregions(self, transform: Any) -> None:
        from rasterio import features

        g = self.world.grids
        lon2, lat2 = np.meshgrid(self.world.lons, self.world.lats)
        grid_sites = Sites(lon2.ravel(), lat2.ravel(), {k: v.ravel() for k, v in g.items()},
                           np.zeros(lon2.size, np.int8), np.zeros(lon2.size),
                           np.zeros(lon2.size), np.zeros((lon2.size, 1)))
        names = self.world.region_of(grid_sites).reshape(lon2.shape)
        codes = np.zeros(lon2.shape, dtype=np.int32)
        for i, name in enumerate(REGIONS, start=1):
            codes[names == name] = i
        codes[g["land"] <= 0] = 0
        feats = [
            {"type": "Feature", "geometry": geom,
             "properties": {"code": REGIONS[int(value) - 1][:3], "name": REGIONS[int(value) - 1]}}
            for geom, value in features.shapes(codes, mask=codes > 0, transform=transform)
        ]
        doc = {"type": "FeatureCollection", "name": "Bioregions-Europe-2016-v1",
               "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
               "features": feats}
        self.sink.write_bytes(
            Location("GeoPlantData/EnvironmentalRasters/BiogeographicalRegions/"
                     "Bioregions-Europe-2016-v1.geojson"),
            json.dumps(doc, separators=(",", ":")).encode())

    def write_sample_submission(self, test_ids: np.ndarray) -> None:
        rng = self.world.rng("sample-submission")
        frequent = self.world.species_ids[np.argsort(-self.world.prevalence)]
        lengths = rng.integers(1, 31, len(test_ids))
        predictions = [" ".join(map(str, np.sort(frequent[:k]))) for k in lengths]
        self.sink.write_bytes(
            location(self.layout, "sample_submission"),
            pd.DataFrame({"surveyId": test_ids, "predictions": predictions})
            .to_csv(index=False, lineterminator="\n").encode())

    def write_truth(self, test_splits: dict[str, np.ndarray]) -> None:
        world = self.world
        species = pd.DataFrame({
            "speciesId": world.species_ids, "prevalence": world.prevalence,
            "detectability": world.detectability, "intercept": world.intercept,
            "gap_species": world.gap_species.astype(np.int8),
        })
        species.to_csv(self.truth / "species.csv", index=False, lineterminator="\n")
        from geoplant.synthetic.maps import synthetic_status_table  # reads species.csv

        synthetic_status_table(self.truth).to_csv(self.truth / "status.csv", index=False,
                                                  lineterminator="\n")
        for split in test_splits:
            presences = pd.read_csv(self.truth / f"{split}_presences.csv")
            grouped = presences.groupby("surveyId")["speciesId"].apply(
                lambda s: " ".join(map(str, s)))
            pd.DataFrame({"surveyId": grouped.index, "predictions": grouped.to_numpy()}).to_csv(
                self.truth / f"{split}_solution.csv", index=False, lineterminator="\n")
        params = {
            "generator": f"geoplant {__version__}", "layout": self.layout,
            "preset": self.preset.__dict__, "counts": self.counts,
            "test_splits": list(test_splits), **world.parameters(),
        }
        (self.truth / "parameters.json").write_text(json.dumps(params, indent=1) + "\n")
        (self.truth / "README.md").write_text(_TRUTH_README)


def _landcover_descriptions() -> tuple[str, ...]:
    from geoplant.layouts import LANDCOVER_BANDS

    return tuple(LANDCOVER_BANDS)


_TRUTH_README = """\
# Truth of a synthetic GeoPlant release (not part of the real data)

Written by `geoplant sample`. For every PA test split `<split>`:

- `<split>_survey_ids.npy`: surveyIds (int64), the row order of the probability matrix;
- `<split>_probabilities.npy`: float32 (n_surveys, n_species) true occurrence probabilities,
  columns in the order of `species.csv`;
- `<split>_presences.csv`: surveyId,speciesId: the drawn presences (the withheld labels);
- `<split>_solution.csv`: the same as a Kaggle solution file (surveyId,predictions);
- `<split>_hidden.csv`: the hidden local habitat, greenness, wetness and warming trend per
  survey (what only the satellite and climate series reveal).

How the release was drawn (the design keeps the real release's proportions): PA surveys
(vegetation-archive plots) come in clusters whose centres follow a smooth archive-coverage
field, absent from 30% of the land; PO records (~3.4 x the PA train rows) come from observers
drawn to towns and roads (`(hfp/50)^1.5 + 0.3*roads + 0.01`), more so where the archive
coverage is low (x `0.3 + 2.7*(1 - coverage)`), each recording a species with a chance
proportional to its detectability x its true probability there. Half of the species are
*gap species*: each lives in a compact range centred deep in an archive gap
(`parameters.json` -> `species[].range`; the probability model gains `-0.5*(d/radius)^2`), so
PA rarely or never records it and PO does: PO lists about twice as many species as PA, and
every species PA lists has at least one PO record.

`species.csv` lists every species of the world (`gap_species`: 1 for a gap species;
`prevalence`: mean true probability over PA-like sites); `status.csv` (speciesId,status)
gives each a conservation status for the map indicators (rarity standing in for threat: the
rarest 5% CR, 10% EN, 15% VU, 10% NT, the rest LC); `parameters.json` holds the generator's
parameters (seed, preset, niches, ranges, the survey design, the probability model) and the
counts written. `maps/` (written on demand by `geoplant evaluate MAPS --truth ...`) holds
the true probability maps.
"""


# ---------------------------------------------------------------------------------------------


def _prepare_output(out: Path, overwrite: bool) -> Path:
    """Check ``out`` and return a fresh staging folder beside it."""
    if out.exists() and not out.is_dir():
        raise GeoplantError("exists and is not a folder", path=out,
                            fix="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GeoplantError("folder is not empty", path=out,
                            fix="choose an empty --out or pass --overwrite")
    staging = out.parent / f".{out.name}.partial"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        probe = staging / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise GeoplantError(f"cannot write here ({err.strerror or err})", path=out,
                            fix="choose a writable --out") from None
    return staging


def write_release(
    out: str | os.PathLike[str],
    *,
    layout: str = "glc24",
    preset: str = "tiny",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> ReleaseSummary:
    """Write a synthetic GeoPlant release in a real raw layout, with its truth in ``out/truth``.

    Parameters
    ----------
    out
        Folder to create. Must be absent or empty unless ``overwrite``.
    layout
        ``"glc24"`` (Kaggle GeoLifeCLEF 2024 tree + Seafile raster zips) or ``"geoplant"``
        (the 2026 GeoPlant structure).
    preset
        A key of :data:`geoplant.synthetic.world.PRESETS`: ``"tiny"`` (1k PA surveys, 200
        species, 26k PO rows; CI), ``"demo"`` (1.25k PA train + 2.5k test surveys, 120 species,
        31k PO rows; ``geoplant demo``), ``"small"`` (10k surveys, 1,000 species, 375k PO rows)
        or ``"large"`` (the real sizes: 93,703 PA surveys, 5,079,797 PO rows, 10,032
        species). PO rows are ~3.4 x the PA train rows and PA records about half the
        species, as in the real release.
    seed
        The same seed gives byte-identical files.
    overwrite
        Replace a non-empty ``out``.
    progress
        Show progress bars.

    Returns
    -------
    ReleaseSummary
    """
    layout_name = check_layout(layout)
    size = _preset(preset)
    if seed < 0:
        raise GeoplantError(f"seed must be >= 0, got {seed}", fix="pass a non-negative --seed")
    target = Path(out).expanduser().absolute()
    staging = _prepare_output(target, overwrite)
    try:
        writer = _ReleaseWriter(staging, layout_name, size, seed, progress)
        po_ids = writer.po_survey_ids()
        pa = writer.write_pa(po_ids)
        writer.write_po(po_ids)
        writer.write_rasters()
        tests = {k: v for k, v in pa.items() if k != "pa_train"}
        if layout_name == "glc24":
            writer.write_sample_submission(tests["pa_test"])
        writer.sink.close()
        writer.write_truth(tests)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    files = [p for p in target.rglob("*") if p.is_file()]
    return ReleaseSummary(target, layout_name, preset, seed, writer.counts,
                          writer.world.n_species, len(files), sum(p.stat().st_size for p in files))


def iter_release_files(root: Path) -> Iterator[Path]:
    """Files of a release, sorted (for checksums and comparisons)."""
    yield from sorted(p for p in Path(root).rglob("*") if p.is_file())
