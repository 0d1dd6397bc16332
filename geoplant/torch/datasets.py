"""Surveys of a store split as dicts of tensors, fetched a whole batch at a time.

:class:`SurveyDataset` implements ``__getitems__``: torch's DataLoader (torch >= 2.0, see
``torch/utils/data/_utils/fetch.py``) hands it the whole list of a batch's indices, so a batch
is one vectorised gather per modality instead of 64 Python calls, returned as a
:class:`SurveyBatch` that :func:`collate` passes through. Arrays are held either **in memory**
(numpy, read whole once in the main process before the workers fork; workers share the pages
copy-on-write) or **on disk**: each worker opens the Zarr arrays lazily (after fork /
unpickling) and keeps a small LRU cache of decoded storage chunks (16 surveys for Sentinel-2,
1024 for the others), bounded by ``cache_mb``, so memory per worker is flat. ``in_memory=None``
picks per modality, smallest first, what fits in a quarter of the available memory (psutil).
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, overload

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from geoplant.errors import GeoplantError
from geoplant.stats import load_normalization_stats
from geoplant.store import Store, cube_array, open_store
from geoplant.torch.plotting import plot

if TYPE_CHECKING:
    import zarr
    from matplotlib.figure import Figure

    from geoplant.torch.samplers import BlockShuffleSampler

__all__ = ["SurveyBatch", "SurveyDataset", "collate"]

#: Modalities stored as floats (they get ``mask_<m>`` with ``return_mask``).
_FLOAT_MODALITIES: Final = ("landsat", "climate", "env")

#: A sample (or a batch): modality tensors, ``labels``, ``surveyId`` and masks by key.
Sample = dict[str, torch.Tensor]


def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


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
# batches


class SurveyBatch(Sequence[Sample]):
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

    @overload
    def __getitem__(self, i: int) -> Sample: ...

    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        return {k: v[i] for k, v in self.tensors.items()}

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self._n):
            yield self[i]


def collate(samples: SurveyBatch | Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
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


def _requested_modalities(modalities: str | Sequence[str] | None, available: Sequence[str],
                          split: str, path: str) -> tuple[str, ...]:
    """The modalities a dataset returns: all by default; one name is a one-element tuple.

    Raises
    ------
    GeoplantError
        If none is given (an empty sequence) or one is not in the split's cube.
    """
    if modalities is None:
        return tuple(available)
    chosen = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    if not chosen:
        raise GeoplantError("no modality given", path=path,
                            fix=f"pass some of {list(available)}, or None for all of them")
    missing = [m for m in chosen if m not in available]
    if missing:
        raise GeoplantError(f"split {split!r} has no modality {', '.join(missing)}",
                            path=path, fix=f"use some of {list(available)}")
    return chosen


class SurveyDataset(Dataset[Sample]):
    """Surveys of a split as dicts of tensors, read in batches straight from the store.

    A sample is ``{"sentinel2": (4, 128, 128), "landsat": (6, 4, 21), "climate": (4, 19, 12),
    "env": (n_env,), "labels": (n_species,) float32 multi-hot, "surveyId": int64}`` (only the
    requested modalities; ``labels`` on splits with species). Normalised modalities are
    float32; with ``normalize=False`` they keep the stored dtype (Sentinel-2 uint8, NaN kept).

    Normalisation is ``(x - mean) / std`` per channel with the training split's statistics
    (:mod:`geoplant.stats`), whatever the split; afterwards NaN/inf become 0 (the training
    mean), and a modality whose survey item was missing in the raw release (``valid_<m>``
    false) is all 0.

    Parameters
    ----------
    store
        A :class:`~geoplant.store.Store` or its path.
    split
        e.g. ``"pa_train"`` or ``"pa_test"``.
    modalities
        Which of the split's modalities to return: names, or one name (default ``None``: all
        of them; an empty sequence is an error).
    transforms
        Callable applied to each sample dict (e.g.
        :class:`~geoplant.torch.transforms.RandomFlipRotate`). With transforms, batches are
        split into samples and re-collated (slower); for speed apply batch-aware transforms
        such as ``RandomFlipRotate`` to the collated batch.
    normalize
        Standardise with the training statistics (see above); NaN/inf -> 0.
    stats
        Statistics to use instead of ``<store>/stats.json`` (as returned by
        :func:`~geoplant.stats.compute_normalization_stats`).
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
        modalities: str | Sequence[str] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        normalize: bool = True,
        *,
        stats: Mapping[str, Any] | None = None,
        labels: bool | None = None,
        survey_ids: np.ndarray | Sequence[int] | None = None,
        in_memory: bool | Sequence[str] | None = None,
        cache_mb: float = 256,
        return_mask: bool = False,
    ) -> None:
        self.store = open_store(store)
        self.split = split
        group = self.store.cube_group(split)
        self.modalities: tuple[str, ...] = _requested_modalities(
            modalities, self.store.modalities(split), split, self.store.path)
        self.transforms = transforms
        self.normalize = normalize
        self.return_mask = return_mask
        self.cache_mb = cache_mb
        all_ids = np.asarray(cube_array(group, "surveyId")[:], dtype=np.int64)
        self.n_store = len(all_ids)
        self.rows = self._select_rows(all_ids, survey_ids)
        #: surveyId of each dataset index (sorted).
        self.survey_ids: np.ndarray = all_ids[self.rows]
        self._read_layout(group)

        # labels: CSR rows aligned with the dataset (numpy only: cheap to share with workers)
        self.species_ids: np.ndarray | None = None
        self._label_indptr: np.ndarray | None = None
        self._label_indices: np.ndarray | None = None
        want_labels = self.store.has_species(split) if labels is None else labels
        if want_labels:
            self._load_labels()

        # normalisation: per-channel scale/offset, x * scale + offset == (x - mean) / std
        self.stats: dict[str, Any] | None = None
        self._scale: dict[str, np.ndarray] = {}
        self._offset: dict[str, np.ndarray] = {}
        if normalize:
            self.stats = dict(stats) if stats is not None else \
                load_normalization_stats(self.store, self.modalities)
            self._set_normalization(self.stats)

        # storage: in memory or lazily opened per process
        self.in_memory_modalities: tuple[str, ...] = self._choose_memory(in_memory)
        self._memory: dict[str, np.ndarray] = {}
        for m in self.in_memory_modalities:
            self._memory[m] = self._read_rows(group, m, self.rows)
        self._pid = os.getpid()
        self._group: zarr.Group | None = group
        self._cache = _ChunkCache(int(cache_mb * 2**20))

    # -- construction steps -------------------------------------------------------------------

    def _select_rows(self, all_ids: np.ndarray,
                     survey_ids: np.ndarray | Sequence[int] | None) -> np.ndarray:
        """Store positions (sorted) of the requested surveys; all of them by default."""
        if survey_ids is None:
            return np.arange(len(all_ids), dtype=np.int64)
        wanted = np.unique(np.asarray(survey_ids, dtype=np.int64))
        rows = np.searchsorted(all_ids, wanted)
        bad = (rows >= len(all_ids)) | (all_ids[np.minimum(rows, len(all_ids) - 1)] != wanted)
        if bad.any():
            raise GeoplantError(f"{int(bad.sum())} survey ids not in split {self.split!r}, "
                                f"e.g. {wanted[bad][:3].tolist()}", path=self.store.path)
        return rows

    def _read_layout(self, group: zarr.Group) -> None:
        """Shape, dtype, chunking and per-survey validity of each requested modality."""
        arrays = {m: cube_array(group, m) for m in self.modalities}
        self._shapes = {m: tuple(a.shape[1:]) for m, a in arrays.items()}
        self._dtypes = {m: np.dtype(a.dtype) for m, a in arrays.items()}
        self._chunks = {m: int(a.chunks[0]) for m, a in arrays.items()}
        self._valid = {m: (np.asarray(cube_array(group, f"valid_{m}")[:], bool)[self.rows]
                           if f"valid_{m}" in group else np.ones(len(self.rows), bool))
                       for m in self.modalities}

    def _load_labels(self) -> None:
        """The split's presence matrix as CSR rows aligned with the dataset's surveys."""
        lab = self.store.labels(self.split)
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

    def _set_normalization(self, stats: Mapping[str, Any]) -> None:
        """Per-channel ``scale`` and ``offset`` of each modality, shaped to broadcast."""
        for m in self.modalities:
            entry = stats["modalities"].get(m)
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

    # -- configuration ------------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        """Surveys per storage chunk of the on-disk modalities (1 when all are in memory).

        The smallest chunk among the on-disk modalities: the natural block of
        :class:`~geoplant.torch.samplers.BlockShuffleSampler`.
        """
        on_disk = [self._chunks[m] for m in self.modalities if m not in self._memory]
        return min(on_disk) if on_disk else 1

    @property
    def n_species(self) -> int:
        """Length of the ``labels`` vector (the store's species table), 0 without labels."""
        return 0 if self.species_ids is None else len(self.species_ids)

    @property
    def normalization(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-modality ``(scale, offset)``, float32, with ``x * scale + offset`` the
        normalised value (before NaN/inf -> 0); empty when ``normalize`` is false.

        Both broadcast against a batch ``(B, C, ...)`` (shape ``(1, C, 1, ...)``) and are
        read-only views.
        """
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for m in self._scale:
            scale, offset = self._scale[m].view(), self._offset[m].view()
            scale.flags.writeable = offset.flags.writeable = False
            out[m] = (scale, offset)
        return out

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

    def _arrays(self) -> zarr.Group:
        if self._pid != os.getpid() or self._group is None:
            # a forked worker: drop the parent's handles and cache, open our own
            self._group = self.store.cube_group(self.split)
            self._cache = _ChunkCache(int(self.cache_mb * 2**20))
            self._pid = os.getpid()
        return self._group

    @property
    def cache_stats(self) -> dict[str, int]:
        """Chunk cache counters of this process: ``hits``, ``misses``, ``bytes``."""
        c = self._cache
        return {"hits": c.hits, "misses": c.misses, "bytes": c.bytes}

    # -- reading ------------------------------------------------------------------------------

    def _read_rows(self, group: zarr.Group, m: str, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted store positions) of one modality, reading whole shards at a time."""
        array = cube_array(group, m)
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

    def _read_chunk(self, array: zarr.Array, size: int, chunk: int) -> np.ndarray:
        """Storage chunk ``chunk`` (``size`` surveys; the last one may be shorter), decoded."""
        return np.asarray(array[chunk * size : min((chunk + 1) * size, self.n_store)])

    def _gather_disk(self, m: str, rows: np.ndarray) -> np.ndarray:
        array = cube_array(self._arrays(), m)
        size = self._chunks[m]
        out = np.empty((len(rows), *self._shapes[m]), self._dtypes[m])
        chunk = rows // size
        for c in np.unique(chunk):
            c = int(c)
            data = self._cache.get((m, c), functools.partial(self._read_chunk, array, size, c))
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
    def _alloc_batch_tensor(shape: tuple[int, ...], dtype: np.dtype[Any] | type[np.generic],
                            shared: bool) -> tuple[torch.Tensor, np.ndarray]:
        """An uninitialised output tensor and its numpy view; in shared memory inside a
        DataLoader worker, so sending the batch to the main process needs no further copy."""
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

    def _positions(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dataset indices as non-negative int64 positions (negative ones count from the end)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self.rows)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} surveys")
        return np.where(idx < 0, idx + n, idx)

    def _modality_batch(self, m: str, idx: np.ndarray, rows: np.ndarray, shared: bool,
                        batch: dict[str, torch.Tensor]) -> None:
        """Add modality ``m`` of dataset positions ``idx`` (store positions ``rows``) and its
        masks if asked to ``batch``."""
        memory = self._memory.get(m)
        shape = (len(idx), *self._shapes[m])
        valid = self._valid[m][idx]
        if not self.normalize and memory is not None:
            batch[m], out = self._alloc_batch_tensor(shape, self._dtypes[m], shared)
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
            batch[m], out = self._alloc_batch_tensor(shape, np.float32, shared)
            self._normalize(m, x, valid, out)
        elif memory is None:
            batch[m] = torch.from_numpy(x)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """A stacked batch ``{key: tensor (len(indices), ...)}``, read with one gather per
        modality (duplicates allowed, order kept; no transforms)."""
        idx = self._positions(indices)
        rows = self.rows[idx]
        shared = torch.utils.data.get_worker_info() is not None
        batch: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            self._modality_batch(m, idx, rows, shared, batch)
        if self._label_indptr is not None:
            batch["labels"], out = self._alloc_batch_tensor((len(idx), self.n_species),
                                                            np.float32, shared)
            self._labels(idx, out)
        batch["surveyId"] = torch.from_numpy(self.survey_ids[idx])
        return batch

    def __getitems__(self, indices: Sequence[int]) -> SurveyBatch | list[Sample]:
        """Batched fetch used by torch's DataLoader (one storage access per chunk)."""
        batch = SurveyBatch(self.get_batch(indices))
        if self.transforms is None:
            return batch
        return [self.transforms(dict(sample)) for sample in batch]

    def __getitem__(self, index: int) -> Sample:
        sample = SurveyBatch(self.get_batch([int(index)]))[0]
        return self.transforms(sample) if self.transforms is not None else sample

    # -- conveniences -------------------------------------------------------------------------

    def sampler(self, shuffle: bool = True, seed: int = 0,
                **kwargs: Any) -> BlockShuffleSampler:
        """A :class:`~geoplant.torch.samplers.BlockShuffleSampler` suited to this dataset
        (chunk-aligned blocks); ``kwargs`` go to it."""
        from geoplant.torch.samplers import BlockShuffleSampler  # it imports this module

        return BlockShuffleSampler(self, shuffle=shuffle, seed=seed, **kwargs)

    def loader(self, batch_size: int = 64, shuffle: bool = True, *, seed: int = 0,
               num_replicas: int | None = None, rank: int | None = None,
               drop_last: bool = False, **kwargs: Any) -> DataLoader[Sample]:
        """A DataLoader with a :class:`~geoplant.torch.samplers.BlockShuffleSampler` and
        :func:`collate`.

        Extra keyword arguments (``num_workers``, ``pin_memory``, ``persistent_workers``,
        ...) go to ``torch.utils.data.DataLoader``. Call ``loader.sampler.set_epoch(e)``
        each epoch.
        """
        sampler = self.sampler(shuffle=shuffle, seed=seed, num_replicas=num_replicas,
                               rank=rank, drop_last=drop_last)
        return DataLoader(self, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          **kwargs)

    def plot(self, index: int, **kwargs: Any) -> Figure:
        """Plot one survey, see :func:`~geoplant.torch.plotting.plot`."""
        return plot(self[index], **kwargs)
