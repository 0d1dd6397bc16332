"""One encoder per modality: each maps its batch tensor to an embedding ``(B, out_dim)``.

Inputs follow the batch contract of :class:`geoplant.torch.SurveyDataset`:

=============  ======================  =============================================
modality       tensor                  encoder
=============  ======================  =============================================
``landsat``    ``(B, 6, 4, 21)``       :class:`CubeResNet` (bands x quarters x years)
``climate``    ``(B, 4, 19, 12)``      :class:`CubeResNet` (variables x years x months)
``sentinel2``  ``(B, 4, H, W)``        :class:`Sentinel2ResNet` (R, G, B, NIR)
``env``        ``(B, 46)``             :class:`EnvMLP`
=============  ======================  =============================================

The cube encoders treat a cube as a ``C x H x W`` image, as the official GLC24 baselines do
(ResNet-18 with a 3x3 stride-1 stem and no max-pool, so the tiny 4 x 21 / 19 x 12 grids are
not pooled away). The default cube encoder is the light "ResNet-6" of the GeoPlant benchmark
(stem + two residual stages), which scores like ResNet-18 on the cubes (GeoPlant paper,
``geoplant-format.md`` §8) and is several times faster on CPU; ``CubeResNet.resnet18`` gives
the official depth.

Every encoder replaces NaN/inf in its input by 0 (Landsat cubes hold NaN after the survey
year; the loader normalises, but a model must not turn one NaN into NaN gradients).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geoplant.errors import GeoplantError

__all__ = [
    "DEFAULT_SHAPES",
    "CubeResNet",
    "EnvMLP",
    "Sentinel2ResNet",
    "build_encoder",
    "imagenet_weights_path",
]

#: Per-sample input shape of each modality in the batch contract (Sentinel-2: GLC24 JPEGs).
DEFAULT_SHAPES: dict[str, tuple[int, ...]] = {
    "sentinel2": (4, 128, 128),
    "landsat": (6, 4, 21),
    "climate": (4, 19, 12),
    "env": (46,),
}


def _clean(x: Tensor) -> Tensor:
    return torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CubeResNet(nn.Module):
    """A small ResNet over a ``C x H x W`` cube (Landsat or climate time series).

    Parameters
    ----------
    in_channels
        Channels of the cube: 6 Landsat bands or 4 climate variables.
    blocks
        Residual blocks per stage. ``(1, 1)`` (default) is the GeoPlant "ResNet-6";
        ``(2, 2, 2, 2)`` is ResNet-18.
    widths
        Channels per stage (same length as ``blocks``).
    stem_width
        Channels of the 3x3 stride-1 stem (default: ``widths[0]``).
    out_dim
        If given, a linear projection of the pooled features to this size; else the
        embedding is ``widths[-1]`` wide.
    dropout
        Dropout on the pooled embedding.

    Notes
    -----
    The first stage keeps the resolution; later stages halve it (stride 2), as in ResNet.
    Global average pooling makes the encoder work on any ``H x W``.
    """

    def __init__(self, in_channels: int, *, blocks: Sequence[int] = (1, 1),
                 widths: Sequence[int] = (64, 128), stem_width: int | None = None,
                 out_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise GeoplantError(f"blocks {tuple(blocks)} and widths {tuple(widths)} must be "
                                "non-empty and of the same length")
        stem = int(stem_width or widths[0])
        self.in_channels = int(in_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c_in = stem
        for stage, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            for i in range(int(n)):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(_BasicBlock(c_in, int(width), stride))
                c_in = int(width)
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj: nn.Module = nn.Linear(c_in, out_dim) if out_dim else nn.Identity()
        self.out_dim = int(out_dim or c_in)
        #: What initialised the weights (always random here; see Sentinel2ResNet).
        self.weights_source = "random"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def resnet18(cls, in_channels: int, **kwargs: Any) -> CubeResNet:
        """The official baseline depth: ResNet-18 (2, 2, 2, 2) x (64, 128, 256, 512)."""
        return cls(in_channels, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, out_dim)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise GeoplantError(f"CubeResNet expects (B, {self.in_channels}, H, W), got "
                                f"{tuple(x.shape)}")
        h = self.pool(self.layers(self.stem(_clean(x)))).flatten(1)
        return self.proj(self.dropout(h))


def imagenet_weights_path(arch: str = "resnet18") -> Path:
    """Where torchvision caches the ImageNet weights of ``arch`` (the file may not exist).

    The cache folder is ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``).
    """
    from torchvision.models import get_model_weights

    url = get_model_weights(arch).DEFAULT.url  # type: ignore[attr-defined]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _stem_from_rgb(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a 3-channel stem to ``in_channels``: RGB kept, extra channels = mean of RGB."""
    out = weight.new_empty((weight.shape[0], in_channels, *weight.shape[2:]))
    n = min(3, in_channels)
    out[:, :n] = weight[:, :n]
    if in_channels > 3:
        out[:, 3:] = weight.mean(dim=1, keepdim=True)
    return out


class Sentinel2ResNet(nn.Module):
    """A torchvision ResNet over the Sentinel-2 patch with an ``in_channels`` stem (R, G, B, NIR).

    Parameters
    ----------
    in_channels
        Bands of the patch (4: R, G, B, NIR).
    arch
        A torchvision ResNet name: ``"resnet18"`` (default, the official baseline family),
        ``"resnet34"``, ``"resnet50"``.
    weights
        Initial weights:

        - ``"auto"`` (default): ImageNet weights **if torchvision's cache already holds them**
          (:func:`imagenet_weights_path`), else random initialisation. Never downloads; the
          result then depends on the machine (check :attr:`weights_source`).
        - ``"random"`` or ``None``: random initialisation (the same on every machine).
        - ``"imagenet"``: ImageNet weights from the cache; a :class:`GeoplantError` if they
          are not cached, unless ``download=True``.
        - a path to a ``state_dict`` file (a torchvision ResNet state dict with a 3- or
          ``in_channels``-channel stem; its ``fc`` is ignored).
    download
        Allow downloading ImageNet weights into torchvision's cache (only with
        ``weights="imagenet"``; default False).
    out_dim, dropout
        Optional projection and dropout of the pooled embedding.

    Attributes
    ----------
    weights_source
        What initialised the backbone: ``"random"``, ``"imagenet"`` or the file path
        (for model cards).

    Notes
    -----
    A 3-channel pretrained stem becomes a 4-channel one by keeping the RGB filters and
    giving the NIR channel the mean of the RGB filters (a common practice that keeps the
    activation scale). Any patch size works (global average pooling); 128 x 128 JPEG
    patches and 64 x 64 GeoTIFF patches alike.
    """

    def __init__(self, in_channels: int = 4, *, arch: str = "resnet18",
                 weights: str | os.PathLike[str] | None = "auto", download: bool = False,
                 out_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        from torchvision.models import get_model

        if arch not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
            raise GeoplantError(f"unsupported Sentinel-2 backbone {arch!r}",
                                fix="use a torchvision ResNet: resnet18, resnet34, resnet50")
        backbone = get_model(arch, weights=None)
        self.in_channels = int(in_channels)
        self.weights_source = "random"
        state = self._initial_state(arch, weights, download)
        if state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            if state["conv1.weight"].shape[1] != in_channels:
                state["conv1.weight"] = _stem_from_rgb(state["conv1.weight"], in_channels)
        backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3,
                                   bias=False)
        if state is None:
            nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        feat = backbone.fc.in_features
        backbone.fc = nn.Identity()  # type: ignore[assignment]
        if state is not None:
            missing, unexpected = backbone.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise GeoplantError(f"weights do not fit {arch}: missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]}", path=str(weights))
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj: nn.Module = nn.Linear(feat, out_dim) if out_dim else nn.Identity()
        self.out_dim = int(out_dim or feat)

    def _initial_state(self, arch: str, weights: str | os.PathLike[str] | None,
                       download: bool) -> dict[str, Tensor] | None:
        if weights is None or weights == "random":
            return None
        if isinstance(weights, str) and weights in ("auto", "imagenet"):
            cached = imagenet_weights_path(arch)
            if cached.is_file():
                self.weights_source = "imagenet"
                return torch.load(cached, map_location="cpu", weights_only=True)
            if weights == "auto":
                return None
            if not download:
                raise GeoplantError(f"ImageNet weights for {arch} are not cached",
                                    path=cached,
                                    fix="pass download=True to fetch them once, or copy the "
                                        "file there, or use weights=None")
            from torchvision.models import get_model_weights

            self.weights_source = "imagenet"
            return get_model_weights(arch).DEFAULT.get_state_dict(progress=False)  # type: ignore[attr-defined]
        path = Path(weights)
        if not path.is_file():
            raise GeoplantError("weights file not found", path=path,
                                fix='pass a state_dict file, "imagenet", "auto" or None')
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("backbone.").removeprefix("module."): v
                 for k, v in state.items()}
        self.weights_source = str(path)
        return state

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_dim)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise GeoplantError(f"Sentinel2ResNet expects (B, {self.in_channels}, H, W), got "
                                f"{tuple(x.shape)}")
        return self.proj(self.dropout(self.backbone(_clean(x))))


class EnvMLP(nn.Module):
    """An MLP over the environmental vector (bioclim, soil, elevation, footprint, land cover).

    Parameters
    ----------
    in_features
        Length of the vector (46 in GLC24: 19 bioclim + 9 soil + elevation + 16 human
        footprint + land cover).
    hidden
        Hidden layer widths; each is Linear -> BatchNorm -> ReLU -> Dropout.
    dropout
        Dropout after each hidden layer.

    The embedding is the last hidden layer (``out_dim = hidden[-1]``).
    """

    def __init__(self, in_features: int = 46, *, hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.1) -> None:
        super().__init__()
        if not hidden:
            raise GeoplantError("EnvMLP needs at least one hidden layer")
        self.in_features = int(in_features)
        layers: list[nn.Module] = []
        c_in = self.in_features
        for width in hidden:
            layers += [nn.Linear(c_in, int(width)), nn.BatchNorm1d(int(width)),
                       nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c_in = int(width)
        self.net = nn.Sequential(*layers)
        self.out_dim = c_in
        #: What initialised the weights (always random here; see Sentinel2ResNet).
        self.weights_source = "random"

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_features)`` -> ``(B, out_dim)``."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise GeoplantError(f"EnvMLP expects (B, {self.in_features}), got {tuple(x.shape)}")
        return self.net(_clean(x))


def build_encoder(modality: str, **kwargs: Any) -> nn.Module:
    """The default encoder of a modality (see the module docstring).

    Parameters
    ----------
    modality
        ``"landsat"``, ``"climate"``, ``"sentinel2"`` or ``"env"``.
    **kwargs
        Passed to the encoder's constructor, e.g. ``blocks``/``widths`` for the cubes,
        ``weights``/``arch`` for Sentinel-2, ``in_features``/``hidden`` for env. For the
        cubes, ``depth="resnet18"`` selects :meth:`CubeResNet.resnet18`.

    Returns
    -------
    torch.nn.Module
        An encoder with an ``out_dim`` attribute.
    """
    if modality in ("landsat", "climate"):
        kwargs.setdefault("in_channels", DEFAULT_SHAPES[modality][0])
        depth = kwargs.pop("depth", None)
        if depth == "resnet18":
            return CubeResNet.resnet18(**kwargs)
        if depth not in (None, "resnet6"):
            raise GeoplantError(f"unknown cube depth {depth!r}",
                                fix='use "resnet6" or "resnet18", or blocks=/widths=')
        return CubeResNet(**kwargs)
    if modality == "sentinel2":
        return Sentinel2ResNet(**kwargs)
    if modality == "env":
        return EnvMLP(**kwargs)
    raise GeoplantError(f"unknown modality {modality!r}",
                        fix=f"use one of {sorted(DEFAULT_SHAPES)}")
