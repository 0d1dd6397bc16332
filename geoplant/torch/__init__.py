"""Fast multimodal PyTorch loading from a geoplant store.

The pieces::

    ds = SurveyDataset(store, "pa_train")                 # dict of tensors per survey
    sampler = BlockShuffleSampler(ds, seed=0)             # chunk-aware shuffling, DDP shards
    loader = DataLoader(ds, batch_size=64, sampler=sampler, collate_fn=collate,
                        num_workers=2, persistent_workers=True)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for batch in loader: ...                          # batch["sentinel2"]: (64, 4, 128, 128)

or simply ``ds.loader(batch_size=64, shuffle=True, num_workers=2)``. One module per family:

:mod:`geoplant.torch.datasets`
    :class:`SurveyDataset` (batched reads, in memory or from disk through a chunk cache),
    :class:`SurveyBatch`, :func:`collate`.
:mod:`geoplant.torch.samplers`
    :class:`BlockShuffleSampler` (block + buffer shuffle, DDP sharding).
:mod:`geoplant.torch.transforms`
    :class:`RandomFlipRotate` (the 8 symmetries of a square patch).
:mod:`geoplant.torch.plotting`
    :func:`plot`, one figure per survey.

Normalisation statistics live in the torch-free :mod:`geoplant.stats` and are re-exported
here (:func:`compute_normalization_stats`, :func:`load_normalization_stats`, ...).
"""

from geoplant.stats import (
    CHANNEL_DIMS,
    STATS_FILE,
    TRAIN_SPLIT,
    compute_normalization_stats,
    load_normalization_stats,
)
from geoplant.torch.datasets import SurveyBatch, SurveyDataset, collate
from geoplant.torch.plotting import plot
from geoplant.torch.samplers import BlockShuffleSampler
from geoplant.torch.transforms import RandomFlipRotate

__all__ = [
    "CHANNEL_DIMS",
    "STATS_FILE",
    "TRAIN_SPLIT",
    "BlockShuffleSampler",
    "RandomFlipRotate",
    "SurveyBatch",
    "SurveyDataset",
    "collate",
    "compute_normalization_stats",
    "load_normalization_stats",
    "plot",
]
