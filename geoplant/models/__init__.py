"""Models: one encoder per modality, the multimodal fusion model (MME), classic baselines.

Torch models read the batch dicts of :class:`geoplant.torch.SurveyDataset`
(``"sentinel2"``, ``"landsat"``, ``"climate"``, ``"env"`` tensors) and return one logit per
species; train them with :func:`geoplant.train.fit`. The non-torch baselines share
``fit(X, Y)`` / ``predict_proba(X)``.
"""

from geoplant.models.classic import EnvLogisticBaseline, FrequencyBaseline, ProbabilisticBaseline
from geoplant.models.encoders import (
    DEFAULT_SHAPES,
    CubeResNet,
    EnvMLP,
    Sentinel2ResNet,
    build_encoder,
    imagenet_weights_path,
)
from geoplant.models.fusion import MultimodalSDM

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
