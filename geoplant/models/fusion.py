"""The multimodal fusion model: one encoder per modality, embeddings concatenated -> head.

This is the MME baseline of GLC24 / GeoPlant (malpolon's multimodal ensemble): each modality
is encoded separately, the embeddings are concatenated and a linear (or small MLP) head maps
them to one logit per species. With a single modality it is that modality's baseline, so the
single-modality and multimodal models are one class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from geoplant.errors import GeoplantError
from geoplant.models.encoders import build_encoder

__all__ = ["MultimodalSDM"]


class MultimodalSDM(nn.Module):
    """Species distribution model over any subset of modalities (the MME baseline).

    Parameters
    ----------
    modalities
        Either modality names (``"sentinel2"``, ``"landsat"``, ``"climate"``, ``"env"``),
        each getting its default encoder (:func:`geoplant.models.build_encoder`), or a
        mapping ``name -> encoder module`` (each with an ``out_dim`` attribute). The names
        are the batch keys the model reads.
    n_species
        Number of output logits (species columns of the store).
    encoder_kwargs
        Per-modality constructor arguments for the default encoders, e.g.
        ``{"sentinel2": {"weights": None}, "landsat": {"depth": "resnet18"}}``.
    head_hidden
        ``None`` (default): the head is Dropout -> Linear on the concatenated embeddings
        (as MME). An int adds one hidden layer (Linear -> ReLU -> Dropout) of that width.
    dropout
        Dropout before the output layer.
    prior
        Optional species frequencies ``(n_species,)`` in (0, 1): the output bias starts at
        their logits, so an untrained model predicts the prevalence (faster, stabler start
        with thousands of rare species).
    normalizer
        Optional module applied to the batch first, e.g.
        :class:`geoplant.torch.DeviceNormalizer` for batches in stored dtypes
        (``SurveyDataset(normalize=False)``): the normalisation then runs on the model's
        device and its statistics are part of the model's ``state_dict``.

    Examples
    --------
    >>> model = MultimodalSDM(["landsat", "climate"], n_species=100)
    >>> batch = {"landsat": torch.zeros(2, 6, 4, 21), "climate": torch.zeros(2, 4, 19, 12)}
    >>> model(batch).shape
    torch.Size([2, 100])
    """

    def __init__(self, modalities: Sequence[str] | Mapping[str, nn.Module], n_species: int, *,
                 encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                 head_hidden: int | None = None, dropout: float = 0.0,
                 prior: np.ndarray | Tensor | None = None,
                 normalizer: nn.Module | None = None) -> None:
        super().__init__()
        if isinstance(modalities, str):
            modalities = [modalities]
        if not modalities:
            raise GeoplantError("MultimodalSDM needs at least one modality")
        if n_species < 1:
            raise GeoplantError(f"n_species must be >= 1, got {n_species}")
        encoder_kwargs = dict(encoder_kwargs or {})
        if isinstance(modalities, Mapping):
            encoders = dict(modalities)
        else:
            if len(set(modalities)) != len(modalities):
                raise GeoplantError(f"duplicate modalities in {list(modalities)}")
            encoders = {m: build_encoder(m, **dict(encoder_kwargs.pop(m, {})))
                        for m in modalities}
        if encoder_kwargs:
            raise GeoplantError(f"encoder_kwargs for unused modalities {sorted(encoder_kwargs)}")
        for name, enc in encoders.items():
            if not isinstance(getattr(enc, "out_dim", None), int):
                raise GeoplantError(f"encoder {name!r} has no integer `out_dim` attribute")
        self.modalities: tuple[str, ...] = tuple(encoders)
        self.n_species = int(n_species)
        self.normalizer = normalizer
        self.encoders = nn.ModuleDict(encoders)
        self.embed_dim = 0
        for enc in encoders.values():
            self.embed_dim += int(enc.out_dim)  # type: ignore[arg-type]
        layers: list[nn.Module] = []
        width = self.embed_dim
        if head_hidden:
            layers += [nn.Linear(width, int(head_hidden)), nn.ReLU(inplace=True)]
            width = int(head_hidden)
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.output = nn.Linear(width, self.n_species)
        self.head = nn.Sequential(*layers, self.output)
        if prior is not None:
            self.init_bias(prior)

    @torch.no_grad()
    def init_bias(self, prior: np.ndarray | Tensor, eps: float = 1e-4) -> None:
        """Set the output bias to ``logit(prior)`` (frequencies clipped to [eps, 1 - eps])."""
        p = torch.as_tensor(np.asarray(prior, dtype=np.float32)).clamp(eps, 1 - eps)
        if p.shape != (self.n_species,):
            raise GeoplantError(f"prior has shape {tuple(p.shape)}, expected ({self.n_species},)")
        self.output.bias.copy_(torch.log(p) - torch.log1p(-p))

    def embed(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Concatenated embeddings ``(B, embed_dim)`` of the model's modalities (after the
        normaliser, when the model has one)."""
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise GeoplantError(f"batch lacks modalities {missing} (has {sorted(batch)})",
                                fix="load the dataset with these modalities")
        if self.normalizer is not None:
            batch = self.normalizer(batch)
        return torch.cat([self.encoders[m](batch[m]) for m in self.modalities], dim=1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits ``(B, n_species)`` from a batch dict (extra keys are ignored)."""
        return self.head(self.embed(batch))
