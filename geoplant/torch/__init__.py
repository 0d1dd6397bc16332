"""Fast multimodal PyTorch loading from a geoplant store.

The pieces::

    ds = SurveyDataset(store, "pa_train")                 # dict of tensors per survey
    sampler = BlockShuffleSampler(ds, seed=0)             # chunk-aware shuffling, DDP shards
    loader = DataLoader(ds, batch_size=64, sampler=sampler, collate_fn=collate,
                        num_workers=2, persistent_workers=True)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for batch in loader: ...                          # batch["sentinel2"]: (64, 4, 128, 128)

or simply ``ds.loader(batch_size=64, shuffle=True, num_workers=2)``. For a GPU, ship stored
dtypes and normalise inside the model, on the device::

    ds = SurveyDataset(store, "pa_train", normalize=False)    # Sentinel-2 stays uint8
    model = MultimodalSDM(mods, n_species, normalizer=DeviceNormalizer.from_dataset(ds))
    for batch in ds.loader(batch_size=256, num_workers=4):    # pinned when CUDA is there
        batch = {k: v.to("cuda", non_blocking=True) for k, v in batch.items()}
        batch = RandomFlipRotate()(batch)                      # augment on the device
        logits = model(batch)

One module per family:

:mod:`geoplant.torch.datasets`
    :class:`SurveyDataset` (batched reads, in memory or from disk through a chunk cache),
    :class:`SurveyBatch`, :func:`collate`.
:mod:`geoplant.torch.normalize`
    :class:`DeviceNormalizer` (the training statistics as model buffers, normalising on the
    device to the CPU path's exact floats).
:mod:`geoplant.torch.batches`
    :class:`PackedBatch` (a batch's tensors in one reusable buffer: one shared-memory block
    per worker batch, one copy to pin or move).
:mod:`geoplant.torch.readers`
    Chunk readers of the on-disk mode (direct Zarr v3 chunk reads, or zarr-python).
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
from geoplant.torch.batches import PackedBatch
from geoplant.torch.datasets import SurveyBatch, SurveyDataset, collate
from geoplant.torch.normalize import DeviceNormalizer
from geoplant.torch.plotting import plot
from geoplant.torch.samplers import BlockShuffleSampler
from geoplant.torch.transforms import RandomFlipRotate

__all__ = [
    "CHANNEL_DIMS",
    "STATS_FILE",
    "TRAIN_SPLIT",
    "BlockShuffleSampler",
    "DeviceNormalizer",
    "PackedBatch",
    "RandomFlipRotate",
    "SurveyBatch",
    "SurveyDataset",
    "collate",
    "compute_normalization_stats",
    "load_normalization_stats",
    "plot",
]
