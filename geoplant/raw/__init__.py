"""Readers of the raw GeoPlant / GeoLifeCLEF files, one per file family, each validating what
it reads and raising :class:`geoplant.errors.GeoplantError` naming the file, the problem and
the fix.

Use :class:`RawRelease` on a release folder (layout ``glc24`` or ``geoplant``, see
:mod:`geoplant.layouts`); the module-level functions read single files given by path or bytes.
"""

from geoplant.raw.cubes import read_pt_cube, read_pt_cube_torch
from geoplant.raw.patches import (
    JPEG_SHAPE,
    TIFF_SHAPE,
    decode_jpeg,
    jpeg_backend,
    read_patch_jpeg,
    read_patch_tiff,
    read_tiff_profile,
)
from geoplant.raw.release import (
    CLIMATE_SHAPE,
    LANDSAT_SHAPE,
    Batch,
    ConsistencyReport,
    FileConsistency,
    RawRelease,
    detect_layout,
)
from geoplant.raw.tables import (
    CLIMATE_VALUE_COLUMNS,
    LANDSAT_VALUE_COLUMNS,
    RowProblem,
    climate_cube_from_values,
    env_columns,
    iter_metadata_csv,
    landsat_cube_from_values,
    read_csv_header,
    read_metadata_csv,
    read_survey_ids_csv,
    read_values_csv,
)

__all__ = [
    "CLIMATE_SHAPE",
    "CLIMATE_VALUE_COLUMNS",
    "JPEG_SHAPE",
    "LANDSAT_SHAPE",
    "LANDSAT_VALUE_COLUMNS",
    "TIFF_SHAPE",
    "Batch",
    "ConsistencyReport",
    "FileConsistency",
    "RawRelease",
    "RowProblem",
    "climate_cube_from_values",
    "decode_jpeg",
    "detect_layout",
    "env_columns",
    "iter_metadata_csv",
    "jpeg_backend",
    "landsat_cube_from_values",
    "read_csv_header",
    "read_metadata_csv",
    "read_patch_jpeg",
    "read_patch_tiff",
    "read_pt_cube",
    "read_pt_cube_torch",
    "read_survey_ids_csv",
    "read_tiff_profile",
    "read_values_csv",
]
