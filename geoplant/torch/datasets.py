"""Surveys of a store split as dicts of tensors, fetched a whole batch at a time.

:class:`SurveyDataset` implements ``__getitems__``: torch's DataLoader (torch >= 2.0, see
``torch/utils/data/_utils/fetch.py``) hands it the whole list of a batch's indices, so a batch
is one vectorised gather per modality instead of 64 Python calls, returned as a
:class:`SurveyBatch` that :func:`collate` passes through. All tensors of a batch are views of
one buffer (:class:`~geoplant.torch.batches.PackedBatch`), reused once the batch is freed:
from a DataLoader worker it crosses to the main process as one shared-memory block (then as a
slot number), and pinning it (``pin_memory=True``) is one copy.

Arrays are held either **in memory** (numpy, read whole once in the main process before the
workers fork; workers share the pages copy-on-write) or **on disk**: each process reads
through a chunk reader (:mod:`geoplant.torch.readers`: direct Zarr v3 chunk reads, or
zarr-python). Sentinel-2 rows go straight from the chunk files into the batch (the OS page
cache, shared by all workers, is their cache); other modalities go through a small LRU cache
of decoded chunks per process, bounded by ``cache_mb``, so memory per worker is flat.
``in_memory=None`` picks per modality, smallest first, what fits in a quarter of the available
memory (psutil).

For GPUs, ``normalize=False`` ships every modality in its stored dtype (Sentinel-2 uint8: a
quarter of the float32 bytes through workers, pinning and the host-to-device copy) and
:class:`~geoplant.torch.normalize.DeviceNormalizer`, inside the model, standardises on the
device to exactly the floats the CPU path gives.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, overload

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from geoplant.errors import GeoplantError
from geoplant.files import join_path
from geoplant.stats import load_normalization_stats, scale_offset
from geoplant.store import Store, cube_array, open_store
from geoplant.torch.batches import PackedBatch, pack
from geoplant.torch.plotting import plot
from geoplant.torch.readers import (
    READERS,
    ChunkReader,
    DirectChunkReader,
    ReaderName,
    open_chunk_reader,
)

if TYPE_CHECKING:
    import zarr
    from matplotlib.figure import Figure

    from geoplant.torch.samplers import BlockShuffleSampler

__all__ = ["PackedBatch", "SurveyBatch", "SurveyDataset", "collate"]

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
    """Collate function for :class:`SurveyDataset`: free for a :class:`SurveyBatch` (its
    :class:`PackedBatch` is returned as is).

    Anything else (a list of sample dicts, e.g. after per-sample transforms) goes through
    ``torch.utils.data.default_collate``.
    """
    if isinstance(samples, SurveyBatch):
        return samples.tensors
    return default_collate(list(samples))


# ---------------------------------------------------------------------------------------------
# the dataset


class _ChunkCache:
    """LRU of decoded storage chunks, bounded in bytes (one per process).

    Evicted arrays are recycled as destinations of the next reads: a fresh 256 kB array
    per chunk (page faults) costs as much as decoding it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._free: dict[tuple[str, int], list[np.ndarray]] = {}

    def get_many(self, keys: Sequence[tuple[str, int]], reader: ChunkReader) -> list[np.ndarray]:
        """The whole chunks of ``keys`` (modality, chunk); the missing ones read together by
        ``reader`` (concurrently). Valid until the next call: their arrays are recycled."""
        found: dict[tuple[str, int], np.ndarray] = {}
        for key in keys:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                found[key] = item
        self.hits += len(found)
        missing = [k for k in keys if k not in found]
        if missing:
            self.misses += len(missing)
            free = self._free.setdefault((missing[0][0], reader.chunk_surveys), [])
            outs = [free.pop() if free else reader.empty() for _ in missing]
            reader.read_many_into([c for _, c in missing], outs)
            for key, item in zip(missing, outs, strict=True):
                found[key] = item
                self._items[key] = item
                self.bytes += item.nbytes
            while self.bytes > self.max_bytes and len(self._items) > 1:
                (m, _), old = self._items.popitem(last=False)
                self.bytes -= old.nbytes
                self._free.setdefault((m, len(old)), []).append(old)
        return [found[k] for k in keys]


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
    float32. With ``normalize=False`` every modality keeps its stored dtype (Sentinel-2
    uint8, NaN kept) and the batch also carries ``valid_<m>`` (bool per survey) for each
    modality: what :class:`~geoplant.torch.normalize.DeviceNormalizer` needs to give, on the
    device, exactly the floats of ``normalize=True``.

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
        Callable applied to each sample dict, or to the whole batch dict when it has a true
        ``batched`` attribute (as :class:`~geoplant.torch.transforms.RandomFlipRotate`: one
        call per batch, no per-sample split and re-collate). On a GPU, rather apply
        ``RandomFlipRotate`` to the batch on the device.
    normalize
        ``True``: standardise on the CPU with the training statistics (see above), float32.
        ``False``: stored dtypes, for normalising on the device (``DeviceNormalizer``).
    stats
        Statistics to use instead of ``<store>/stats.json`` (as returned by
        :func:`~geoplant.stats.compute_normalization_stats`, e.g. on a training subset).
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
        On-disk mode: bound of the per-process cache of decoded chunks (of the modalities
        not read row by row, see above).
    return_mask
        Add ``mask_<m>`` (bool, finite and present) for the float modalities and
        ``valid_<m>`` (bool per survey) for all requested modalities.
    reader
        How chunks are read (:mod:`geoplant.torch.readers`): ``"auto"`` (default: the direct
        Zarr v3 chunk reader when the layout allows, else zarr-python), ``"direct"``,
        ``"zarr"``.
    io_threads
        Chunk files read concurrently per process (on-disk batches and the in-memory load).
        Default: 1 on a local filesystem (page-cached reads take ~15 us per 256 kB chunk, less
        than handing them to a thread; DataLoader workers read in parallel anyway), 8 on a
        remote one (fsspec: each read waits on the network). Raise it for cold local disks
        with few workers.
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
        reader: ReaderName = "auto",
        io_threads: int | None = None,
    ) -> None:
        self.store = open_store(store)
        self.split = split
        group = self.store.cube_group(split)
        self.modalities: tuple[str, ...] = _requested_modalities(
            modalities, self.store.modalities(split), split, self.store.path)
        if reader not in READERS:
            raise GeoplantError(f"unknown reader {reader!r}", fix=f"use one of {list(READERS)}")
        self.transforms = transforms
        self.normalize = normalize
        self.return_mask = return_mask
        self.cache_mb = cache_mb
        if io_threads is None:
            protocol = self.store.fs.protocol
            local = (protocol if isinstance(protocol, str) else protocol[0]) in ("file", "local")
            io_threads = 1 if local else 8
        self.io_threads = max(1, int(io_threads))
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
        self.stats: dict[str, Any] | None = dict(stats) if stats is not None else None
        self._scale: dict[str, np.ndarray] = {}
        self._offset: dict[str, np.ndarray] = {}
        if normalize:
            if self.stats is None:
                self.stats = load_normalization_stats(self.store, self.modalities)
            self._set_normalization(self.stats)

        # readers: chosen once here (the "auto" self-check), reopened in each process
        self._readers: dict[str, ChunkReader] = {}
        for m in self.modalities:
            self._readers[m] = self._open_reader(group, m, reader)
        #: Chunk reader of each modality (``"direct"`` or ``"zarr"``).
        self.readers: dict[str, str] = {m: r.name for m, r in self._readers.items()}

        # storage: in memory or lazily opened per process
        self._pid = os.getpid()
        self._group: zarr.Group | None = group
        self._cache = _ChunkCache(int(cache_mb * 2**20))
        self.in_memory_modalities: tuple[str, ...] = self._choose_memory(in_memory)
        self._memory: dict[str, np.ndarray] = {}
        for m in self.in_memory_modalities:
            self._memory[m] = self._read_rows(m, self.rows)

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

    def _open_reader(self, group: zarr.Group, m: str, reader: ReaderName) -> ChunkReader:
        path = join_path(self.store.root, "cubes", f"{self.split}.zarr", m)
        return open_chunk_reader(cube_array(group, m), self.store.fs, path, reader,
                                 threads=self.io_threads)

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
            if m not in stats["modalities"]:
                raise GeoplantError(f"no normalisation statistics for {m!r}",
                                    path=self.store.path,
                                    fix="recompute them with compute_normalization_stats")
            scale, offset = scale_offset(stats, m)
            shape = (1, -1) + (1,) * (len(self._shapes[m]) - 1)
            self._scale[m] = scale.reshape(shape)
            self._offset[m] = offset.reshape(shape)

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

    def normalization_stats(self) -> dict[str, Any]:
        """The statistics this dataset normalises with, or would with ``normalize=True``:
        the ``stats`` given, else ``<store>/stats.json`` (computed from ``pa_train`` if
        absent). What :meth:`DeviceNormalizer.from_dataset
        <geoplant.torch.normalize.DeviceNormalizer.from_dataset>` uses."""
        if self.stats is None:
            self.stats = load_normalization_stats(self.store, self.modalities)
        return self.stats

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
        state["_readers"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = -1

    def _arrays(self) -> zarr.Group:
        if self._pid != os.getpid() or self._group is None:
            # a forked worker: drop the parent's handles, threads and cache, open our own
            self._group = self.store.cube_group(self.split)
            self._cache = _ChunkCache(int(self.cache_mb * 2**20))
            self._readers = {}
            self._pid = os.getpid()
        return self._group

    def _reader(self, m: str) -> ChunkReader:
        group = self._arrays()
        reader = self._readers.get(m)
        if reader is None:  # the kind chosen in the main process, without its self-check
            reader = self._readers[m] = self._open_reader(
                group, m, "direct" if self.readers[m] == "direct" else "zarr")
        return reader

    @property
    def cache_stats(self) -> dict[str, int]:
        """Chunk cache counters of this process: ``hits``, ``misses``, ``bytes``."""
        c = self._cache
        return {"hits": c.hits, "misses": c.misses, "bytes": c.bytes}

    # -- reading ------------------------------------------------------------------------------

    def _read_rows(self, m: str, rows: np.ndarray) -> np.ndarray:
        """Rows (sorted store positions) of one modality, whole chunks at a time (the
        in-memory load): a chunk wanted whole is decoded straight into the result."""
        reader = self._reader(m)
        size = reader.chunk_surveys
        out = np.empty((len(rows), *self._shapes[m]), self._dtypes[m])
        chunk = rows // size
        uniq = np.unique(chunk)
        bounds = np.append(np.searchsorted(chunk, uniq), len(rows))  # sorted: chunks are runs
        step = max(1, (64 << 20) // max(1, size * self._per_survey_bytes(m)))
        for g in range(0, len(uniq), step):
            todo = range(g, min(g + step, len(uniq)))
            whole = [int(bounds[j + 1] - bounds[j]) == size for j in todo]
            outs = [out[bounds[j] : bounds[j + 1]] if w else reader.empty()
                    for j, w in zip(todo, whole, strict=True)]
            reader.read_many_into(uniq[g : todo.stop].tolist(), outs)
            for j, w, data in zip(todo, whole, outs, strict=True):
                if not w:
                    lo, hi = int(bounds[j]), int(bounds[j + 1])
                    out[lo:hi] = data[rows[lo:hi] - int(uniq[j]) * size]
        return out

    def _gather_disk(self, m: str, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = modality m at store row rows[i]``: straight from the chunk files when the
        reader can (blosc patches: the OS page cache is the cache, shared by all workers),
        else whole chunks through the chunk cache, the missing ones read together."""
        reader = self._reader(m)
        if isinstance(reader, DirectChunkReader) and reader.gathers_rows:
            reader.gather_into(rows, out)
            return
        size = reader.chunk_surveys
        chunk = rows // size
        uniq, inverse = np.unique(chunk, return_inverse=True)
        datas = self._cache.get_many([(m, int(c)) for c in uniq], reader)
        if len(uniq) == 1:
            np.take(datas[0], rows - int(uniq[0]) * size, axis=0, out=out, mode="clip")
            return
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        for j, data in enumerate(datas):
            sel = order[bounds[j] : bounds[j + 1]]
            out[sel] = data[rows[sel] - int(uniq[j]) * size]

    def _labels(self, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        assert self._label_indptr is not None and self._label_indices is not None
        out[:] = 0
        starts = self._label_indptr[idx]
        lens = self._label_indptr[idx + 1] - starts
        out[np.repeat(np.arange(len(idx)), lens), self._label_indices[_ranges(starts, lens)]] = 1
        return out

    def _normalize(self, m: str, x: np.ndarray, valid: np.ndarray, out: np.ndarray) -> None:
        # float32 arithmetic whatever the stored dtype, one rounding per operation: the
        # DeviceNormalizer does the same two operations and so gets the same floats
        np.multiply(x, self._scale[m], out=out, dtype=np.float32, casting="unsafe")
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

    def _masked(self, m: str) -> bool:
        return m in _FLOAT_MODALITIES or self._dtypes[m].kind == "f"

    def _batch_spec(self, b: int) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]]:
        """Keys, dtypes and shapes of a batch of ``b`` surveys, in batch order."""
        spec: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = []
        for m in self.modalities:
            shape = (b, *self._shapes[m])
            spec.append((m, np.dtype(np.float32) if self.normalize else self._dtypes[m], shape))
            if self.return_mask or not self.normalize:
                spec.append((f"valid_{m}", np.dtype(bool), (b,)))
            if self.return_mask and self._masked(m):
                spec.append((f"mask_{m}", np.dtype(bool), shape))
        if self._label_indptr is not None:
            spec.append(("labels", np.dtype(np.float32), (b, self.n_species)))
        spec.append(("surveyId", np.dtype(np.int64), (b,)))
        return spec

    def _modality_batch(self, m: str, idx: np.ndarray, rows: np.ndarray,
                        arrays: dict[str, np.ndarray]) -> None:
        """Fill modality ``m`` of dataset positions ``idx`` (store positions ``rows``) and
        its masks into the batch's numpy views ``arrays``."""
        memory = self._memory.get(m)
        valid = self._valid[m][idx]
        if f"valid_{m}" in arrays:
            arrays[f"valid_{m}"][:] = valid
        if not self.normalize:  # straight into the batch buffer: one copy
            x = arrays[m]
            if memory is not None:
                # mode="clip": indices are checked already; "raise" buffers `out` (3x slower)
                np.take(memory, idx, axis=0, out=x, mode="clip")
            else:
                self._gather_disk(m, rows, x)
        elif memory is not None:
            x = memory[idx]
        else:
            x = np.empty((len(idx), *self._shapes[m]), self._dtypes[m])
            self._gather_disk(m, rows, x)
        if f"mask_{m}" in arrays:
            mask = arrays[f"mask_{m}"]
            np.isfinite(x, out=mask)
            mask[~valid] = False
        if self.normalize:
            self._normalize(m, x, valid, arrays[m])

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> PackedBatch:
        """A stacked batch ``{key: tensor (len(indices), ...)}``, read with one gather per
        modality (duplicates allowed, order kept; no transforms).

        Returns
        -------
        PackedBatch
            A dict whose tensors share one buffer (in shared memory inside a worker).
        """
        idx = self._positions(indices)
        rows = self.rows[idx]
        shared = torch.utils.data.get_worker_info() is not None
        batch, arrays = pack(self._batch_spec(len(idx)), shared)
        for m in self.modalities:
            self._modality_batch(m, idx, rows, arrays)
        if "labels" in arrays:
            self._labels(idx, arrays["labels"])
        np.take(self.survey_ids, idx, out=arrays["surveyId"], mode="clip")
        return batch

    def __getitems__(self, indices: Sequence[int]) -> SurveyBatch | list[Sample]:
        """Batched fetch used by torch's DataLoader (one storage access per chunk)."""
        batch = self.get_batch(indices)
        if self.transforms is None:
            return SurveyBatch(batch)
        if getattr(self.transforms, "batched", False):
            return SurveyBatch(self._transform_batch(batch))
        return [self.transforms(dict(sample)) for sample in SurveyBatch(batch)]

    def _transform_batch(self, batch: PackedBatch) -> PackedBatch:
        assert self.transforms is not None
        out = PackedBatch(batch.flat, {}, batch._lease)
        for key, value in self.transforms(batch).items():
            old = batch.get(key)
            if old is not None and value is not old and value.shape == old.shape \
                    and value.dtype == old.dtype:
                # back into the packed buffer: the batch still crosses processes as one block
                value = old.copy_(value)
            out[key] = value
        return out

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
               drop_last: bool = False, pin_memory: bool | None = None,
               **kwargs: Any) -> DataLoader[Sample]:
        """A DataLoader with a :class:`~geoplant.torch.samplers.BlockShuffleSampler` and
        :func:`collate`.

        ``pin_memory`` defaults to ``torch.cuda.is_available()``: batches land in page-locked
        memory (one copy of the packed buffer), so ``tensor.to("cuda", non_blocking=True)``
        overlaps the copy with compute. Extra keyword arguments (``num_workers``,
        ``persistent_workers``, ...) go to ``torch.utils.data.DataLoader``. Call
        ``loader.sampler.set_epoch(e)`` each epoch.
        """
        sampler = self.sampler(shuffle=shuffle, seed=seed, num_replicas=num_replicas,
                               rank=rank, drop_last=drop_last)
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        return DataLoader(self, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          pin_memory=pin_memory, **kwargs)

    def plot(self, index: int, **kwargs: Any) -> Figure:
        """Plot one survey, see :func:`~geoplant.torch.plotting.plot`."""
        return plot(self[index], **kwargs)
