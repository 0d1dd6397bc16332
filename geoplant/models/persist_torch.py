"""A trained :class:`~geoplant.models.MultimodalSDM` as plain arrays, and its predictor.

:mod:`geoplant.models.persist` writes the model's ``state_dict`` tensors into ``weights.npz``
(keys ``state.<name>``, loadable with ``allow_pickle=False``) and the settings that rebuild
the module into ``model.json``. The :class:`~geoplant.torch.DeviceNormalizer` statistics are
buffers of the model, so they are in the ``state_dict`` and come back with it.

:class:`TorchPredictor` is what :func:`~geoplant.models.persist.load_model` returns for such
a model: ``predict_proba(X)`` on feature columns (the env cube's columns, in order), on the
CPU, in batches, under ``torch.no_grad``, float32, as :func:`geoplant.train.predict` does on
a :class:`~geoplant.torch.SurveyDataset` batch. Only modalities that exist at every raster
cell (:data:`WALL_TO_WALL`) can be predicted from such columns; a model with another
modality still loads (its weights are there) but :meth:`TorchPredictor.check_mappable`
refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    from torch import Tensor

    from geoplant.models.fusion import MultimodalSDM

__all__ = ["WALL_TO_WALL", "TorchPredictor", "rebuild_model", "torch_settings"]

#: Modalities whose inputs exist at every cell of the raster grid (the env rasters).
WALL_TO_WALL: Final = ("env",)
#: Prefix of the state_dict tensors in ``weights.npz``.
STATE_PREFIX: Final = "state."


def _head_settings(model: MultimodalSDM) -> dict[str, Any]:
    """``head_hidden`` and ``dropout`` as the model was built (read off its head)."""
    from torch import nn

    layers = list(model.head)[:-1]
    hidden = [m.out_features for m in layers if isinstance(m, nn.Linear)]
    drops = [m.p for m in layers if isinstance(m, nn.Dropout)]
    return {"head_hidden": int(hidden[0]) if hidden else None,
            "dropout": float(drops[0]) if drops else 0.0}


def _rebuild_kwargs(encoder_kwargs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Encoder arguments for rebuilding: the Sentinel-2 backbone starts random (no ImageNet
    file needed where the model is loaded; the saved weights overwrite it anyway)."""
    kwargs = {m: dict(v) for m, v in encoder_kwargs.items()}
    if "sentinel2" in kwargs:
        kwargs["sentinel2"]["weights"] = None
        kwargs["sentinel2"].pop("download", None)
    return kwargs


def torch_settings(model: MultimodalSDM,
                   encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON settings and the arrays (``state.<name>``) of a trained model.

    The settings are checked by rebuilding the model from them: a ``state_dict`` that does
    not fit (other encoder sizes than ``encoder_kwargs`` say) is refused here, not when the
    model is loaded later.

    Parameters
    ----------
    model
        A :class:`~geoplant.models.MultimodalSDM` built from modality names.
    encoder_kwargs
        The per-modality encoder arguments it was built with (as given to
        :func:`geoplant.experiment.fit_torch`; default: none).

    Raises
    ------
    GeoplantError
        The settings do not rebuild the model.
    """
    import torch

    norm = model.normalizer
    settings: dict[str, Any] = {
        "modalities": list(model.modalities), "n_species": int(model.n_species),
        "encoder_kwargs": _rebuild_kwargs(encoder_kwargs or {}), **_head_settings(model),
        "normalizer": list(getattr(norm, "modalities", ())) if norm is not None else None}
    state = model.state_dict()
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
            t = t.float()
        arrays[STATE_PREFIX + name] = t.numpy().copy()
    fresh = _build(settings, arrays).state_dict()
    bad = sorted(set(fresh) ^ set(state)) or [k for k in state
                                              if tuple(fresh[k].shape) != tuple(state[k].shape)]
    if bad:
        raise GeoplantError(f"the model's settings do not rebuild it (differs at {bad[:3]})",
                            fix="pass the encoder_kwargs the model was trained with")
    return settings, arrays


def _build(settings: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
           prior: np.ndarray | None = None) -> MultimodalSDM:
    """The module of ``settings``, its normaliser sized by the saved statistics."""
    from geoplant.models.fusion import MultimodalSDM
    from geoplant.torch.normalize import DeviceNormalizer

    normalizer = None
    if settings.get("normalizer") is not None:
        import torch

        stats = {kind: {m: torch.from_numpy(np.array(
            arrays[f"{STATE_PREFIX}normalizer.{m}_{kind}"], dtype=np.float32))
            for m in settings["normalizer"]} for kind in ("scale", "offset")}
        normalizer = DeviceNormalizer(stats["scale"], stats["offset"])
    return MultimodalSDM(list(settings["modalities"]), int(settings["n_species"]),
                         encoder_kwargs=_rebuild_kwargs(settings.get("encoder_kwargs", {})),
                         head_hidden=settings.get("head_hidden"),
                         dropout=float(settings.get("dropout", 0.0)), prior=prior,
                         normalizer=normalizer)


def rebuild_model(settings: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                  prior: np.ndarray | None = None) -> MultimodalSDM:
    """The model :func:`torch_settings` described, its saved weights loaded, in eval mode.

    Raises
    ------
    GeoplantError
        The arrays do not fit the settings (damaged or hand-edited files).
    """
    import torch

    try:
        model = _build(settings, arrays, prior)
        state = {k[len(STATE_PREFIX):]: torch.from_numpy(np.array(v))
                 for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as err:
        raise GeoplantError(f"saved weights do not fit the model "
                            f"({str(err).splitlines()[0]})", fix="save the model again") from None
    return model.eval()


class TorchPredictor:
    """``predict_proba(X)`` of a trained :class:`~geoplant.models.MultimodalSDM` on feature
    columns (CPU, batched, ``torch.no_grad``, float32).

    Parameters
    ----------
    network
        The model.
    feature_names
        Columns of ``X``: the env cube's columns, the ``env`` modality's input order.
    batch_size
        Rows per forward pass (bounds memory).

    Attributes
    ----------
    modalities
        The model's modalities.
    """

    def __init__(self, network: MultimodalSDM, feature_names: Sequence[str],
                 batch_size: int = 8192) -> None:
        self.network = network.cpu().eval()
        self.feature_names = [str(n) for n in feature_names]
        self.batch_size = int(batch_size)
        self.modalities: tuple[str, ...] = tuple(network.modalities)

    @property
    def n_species(self) -> int:
        """Output columns."""
        return int(self.network.n_species)

    def check_mappable(self) -> None:
        """Refuse a model with a modality that does not exist at every raster cell.

        Raises
        ------
        GeoplantError
            Naming the modality and what to map instead.
        """
        other = [m for m in self.modalities if m not in WALL_TO_WALL]
        if other:
            raise GeoplantError(
                f"the model uses the {other[0]!r} modality, which has no wall-to-wall raster: "
                "it cannot be mapped",
                fix="map a model trained on the env modality only (geoplant run env-nn) or "
                    "a classic env model (env-logistic)")

    def _batch(self, X: np.ndarray) -> dict[str, Tensor]:
        import torch

        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise GeoplantError(f"X has shape {X.shape}, the model takes "
                                f"{len(self.feature_names)} feature columns")
        # float32 with NaN, as SurveyDataset(normalize=False) ships the env cube; the model's
        # DeviceNormalizer standardises and zeroes the gaps
        return {"env": torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))}

    def hidden(self, X: Any) -> np.ndarray:
        """The head's input to its output layer ``(n, width)`` float32 (one pass over the
        encoders; :meth:`species_proba` then costs one matrix product per species chunk)."""
        import torch

        self.check_mappable()
        X = np.asarray(X)
        out = []
        with torch.no_grad():
            for s in range(0, len(X), self.batch_size):
                h = self.network.embed(self._batch(X[s:s + self.batch_size]))
                for layer in list(self.network.head)[:-1]:
                    h = layer(h)
                out.append(h)
        width = self.network.output.in_features
        return torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)

    def species_proba(self, H: np.ndarray, cols: slice) -> np.ndarray:
        """Probabilities of the species columns ``cols`` from :meth:`hidden` ``H``."""
        import torch

        out = self.network.output
        with torch.no_grad():
            logits = torch.nn.functional.linear(torch.from_numpy(H), out.weight[cols],
                                                out.bias[cols])
            return torch.sigmoid(logits).numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Presence probabilities ``(n, n_species)`` float32 of the rows of ``X``."""
        import torch

        self.check_mappable()
        X = np.asarray(X)
        out = []
        with torch.no_grad():
            for s in range(0, len(X), self.batch_size):
                out.append(torch.sigmoid(self.network(self._batch(X[s:s + self.batch_size]))
                                         .float()))
        return torch.cat(out).numpy() if out else np.zeros((0, self.n_species), np.float32)
