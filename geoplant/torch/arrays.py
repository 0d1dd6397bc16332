"""In-memory feature arrays with sparse labels as a dataset of batch dicts.

For training rows that are not store surveys, e.g. presence-only sites pooled into grid
cells (:mod:`geoplant.presence_only`): :class:`ArrayDataset` yields the batch dicts of
:class:`~geoplant.torch.SurveyDataset` with ``normalize=False`` (``<modality>`` in its
stored dtype, ``valid_<modality>``, ``labels`` float32 multi-hot, ``surveyId``), so the same
model, with its :class:`~geoplant.torch.DeviceNormalizer`, and the same
:func:`geoplant.train.fit` loop take them. Labels stay sparse (CSR) until a batch needs them:
a million cells x 11k species would not fit densely.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from geoplant.errors import GeoplantError
from geoplant.torch.datasets import Sample, SurveyBatch, collate

__all__ = ["ArrayDataset", "EpochShuffle"]


class ArrayDataset(Dataset[Sample]):
    """Rows of in-memory arrays as batch dicts (fetched a whole batch at a time).

    Parameters
    ----------
    features
        ``{modality: array (n, ...)}``; kept in their dtype (NaN kept: the model's
        normaliser turns it into 0, as for store cubes).
    labels
        ``(n, n_species)`` 0/1, dense or ``scipy.sparse``; None: no ``labels`` key.
    ids
        int64 ``surveyId`` of each row (default ``0..n-1``).
    valid
        ``{modality: bool (n,)}`` rows whose modality is present (default: rows with at
        least one finite value).
    """

    def __init__(self, features: Mapping[str, Any], labels: Any = None,
                 ids: Sequence[int] | np.ndarray | None = None, *,
                 valid: Mapping[str, Any] | None = None) -> None:
        if not features:
            raise GeoplantError("ArrayDataset needs at least one feature array")
        self.features = {m: np.asarray(x) for m, x in features.items()}
        lengths = {m: len(x) for m, x in self.features.items()}
        n = next(iter(lengths.values()))
        if len(set(lengths.values())) != 1:
            raise GeoplantError(f"feature arrays have different lengths {lengths}")
        self.ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        if self.ids.shape != (n,):
            raise GeoplantError(f"{len(self.ids)} ids for {n} rows")
        self.labels = None if labels is None else sp.csr_matrix(labels, dtype=np.float32)
        if self.labels is not None and self.labels.shape[0] != n:
            raise GeoplantError(f"labels have {self.labels.shape[0]} rows for {n}")
        given = dict(valid or {})
        self.valid = {m: np.asarray(given[m], bool) if m in given else _any_finite(x)
                      for m, x in self.features.items()}
        self.modalities: tuple[str, ...] = tuple(self.features)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_species(self) -> int:
        """Length of the ``labels`` vector (0 without labels)."""
        return 0 if self.labels is None else int(self.labels.shape[1])

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """``{key: tensor (len(indices), ...)}`` of the rows ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out: dict[str, torch.Tensor] = {}
        for m, x in self.features.items():
            out[m] = torch.from_numpy(np.ascontiguousarray(x[idx]))
            out[f"valid_{m}"] = torch.from_numpy(self.valid[m][idx])
        if self.labels is not None:
            out["labels"] = torch.from_numpy(self.labels[idx].toarray())
        out["surveyId"] = torch.from_numpy(self.ids[idx])
        return out

    def __getitems__(self, indices: Sequence[int]) -> SurveyBatch:
        """Batched fetch used by torch's DataLoader."""
        return SurveyBatch(self.get_batch(indices))

    def __getitem__(self, index: int) -> Sample:
        return SurveyBatch(self.get_batch([int(index)]))[0]

    def loader(self, batch_size: int = 256, shuffle: bool = True, *, seed: int = 0,
               **kwargs: Any) -> DataLoader[Sample]:
        """A DataLoader over the rows, shuffled by :class:`EpochShuffle` (the order a
        function of ``seed`` and the epoch: a resumed run sees the same batches).
        ``kwargs`` go to ``DataLoader``."""
        return DataLoader(self, batch_size=batch_size, sampler=EpochShuffle(len(self), seed)
                          if shuffle else None, collate_fn=collate, **kwargs)


class EpochShuffle(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)``; ``fit`` calls
    :meth:`set_epoch` (:func:`geoplant.train.distributed.set_epoch`) before each epoch."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose permutation :meth:`__iter__` gives."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return iter(order.tolist())


def _any_finite(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind != "f":
        return np.ones(len(x), bool)
    return np.isfinite(x.reshape(len(x), -1)).any(axis=1)
