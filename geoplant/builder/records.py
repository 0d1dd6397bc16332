"""Records: each split's metadata streamed into GeoParquet (``records/<split>.parquet``).

A split whose records are written without a skipped row leaves a marker (its surveyIds and
species counts) in ``_build/``; a rerun reloads those instead of reading the table again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoplant.builder.skips import Skips
from geoplant.builder.spec import MAX_SPECIES_ID
from geoplant.builder.storefiles import write_store_file
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_bytes, atomic_write_with

__all__ = ["Records", "build_records"]


@dataclass
class Records:
    """What the records phase found: per split, its surveys and species counts."""

    survey_ids: dict[str, np.ndarray] = field(default_factory=dict)
    species_counts: dict[str, pd.Series] = field(default_factory=dict)
    #: ``<split>_surveys`` and ``<split>_records`` of every split, in split order.
    counts: dict[str, int] = field(default_factory=dict)


def build_records(raw: Any, store: Path, splits: Sequence[str], skips: Skips,
                  progress: bool) -> Records:
    """Records phase: every split's metadata to GeoParquet (resumable per split)."""
    records = Records()
    for split in splits:
        ids, species_counts = _split_records(raw, store, split, skips, progress)
        records.survey_ids[split], records.species_counts[split] = ids, species_counts
        records.counts[f"{split}_surveys"] = len(ids)
        # PA test metadata has no species: a survey is one record there
        records.counts[f"{split}_records"] = int(species_counts.sum()) if len(
            species_counts) else len(ids)
    return records


def _split_records(raw: Any, store: Path, split: str, skips: Skips,
                   progress: bool) -> tuple[np.ndarray, pd.Series]:
    """Write a split's records, or reload what an earlier run of this build finished.

    A split with skipped rows is not marked finished: a rerun reads it again, so a repaired
    table is picked up instead of an old verdict.
    """
    target = store / "records" / f"{split}.parquet"
    marker = store / "_build" / f"records-{split}.json"
    ids_file = marker.with_suffix(".npy")
    if marker.exists():  # resume: the records were finished before
        saved = json.loads(marker.read_text())
        species_counts = pd.Series(saved["species_counts"], dtype=np.int64)
        species_counts.index = species_counts.index.astype(np.int64)
        return np.load(ids_file), species_counts
    before = len(skips.items)
    ids, species_counts = _write_records(raw, split, target, skips, progress)
    if len(skips.items) == before:
        atomic_write_with(ids_file, lambda tmp: _save_npy(tmp, ids))
        atomic_write_bytes(marker, json.dumps({
            "species_counts": {str(k): int(v) for k, v in species_counts.items()}}).encode())
    return ids, species_counts


def _save_npy(path: Path, array: np.ndarray) -> None:
    # through a handle: np.save adds ".npy" to a temporary's name
    with open(path, "wb") as handle:
        np.save(handle, array)


def _write_records(raw: Any, split: str, target: Path, skips: Skips,
                   progress: bool) -> tuple[np.ndarray, pd.Series]:
    """Stream a split's metadata into GeoParquet; return its surveyIds and species counts."""
    from geoplant.raw import RowProblem

    problems: list[RowProblem] = []
    streamed: list[tuple[list[np.ndarray], pd.Series]] = []
    write_store_file(target, lambda tmp: streamed.append(
        _stream_records(raw, split, tmp, skips, progress, problems)))
    ids, species_counts = streamed[0]
    for p in problems:
        skips.add(split, "record", p.problem, survey_id=p.survey_id, file=p.file, line=p.line)
    survey_ids = np.unique(np.concatenate(ids)) if ids else np.empty(0, np.int64)
    return survey_ids, species_counts.astype(np.int64)


def _stream_records(raw: Any, split: str, tmp: Path, skips: Skips, progress: bool,
                    problems: list[Any]) -> tuple[list[np.ndarray], pd.Series]:
    """Write a split's metadata to the GeoParquet file ``tmp``, chunk by chunk."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    family = "metadata.po" if split == "po_train" else "metadata.pa"
    file = raw.describe(raw.location(family, split))
    writer = None
    ids: list[np.ndarray] = []
    species_counts = pd.Series(dtype=np.int64)
    try:
        chunks = raw.iter_metadata(split, bad_rows="drop", problems=problems)
        for chunk in tqdm(chunks, desc=f"records {split}", unit="chunk", disable=not progress):
            chunk = _species_ok(chunk, split, skips, file)
            ids.append(chunk["surveyId"].to_numpy(np.int64))
            if "speciesId" in chunk:
                species_counts = species_counts.add(chunk["speciesId"].value_counts(),
                                                    fill_value=0)
            table = _to_geo_table(chunk)
            if writer is None:
                schema = table.schema.with_metadata(_geo_metadata(table))
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(table.cast(writer.schema), row_group_size=1 << 18)
        if writer is None:
            raise GeoplantError("no records", path=file, fix="check the file is complete")
    finally:
        if writer is not None:
            writer.close()
    return ids, species_counts


def _species_ok(frame: pd.DataFrame, split: str, skips: Skips, file: str) -> pd.DataFrame:
    """The rows with a valid speciesId; the others are skipped (a frame without one: all)."""
    if "speciesId" not in frame:
        return frame
    bad = (frame["speciesId"] < 0) | (frame["speciesId"] > MAX_SPECIES_ID)
    for sid, spid in frame.loc[bad, ["surveyId", "speciesId"]].itertuples(index=False):
        skips.add(split, "record", f"unknown speciesId {spid} (valid: 0..{MAX_SPECIES_ID})",
                  survey_id=int(sid), file=file)
    return frame.loc[~bad]


def _to_geo_table(frame: pd.DataFrame) -> Any:
    """Records as an Arrow table with a WKB point ``geometry`` column (GeoParquet encoding)."""
    import pyarrow as pa
    import shapely

    table = pa.Table.from_pandas(frame, preserve_index=False)
    points = shapely.points(frame["lon"].to_numpy(), frame["lat"].to_numpy())
    return table.append_column("geometry", pa.array(shapely.to_wkb(points), type=pa.binary()))


def _geo_metadata(table: Any) -> dict[bytes, bytes]:
    """Schema metadata of a GeoParquet 1.1 file of EPSG:4326 points."""
    from pyproj import CRS

    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps({
        "version": "1.1.0", "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"],
                                 "crs": CRS.from_epsg(4326).to_json_dict()}},
    }).encode()
    return meta
