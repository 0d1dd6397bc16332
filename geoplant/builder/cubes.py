"""Cubes: the per-survey modalities of each PA split in ``cubes/<split>.zarr`` (Zarr v3), and
``po_train``'s env where the release has PO env tables and its Landsat and climate cubes where
it has PO cube archives (:func:`geoplant.builder.po_env.po_cube_modalities`).

A split's cube is first written empty (the template), then filled block by block
(:data:`~geoplant.builder.spec.BLOCK_SURVEYS` surveys, a whole number of chunks along
``surveyId``), each block a dask task that reads its raw files and writes its own region, so
blocks never share a chunk and run in any order (:mod:`geoplant.builder.tasks` runs them). A
finished block leaves a marker; a rerun skips marked blocks, so a killed build resumes where it
stopped and ends with the same bytes.

Markers record what was read, never a verdict that could outlive a repair: a block with a
skipped item gets no marker, so a rerun reads it again. A template is marked complete only once
fully written; a rerun rebuilds a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from geoplant import __version__
from geoplant.builder.skips import Skips, strict_error
from geoplant.builder.spec import CHUNK_SURVEYS, ENV_FAMILIES, MODALITIES
from geoplant.builder.storefiles import read_json_dict
from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_bytes, atomic_write_text
from geoplant.store import cube_array

__all__ = ["add_block_skips", "ensure_template", "plan_cubes", "write_env"]

#: The reader of :class:`geoplant.raw.RawRelease` for each modality read from per-survey files.
_READERS: Final = {"sentinel2": "read_s2_jpegs", "sentinel2_tiff": "read_s2_tiffs",
                   "landsat": "read_landsat_cubes", "climate": "read_climate_cubes"}


def plan_cubes(raw: Any, store: Path, cube_modalities: dict[str, list[str]],
               survey_ids: dict[str, np.ndarray], skips: Skips,
               block_surveys: int) -> tuple[list[Any], int]:
    """Create each split's empty cube unless it exists; one delayed task per unfinished block.

    Parameters
    ----------
    raw
        The :class:`geoplant.raw.RawRelease` read from.
    store
        The store folder.
    cube_modalities
        Per split with a cube, the modalities it holds.
    survey_ids
        Per split, its surveyIds (sorted): the cube's ``surveyId`` coordinate.
    skips
        Where the surveys without env values are listed.
    block_surveys
        Surveys per block.

    Returns
    -------
    tuple
        The dask delayed tasks of the blocks to read, and how many blocks an earlier run
        already finished.
    """
    tasks: list[Any] = []
    resumed = 0
    for split, modalities in cube_modalities.items():
        split_tasks, split_resumed = _plan_cube_blocks(raw, store, split, modalities,
                                                       survey_ids[split], skips, block_surveys)
        tasks += split_tasks
        resumed += split_resumed
    return tasks, resumed


def add_block_skips(results: list[dict[str, Any]], splits: Sequence[str],
                    skips: Skips) -> None:
    """Count the skipped items of the blocks read now, in split and block order.

    Blocks resumed from an earlier run had none: a block with skips is never marked done.
    """
    order = {split: i for i, split in enumerate(splits)}
    for result in sorted(results, key=lambda r: (order[r["split"]], r["start"])):
        for item in result["skipped"]:
            skips.add(**{k: item[k] for k in ("split", "kind", "reason")},
                      survey_id=item["surveyId"], file=item["file"], line=item["line"])


def _plan_cube_blocks(raw: Any, store: Path, split: str, modalities: Sequence[str],
                      survey_ids: np.ndarray, skips: Skips,
                      block_surveys: int) -> tuple[list[Any], int]:
    """Create a split's cube (empty) unless it exists; one delayed task per unfinished block.

    Returns the tasks and the number of blocks an earlier run already finished.
    """
    import dask

    env_values: np.ndarray | None = None
    env_columns: list[str] = []
    if "env" in modalities:
        env_values, env_columns = _env_table(raw, split, survey_ids, skips)
    cube_path = ensure_template(store, split, survey_ids, modalities, env_columns,
                                block_surveys)
    done_dir = store / "_build" / split
    done_dir.mkdir(exist_ok=True)
    tasks: list[Any] = []
    resumed = 0
    for start in range(0, len(survey_ids), block_surveys):
        marker = done_dir / f"block-{start:09d}.json"
        if marker.exists():
            resumed += 1
            continue
        block_ids = survey_ids[start : start + block_surveys]
        block_env = None if env_values is None else env_values[start : start + len(block_ids)]
        tasks.append(dask.delayed(_block_task, pure=False)(
            raw, str(cube_path), split, start, block_ids, modalities, block_env, str(marker),
            skips.strict))
    return tasks, resumed


def _env_table(raw: Any, split: str, survey_ids: np.ndarray,
               skips: Skips) -> tuple[np.ndarray, list[str]]:
    """All pre-extracted env values of a split as (n, variables) float32 in survey order."""
    columns: list[str] = []
    blocks: list[np.ndarray] = []
    for family in ENV_FAMILIES:
        if f"env.{family}" not in raw.families(split):
            continue
        table = raw.read_env(family, split).set_index("surveyId")
        missing = np.setdiff1d(survey_ids, table.index.to_numpy())
        for sid in missing:
            skips.add(split, "env", f"no row in the {family} values", survey_id=int(sid),
                      file=raw.describe(raw.location(f"env.{family}", split)))
        values = table.reindex(survey_ids).to_numpy(np.float32)
        blocks.append(values)
        columns += list(table.columns)
    return np.concatenate(blocks, axis=1), columns


# ---------------------------------------------------------------------------------------------
# the template: a split's empty cube


def ensure_template(store: Path, split: str, survey_ids: np.ndarray,
                    modalities: Sequence[str], env_columns: list[str],
                    block_surveys: int, variant: str = "") -> Path:
    """Write a split's empty cube unless a complete one for the same surveys is there.

    The template is marked complete (``_build/cube-<split>.json``) only after it is fully
    written, so a build killed while writing it rewrites it on the next run; so does one whose
    records changed (a repaired table), and then every block of the split is redone.
    ``variant`` names what else the blocks are made from (the PO env sampled from which
    rasters): a template of another variant is rebuilt too.
    """
    cube_path = store / "cubes" / f"{split}.zarr"
    marker = store / "_build" / f"cube-{split}.json"
    key = _template_key(survey_ids, modalities, env_columns, block_surveys, variant)
    done = read_json_dict(marker) if marker.exists() else None
    if done is not None and done.get("template") == key and (cube_path / "zarr.json").exists():
        return cube_path
    shutil.rmtree(cube_path, ignore_errors=True)
    shutil.rmtree(store / "_build" / split, ignore_errors=True)  # blocks of an older template
    ds, encoding = _template(split, survey_ids, modalities, env_columns, block_surveys)
    ds.to_zarr(str(cube_path), mode="w", compute=False, zarr_format=3,
               encoding=encoding, consolidated=False)
    atomic_write_text(marker, json.dumps({"template": key}))
    return cube_path


def _template_key(survey_ids: np.ndarray, modalities: Sequence[str], env_columns: list[str],
                  block_surveys: int, variant: str = "") -> str:
    """A digest of what a cube template is made from (its surveys, arrays and blocks)."""
    digest = hashlib.sha256(np.ascontiguousarray(survey_ids, dtype=np.int64).tobytes())
    # the PA cubes' keys stay those of earlier builds (no variant): their markers resume
    extra = [variant] if variant else []
    digest.update(json.dumps([list(modalities), env_columns, block_surveys, *extra]).encode())
    return digest.hexdigest()


def _template(split: str, survey_ids: np.ndarray, modalities: Sequence[str],
              env_columns: list[str], block_surveys: int) -> Any:
    """A split's empty cube (lazy, fill values) and its Zarr encoding."""
    import dask.array as da
    import xarray as xr

    n = len(survey_ids)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    coords: dict[str, Any] = {"surveyId": ("surveyId", survey_ids)}
    block = block_surveys
    for name in modalities:
        spec = MODALITIES[name]
        shape = (len(env_columns),) if name == "env" else spec["shape"]
        data_vars[name] = (("surveyId", *spec["dims"]),
                           da.full((n, *shape), spec["fill"], dtype=spec["dtype"],
                                   chunks=(block, *shape)))
        encoding[name] = _encoding(name, shape, spec["fill"], block)
        for dim, values in spec["coords"].items():
            # object dtype -> Zarr v3 variable-length strings (fixed-width UTF-32 has no spec)
            coords.setdefault(dim, (dim, np.asarray(values, dtype=object)
                                    if isinstance(values[0], str) else values))
        valid = f"valid_{name}"
        data_vars[valid] = (("surveyId",), da.zeros(n, dtype=bool, chunks=block))
        encoding[valid] = {"chunks": (block,)}
    if "env" in modalities:
        coords["env_variable"] = ("env_variable", np.asarray(env_columns, dtype=object))
    ds = xr.Dataset(data_vars, coords=coords, attrs={"split": split, "geoplant": __version__})
    return ds, encoding


def _encoding(name: str, shape: tuple[int, ...], fill: Any, block: int) -> dict[str, Any]:
    """The Zarr encoding of a modality's array: chunks, compressor, fill value."""
    from zarr.codecs import BloscCodec

    if name.startswith("sentinel2"):
        # Small chunks for random reads. No Zarr v3 sharding: zarr-python reads a few
        # inner chunks of a shard 2-5x slower than plain chunks (benchmarks/RESULTS.md),
        # and 4-survey chunks of the PA splits are ~25k files.
        # lz4: zstd saves little on JPEG-decoded pixels but costs ~2.5 ms per chunk read.
        return {"chunks": (CHUNK_SURVEYS, *shape), "compressors": [
            BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")], "fill_value": fill}
    return {"chunks": (block, *shape), "fill_value": fill}


# ---------------------------------------------------------------------------------------------
# blocks: one dask task each


def _block_task(raw: Any, cube_path: str, split: str, start: int, survey_ids: np.ndarray,
                modalities: Sequence[str], env_values: np.ndarray | None,
                marker: str, strict: bool = False) -> dict[str, Any]:
    """Read one block of surveys' raw files and write them to their region of the Zarr store.

    Under ``strict`` the first bad item raises. A block with a skipped item (or a survey
    without env values) is not marked done, so a rerun reads it again.
    """
    import zarr

    group = zarr.open_group(cube_path, mode="r+")
    region = slice(start, start + len(survey_ids))
    skipped: list[dict[str, Any]] = []
    complete = True
    for name in modalities:
        if name == "env":
            assert env_values is not None
            complete &= write_env(group, region, env_values)
        else:
            skipped += _write_modality(raw, group, region, name, split, survey_ids, strict)
    result = {"split": split, "start": start, "n": len(survey_ids), "skipped": skipped}
    if complete and not skipped:
        atomic_write_bytes(marker, json.dumps(result).encode())
    return result


def write_env(group: Any, region: slice, env_values: np.ndarray) -> bool:
    """Write a block's env values and ``valid_env`` (some value not NaN); whether every
    survey of it has some."""
    valid = ~np.isnan(env_values).all(axis=1)
    cube_array(group, "env")[region] = env_values
    cube_array(group, "valid_env")[region] = valid
    return bool(valid.all())


def _write_modality(raw: Any, group: Any, region: slice, name: str, split: str,
                    survey_ids: np.ndarray, strict: bool) -> list[dict[str, Any]]:
    """Read a block's files of one modality and write them; the items skipped."""
    read = getattr(raw, _READERS[name])
    try:
        batch = read(split, survey_ids, on_error="raise" if strict else "skip")
    except GeoplantError as bad:  # strict: stop at the first bad item
        raise strict_error(name, bad.problem, file=bad.path) from None
    cube_array(group, name)[region] = batch.data
    cube_array(group, f"valid_{name}")[region] = batch.ok
    return [{"split": split, "kind": name, "surveyId": int(sid), "file": err.path,
             "line": None, "reason": err.problem} for sid, err in sorted(batch.errors.items())]
