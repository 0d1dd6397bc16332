"""Augmentations of :class:`~geoplant.torch.datasets.SurveyDataset` samples and batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["RandomFlipRotate"]


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

    def __call__(self, sample: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Transform a sample or a batch: a new dict, with the image keys replaced."""
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
