"""Where every raw file family lives in each published GeoPlant layout: the one alias table.

Two layouts are supported (see ``../shared/geoplant-format.md`` for the facts and sources):

``glc24``
    The Kaggle competition ``geolifeclef-2024`` tree after unzip (K24), plus the environmental
    raster zips of the 2024 Seafile mirror (S24) at their Seafile paths.
``geoplant``
    The 2026 GeoPlant restructure (G26) under ``GeoPlantData/``, as listed by the maintainers'
    manifest (plantnet/GeoPlant ``dataset/config.py`` @ 88b090c). Their downloader writes the
    manifest paths straight under its ``--data`` folder, so a release root may also be the
    ``GeoPlantData`` folder itself, whatever its name (a *bare* root, see :data:`DATA_ROOT`).
    Inner names of its zips are not verified; where the spec marks a detail unverified we follow
    its stated assumption (GLC25-style patch folders, ``<surveyId>_cube.pt`` cube names).

A *location* is a path relative to the release root; a member of a zip archive is written
``"archive.zip::member/path"``. Writers (``geoplant.sample``) and readers (``geoplant.raw``)
both resolve names here, so a layout difference is fixed in exactly one place.

A release reaches users in three forms, and readers accept each: the zips as published; each
zip extracted into a folder named after it (the maintainers' downloader, ``--extract``); or
extracted into the zip's own folder (``geoplant download --extract``). See
:func:`extraction_dirs`. Member names inside the zips differ between sources (prefixes such as
``GLC24-PA-train-landsat-time-series_``, hyphens or underscores), so readers find members by
family and survey id (:func:`member_rule`), not by exact name.
"""

from __future__ import annotations

import re
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

#: Metadata CSV columns, in file order (K24; the columns every layout has).
PA_TRAIN_COLUMNS: Final = (
    "lon", "lat", "year", "geoUncertaintyInM", "areaInM2", "region", "country", "speciesId",
    "surveyId",
)
PA_TEST_COLUMNS: Final = tuple(c for c in PA_TRAIN_COLUMNS if c != "speciesId")
PO_COLUMNS: Final = (
    "publisher", "year", "month", "day", "lat", "lon", "geoUncertaintyInM", "taxonRank", "date",
    "dayOfYear", "speciesId", "surveyId",
)
#: Further metadata columns the maintainers' own code reads from the GeoPlant tables
#: (plantnet/GeoPlant @ 88b090c: PA ``taxonRank``, ``county``, ``district`` in
#: ``baselines/XGBoost/docs/data-schema.md`` and ``geoplant_xgb/config.py``, where ``district``
#: is also spelled ``disctrict``; PO ``region``, ``district`` in
#: ``baselines/naive-approach-baselines.ipynb``). Their position in the files is not known.
PA_EXTRA_COLUMNS: Final = ("taxonRank", "county", "district")
PO_EXTRA_COLUMNS: Final = ("region", "district")
#: Columns of the metadata files per layout and kind (``pa``, ``pa_test``, ``po``), file order.
METADATA_COLUMNS: Final[dict[LayoutName, dict[str, tuple[str, ...]]]] = {
    "glc24": {"pa": PA_TRAIN_COLUMNS, "pa_test": PA_TEST_COLUMNS, "po": PO_COLUMNS},
    "geoplant": {
        "pa": (*PA_TRAIN_COLUMNS, *PA_EXTRA_COLUMNS),
        "pa_test": (*PA_TEST_COLUMNS, "county", "district"),
        "po": (*PO_COLUMNS, *PO_EXTRA_COLUMNS),
    },
}
SUBMISSION_COLUMNS: Final = ("surveyId", "predictions")

#: Splits of each layout. ``po_train`` carries presence-only records, the others PA surveys.
SPLITS: Final[dict[LayoutName, tuple[str, ...]]] = {
    "glc24": ("po_train", "pa_train", "pa_test"),
    "geoplant": ("po_train", "pa_train", "pa_test_iid", "pa_test_ood", "pa_test_glc25"),
}

# Name tokens of each split, as they appear in the file names of each layout:
#   H = hyphenated stem, T = title-case stem (patch folders), L = lower stem (patch sub-folders),
#   M = metadata suffix, S = stem of the Landsat cube file names (differs between train and test
#   in K24, a real quirk), J = G26 JPEG archive stem, F = stem of the G26 human-footprint table
#   (config.py ~L131 names the IID one "PA-test-human_footprint.csv", every other IID table
#   says "-test-iid-"), G = stem of the G26 legacy tables (legacy/, v1/: PO-train, PA-train and
#   PA-test only; that "PA-test" is the IID test set is our assumption, not documented).
_TOKENS: Final[dict[LayoutName, dict[str, dict[str, str]]]] = {
    "glc24": {
        "po_train": {"H": "PO-train", "T": "PO_Train", "L": "po_train", "M": "train"},
        "pa_train": {"H": "PA-train", "T": "PA_Train", "L": "pa_train", "M": "train",
                     "S": "landsat-time-series"},
        "pa_test": {"H": "PA-test", "T": "PA_Test", "L": "pa_test", "M": "test",
                    "S": "landsat_time_series"},
    },
    "geoplant": {
        "po_train": {"H": "PO-train", "T": "PO-Train", "M": "train", "F": "PO-train",
                     "G": "PO-train"},
        "pa_train": {"H": "PA-train", "T": "PA-Train", "M": "train", "F": "PA-train",
                     "G": "PA-train", "J": "PA-Train-Sentinel2Patches-RGB+NIR"},
        "pa_test_iid": {"H": "PA-test-iid", "T": "PA-Test-IID", "M": "test_iid", "F": "PA-test",
                        "G": "PA-test", "J": "PA-Test-IID-Sentinel2Patches"},
        "pa_test_ood": {"H": "PA-test-ood", "T": "PA-Test-OOD", "M": "test_ood",
                        "F": "PA-test-ood"},
        "pa_test_glc25": {"H": "PA-test-glc25", "T": "PA-Test-GLC25", "M": "test_glc25",
                          "F": "PA-test-glc25"},
    },
}

# Template fields that vary within a split's family: one file per survey or per band.
_PER_ITEM_FIELDS: Final = ("{cd}", "{sid}", "{band}")

_K24_ENV = "EnvironmentalRasters/EnvironmentalRasters"
_G26 = "GeoPlantData"
#: Folder of a layout that holds the maintainers' manifest paths ("" = the release root).
DATA_ROOT: Final[dict[LayoutName, str]] = {"glc24": "", "geoplant": _G26}
#: Files, relative to a bare geoplant root (the data folder itself), that identify one.
BARE_SIGNATURES: Final = (
    "PresenceAbsenceSurveys/PA_metadata_train.csv",
    "PresenceAbsenceSurveys/PA_metadata_test_iid.csv",
    "PresenceAbsenceSurveys/PA_metadata_test_ood.csv",
    "PresenceAbsenceSurveys/PA_metadata_test_glc25.csv",
    "PresenceOnlyOccurrences/PO_metadata_train.csv",
)

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
        + "/EnvironmentalValues/HumanFootprint/v2/{F}-human_footprint.csv",
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

#: Which families each split has. PO predictors exist only on Seafile (glc24: none here); the
#: G26 PO split has env tables and the Landsat and bioclimatic cubes
#: (``TimeSeries/{Landsat,Bioclim}/cubes/PO-train-*.zip``, names per the G26 manifest), but no
#: value tables or patches here.
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
        # The PO cubes' inner names follow the PA pattern with the PO prefix
        # (``PO-train-landsat_time_series/<sid>_cube.pt``): unverified, as the PA ones are;
        # readers match members by survey id (:func:`member_rule`).
        "po_train": ("metadata.po", *[f for f in _PA_FAMILIES if f.startswith("env.")],
                     "climate.cube", "landsat.cube"),
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


#: The G26 human-footprint rasters come in two versions: v2 (the default download: a 30 m
#: OpenStreetMap-derived product, one archive whose member names are not published, so readers
#: list it) and v1 (``--legacy``: the 16 Venter et al. rasters, ``hfp_*`` names below).
FOOTPRINT_V2_ARCHIVE: Final[dict[LayoutName, str | None]] = {
    "glc24": None,
    "geoplant": _G26 + "/EnvironmentalRasters/HumanFootprint/v2/OSM_detailed.zip",
}
FOOTPRINT_PREFIX: Final = "hfp_"


def footprint_v2_name(member: str) -> str:
    """Raster name of a GeoTIFF of the v2 human-footprint archive, from its member path.

    ``"OSM_roads.tif"`` -> ``"hfp_OSM_roads"``; folders are kept (``a/b.tif`` -> ``hfp_a_b``),
    so the name is the same whether the archive is read zipped or extracted.
    """
    stem = member.rsplit(".", 1)[0]
    return FOOTPRINT_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")


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


# ---------------------------------------------------------------------------------------------
# versions of the environmental value tables

#: Older versions of a G26 value table, tried when no split has the current one: the
#: manifest's ``legacy_csvs`` (their downloader fetches them instead with ``--legacy``).
#: family -> ((version, template), ...), best first; the family's own template is "current".
_ENV_VERSIONS: Final[dict[LayoutName, dict[str, tuple[tuple[str, str], ...]]]] = {
    "glc24": {},
    "geoplant": {
        "env.bioclimatic": (
            ("legacy", _G26 + "/EnvironmentalValues/Climate/legacy/{G}-bioclimatic-average.csv"),
        ),
        "env.human_footprint": (
            # the name every other IID table would have, in case the manifest's is fixed
            ("current", _G26 + "/EnvironmentalValues/HumanFootprint/v2/{H}-human_footprint.csv"),
            ("v1", _G26 + "/EnvironmentalValues/HumanFootprint/v1/{G}-human-footprint.csv"),
        ),
        "env.soilgrids": (
            ("v1", _G26 + "/EnvironmentalValues/SoilGrids/v1/{G}-soilgrids.csv"),
        ),
    },
}


def env_variants(layout: LayoutName, family: str, split: str) -> tuple[tuple[str, Location], ...]:
    """Every file that may hold a split's table of an env family, best first, with its version.

    Parameters
    ----------
    layout
        ``"glc24"`` or ``"geoplant"``.
    family
        ``"env.<name>"``, a family the split has.
    split
        A split of :data:`SPLITS`.

    Returns
    -------
    tuple of (str, Location)
        ``("current", <the family's location>)`` first, then the other names and older
        versions (``"legacy"``, ``"v1"``) the split has, without duplicates.
    """
    out = [("current", location(layout, family, split))]
    tokens = _TOKENS[layout][split]
    for version, template in _ENV_VERSIONS[layout].get(family, ()):
        try:
            loc = parse_location(template.format(**tokens))
        except KeyError:  # the split has no file of this version (e.g. no legacy OOD table)
            continue
        if all(loc != seen for _, seen in out):
            out.append((version, loc))
    return tuple(out)


def env_value_columns(layout: LayoutName, family: str) -> tuple[str, ...] | None:
    """Value columns of an env table, or None when they are read from its header.

    The G26 human-footprint tables are not the K24 ones: v2 is a new OpenStreetMap-derived
    product and the v1 legacy tables' columns are not documented, so both are read as found.
    """
    key = family.removeprefix("env.")
    if layout == "geoplant" and key == "human_footprint":
        return None
    return ENV_COLUMNS[key]


# ---------------------------------------------------------------------------------------------
# archives, their extractions and member names


def extraction_dirs(archive: str) -> tuple[str, str]:
    """Where the members of an archive land once extracted, as paths like ``archive``.

    Returns
    -------
    (str, str)
        The maintainers' downloader's folder (the archive's path without ``.zip``; the parts
        of a multi-part archive, ``…-part-00.zip``, share one without the part suffix:
        ``data_download.py`` ``extract_file`` ~L169 and ``multipart_extract_dir`` ~L198), and
        ``geoplant download --extract``'s (the archive's own folder, shared with its siblings).
    """
    parent, _, name = archive.rpartition("/")
    stem = name[:-4] if name.lower().endswith(".zip") else name
    stem = re.sub(r"[-_.]part[-_.]?\d+$", "", stem, flags=re.IGNORECASE) or stem
    theirs = f"{parent}/{stem}" if parent else stem
    return theirs, parent


def _token(text: str) -> str:
    """Regex for a name token whatever its separators: ``PA-test-iid`` ~ ``PA_test_iid``."""
    return "[-_ ]".join(re.escape(part) for part in re.split(r"[-_ ]", text))


@dataclass(frozen=True)
class MemberRule:
    """How to recognise a family's files by name, wherever a zip or its extraction put them.

    Attributes
    ----------
    name
        Fully matches the file name (last path component); group ``sid`` holds the surveyId
        of per-survey files.
    patch
        The two folders above the file must be the survey's patch folders (sliced or padded).
    channel
        ``"rgb"`` or ``"nir"``: the innermost folder naming a channel must name this one.
    """

    name: re.Pattern[str]
    patch: bool = False
    channel: str | None = None

    def survey_id(self, path: str) -> int | None:
        """The surveyId of a matching per-survey file, else None (``path`` uses ``/``)."""
        parts = path.split("/")
        m = self.name.fullmatch(parts[-1])
        if m is None or "sid" not in m.groupdict():
            return None
        sid = int(m.group("sid"))
        if self.patch:
            if len(parts) < 3:
                return None
            cd, ab = patch_folders(sid)
            if (parts[-3], parts[-2]) not in ((cd, ab), (f"{sid % 100:02d}",
                                                         f"{sid // 100 % 100:02d}")):
                return None
        if self.channel is not None and _channel(parts[:-1]) != self.channel:
            return None
        return sid

    def matches(self, path: str) -> bool:
        """Whether a file (``path`` uses ``/``) is the one file this rule describes."""
        return self.name.fullmatch(path.rsplit("/", 1)[-1]) is not None


_CHANNEL = re.compile(r"(?:^|[-_+. ])(rgb|nir)(?=$|[-_+. ])", re.IGNORECASE)


def _channel(folders: list[str]) -> str | None:
    """The channel (rgb/nir) named by the innermost folder that names exactly one."""
    for folder in reversed(folders):
        found = {m.lower() for m in _CHANNEL.findall(folder)}
        if len(found) == 1:
            return found.pop()
    return None


def member_rule(layout: LayoutName, family: str, split: str | None = None, *,
                band: str | None = None, member: str | None = None) -> MemberRule:
    """The :class:`MemberRule` of a family's files (of one split, or one band).

    Seen forms (so the rules accept any prefix and ``-``/``_``): Landsat cubes
    ``GLC24-PA-train-landsat-time-series_<sid>_cube.pt`` and
    ``GLC24-PA-test-landsat_time_series_<sid>_cube.pt`` (K24; GeoPlant ``Landsat-resnet6`` and
    MME notebooks), bioclim cubes ``<sid>_cube.pt`` (``Bioclim-resnet6``) and
    ``GLC24-PA-train-bioclimatic_monthly_<sid>_cube.pt`` (MME), values CSVs
    ``…-landsat-time-series-<band>.csv`` / ``…-bioclimatic-monthly.csv`` (earlier manifests)
    and ``…-landsat_time_series-<band>.csv`` / ``…-bioclimatic_monthly.csv`` (K24, ours).

    Parameters
    ----------
    family
        A family of :func:`families`, or ``"raster"`` with ``member`` (its file name).
    split, band
        The split (for the value tables, whose names carry it) and Landsat band.
    """
    flags = re.IGNORECASE
    if family == "raster":
        assert member is not None
        return MemberRule(re.compile(re.escape(member.rsplit("/", 1)[-1]), flags))
    if family.endswith(".cube"):
        return MemberRule(re.compile(r"(?:.*[-_])?(?P<sid>\d+)_cube\.pt", flags))
    if family.startswith("s2."):
        ext = r"tiff?" if family == "s2.tiff" else r"jpe?g"
        channel = None if family == "s2.tiff" else family.removeprefix("s2.")
        return MemberRule(re.compile(rf"(?P<sid>\d+)\.{ext}", flags), True, channel)
    assert split is not None
    tok = _token(_TOKENS[layout][split]["H"])
    if family == "climate.values":
        return MemberRule(re.compile(
            rf"(?:.*[-_])?{tok}[-_]bioclimatic[-_](?:monthly|time[-_]series)\.csv", flags))
    if family == "landsat.values":
        assert band is not None
        return MemberRule(re.compile(
            rf"(?:.*[-_])?{tok}[-_]landsat[-_]time[-_]series[-_]{re.escape(band)}\.csv", flags))
    raise KeyError(f"no member rule for {family!r}")


def split_rule(layout: LayoutName, split: str) -> re.Pattern[str]:
    """Matches a folder or file name that carries the split's name (``PA-Train-…``,
    ``pa_train_…``), to tell a split's files in a folder shared by every split."""
    tokens = {_token(_TOKENS[layout][split][k]) for k in ("H", "T") if k in _TOKENS[layout][split]}
    alternatives = "|".join(sorted(tokens))
    return re.compile(rf"(?:^|[-_ ])(?:{alternatives})(?=$|[-_ .+])", re.IGNORECASE)
