"""Where every raw file family lives in each published GeoPlant layout: the one alias table.

Two layouts are supported (see ``../shared/geoplant-format.md`` for the facts and sources):

``glc24``
    The Kaggle competition ``geolifeclef-2024`` tree after unzip (K24), plus the environmental
    raster zips of the 2024 Seafile mirror (S24) at their Seafile paths.
``geoplant``
    The 2026 GeoPlant restructure (G26) under ``GeoPlantData/``. Inner names of its zips are
    not verified; where the spec marks a detail unverified we follow its stated assumption
    (same columns as K24, GLC25-style patch folders, ``<surveyId>_cube.pt`` cube names).

A *location* is a path relative to the release root; a member of a zip archive is written
``"archive.zip::member/path"``. Writers (``geoplant.sample``) and readers (``geoplant.raw``)
both resolve names here, so a layout difference is fixed in exactly one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

LayoutName = Literal["glc24", "geoplant"]
LAYOUTS: Final[tuple[LayoutName, ...]] = ("glc24", "geoplant")

#: Landsat band order of the cubes (axis 0) and the per-band CSV suffixes.
LANDSAT_BANDS: Final = ("red", "green", "blue", "nir", "swir1", "swir2")
LANDSAT_YEARS: Final = tuple(range(2000, 2021))
LANDSAT_QUARTERS: Final = (1, 2, 3, 4)
#: Climate cube variable order (axis 0), years (axis 1), months (axis 2).
CLIMATE_VARIABLES: Final = ("pr", "tas", "tasmax", "tasmin")
CLIMATE_YEARS: Final = tuple(range(2000, 2019))
CLIMATE_MONTHS: Final = tuple(range(1, 13))

#: Pre-extracted environmental value CSVs: family -> value columns after ``surveyId``.
ENV_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "bioclimatic": tuple(f"Bio{i}" for i in range(1, 20)),
    "elevation": ("Elevation",),
    "human_footprint": tuple(
        f"HumanFootprint-{name}"
        for name in (
            "Built1994", "Built2009", "croplands1992", "croplands2005", "Lights1994",
            "Lights2009", "NavWater1994", "NavWater2009", "Pasture1993", "Pasture2009",
            "Popdensity1990", "Popdensity2010", "Railways", "Roads", "HFP1993", "HFP2009",
        )
    ),
    "landcover": ("LandCover",),
    "soilgrids": tuple(
        f"Soilgrid-{v}"
        for v in ("bdod", "cec", "cfvo", "clay", "nitrogen", "phh2o", "sand", "silt", "soc")
    ),
}

#: Metadata CSV columns, in file order.
PA_TRAIN_COLUMNS: Final = (
    "lon", "lat", "year", "geoUncertaintyInM", "areaInM2", "region", "country", "speciesId",
    "surveyId",
)
PA_TEST_COLUMNS: Final = tuple(c for c in PA_TRAIN_COLUMNS if c != "speciesId")
PO_COLUMNS: Final = (
    "publisher", "year", "month", "day", "lat", "lon", "geoUncertaintyInM", "taxonRank", "date",
    "dayOfYear", "speciesId", "surveyId",
)
SUBMISSION_COLUMNS: Final = ("surveyId", "predictions")

#: Splits of each layout. ``po_train`` carries presence-only records, the others PA surveys.
SPLITS: Final[dict[LayoutName, tuple[str, ...]]] = {
    "glc24": ("po_train", "pa_train", "pa_test"),
    "geoplant": ("po_train", "pa_train", "pa_test_iid", "pa_test_ood", "pa_test_glc25"),
}

# Name tokens of each split, as they appear in the file names of each layout:
#   H = hyphenated stem, T = title-case stem (patch folders), L = lower stem (patch sub-folders),
#   M = metadata suffix, S = stem of the Landsat cube file names (differs between train and test
#   in K24, a real quirk), J = G26 JPEG archive stem.
_TOKENS: Final[dict[LayoutName, dict[str, dict[str, str]]]] = {
    "glc24": {
        "po_train": {"H": "PO-train", "T": "PO_Train", "L": "po_train", "M": "train"},
        "pa_train": {"H": "PA-train", "T": "PA_Train", "L": "pa_train", "M": "train",
                     "S": "landsat-time-series"},
        "pa_test": {"H": "PA-test", "T": "PA_Test", "L": "pa_test", "M": "test",
                    "S": "landsat_time_series"},
    },
    "geoplant": {
        "po_train": {"H": "PO-train", "T": "PO-Train", "M": "train"},
        "pa_train": {"H": "PA-train", "T": "PA-Train", "M": "train",
                     "J": "PA-Train-Sentinel2Patches-RGB+NIR"},
        "pa_test_iid": {"H": "PA-test-iid", "T": "PA-Test-IID", "M": "test_iid",
                        "J": "PA-Test-IID-Sentinel2Patches"},
        "pa_test_ood": {"H": "PA-test-ood", "T": "PA-Test-OOD", "M": "test_ood"},
        "pa_test_glc25": {"H": "PA-test-glc25", "T": "PA-Test-GLC25", "M": "test_glc25"},
    },
}

# Template fields that vary within a split's family: one file per survey or per band.
_PER_ITEM_FIELDS: Final = ("{cd}", "{sid}", "{band}")

_K24_ENV = "EnvironmentalRasters/EnvironmentalRasters"
_G26 = "GeoPlantData"

# family -> template. Placeholders: split tokens above, {sid} surveyId, {cd}/{ab} patch folders,
# {band} Landsat band. Families missing from a layout do not exist in it.
_TEMPLATES: Final[dict[LayoutName, dict[str, str]]] = {
    "glc24": {
        "metadata.po": "GLC24_P0_metadata_train.csv",
        "metadata.pa": "GLC24_PA_metadata_{M}.csv",
        "sample_submission": "GLC24_SAMPLE_SUBMISSION.csv",
        "env.bioclimatic": _K24_ENV + "/Climate/Average 1981-2010/GLC24-{H}-bioclimatic.csv",
        "env.elevation": _K24_ENV + "/Elevation/GLC24-{H}-elevation.csv",
        "env.human_footprint": _K24_ENV + "/Human Footprint/GLC24-{H}-human_footprint.csv",
        "env.landcover": _K24_ENV + "/LandCover/GLC24-{H}-landcover.csv",
        "env.soilgrids": _K24_ENV + "/SoilGrids/GLC24-{H}-soilgrids.csv",
        "climate.values": _K24_ENV + "/Climate/Monthly/GLC24-{H}-bioclimatic_monthly.csv",
        "landsat.values": "{H}-landsat_time_series/GLC24-{H}-landsat_time_series-{band}.csv",
        "climate.cube": "TimeSeries-Cubes/TimeSeries-Cubes/GLC24-{H}-bioclimatic_monthly/"
        "GLC24-{H}-bioclimatic_monthly_{sid}_cube.pt",
        "landsat.cube": "TimeSeries-Cubes/TimeSeries-Cubes/GLC24-{H}-landsat_time_series/"
        "GLC24-{H}-{S}_{sid}_cube.pt",
        "s2.rgb": "{T}_SatellitePatches_RGB/{L}_patches_rgb/{cd}/{ab}/{sid}.jpeg",
        "s2.nir": "{T}_SatellitePatches_NIR/{L}_patches_nir/{cd}/{ab}/{sid}.jpeg",
    },
    "geoplant": {
        "metadata.po": _G26 + "/PresenceOnlyOccurrences/PO_metadata_train.csv",
        "metadata.pa": _G26 + "/PresenceAbsenceSurveys/PA_metadata_{M}.csv",
        "env.bioclimatic": _G26 + "/EnvironmentalValues/Climate/{H}-bioclimatic.csv",
        "env.elevation": _G26 + "/EnvironmentalValues/Elevation/{H}-elevation.csv",
        "env.human_footprint": _G26
        + "/EnvironmentalValues/HumanFootprint/v2/{H}-human_footprint.csv",
        "env.landcover": _G26 + "/EnvironmentalValues/LandCover/{H}-landcover.csv",
        "env.soilgrids": _G26 + "/EnvironmentalValues/SoilGrids/v2/{H}-soilgrids.csv",
        "climate.values": _G26 + "/TimeSeries/Bioclim/values/{H}-bioclimatic_time_series.zip"
        "::{H}-bioclimatic_monthly.csv",
        "landsat.values": _G26 + "/TimeSeries/Landsat/values/{H}-landsat_time_series.zip"
        "::{H}-landsat_time_series-{band}.csv",
        "climate.cube": _G26 + "/TimeSeries/Bioclim/cubes/{H}-bioclimatic-monthly.zip"
        "::{H}-bioclimatic_monthly/{sid}_cube.pt",
        "landsat.cube": _G26 + "/TimeSeries/Landsat/cubes/{H}-landsat-time-series.zip"
        "::{H}-landsat_time_series/{sid}_cube.pt",
        "s2.rgb": _G26 + "/SatelliteData/Sentinel2Patches-jpeg/{J}.zip"
        "::{T}-Sentinel2Patches-RGB/{cd}/{ab}/{sid}.jpeg",
        "s2.nir": _G26 + "/SatelliteData/Sentinel2Patches-jpeg/{J}.zip"
        "::{T}-Sentinel2Patches-NIR/{cd}/{ab}/{sid}.jpeg",
        "s2.tiff": _G26 + "/SatelliteData/Sentinel2Patches-tiff/{T}-Sentinel2Patches.zip"
        "::{T}/{cd}/{ab}/{sid}.tiff",
    },
}

#: Which families each split has (PO predictors exist only on Seafile, not synthesised).
_PA_FAMILIES: Final = (
    "env.bioclimatic", "env.elevation", "env.human_footprint", "env.landcover", "env.soilgrids",
    "climate.values", "landsat.values", "climate.cube", "landsat.cube",
)
_AVAILABLE: Final[dict[LayoutName, dict[str, tuple[str, ...]]]] = {
    "glc24": {
        "po_train": ("metadata.po",),
        "pa_train": ("metadata.pa", *_PA_FAMILIES, "s2.rgb", "s2.nir"),
        "pa_test": ("metadata.pa", *_PA_FAMILIES, "s2.rgb", "s2.nir"),
    },
    "geoplant": {
        "po_train": ("metadata.po", *[f for f in _PA_FAMILIES if f.startswith("env.")]),
        "pa_train": ("metadata.pa", *_PA_FAMILIES, "s2.rgb", "s2.nir", "s2.tiff"),
        "pa_test_iid": ("metadata.pa", *_PA_FAMILIES, "s2.rgb", "s2.nir", "s2.tiff"),
        "pa_test_ood": ("metadata.pa", *_PA_FAMILIES, "s2.tiff"),
        "pa_test_glc25": ("metadata.pa", *_PA_FAMILIES, "s2.tiff"),
    },
}

#: Gridded environmental rasters: (archive or file, member or "") per raster group.
#: glc24 uses the S24 Seafile zips; geoplant the G26 paths. GeoTIFFs, EPSG:4326.
BIOCLIM_RASTERS: Final = tuple(f"bio{i}" for i in range(1, 20))
SOIL_VARIABLES: Final = ("bdod", "cec", "cfvo", "clay", "nitrogen", "phh2o", "sand", "silt", "soc")
HFP_DETAILED: Final = (
    "Built1994", "Built2009", "Croplands1992", "Croplands2005", "Lights1994", "Lights2009",
    "Navwater1994", "Navwater2009", "Pasture1993", "Pasture2009", "Popdensity1990",
    "Popdensity2010", "Railways", "Roads",
)
HFP_SUMMARIZED: Final = ("HFP1993", "HFP2009")
LANDCOVER_BANDS: Final = (
    "LC_Type1", "LC_Type2", "LC_Type3", "LC_Type4", "LC_Type5", "LC_Prop1", "LC_Prop2",
    "LC_Prop3", "LC_Prop1_Assessment", "LC_Prop2_Assessment", "LC_Prop3_Assessment", "QC",
    "LW",
)


def _raster_members(layout: LayoutName) -> dict[str, str]:
    if layout == "glc24":
        climate = "EnvironmentalRasters/Climate.zip::Climate/BioClimatic_Average_1981-2010/"
        hfp = "EnvironmentalRasters/HumanFootprint.zip::HumanFootprint/"
        soil = "EnvironmentalRasters/Soilgrids.zip::Soilgrids/"
        out = {
            "elevation": "EnvironmentalRasters/Elevation.zip::Elevation/ASTER_Elevation.tif",
            "landcover": "EnvironmentalRasters/LandCover.zip::LandCover/"
            "LandCover_MODIS_Terra-Aqua_500m.tif",
        }
    else:
        climate = _G26 + "/EnvironmentalRasters/Climate/BioClimatic_Average_1981-2010.zip::"
        hfp = _G26 + "/EnvironmentalRasters/HumanFootprint/v1/detailed.zip::"
        soil = _G26 + "/EnvironmentalRasters/Soilgrids/soilgrids.zip::"
        out = {
            "elevation": _G26 + "/EnvironmentalRasters/Elevation/ASTER_Elevation.tif",
            "landcover": _G26
            + "/EnvironmentalRasters/LandCover/LandCover_MODIS_Terra-Aqua_500m.tif",
        }
    out |= {b: f"{climate}{b}.tif" for b in BIOCLIM_RASTERS}
    out |= {f"soil_{v}": f"{soil}crop_proj_{v}_5-15cm_mean_1000.tif" for v in SOIL_VARIABLES}
    if layout == "glc24":
        out |= {f"hfp_{n}": f"{hfp}detailed/{n}_WGS84.tif" for n in HFP_DETAILED}
        out |= {f"hfp_{n}": f"{hfp}summarized/{n}_WGS84.tif" for n in HFP_SUMMARIZED}
    else:
        out |= {f"hfp_{n}": f"{hfp}{n}_WGS84.tif" for n in HFP_DETAILED}
        summarized = _G26 + "/EnvironmentalRasters/HumanFootprint/v1/summarized.zip::"
        out |= {f"hfp_{n}": f"{summarized}{n}_WGS84.tif" for n in HFP_SUMMARIZED}
    return out


@dataclass(frozen=True)
class Location:
    """A file of a raw release: ``path`` relative to the root, ``member`` inside a zip or None."""

    path: str
    member: str | None = None

    def __str__(self) -> str:
        return self.path if self.member is None else f"{self.path}::{self.member}"


def parse_location(text: str) -> Location:
    """Parse ``"a.zip::member"`` or ``"plain/path"`` into a :class:`Location`."""
    path, sep, member = text.partition("::")
    return Location(path, member if sep else None)


def patch_folders(survey_id: int) -> tuple[str, str]:
    """Return the two nested patch folders of a survey: last 2 digits, then the 2 before.

    1322301 -> ("01", "23"). Short ids are sliced from the decimal string as the official
    code does ("642" -> ("42", "6")); readers also accept the zero-padded variant.
    """
    text = str(int(survey_id))
    return text[-2:], text[-4:-2]


def check_layout(layout: str) -> LayoutName:
    """Validate a layout name."""
    if layout not in LAYOUTS:
        from geoplant.errors import GeoplantError

        raise GeoplantError(
            f"unknown layout {layout!r}", fix=f"use one of: {', '.join(LAYOUTS)}"
        )
    return layout  # type: ignore[return-value]


def families(layout: LayoutName, split: str) -> tuple[str, ...]:
    """The file families a split has in a layout."""
    return _AVAILABLE[layout][split]


def location(
    layout: LayoutName,
    family: str,
    split: str | None = None,
    *,
    survey_id: int | None = None,
    band: str | None = None,
) -> Location:
    """Resolve where a file family lives.

    Parameters
    ----------
    layout
        ``"glc24"`` or ``"geoplant"``.
    family
        e.g. ``"metadata.pa"``, ``"env.soilgrids"``, ``"landsat.cube"``, ``"s2.rgb"``,
        ``"sample_submission"``, or ``"raster.<name>"`` (see :func:`raster_names`).
    split
        A split of :data:`SPLITS` (not needed for rasters and the sample submission).
    survey_id
        For per-survey files (cubes, patches).
    band
        Landsat band for ``"landsat.values"``.
    """
    if family.startswith("raster."):
        return parse_location(_raster_members(layout)[family.removeprefix("raster.")])
    template = _TEMPLATES[layout].get(family)
    if template is None or (split is not None and family not in _AVAILABLE[layout][split]
                            and family != "sample_submission"):
        raise KeyError(f"{family!r} does not exist for split {split!r} in layout {layout!r}")
    fields: dict[str, object] = dict(_TOKENS[layout][split]) if split else {}
    if survey_id is not None:
        fields["sid"] = int(survey_id)
        fields["cd"], fields["ab"] = patch_folders(survey_id)
    if band is not None:
        fields["band"] = band
    return parse_location(template.format(**fields))


def source_path(layout: LayoutName, family: str, split: str) -> str:
    """Where a split's files of a family are, relative to the release root.

    Parameters
    ----------
    layout
        ``"glc24"`` or ``"geoplant"``.
    family
        A family the split has (see :func:`families`).
    split
        A split of :data:`SPLITS`.

    Returns
    -------
    str
        The file itself or the zip archive holding it; for a family of one file per survey
        (cubes, patches) or per band, the zip archive or the folder that holds them all.

    Raises
    ------
    KeyError
        If the split has no such family in the layout.
    """
    if family not in _AVAILABLE[layout][split]:
        raise KeyError(f"{family!r} does not exist for split {split!r} in layout {layout!r}")
    template = _TEMPLATES[layout][family]
    path, zipped, _ = template.partition("::")
    cuts = [template.find(f) for f in _PER_ITEM_FIELDS if f in template]
    if cuts and not zipped:  # loose per-item files: the folder above the first varying part
        path = template[: min(cuts)].rpartition("/")[0]
    return path.format(**_TOKENS[layout][split])


def source_paths(layout: LayoutName, splits: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The distinct sources of some families of some splits: files, folders or zip archives.

    Parameters
    ----------
    layout
        ``"glc24"`` or ``"geoplant"``.
    splits
        Splits of :data:`SPLITS`.
    wanted
        Families to list; those a split does not have are skipped.

    Returns
    -------
    list of str
        Paths relative to the release root (see :func:`source_path`), ordered by family then
        split; a source shared by several families or splits (an archive) is listed once.
    """
    wanted = set(wanted)
    pairs = sorted((family, split) for split in splits for family in families(layout, split)
                   if family in wanted)
    return list(dict.fromkeys(source_path(layout, family, split) for family, split in pairs))


def raster_names(layout: LayoutName) -> tuple[str, ...]:
    """Names of the environmental rasters of a layout (use as ``"raster.<name>"``)."""
    return tuple(_raster_members(layout))
