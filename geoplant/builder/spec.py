"""What a store holds per survey: the modalities and their arrays, block and chunk sizes, and
the check of a request (splits, modalities) against a raw release."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from geoplant import layouts
from geoplant.errors import GeoplantError

__all__ = ["BLOCK_SURVEYS", "CHUNK_SURVEYS", "ENV_FAMILIES", "MAX_SPECIES_ID", "MODALITIES",
           "PO_ENV_BLOCKS", "check_request", "split_modalities"]

#: Per-survey modalities, their raw family and array layout.
MODALITIES: Final[dict[str, dict[str, Any]]] = {
    "sentinel2": {"family": "s2.rgb", "dims": ("s2_band", "y", "x"), "shape": (4, 128, 128),
                  "dtype": "uint8", "fill": 0,
                  "coords": {"s2_band": ["red", "green", "blue", "nir"]}},
    "sentinel2_tiff": {"family": "s2.tiff", "dims": ("s2_band", "tiff_y", "tiff_x"),
                       "shape": (4, 64, 64), "dtype": "int16", "fill": -1,
                       "coords": {"s2_band": ["red", "green", "blue", "nir"]}},
    "landsat": {"family": "landsat.cube", "dims": ("landsat_band", "quarter", "landsat_year"),
                "shape": (6, 4, 21), "dtype": "float32", "fill": np.nan,
                "coords": {"landsat_band": list(layouts.LANDSAT_BANDS),
                           "quarter": list(layouts.LANDSAT_QUARTERS),
                           "landsat_year": list(layouts.LANDSAT_YEARS)}},
    "climate": {"family": "climate.cube", "dims": ("climate_variable", "climate_year", "month"),
                "shape": (4, 19, 12), "dtype": "float32", "fill": np.nan,
                "coords": {"climate_variable": list(layouts.CLIMATE_VARIABLES),
                           "climate_year": list(layouts.CLIMATE_YEARS),
                           "month": list(layouts.CLIMATE_MONTHS)}},
    "env": {"family": "env.bioclimatic", "dims": ("env_variable",), "shape": None,
            "dtype": "float32", "fill": np.nan, "coords": {}},
}
#: Surveys per build block (and per chunk of the non-image arrays).
BLOCK_SURVEYS: Final = 1024
#: Build blocks per task when the PO env is sampled from the rasters: each task reads every
#: raster chunk holding one of its points, so big tasks (128 x 1024 = 131,072 surveys, ~30 for
#: the 3.85M PO surveys) read each chunk few times; chunks stay one build block each.
PO_ENV_BLOCKS: Final = 128
#: Surveys per inner chunk of the image modalities (the unit of a random read).
CHUNK_SURVEYS: Final = 4
#: Highest valid speciesId (GLC24: num_classes = 11255).
MAX_SPECIES_ID: Final = 11_254
#: Families of pre-extracted env values, in the column order of the ``env`` array.
ENV_FAMILIES: Final = ("bioclimatic", "elevation", "human_footprint", "landcover", "soilgrids")


def check_request(raw: Any, splits: Sequence[str] | None,
                  modalities: Sequence[str] | None) -> list[str]:
    """The splits to build (default: all of the layout's); unknown splits or modalities fail."""
    all_splits = raw.splits
    chosen = list(splits or all_splits)
    unknown = [s for s in chosen if s not in all_splits]
    if unknown:
        raise GeoplantError(f"unknown split(s) {', '.join(unknown)} for layout {raw.layout}",
                            fix=f"use some of: {', '.join(all_splits)}")
    if modalities is not None:
        bad = [m for m in modalities if m not in MODALITIES]
        if bad:
            raise GeoplantError(f"unknown modality {', '.join(bad)}",
                                fix=f"use some of: {', '.join(MODALITIES)}")
    return chosen


def split_modalities(raw: Any, split: str, modalities: Sequence[str] | None) -> list[str]:
    """The requested modalities (default: all) that a split has files for."""
    return [m for m in (modalities or MODALITIES) if MODALITIES[m]["family"] in raw.families(split)]
