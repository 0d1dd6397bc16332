"""Normalisation on the device, inside the model, with the statistics saved in its weights.

The loader ships stored dtypes (``SurveyDataset(..., normalize=False)``: Sentinel-2 uint8,
a quarter of the float32 bytes through workers, pinning and the host-to-device copy) and
:class:`DeviceNormalizer`, the first module of the model, standardises on the device::

    ds = SurveyDataset(store, "pa_train", normalize=False)
    norm = DeviceNormalizer.from_dataset(ds)          # the store's training statistics
    model = MultimodalSDM(mods, n_species, normalizer=norm)
    logits = model(to_device(batch, "cuda"))          # uint8 in, normalised on the GPU

The statistics are registered buffers: they travel with ``model.to(device)``, are saved in
every ``state_dict`` / checkpoint and are restored with it, so inference uses the statistics
the model was trained with, not whatever the store holds later. They stay float32 when the
model is cast (``model.half()``); mixed precision (autocast) leaves them alone anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from geoplant.errors import GeoplantError
from geoplant.stats import scale_offset

if TYPE_CHECKING:
    from geoplant.torch.datasets import SurveyDataset

__all__ = ["DeviceNormalizer"]


class DeviceNormalizer(nn.Module):
    """Per-channel ``(x - mean) / std`` of batch modalities, on the batch's device.

    ``forward`` gives exactly (bit for bit) the floats of the CPU path
    (``SurveyDataset(normalize=True)``): the same float32 ``scale`` and ``offset``
    (:func:`geoplant.stats.scale_offset`), the same two float32 operations ``x * scale``
    then ``+ offset``, then NaN/±inf -> 0 for float inputs, and all 0 for surveys whose
    ``valid_<m>`` is false (``SurveyDataset(normalize=False)`` adds ``valid_<m>`` to every
    batch; a batch without it counts as all valid).

    Use it on batches in stored dtypes only: a batch the dataset normalised already would be
    normalised twice.

    Parameters
    ----------
    scales, offsets
        Per modality, float32 ``(C,)`` tensors (channel axis 1 of the batch tensor).

    Attributes
    ----------
    modalities
        The modalities it normalises (other batch keys pass through).
    """

    def __init__(self, scales: Mapping[str, Tensor], offsets: Mapping[str, Tensor]) -> None:
        super().__init__()
        if set(scales) != set(offsets):
            raise GeoplantError("scales and offsets name different modalities")
        self.modalities: tuple[str, ...] = tuple(scales)
        for m in self.modalities:
            scale = torch.as_tensor(scales[m], dtype=torch.float32).reshape(-1)
            offset = torch.as_tensor(offsets[m], dtype=torch.float32).reshape(-1)
            if scale.shape != offset.shape:
                raise GeoplantError(f"{m}: scale has {scale.numel()} channels, offset "
                                    f"{offset.numel()}")
            # buffers: moved by .to(device), saved and restored with the model's weights
            self.register_buffer(f"{m}_scale", scale.clone())
            self.register_buffer(f"{m}_offset", offset.clone())

    def _apply(self, fn: Any, recurse: bool = True) -> DeviceNormalizer:
        # follow device moves, never dtype casts (model.half(), .to(torch.bfloat16)): the
        # statistics stay float32 so the result stays the CPU path's floats
        kept = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any],
                   modalities: Sequence[str] | None = None) -> DeviceNormalizer:
        """From statistics as returned by :func:`geoplant.stats.compute_normalization_stats`
        (or read from ``stats.json``).

        Parameters
        ----------
        stats
            The statistics.
        modalities
            Which of them to normalise (default: all those in ``stats``).

        Raises
        ------
        GeoplantError
            If ``stats`` lacks one of ``modalities``.
        """
        mods = list(modalities) if modalities is not None else list(stats["modalities"])
        pairs = {m: scale_offset(stats, m) for m in mods}
        return cls({m: torch.from_numpy(p[0]) for m, p in pairs.items()},
                   {m: torch.from_numpy(p[1]) for m, p in pairs.items()})

    @classmethod
    def from_dataset(cls, dataset: SurveyDataset) -> DeviceNormalizer:
        """The statistics ``dataset`` normalises with (or would, with ``normalize=True``):
        its ``stats`` argument, else the store's training statistics; for its modalities."""
        return cls.from_stats(dataset.normalization_stats(), dataset.modalities)

    def scale_offset(self, modality: str) -> tuple[Tensor, Tensor]:
        """The ``(scale, offset)`` buffers of ``modality``, ``(C,)`` float32."""
        if modality not in self.modalities:
            raise GeoplantError(f"the normaliser has no statistics for {modality!r}",
                                fix=f"use one of {list(self.modalities)}")
        return getattr(self, f"{modality}_scale"), getattr(self, f"{modality}_offset")

    def normalize(self, modality: str, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """One modality: ``x`` ``(B, C, ...)`` in any real dtype -> float32, same device."""
        scale, offset = self.scale_offset(modality)
        if x.ndim < 2 or x.shape[1] != scale.numel():
            raise GeoplantError(f"{modality}: expected (B, {scale.numel()}, ...), got "
                                f"{tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        # two float32 operations, each rounded, as numpy does on the CPU path (no fused
        # multiply-add, whose single rounding could differ in the last bit)
        out = torch.mul(x.to(torch.float32), scale.view(shape))
        out.add_(offset.view(shape))
        if x.is_floating_point():
            out.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        if valid is not None:  # masked_fill: +0.0 exactly, as the CPU path writes
            missing = ~valid.to(device=out.device, dtype=torch.bool)
            out.masked_fill_(missing.view((-1,) + (1,) * (x.ndim - 1)), 0.0)
        return out

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A new batch dict with the normaliser's modalities standardised (float32) and
        every other key as it was."""
        out = dict(batch)
        for m in self.modalities:
            x = batch.get(m)
            if x is not None:
                out[m] = self.normalize(m, x, batch.get(f"valid_{m}"))
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{m}: {getattr(self, f'{m}_scale').numel()} channels"
                         for m in self.modalities)
