"""Fast multimodal PyTorch loading from a geoplant store.

The pieces::

    stats = compute_normalization_stats(store)            # once, from pa_train -> stats.json
    ds = SurveyDataset(store, "pa_train")                 # dict of tensors per survey
    sampler = BlockShuffleSampler(ds, seed=0)             # chunk-aware shuffling, DDP shards
    loader = DataLoader(ds, batch_size=64, sampler=sampler, collate_fn=collate,
                        num_workers=2, persistent_workers=True)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for batch in loader: ...                          # batch["sentinel2"]: (64, 4, 128, 128)

or simply ``ds.loader(batch_size=64, shuffle=True, num_workers=2)``.

Reading
    :class:`SurveyDataset` implements ``__getitems__``: torch's DataLoader (torch >= 2.0, see
    ``torch/utils/data/_utils/fetch.py``) hands it the whole list of a batch's indices, so a
    batch is one vectorised gather per modality instead of 64 Python calls. Arrays are held
    either **in memory** (numpy, read whole once in the main process before the workers fork;
    workers share the pages copy-on-write) or **on disk**: each worker opens the Zarr arrays
    lazily (after fork / unpickling) and keeps a small LRU cache of decoded storage chunks
    (16 surveys for Sentinel-2, 1024 for the others), bounded by ``cache_mb``, so memory per
    worker is flat. ``in_memory=None`` picks per modality, smallest first, what fits in a
    quarter of the available memory (psutil).

Normalisation
    ``(x - mean) / std`` per channel (Sentinel-2 band, Landsat band, climate variable, env
    variable) with statistics of the training split only (``pa_train``; test splits are
    refused), computed by streaming over storage chunks and kept in ``<store>/stats.json``.
    Every split (train, validation, test) is normalised with those same numbers. After
    normalisation, **NaN/inf become 0** (the training mean), and a modality whose survey item
    was missing in the raw release (``valid_<modality>`` false) is all 0. ``return_mask=True``
    adds ``mask_<modality>`` (element-wise: value was finite and present) for the float
    modalities and ``valid_<modality>`` (per survey) for all.

Sampling
    :class:`BlockShuffleSampler` shuffles blocks of surveys aligned to the storage chunks, then
    shuffles inside a buffer of several blocks, so each chunk read serves many samples; it
    shards epochs over DDP ranks (``num_replicas``/``rank``, :meth:`~BlockShuffleSampler.\
set_epoch`). With in-memory data the block size is 1: a plain random permutation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from geoplant.store import Store

__all__ = [
    "STATS_FILE",
    "BlockShuffleSampler",
    "RandomFlipRotate",
    "SurveyBatch",
    "SurveyDataset",
    "collate",
    "compute_normalization_stats",
    "load_normalization_stats",
    "plot",
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
_FLOAT_MODALITIES: Final = ("landsat", "climate", "env")
_STATS_FORMAT: Final = "geoplant-stats/1"

# ---------------------------------------------------------------------------------------------
# helpers


def _as_store(store: Any) -> Store:
    from geoplant.store import Store

    return store if isinstance(store, Store) else Store(store)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _open_group(store: Store, split: str) -> Any:
    import zarr

    if split not in store.splits or split == "po_train":
        valid = [s for s in store.splits if s != "po_train"]
        raise GeoplantError(f"no cube for split {split!r}", path=store.path,
                            fix=f"use one of: {', '.join(valid)}")
    url = _join(store.path, "cubes", f"{split}.zarr")
    kwargs = {"storage_options": store.storage_options} if store.storage_options else {}
    return zarr.open_group(url, mode="r", **kwargs)


def _fs_root(store: Store) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(store.path, **(store.storage_options or {}))


def _split_modalities(store: Store, split: str) -> list[str]:
    return list(store.manifest.get("modalities", {}).get(split, []))


def _has_labels(store: Store, split: str) -> bool:
    import pyarrow.parquet as pq

    fs, root = _fs_root(store)
    return "speciesId" in pq.read_schema(_join(root, "records", f"{split}.parquet"),
                                         filesystem=fs).names


def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


# ---------------------------------------------------------------------------------------------
# normalisation statistics


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

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        std = np.sqrt(np.divide(self.m2, self.n, out=np.zeros_like(self.m2), where=self.n > 0))
        return self.mean, std


def _channel_names(group: Any, name: str) -> list[str]:
    dim = CHANNEL_DIMS.get(name)
    if dim is not None and dim in group:
        return [str(v) for v in group[dim][:]]
    return [str(i) for i in range(group[name].shape[1])]


def _atomic_write_text(store: Store, name: str, text: str) -> str:
    fs, root = _fs_root(store)
    target = _join(root, name)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        tmp = f"{os.path.dirname(target)}/.{name}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    else:  # object stores: a single PUT is atomic
        fs.pipe_file(target, text.encode())
    return target


def compute_normalization_stats(
    store: Store | str | os.PathLike[str],
    split: str = TRAIN_SPLIT,
    modalities: Sequence[str] | None = None,
    *,
    survey_ids: np.ndarray | Sequence[int] | None = None,
    write: bool = True,
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
        Restrict to these surveys (e.g. the training part of a train/validation split).
    write
        Write the result atomically to ``<store>/stats.json`` (kept for every later
        :class:`SurveyDataset`, whatever its split).
    block_surveys
        Surveys per streamed block.

    Returns
    -------
    dict
        ``{"format", "split", "n_surveys", "modalities": {name: {"dim", "channels", "mean",
        "std", "count"}}}``; ``std`` of a constant channel is reported as 0 and used as 1.
    """
    store = _as_store(store)
    if "test" in split or not _has_labels(store, split):
        raise GeoplantError(f"refusing to compute normalisation statistics on {split!r}",
                            path=store.path,
                            fix=f"compute them on the training split ({TRAIN_SPLIT!r}); every "
                                "split is normalised with the training statistics")
    group = _open_group(store, split)
    all_ids = np.asarray(group["surveyId"][:], dtype=np.int64)
    mods = list(modalities or _split_modalities(store, split))
    missing = [m for m in mods if m not in group]
    if missing:
        raise GeoplantError(f"split {split!r} has no modality {', '.join(missing)}",
                            path=store.path, fix=f"use some of {_split_modalities(store, split)}")
    if survey_ids is None:
        keep = np.ones(len(all_ids), bool)
    else:
        wanted = np.asarray(survey_ids, dtype=np.int64)
        keep = np.isin(all_ids, wanted)
        if keep.sum() != len(np.unique(wanted)):
            raise GeoplantError(f"{len(np.unique(wanted)) - keep.sum()} survey ids not in "
                                f"split {split!r}", path=store.path)
    out: dict[str, Any] = {"format": _STATS_FORMAT, "split": split,
                           "n_surveys": int(keep.sum()), "created": time.strftime(
                               "%Y-%m-%dT%H:%M:%S%z"), "modalities": {}}
    for name in mods:
        array = group[name]
        valid_name = f"valid_{name}"
        valid = np.asarray(group[valid_name][:], bool) if valid_name in group \
            else np.ones(len(all_ids), bool)
        use = keep & valid
        channels = array.shape[1]
        moments = _Moments(channels)
        for start in range(0, len(all_ids), block_surveys):
            stop = min(start + block_surveys, len(all_ids))
            rows = np.flatnonzero(use[start:stop])
            if len(rows) == 0:
                continue
            block = np.asarray(array[start:stop])[rows]
            if block.dtype == np.uint8:
                data = torch.from_numpy(block)  # torch.bincount takes uint8 without a cast
                hist = np.stack([torch.bincount(data[:, c].reshape(-1), minlength=256).numpy()
                                 for c in range(channels)])
                moments.add_histogram(hist)
            else:
                step = max(1, (1 << 24) // max(1, block[0].size))  # bound the float64 copy
                for s in range(0, len(block), step):
                    moments.add_values(block[s : s + step])
        mean, std = moments.result()
        out["modalities"][name] = {
            "dim": CHANNEL_DIMS.get(name, "channel"), "channels": _channel_names(group, name),
            "mean": mean.tolist(), "std": std.tolist(), "count": moments.n.astype(int).tolist(),
        }
    if write:
        _atomic_write_text(store, STATS_FILE, json.dumps(out, indent=1) + "\n")
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
    """
    store = _as_store(store)
    fs, root = _fs_root(store)
    path = _join(root, STATS_FILE)
    stats: dict[str, Any] | None = None
    if fs.exists(path):
        with fs.open(path, "r") as handle:
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
                            path=path, fix="run geoplant.torch.compute_normalization_stats")
    train_mods = _split_modalities(store, TRAIN_SPLIT)
    wanted = sorted(set(train_mods) | (needed & set(train_mods)))
    try:
        return compute_normalization_stats(store, TRAIN_SPLIT, wanted, write=True)
    except OSError:  # read-only store: keep them in memory
        return compute_normalization_stats(store, TRAIN_SPLIT, wanted, write=False)


# ---------------------------------------------------------------------------------------------
# batches


class SurveyBatch(Sequence[dict[str, torch.Tensor]]):
    """What :meth:`SurveyDataset.__getitems__` returns: a batch already stacked.

    It is a sequence of per-sample dicts (views into the batch tensors), so torch's
    ``default_collate`` accepts it, but :func:`collate` returns :attr:`tensors` directly
    without splitting and re-stacking.

    Attributes
    ----------
    tensors
        ``{key: tensor with the batch as first dimension}``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self._n = len(tensors["surveyId"])

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        return {k: v[i] for k, v in self.tensors.items()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(self._n):
            yield self[i]


def collate(samples: Any) -> dict[str, torch.Tensor]:
    """Collate function for :class:`SurveyDataset`: free for a :class:`SurveyBatch`.

    Anything else (a list of sample dicts, e.g. after per-sample transforms) goes through
    ``torch.utils.data.default_collate``.
    """
    if isinstance(samples, SurveyBatch):
        return samples.tensors
    return default_collate(list(samples))


# ---------------------------------------------------------------------------------------------
# the dataset


class _ChunkCache:
    """LRU of decoded storage chunks, bounded in bytes (one per process)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, int], load: Callable[[], np.ndarray]) -> np.ndarray:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            self.hits += 1
            return item
        self.misses += 1
        item = load()
        self._items[key] = item
        self.bytes += item.nbytes
        while self.bytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes
        return item


class SurveyDataset(Dataset[dict[str, torch.Tensor]]):
    """Surveys of a split as dicts of tensors, read in batches straight from the store.

    A sample is ``{"sentinel2": (4, 128, 128), "landsat": (6, 4, 21), "climate": (4, 19, 12),
    "env": (n_env,), "labels": (n_species,) float32 multi-hot, "surveyId": int64}`` (only the
    requested modalities; ``labels`` on splits with species). Normalised modalities are
    float32; with ``normalize=False`` they keep the stored dtype (Sentinel-2 uint8, NaN kept).

    Parameters
    ----------
    store
        A :class:`~geoplant.store.Store` or its path.
    split
        e.g. ``"pa_train"`` or ``"pa_test"``.
    modalities
        Which of the split's modalities to return (default: all of them).
    transforms
        Callable applied to each sample dict (e.g. :class:`RandomFlipRotate`). With
        transforms, batches are split into samples and re-collated (slower); for speed apply
        batch-aware transforms such as :class:`RandomFlipRotate` to the collated batch.
    normalize
        Standardise with the training statistics (see the module doc); NaN/inf -> 0.
    stats
        Statistics to use instead of ``<store>/stats.json`` (as returned by
        :func:`compute_normalization_stats`).
    labels
        Return ``labels`` (default: when the split has species).
    survey_ids
        Restrict to these surveys (e.g. a validation subset); order follows the store.
    in_memory
        ``True``: load all requested modalities into RAM (numpy) once; ``False``: read them
        from the store on demand; a collection of modality names: those in RAM; ``None``
        (default): per modality, smallest first, whatever fits in a quarter of the available
        memory (psutil).
    cache_mb
        On-disk mode: bound of the per-process cache of decoded chunks.
    return_mask
        Add ``mask_<m>`` (bool, finite and present) for the float modalities and
        ``valid_<m>`` (bool per survey) for all requested modalities.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str],
        split: str,
        modalities: Sequence[str] | None = None,
        transforms: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        normalize: bool = True,
        *,
        stats: Mapping[str, Any] | None = None,
        labels: bool | None = None,
        survey_ids: np.ndarray | Sequence[int] | None = None,
        in_memory: bool | Sequence[str] | None = None,
        cache_mb: float = 256,
        return_mask: bool = False,
    ) -> None:
        self.store = _as_store(store)
        self.split = split
        group = _open_group(self.store, split)
        available = _split_modalities(self.store, split)
        self.modalities: tuple[str, ...] = tuple(modalities or available)
        missing = [m for m in self.modalities if m not in group]
        if missing:
            raise GeoplantError(f"split {split!r} has no modality {', '.join(missing)}",
                                path=self.store.path, fix=f"use some of {available}")
        self.transforms = transforms
        self.normalize = normalize
        self.return_mask = return_mask
        self.cache_mb = cache_mb
        all_ids = np.asarray(group["surveyId"][:], dtype=np.int64)
        self.n_store = len(all_ids)
        if survey_ids is None:
            self.rows = np.arange(len(all_ids), dtype=np.int64)
        else:
            wanted = np.unique(np.asarray(survey_ids, dtype=np.int64))
            self.rows = np.searchsorted(all_ids, wanted)
            bad = (self.rows >= len(all_ids)) | (all_ids[np.minimum(self.rows, len(all_ids) - 1)]
                                                 != wanted)
            if bad.any():
                raise GeoplantError(f"{int(bad.sum())} survey ids not in split {split!r}, e.g. "
                                    f"{wanted[bad][:3].tolist()}", path=self.store.path)
        #: surveyId of each dataset index (sorted).
        self.survey_ids: np.ndarray = all_ids[self.rows]
        self._shapes = {m: tuple(group[m].shape[1:]) for m in self.modalities}
        self._dtypes = {m: np.dtype(group[m].dtype) for m in self.modalities}
        self._chunks = {m: int(group[m].chunks[0]) for m in self.modalities}
        self._valid = {m: (np.asarray(group[f"valid_{m}"][:], bool)[self.rows]
                           if f"valid_{m}" in group else np.ones(len(self.rows), bool))
                       for m in self.modalities}

        # labels: CSR rows aligned with the dataset (numpy only: cheap to share with workers)
        want_labels = _has_labels(self.store, split) if labels is None else labels
        self.species_ids: np.ndarray | None = None
        self._label_indptr: np.ndarray | None = None
        self._label_indices: np.ndarray | None = None
        if want_labels:
            lab = self.store.labels(split)
            pos = np.searchsorted(lab.survey_ids, self.survey_ids)
            pos = np.minimum(pos, max(len(lab.survey_ids) - 1, 0))
            found = lab.survey_ids[pos] == self.survey_ids if len(lab.survey_ids) else \
                np.zeros(len(self.survey_ids), bool)
            csr = lab.matrix.tocsr()
            counts = np.where(found, np.diff(csr.indptr)[pos], 0)
            self._label_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            starts = csr.indptr[pos][found]
            lens = counts[found]
            self._label_indices = csr.indices[_ranges(starts, lens)].astype(np.int32)
            self.species_ids = np.asarray(lab.species_ids)

        # normalisation: per-channel scale/offset, x * scale + offset == (x - mean) / std
        self.stats: dict[str, Any] | None = None
        self._scale: dict[str, np.ndarray] = {}
        self._offset: dict[str, np.ndarray] = {}
        if normalize:
            self.stats = dict(stats) if stats is not None else \
                load_normalization_stats(self.store, self.modalities)
            for m in self.modalities:
                entry = self.stats["modalities"].get(m)
                if entry is None:
                    raise GeoplantError(f"no normalisation statistics for {m!r}",
                                        path=self.store.path,
                                        fix="recompute them with compute_normalization_stats")
                mean = np.asarray(entry["mean"], np.float64)
                std = np.asarray(entry["std"], np.float64)
                std = np.where(std > 0, std, 1.0)
                shape = (1, -1) + (1,) * (len(self._shapes[m]) - 1)
                self._scale[m] = (1.0 / std).astype(np.float32).reshape(shape)
                self._offset[m] = (-mean / std).astype(np.float32).reshape(shape)

        # storage: in memory or lazily opened per process
        self.in_memory_modalities: tuple[str, ...] = self._choose_memory(in_memory)
        self._memory: dict[str, np.ndarray] = {}
        for m in self.in_memory_modalities:
            self._memory[m] = self._read_rows(group, m, self.rows)
        self._pid = os.getpid()
        self._group: Any = group
        self._cache = _ChunkCache(int(cache_mb * 2**20))

    # -- configuration ------------------------------------------------------------------------

    def _per_survey_bytes(self, m: str) -> int:
        return int(np.prod(self._shapes[m])) * self._dtypes[m].itemsize

    def _choose_memory(self, in_memory: bool | Sequence[str] | None) -> tuple[str, ...]:
        if in_memory is True:
            return self.modalities
        if in_memory is False:
            return ()
        if in_memory is not None:
            unknown = [m for m in in_memory if m not in self.modalities]
            if unknown:
                raise GeoplantError(f"in_memory names unrequested modalities {unknown}",
                                    fix=f"use some of {list(self.modalities)}")
            return tuple(m for m in self.modalities if m in in_memory)
        budget = _available_memory() // 4
        chosen = []
        for m in sorted(self.modalities, key=self._per_survey_bytes):
            need = self._per_survey_bytes(m) * len(self.rows)
            if need <= budget:
                chosen.append(m)
                budget -= need
        return tuple(m for m in self.modalities if m in chosen)

    @property
    def block_size(self) -> int:
        """Surveys per storage chunk of the on-disk modalities (1 when all are in memory).

        The smallest chunk among the on-disk modalities: the natural block of
        :class:`BlockShuffleSampler`.
        """
        on_disk = [self._chunks[m] for m in self.modalities if m not in self._memory]
        return min(on_disk) if on_disk else 1

    @property
    def n_species(self) -> int:
        """Length of the ``labels`` vector (the store's species table), 0 without labels."""
        return 0 if self.species_ids is None else len(self.species_ids)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (f"SurveyDataset({self.store.path!r}, {self.split!r}, n={len(self)}, "
                f"modalities={list(self.modalities)}, "
                f"in_memory={list(self.in_memory_modalities)}, normalize={self.normalize})")

    # -- process safety -----------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_group"] = None  # reopened lazily in the receiving process
        state["_cache"] = _ChunkCache(int(self.cache_mb * 2**20))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = -1

    def _arrays(self) -> Any:
        if self._pid != os.getpid() or self._group is None:
            # a forked worker: drop the parent's handles and cache, open our own
            self._group = _open_group(self.store, self.split)
            self._cache = _ChunkCache(int(self.cache_mb * 2**20))
            self._pid = os.getpid()
        return self._group

    @property
    def cache_stats(self) -> dict[str, int]:
        """Chunk cache counters of this process: ``hits``, ``misses``, ``bytes``."""
        c = self._cache
        return {"hits": c.hits, "misses": c.misses, "bytes": c.bytes}

    # -- reading ------------------------------------------------------------------------------

    def _read_rows(self, group: Any, m: str, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted store positions) of one modality, reading whole shards at a time."""
        array = group[m]
        out = np.empty((len(rows), *self._shapes[m]), self._dtypes[m])
        step = int((getattr(array, "shards", None) or array.chunks)[0])
        shard = rows // step
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            lo, hi = int(rows[sel[0]]), int(rows[sel[-1]]) + 1
            block = np.asarray(array[lo:hi])
            if hi - lo == len(sel):  # contiguous rows: one plain copy
                out[sel[0] : sel[-1] + 1] = block
            else:
                out[sel] = block[rows[sel] - lo]
        return out

    def _gather_disk(self, m: str, rows: np.ndarray) -> np.ndarray:
        group = self._arrays()
        array = group[m]
        size = self._chunks[m]
        out = np.empty((len(rows), *self._shapes[m]), self._dtypes[m])
        chunk = rows // size
        for c in np.unique(chunk):
            c = int(c)
            data = self._cache.get(
                (m, c), lambda c=c: np.asarray(array[c * size : min((c + 1) * size,
                                                                    self.n_store)]))
            sel = chunk == c
            out[sel] = data[rows[sel] - c * size]
        return out

    def _labels(self, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        assert self._label_indptr is not None and self._label_indices is not None
        out[:] = 0
        starts = self._label_indptr[idx]
        lens = self._label_indptr[idx + 1] - starts
        out[np.repeat(np.arange(len(idx)), lens), self._label_indices[_ranges(starts, lens)]] = 1
        return out

    @staticmethod
    def _new(shape: tuple[int, ...], dtype: Any, shared: bool) -> tuple[torch.Tensor,
                                                                         np.ndarray]:
        """An output tensor and its numpy view; in shared memory inside a DataLoader worker,
        so sending the batch to the main process needs no further copy."""
        proto = torch.from_numpy(np.empty(0, dtype))
        if shared:  # as torch's default_collate does in workers: allocate, never copy, to shm
            storage = proto._typed_storage()._new_shared(int(np.prod(shape)))
            tensor = proto.new(storage).view(shape)
        else:
            tensor = proto.new_empty(shape)
        return tensor, tensor.numpy()

    def _normalize(self, m: str, x: np.ndarray, valid: np.ndarray, out: np.ndarray) -> None:
        np.multiply(x, self._scale[m], out=out, casting="unsafe")
        out += self._offset[m]
        if x.dtype.kind == "f":
            np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if not valid.all():
            out[~valid] = 0

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """A stacked batch ``{key: tensor (len(indices), ...)}``, read with one gather per
        modality (duplicates allowed, order kept; no transforms)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self.rows)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} surveys")
        idx = np.where(idx < 0, idx + n, idx)
        rows = self.rows[idx]
        shared = torch.utils.data.get_worker_info() is not None
        batch: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            memory = self._memory.get(m)
            shape = (len(idx), *self._shapes[m])
            valid = self._valid[m][idx]
            if not self.normalize and memory is not None:
                batch[m], out = self._new(shape, self._dtypes[m], shared)
                np.take(memory, idx, axis=0, out=out)
                x = out
            else:
                x = memory[idx] if memory is not None else self._gather_disk(m, rows)
            if self.return_mask:
                batch[f"valid_{m}"] = torch.from_numpy(valid)
                if m in _FLOAT_MODALITIES or x.dtype.kind == "f":
                    mask = np.isfinite(x)
                    mask[~valid] = False
                    batch[f"mask_{m}"] = torch.from_numpy(mask)
            if self.normalize:
                batch[m], out = self._new(shape, np.float32, shared)
                self._normalize(m, x, valid, out)
            elif memory is None:
                batch[m] = torch.from_numpy(x)
        if self._label_indptr is not None:
            batch["labels"], out = self._new((len(idx), self.n_species), np.float32, shared)
            self._labels(idx, out)
        batch["surveyId"] = torch.from_numpy(self.survey_ids[idx])
        return batch

    def __getitems__(self, indices: Sequence[int]) -> SurveyBatch | list[dict[str, Any]]:
        """Batched fetch used by torch's DataLoader (one storage access per chunk)."""
        batch = SurveyBatch(self.get_batch(indices))
        if self.transforms is None:
            return batch
        return [self.transforms(dict(sample)) for sample in batch]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = SurveyBatch(self.get_batch([int(index)]))[0]
        return self.transforms(sample) if self.transforms is not None else sample

    # -- conveniences -------------------------------------------------------------------------

    def sampler(self, shuffle: bool = True, seed: int = 0, **kwargs: Any) -> BlockShuffleSampler:
        """A :class:`BlockShuffleSampler` suited to this dataset (chunk-aligned blocks)."""
        return BlockShuffleSampler(self, shuffle=shuffle, seed=seed, **kwargs)

    def loader(self, batch_size: int = 64, shuffle: bool = True, *, seed: int = 0,
               num_replicas: int | None = None, rank: int | None = None,
               drop_last: bool = False, **kwargs: Any) -> DataLoader[Any]:
        """A DataLoader with a :class:`BlockShuffleSampler` and :func:`collate`.

        Extra keyword arguments (``num_workers``, ``pin_memory``, ``persistent_workers``,
        ...) go to ``torch.utils.data.DataLoader``. Call ``loader.sampler.set_epoch(e)``
        each epoch.
        """
        sampler = self.sampler(shuffle=shuffle, seed=seed, num_replicas=num_replicas,
                               rank=rank, drop_last=drop_last)
        return DataLoader(self, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          **kwargs)

    def plot(self, index: int, **kwargs: Any) -> Figure:
        """Plot one survey, see :func:`plot`."""
        return plot(self[index], **kwargs)


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each pair, vectorised."""
    starts = np.asarray(starts, np.int64)
    lens = np.asarray(lens, np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, np.int64)
    shift = starts - np.concatenate([[0], np.cumsum(lens)[:-1]])
    return np.repeat(shift, lens) + np.arange(total, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# sampling


class BlockShuffleSampler(Sampler[int]):
    """Chunk-aware shuffling of a dataset's indices, sharded over DDP ranks.

    Each epoch: the blocks (runs of indices whose surveys share a storage chunk of
    ``block_size`` surveys) are put in random order; consecutive blocks are grouped into
    buffers of ``buffer_blocks`` and the indices inside each buffer are shuffled. A batch then
    touches a few chunks, each decoded once and served from the cache for many samples.
    ``block_size=1`` gives a plain uniform permutation (the default for in-memory data).

    Sharding: the epoch's global order (identical on every rank: seed + epoch) is cut into
    ``num_replicas`` contiguous parts of ``num_samples = ceil(n / num_replicas)`` indices
    (each part keeps the block locality). When ``n`` is not a multiple, the order is
    **padded** by repeating its first ``total_size - n`` indices at the end, so every rank
    gets the same number of samples (required by DDP's collective ops); the padding therefore
    sits at the end of the last rank(s), and :attr:`padding` says how many of this rank's
    indices are repeats (drop them, or de-duplicate by ``surveyId``, when gathering
    evaluation predictions). Without the padding every survey is seen exactly once per epoch
    across ranks. ``drop_last=True`` truncates instead (``floor(n / num_replicas)`` each;
    up to ``num_replicas - 1`` surveys, different each epoch, are skipped).

    Parameters
    ----------
    data_source
        A :class:`SurveyDataset` (blocks follow its storage chunks) or a length.
    block_size
        Surveys per block (default: ``data_source.block_size``, else 1).
    buffer_blocks
        Blocks shuffled together.
    shuffle
        ``False``: sequential order (evaluation), still sharded.
    seed
        Base seed; the epoch's order depends on ``seed + epoch`` only.
    num_replicas, rank
        DDP world size and rank (default: from ``torch.distributed`` when initialised,
        else 1 and 0).
    drop_last
        Truncate to a multiple of ``num_replicas`` instead of padding.
    """

    def __init__(
        self,
        data_source: SurveyDataset | int,
        block_size: int | None = None,
        buffer_blocks: int = 16,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if isinstance(data_source, SurveyDataset):
            self.n = len(data_source)
            rows = data_source.rows
            default_block = data_source.block_size
        else:
            self.n = int(data_source)
            rows = np.arange(self.n, dtype=np.int64)
            default_block = 1
        self.block_size = int(block_size or default_block)
        if self.block_size < 1 or buffer_blocks < 1:
            raise GeoplantError("block_size and buffer_blocks must be >= 1")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else \
                (dist.get_world_size() if ready else 1)
            rank = rank if rank is not None else (dist.get_rank() if ready else 0)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise GeoplantError(f"invalid rank {rank} for {num_replicas} replicas")
        self.buffer_blocks = int(buffer_blocks)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.epoch = 0
        # block id of each index: rows are sorted, so a block is a contiguous run of indices
        _, self._block = np.unique(rows // self.block_size, return_inverse=True)
        self.n_blocks = int(self._block.max()) + 1 if self.n else 0
        if drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    @property
    def padding(self) -> int:
        """How many of this rank's indices (at the end of its list) are padding repeats."""
        if self.drop_last:
            return 0
        end = (self.rank + 1) * self.num_samples
        return int(min(self.num_samples, max(0, end - self.n)))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (a new order each epoch, the same on all ranks)."""
        self.epoch = int(epoch)

    def global_order(self) -> np.ndarray:
        """The epoch's order of all ``n`` indices, before sharding."""
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.block_size == 1:
            return rng.permutation(self.n).astype(np.int64)
        block_rank = np.empty(self.n_blocks, np.int64)
        block_rank[rng.permutation(self.n_blocks)] = np.arange(self.n_blocks)
        buffer = block_rank[self._block] // self.buffer_blocks
        return np.lexsort((rng.random(self.n), buffer)).astype(np.int64)

    def rank_indices(self) -> np.ndarray:
        """This rank's indices for the current epoch (padding, if any, at the end)."""
        order = self.global_order()
        if self.total_size > self.n:
            order = np.resize(order, self.total_size)  # cyclic: repeats the first indices
        start = self.rank * self.num_samples
        return order[start : start + self.num_samples]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


# ---------------------------------------------------------------------------------------------
# augmentation


class RandomFlipRotate:
    """Random flips and 90-degree rotations of image patches (the 8 symmetries of a square).

    The same symmetry is applied to every channel (R, G, B, NIR) of a patch and to the
    matching ``mask_<key>`` if present; works on a sample (``(C, H, W)``) or a collated batch
    (``(B, C, H, W)``, one random symmetry per sample). Randomness comes from torch's RNG,
    which the DataLoader seeds differently in each worker.

    Parameters
    ----------
    keys
        Sample keys holding patches.
    flip
        Allow horizontal/vertical flips.
    rotate
        Allow rotations by 90, 180, 270 degrees.
    generator
        Optional ``torch.Generator`` for reproducibility.
    """

    def __init__(self, keys: Sequence[str] = ("sentinel2",), *, flip: bool = True,
                 rotate: bool = True, generator: torch.Generator | None = None) -> None:
        self.keys = tuple(keys)
        self.flip = flip
        self.rotate = rotate
        self.generator = generator

    @staticmethod
    def apply(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
        """Rotate the last two dims by ``k`` quarter turns, after a left-right flip if asked."""
        if flip:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x

    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.randint(0, 4, (n,), generator=self.generator) if self.rotate \
            else torch.zeros(n, dtype=torch.int64)
        f = torch.randint(0, 2, (n,), generator=self.generator).bool() if self.flip \
            else torch.zeros(n, dtype=torch.bool)
        return k, f

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        keys = [k for k in self.keys if k in sample]
        if not keys:
            return out
        first = sample[keys[0]]
        if first.ndim == 3:
            k, f = self._draw(1)
            for key in keys + [f"mask_{k_}" for k_ in keys if f"mask_{k_}" in sample]:
                out[key] = self.apply(sample[key], int(k[0]), bool(f[0])).contiguous()
            return out
        k, f = self._draw(first.shape[0])
        for key in keys + [f"mask_{k_}" for k_ in keys if f"mask_{k_}" in sample]:
            x = sample[key].clone()
            for kk in range(4):
                for ff in (False, True):
                    sel = (k == kk) & (f == ff)
                    if sel.any() and (kk or ff):
                        x[sel] = self.apply(sample[key][sel], kk, ff)
            out[key] = x
        return out


# ---------------------------------------------------------------------------------------------
# plotting


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _stretch(image: np.ndarray) -> np.ndarray:
    """Per-channel 2-98 percentile stretch to [0, 1] (works for raw and normalised values)."""
    image = image.astype(np.float64)
    out = np.empty_like(image)
    for c in range(image.shape[0]):
        band = image[c]
        finite = band[np.isfinite(band)]
        lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        out[c] = np.clip((band - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return np.nan_to_num(out)


def plot(sample: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """Plot a survey: RGB patch, NIR, env values, Landsat series, climate series.

    Parameters
    ----------
    sample
        A sample dict of :class:`SurveyDataset` (tensors or arrays); for a collated batch the
        first survey is shown. Missing modalities leave their panel empty.
    title
        Figure title (default: the surveyId and the number of species present).

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not shown; save it with ``fig.savefig``).
    """
    from matplotlib.figure import Figure

    from geoplant import layouts

    s = {k: _to_numpy(v) for k, v in sample.items()}
    if "surveyId" in s and s["surveyId"].ndim == 1:  # a batch: first survey
        s = {k: v[0] for k, v in s.items()}
    fig = Figure(figsize=(13, 7), layout="constrained")
    grid = fig.add_gridspec(2, 4)
    ax_rgb, ax_nir = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_env = fig.add_subplot(grid[0, 2:])
    ax_ls, ax_cl = fig.add_subplot(grid[1, :2]), fig.add_subplot(grid[1, 2:])
    s2 = s.get("sentinel2")
    if s2 is not None:
        img = _stretch(s2)
        ax_rgb.imshow(np.moveaxis(img[:3], 0, -1))
        ax_nir.imshow(img[3], cmap="magma")
    ax_rgb.set_title("Sentinel-2 RGB")
    ax_nir.set_title("Sentinel-2 NIR")
    for ax in (ax_rgb, ax_nir):
        ax.set_xticks([])
        ax.set_yticks([])
    env = s.get("env")
    if env is not None:
        ax_env.bar(np.arange(len(env)), np.nan_to_num(env.astype(np.float64)), color="0.4")
        ax_env.set_xlabel("env variable")
    ax_env.set_title("environmental values")
    landsat = s.get("landsat")
    if landsat is not None:  # (band, quarter, year) -> time axis year + (quarter - 1) / 4
        years = np.asarray(layouts.LANDSAT_YEARS, np.float64)
        t = (years[None, :] + (np.arange(4)[:, None]) / 4).T.ravel()
        for b, band in enumerate(layouts.LANDSAT_BANDS[: landsat.shape[0]]):
            ax_ls.plot(t, landsat[b].T.ravel(), label=band, lw=1)
        ax_ls.legend(fontsize=7, ncol=3)
        ax_ls.set_xlabel("year")
    ax_ls.set_title("Landsat (quarterly)")
    climate = s.get("climate")
    if climate is not None:  # (variable, year, month)
        years = np.asarray(layouts.CLIMATE_YEARS, np.float64)
        t = (years[:, None] + np.arange(12)[None, :] / 12).ravel()
        for v, var in enumerate(layouts.CLIMATE_VARIABLES[: climate.shape[0]]):
            ax_cl.plot(t, climate[v].ravel(), label=var, lw=1)
        ax_cl.legend(fontsize=7, ncol=4)
        ax_cl.set_xlabel("year")
    ax_cl.set_title("climate (monthly)")
    if title is None:
        parts = []
        if "surveyId" in s:
            parts.append(f"survey {int(s['surveyId'])}")
        if "labels" in s:
            parts.append(f"{int(np.asarray(s['labels']).sum())} species present")
        title = ", ".join(parts)
    if title:
        fig.suptitle(title)
    return fig

