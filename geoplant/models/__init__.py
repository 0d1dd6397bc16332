"""Models: one encoder per modality, the multimodal fusion model (MME), classic baselines.

Torch models read the batch dicts of :class:`geoplant.torch.SurveyDataset`
(``"sentinel2"``, ``"landsat"``, ``"climate"``, ``"env"`` tensors) and return one logit per
species; train them with :func:`geoplant.train.fit`. The non-torch baselines share
``fit(X, Y)`` / ``predict_proba(X)``.

The torch models are imported on first use (``geoplant.models.MultimodalSDM``), so loading
a classic or MaxEnt model (``geoplant map``, ``persist.load_model``) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from geoplant.models.classic import EnvLogisticBaseline, FrequencyBaseline, ProbabilisticBaseline

if TYPE_CHECKING:
    from geoplant.models.encoders import (
        DEFAULT_SHAPES,
        CubeResNet,
        EnvMLP,
        Sentinel2ResNet,
        build_encoder,
        imagenet_weights_path,
    )
    from geoplant.models.fusion import MultimodalSDM

#: Torch names and the module that holds each.
_TORCH_NAMES = {
    "DEFAULT_SHAPES": "encoders", "CubeResNet": "encoders", "EnvMLP": "encoders",
    "Sentinel2ResNet": "encoders", "build_encoder": "encoders",
    "imagenet_weights_path": "encoders", "MultimodalSDM": "fusion",
}

__all__ = [
    "DEFAULT_SHAPES",
    "CubeResNet",
    "EnvLogisticBaseline",
    "EnvMLP",
    "FrequencyBaseline",
    "MultimodalSDM",
    "ProbabilisticBaseline",
    "Sentinel2ResNet",
    "build_encoder",
    "imagenet_weights_path",
]


def __getattr__(name: str) -> Any:
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'geoplant.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"geoplant.models.{module}"), name)
    globals()[name] = value
    return value
