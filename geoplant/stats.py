"""Normalisation statistics of a store's training split, kept in ``<store>/stats.json``.

Every split (train, validation, test) is standardised ``(x - mean) / std`` per channel
(Sentinel-2 band, Landsat band, climate variable, env variable) with the statistics of the
training split only (``pa_train``; test splits are refused). They are computed by streaming
over storage chunks (:func:`compute_normalization_stats`, run by ``geoplant build``) and read
back by :func:`load_normalization_stats`, which :class:`geoplant.torch.SurveyDataset` calls.

Torch-free on purpose: the build computes the statistics without importing PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_url, join_path
from geoplant.store import cube_array, open_store

if TYPE_CHECKING:
    import zarr

    from geoplant.store import Store

__all__ = [
    "CHANNEL_DIMS",
    "STATS_FILE",
    "TRAIN_SPLIT",
    "compute_normalization_stats",
    "load_normalization_stats",
    "scale_offset",
]

#: Name of the normalisation statistics file at the store root.
STATS_FILE: Final = "stats.json"
#: Split whose statistics normalise every split.
TRAIN_SPLIT: Final = "pa_train"
#: Channel dimension (axis 1) of each modality.
CHANNEL_DIMS: Final[dict[str, str]] = {
    "sentinel2": "s2_band", "sentinel2_tiff": "s2_band", "landsat": "landsat_band",
    "climate": "climate_variable", "env": "env_variable",
}
_STATS_FORMAT: Final = "geoplant-stats/1"
#: Values per float64 copy when reducing a float block (bounds the memory of one step).
_FLOAT_STEP_VALUES: Final = 1 << 24


class _Moments:
    """Per-channel count / mean / M2, merged chunk by chunk (Chan et al.), float64."""

    def __init__(self, channels: int) -> None:
        self.n = np.zeros(channels, np.float64)
        self.mean = np.zeros(channels, np.float64)
        self.m2 = np.zeros(channels, np.float64)

    def add(self, n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.n + n
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = mean - self.mean
            frac = np.where(total > 0, n / np.maximum(total, 1), 0.0)
            self.mean = self.mean + delta * frac
            self.m2 = self.m2 + m2 + delta**2 * self.n * frac
        self.n = total

    def add_values(self, block: np.ndarray) -> None:
        """``block``: (surveys, channels, ...) float; non-finite values are ignored."""
        x = block.astype(np.float64, copy=False).swapaxes(0, 1).reshape(block.shape[1], -1)
        finite = np.isfinite(x)
        n = finite.sum(axis=1).astype(np.float64)
        xs = np.where(finite, x, 0.0)
        mean = np.divide(xs.sum(axis=1), n, out=np.zeros_like(n), where=n > 0)
        m2 = (np.where(finite, x - mean[:, None], 0.0) ** 2).sum(axis=1)
        self.add(n, mean, m2)

    def add_histogram(self, hist: np.ndarray) -> None:
        """``hist``: (channels, 256) counts of uint8 values."""
        values = np.arange(hist.shape[1], dtype=np.float64)
        n = hist.sum(axis=1).astype(np.float64)
        mean = np.divide(hist @ values, n, out=np.zeros_like(n), where=n > 0)
        m2 = (hist * (values[None, :] - mean[:, None]) ** 2).sum(axis=1)
        self.add(n, mean, m2)

    def add_block(self, block: np.ndarray) -> None:
        """``block``: (surveys, channels, ...) of the stored dtype; uint8 counted exactly."""
        if block.dtype == np.uint8:
            # int64 counts per value, as exact as the data (no float rounding)
            self.add_histogram(np.stack([np.bincount(block[:, c].reshape(-1), minlength=256)
                                         for c in range(block.shape[1])]))
            return
        step = max(1, _FLOAT_STEP_VALUES // max(1, block[0].size))  # bound the float64 copy
        for s in range(0, len(block), step):
            self.add_values(block[s : s + step])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        std = np.sqrt(np.divide(self.m2, self.n, out=np.zeros_like(self.m2), where=self.n > 0))
        return self.mean, std


def _channel_names(group: zarr.Group, name: str) -> list[str]:
    """Names of a modality's channels (axis 1); their indices when the cube has none."""
    dim = CHANNEL_DIMS.get(name)
    if dim is not None and dim in group:
        return [str(v) for v in np.asarray(cube_array(group, dim)[:])]
    return [str(i) for i in range(cube_array(group, name).shape[1])]


def _check_modalities(store: Store, split: str, group: zarr.Group,
                      modalities: Sequence[str]) -> None:
    missing = [m for m in modalities if m not in group]
    if missing:
        raise GeoplantError(f"split {split!r} has no modality {', '.join(missing)}",
                            path=store.path, fix=f"use some of {store.modalities(split)}")


def _keep_mask(store: Store, split: str, all_ids: np.ndarray,
               survey_ids: np.ndarray | Sequence[int] | None) -> np.ndarray:
    """Which of the split's surveys (store order) to describe."""
    if survey_ids is None:
        return np.ones(len(all_ids), bool)
    wanted = np.asarray(survey_ids, dtype=np.int64)
    keep = np.isin(all_ids, wanted)
    if keep.sum() != len(np.unique(wanted)):
        raise GeoplantError(f"{len(np.unique(wanted)) - keep.sum()} survey ids not in "
                            f"split {split!r}", path=store.path)
    return keep


def _modality_moments(group: zarr.Group, name: str, keep: np.ndarray,
                      block_surveys: int) -> _Moments:
    """Stream one modality ``block_surveys`` surveys at a time, skipping invalid items."""
    array = cube_array(group, name)
    valid_name = f"valid_{name}"
    valid = np.asarray(cube_array(group, valid_name)[:], bool) if valid_name in group \
        else np.ones(len(keep), bool)
    use = keep & valid
    moments = _Moments(array.shape[1])
    for start in range(0, len(keep), block_surveys):
        stop = min(start + block_surveys, len(keep))
        rows = np.flatnonzero(use[start:stop])
        if len(rows):
            moments.add_block(np.asarray(array[start:stop])[rows])
    return moments


def compute_normalization_stats(
    store: Store | str | os.PathLike[str],
    split: str = TRAIN_SPLIT,
    modalities: Sequence[str] | None = None,
    *,
    survey_ids: np.ndarray | Sequence[int] | None = None,
    write: bool | None = None,
    block_surveys: int = 1024,
) -> dict[str, Any]:
    """Per-channel mean and standard deviation of a training split's modalities.

    Streams over the split ``block_surveys`` surveys at a time (one storage chunk of the
    non-image arrays) with a numerically stable merge of per-block moments, so memory stays
    at one block. NaN and ±inf are ignored, and so are surveys whose item was missing in the
    raw release (``valid_<modality>`` false). Sentinel-2 (uint8) statistics are exact, from
    per-band histograms.

    Parameters
    ----------
    store
        A :class:`~geoplant.store.Store` or its path.
    split
        The training split (default ``"pa_train"``). Test splits are refused: statistics must
        never come from test data.
    modalities
        Modalities to describe (default: every one the split has).
    survey_ids
        Restrict to these surveys (e.g. the training surveys of a train/validation plan, so
        that validation blocks do not leak into the statistics); the result records which
        (``"survey_ids_sha256"``: sha256 of the sorted ids as little-endian int64).
    write
        Write the result atomically to ``<store>/stats.json`` (kept for every later
        :class:`~geoplant.torch.SurveyDataset`, whatever its split). Default (``None``):
        write the whole split's statistics, never a subset's (so a subset never replaces
        the store's file unless ``write=True`` says so); pass a subset's statistics to
        ``SurveyDataset(stats=...)`` / ``DeviceNormalizer.from_stats`` instead.
    block_surveys
        Surveys per streamed block.

    Returns
    -------
    dict
        ``{"format", "split", "n_surveys", "created", "modalities": {name: {"dim",
        "channels", "mean", "std", "count"}}}`` (plus ``"survey_ids_sha256"`` when a
        subset was given); ``std`` of a constant channel is reported as 0 and used as 1.

    Raises
    ------
    GeoplantError
        For a test split (or any split without species), an unknown split or modality, or
        survey ids not in the split.
    """
    store = open_store(store)
    if "test" in split or not store.has_species(split):
        raise GeoplantError(f"refusing to compute normalisation statistics on {split!r}",
                            path=store.path,
                            fix=f"compute them on the training split ({TRAIN_SPLIT!r}); every "
                                "split is normalised with the training statistics")
    group = store.cube_group(split)
    all_ids = np.asarray(cube_array(group, "surveyId")[:], dtype=np.int64)
    mods = list(modalities or store.modalities(split))
    _check_modalities(store, split, group, mods)
    keep = _keep_mask(store, split, all_ids, survey_ids)
    out: dict[str, Any] = {"format": _STATS_FORMAT, "split": split,
                           "n_surveys": int(keep.sum()), "created": time.strftime(
                               "%Y-%m-%dT%H:%M:%S%z"), "modalities": {}}
    if survey_ids is not None:
        # which subset, compactly (a PA training plan holds ~80k ids)
        out["survey_ids_sha256"] = hashlib.sha256(
            np.ascontiguousarray(all_ids[keep], "<i8").tobytes()).hexdigest()
    for name in mods:
        moments = _modality_moments(group, name, keep, block_surveys)
        mean, std = moments.result()
        out["modalities"][name] = {
            "dim": CHANNEL_DIMS.get(name, "channel"), "channels": _channel_names(group, name),
            "mean": mean.tolist(), "std": std.tolist(), "count": moments.n.astype(int).tolist(),
        }
    if write is None:
        write = survey_ids is None
    if write:
        atomic_write_url(join_path(store.path, STATS_FILE),
                         (json.dumps(out, indent=1) + "\n").encode("utf-8"),
                         store.storage_options)
    return out


def load_normalization_stats(
    store: Store | str | os.PathLike[str],
    modalities: Sequence[str] | None = None,
    *,
    compute: bool = True,
) -> dict[str, Any]:
    """Read ``<store>/stats.json``; compute it from ``pa_train`` first if absent or incomplete.

    Parameters
    ----------
    store
        A :class:`~geoplant.store.Store` or its path.
    modalities
        Modalities the caller needs; missing ones trigger a recomputation (when ``compute``).
    compute
        Compute (and try to write) the statistics when the file is absent or lacks a modality.
        A read-only store keeps them in memory only.

    Returns
    -------
    dict
        As returned by :func:`compute_normalization_stats`.

    Raises
    ------
    GeoplantError
        If the file has an unknown format, or lacks a modality and ``compute`` is false.
    """
    store = open_store(store)
    path = join_path(store.root, STATS_FILE)
    stats: dict[str, Any] | None = None
    if store.fs.exists(path):
        with store.fs.open(path, "r") as handle:
            stats = json.load(handle)
        if stats.get("format") != _STATS_FORMAT:
            raise GeoplantError("unknown normalisation statistics format", path=path,
                                fix="delete the file; it is recomputed on next use")
    needed = set(modalities or [])
    if stats is not None and needed <= set(stats["modalities"]):
        return stats
    if not compute:
        raise GeoplantError("no normalisation statistics for "
                            f"{sorted(needed - set((stats or {}).get('modalities', {})))}",
                            path=path, fix="run geoplant.stats.compute_normalization_stats")
    train_mods = store.modalities(TRAIN_SPLIT)
    wanted = sorted(set(train_mods) | (needed & set(train_mods)))
    try:
        return compute_normalization_stats(store, TRAIN_SPLIT, wanted, write=True)
    except OSError:  # read-only store: keep them in memory
        return compute_normalization_stats(store, TRAIN_SPLIT, wanted, write=False)


def scale_offset(stats: Mapping[str, Any], modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(scale, offset)``, float32 ``(C,)``, with ``x * scale + offset`` equal to
    ``(x - mean) / std`` (a zero ``std``, a constant channel, is used as 1).

    Computed in float64 and rounded once to float32: the single definition shared by the
    CPU path (:class:`~geoplant.torch.SurveyDataset`) and the device path
    (:class:`~geoplant.torch.DeviceNormalizer`), so both give the same floats.

    Raises
    ------
    GeoplantError
        If ``stats`` has no entry for ``modality``.
    """
    entry = stats["modalities"].get(modality)
    if entry is None:
        raise GeoplantError(f"no normalisation statistics for {modality!r}",
                            fix="recompute them with compute_normalization_stats")
    mean = np.asarray(entry["mean"], np.float64)
    std = np.asarray(entry["std"], np.float64)
    std = np.where(std > 0, std, 1.0)
    return (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)
