"""Augmentations of :class:`~geoplant.torch.datasets.SurveyDataset` samples and batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["RandomFlipRotate"]


class RandomFlipRotate:
    """Random flips and 90-degree rotations of image patches (the 8 symmetries of a square).

    The same symmetry is applied to every channel (R, G, B, NIR) of a patch and to the
    matching ``mask_<key>`` if present; works on a sample (``(C, H, W)``) or a whole batch
    (``(B, C, H, W)``, one random symmetry per sample) on any device and in any dtype: apply
    it to the uint8 batch on the GPU, before or after
    :class:`~geoplant.torch.normalize.DeviceNormalizer` (a per-channel normalisation commutes
    with a symmetry). A batch is 8 gathers at most (one per symmetry drawn), never a loop
    over samples. Randomness comes from torch's CPU RNG (or ``generator``, a CPU generator),
    which the DataLoader seeds differently in each worker; drawing on the CPU keeps the
    device stream free of synchronisations.

    Given to ``SurveyDataset(transforms=...)`` it is applied to whole batches (``batched``).

    Parameters
    ----------
    keys
        Sample keys holding patches.
    flip
        Allow horizontal/vertical flips.
    rotate
        Allow rotations by 90, 180, 270 degrees.
    generator
        Optional CPU ``torch.Generator`` for reproducibility.
    """

    #: Works on a whole batch dict: ``SurveyDataset`` calls it once per batch.
    batched = True

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
        keys += [f"mask_{k_}" for k_ in keys if f"mask_{k_}" in sample]
        first = sample[keys[0]]
        if first.ndim == 3:
            k, f = self._draw(1)
            for key in keys:
                out[key] = self.apply(sample[key], int(k[0]), bool(f[0])).contiguous()
            return out
        k, f = self._draw(first.shape[0])
        group = (k * 2 + f.long()).tolist()  # symmetry of each sample, on the CPU
        members: dict[int, list[int]] = {}
        for i, g in enumerate(group):
            members.setdefault(g, []).append(i)
        for key in keys:
            x = sample[key]
            if len(members) == 1:  # one symmetry for the whole batch: no gather
                (g,) = members
                out[key] = self.apply(x, g // 2, bool(g % 2)).contiguous()
                continue
            y = torch.empty_like(x)
            for g, rows in members.items():
                idx = torch.tensor(rows, dtype=torch.long).to(x.device, non_blocking=True)
                y[idx] = self.apply(x.index_select(0, idx), g // 2, bool(g % 2))
            out[key] = y
        return out
