"""Save and load trained models as plain files: ``model.json`` + ``weights.npz``.

No pickle: the files can be read by any NumPy/JSON reader, survive refactorings of the model
classes and are safe to load from an untrusted source. A model folder holds

``model.json``
    format version, the model kind, its constructor settings, the feature names in the order
    of the input columns (e.g. ``["lon", "lat", "Bio1", ...]``), the species ids in the order
    of the probability columns, and free ``meta`` (store, split, validation max-TSS
    thresholds...).
``weights.npz``
    the fitted arrays (standardisation, coefficients, intercepts, priors...; a torch model's
    ``state_dict`` tensors, :mod:`geoplant.models.persist_torch`).

Kinds: :class:`~geoplant.models.EnvLogisticBaseline`, :class:`~geoplant.models.FrequencyBaseline`
(inputs lon, lat, env columns), :class:`~geoplant.models.MultimodalSDM` (any modalities; the
inputs of its ``env`` modality are the env columns) and
:class:`~geoplant.models.maxent.MaxentPO` (env columns). :func:`save_trained` is the one
step a baseline calls after training; :func:`load_model` gives back a model with
``predict_proba(X)`` on the feature columns, which :mod:`geoplant.maps`
(``geoplant map MODEL_DIR ...``) uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text, json_default

if TYPE_CHECKING:
    from geoplant.models.classic import EnvLogisticBaseline, FrequencyBaseline
    from geoplant.models.maxent import MaxentPO
    from geoplant.models.persist_torch import TorchPredictor
    from geoplant.store import Store

__all__ = ["FORMAT", "KINDS", "SavedModel", "env_columns", "env_feature_names", "load_model",
           "save_model", "save_trained"]

#: Format tag written into ``model.json``.
FORMAT = "geoplant-model/1"

_LOGISTIC_SETTINGS = ("C", "quadratic", "min_presences", "max_iter", "tol", "species_block")
_LOGISTIC_ARRAYS = ("mean_", "scale_", "qmean_", "qscale_", "coef_", "intercept_", "prior_",
                    "fitted_species_", "_constant")
_FREQUENCY_SETTINGS = ("cell_size", "coord_columns", "group_column", "smoothing")
#: Model kinds a folder can hold.
KINDS = ("EnvLogisticBaseline", "FrequencyBaseline", "MultimodalSDM", "MaxentPO")
#: ``meta`` key of the per-species validation max-TSS thresholds (species_ids order).
THRESHOLDS_KEY = "max_tss_thresholds"


@dataclass
class SavedModel:
    """A model read back by :func:`load_model`.

    Attributes
    ----------
    model
        Something with ``predict_proba(X)`` on the feature columns: the fitted
        :class:`~geoplant.models.EnvLogisticBaseline`, :class:`~geoplant.models.FrequencyBaseline`
        or :class:`~geoplant.models.maxent.MaxentPO`, or for a
        :class:`~geoplant.models.MultimodalSDM` a
        :class:`~geoplant.models.persist_torch.TorchPredictor` (CPU, batched).
    species_ids
        int64 species id of each probability column.
    feature_names
        Names of the input columns, in training order.
    meta
        Free metadata given to :func:`save_model`.
    path
        The model folder.
    kind
        The model kind (one of :data:`KINDS`).
    """

    model: EnvLogisticBaseline | FrequencyBaseline | MaxentPO | TorchPredictor
    species_ids: np.ndarray
    feature_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    kind: str = ""

    def thresholds(self) -> dict[int, float] | None:
        """The validation max-TSS thresholds saved with the model, per species id (NaN:
        none for that species), or None when the folder has none."""
        values = self.meta.get(THRESHOLDS_KEY)
        if values is None:
            return None
        return {int(s): float("nan") if v is None else float(v)
                for s, v in zip(self.species_ids, values, strict=True)}


def env_columns(store: Store, split: str = "pa_train") -> list[str]:
    """The env cube's column names (the ``env`` modality's inputs, in order)."""
    return [str(n) for n in store.cube(split)["env_variable"].values]


def env_feature_names(store: Store, split: str = "pa_train") -> list[str]:
    """Column names of :func:`geoplant.experiment.env_features`: lon, lat, then env variables."""
    return ["lon", "lat", *env_columns(store, split)]


SavableModel = Any  # EnvLogisticBaseline | FrequencyBaseline | MultimodalSDM | MaxentPO


def save_model(model: SavableModel, folder: str | os.PathLike[str], *,
               species_ids: Sequence[int] | np.ndarray, feature_names: Sequence[str],
               meta: Mapping[str, Any] | None = None,
               encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write a fitted model into ``folder`` (created; files replaced atomically).

    Parameters
    ----------
    model
        A fitted ``EnvLogisticBaseline``, ``FrequencyBaseline``, ``MaxentPO`` or a trained
        ``MultimodalSDM``.
    folder
        Destination folder.
    species_ids
        Species id of each probability column (the store's species table order).
    feature_names
        Name of each input column, in the order the model was fitted on (for a
        ``MultimodalSDM``: the env cube's columns when it has the ``env`` modality, else
        empty).
    meta
        JSON-able extra information (store path, split, validation metrics, thresholds...).
    encoder_kwargs
        ``MultimodalSDM`` only: the per-modality encoder arguments it was built with (checked
        by rebuilding the model).

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    GeoplantError
        Unfitted model, unknown model class, or sizes that disagree with the model.
    """
    species = np.asarray(species_ids, dtype=np.int64)
    names = [str(n) for n in feature_names]
    kind, settings, arrays, n_features, n_species = _to_arrays(model, encoder_kwargs)
    if n_species != len(species):
        raise GeoplantError(f"{len(species)} species ids for a model of {n_species} species")
    if n_features is not None and n_features != len(names):
        raise GeoplantError(f"{len(names)} feature names for a model of {n_features} features")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "weights.tmp.npz"
    payload: dict[str, Any] = {"species_ids": species, **arrays}
    np.savez_compressed(tmp, **payload)
    os.replace(tmp, out / "weights.npz")
    doc = {"format": FORMAT, "kind": kind, "settings": settings, "feature_names": names,
           "n_species": int(n_species), "meta": dict(meta or {})}
    atomic_write_text(out / "model.json", json.dumps(doc, indent=1, default=json_default) + "\n")
    return out


def _to_arrays(model: SavableModel, encoder_kwargs: Mapping[str, Mapping[str, Any]] | None
               ) -> tuple[str, dict[str, Any], dict[str, np.ndarray], int | None, int]:
    """``(kind, settings, arrays, n_features or None, n_species)`` of a fitted model."""
    from geoplant.models.classic import EnvLogisticBaseline, FrequencyBaseline
    from geoplant.models.maxent import MaxentPO

    if isinstance(model, EnvLogisticBaseline):
        if not hasattr(model, "coef_"):
            raise GeoplantError("EnvLogisticBaseline is not fitted", fix="call fit(X, Y) first")
        settings = {k: getattr(model, k) for k in _LOGISTIC_SETTINGS}
        arrays = {k: np.asarray(getattr(model, k)) for k in _LOGISTIC_ARRAYS}
        return "EnvLogisticBaseline", settings, arrays, len(model.mean_), model.coef_.shape[1]
    if isinstance(model, FrequencyBaseline):
        if not hasattr(model, "prior_"):
            raise GeoplantError("FrequencyBaseline is not fitted", fix="call fit(X, Y) first")
        settings = {k: getattr(model, k) for k in _FREQUENCY_SETTINGS}
        settings["coord_columns"] = list(model.coord_columns)
        keys = sorted(model.table_)
        width = 1 if model.group_column is not None else 2  # group id, or (cell x, cell y)
        arrays = {"prior_": model.prior_,
                  "table_keys": np.array(keys, dtype=np.int64).reshape(len(keys), width),
                  "table_probs": np.array([model.table_[k] for k in keys], dtype=np.float64)
                  .reshape(len(keys), len(model.prior_))}
        return "FrequencyBaseline", settings, arrays, None, len(model.prior_)
    if isinstance(model, MaxentPO):
        doc, arrays = model.to_arrays()
        return "MaxentPO", doc, arrays, len(model.fill_), len(model.prior_)
    if _is_multimodal(model):
        from geoplant.models.persist_torch import torch_settings

        settings, arrays = torch_settings(model, encoder_kwargs)
        env = model.encoders["env"] if "env" in model.encoders else None
        n_features = int(env.in_features) if env is not None and hasattr(env, "in_features") \
            else (None if env is not None else 0)
        return "MultimodalSDM", settings, arrays, n_features, int(model.n_species)
    raise GeoplantError(f"cannot save a {type(model).__name__}",
                        fix="save an EnvLogisticBaseline, FrequencyBaseline, MaxentPO or "
                            "MultimodalSDM")


def _is_multimodal(model: Any) -> bool:
    """Whether ``model`` is a MultimodalSDM (without importing torch for the others)."""
    if type(model).__name__ != "MultimodalSDM":
        return False
    from geoplant.models.fusion import MultimodalSDM

    return isinstance(model, MultimodalSDM)


def save_trained(model: Any, folder: str | os.PathLike[str], *, store: Store,
                 val: Any | None = None, feature_names: Sequence[str] | None = None,
                 encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                 meta: Mapping[str, Any] | None = None) -> Path:
    """Save what a baseline trained into ``folder`` (``<out>/model``), ready for
    ``geoplant map``: the step every notebook calls after training.

    Parameters
    ----------
    model
        The trained model: a :class:`~geoplant.train.TrainResult` (its ``.model``), a
        ``MultimodalSDM``, an ``EnvLogisticBaseline``, a ``FrequencyBaseline`` or a
        ``MaxentPO``. Its probability columns are the store's species, in order.
    folder
        Destination folder.
    store
        The store it was trained on (species ids, env column names, path in ``meta``).
    val
        Validation :class:`~geoplant.experiment.Predictions` with labels: their per-species
        max-TSS thresholds (:func:`geoplant.indicators.max_tss_thresholds`) go into ``meta``
        and become ``geoplant map``'s default thresholds for the indicators.
    feature_names
        Input columns (default: lon, lat and the env columns for the classic models, the
        env columns for ``MaxentPO`` (its own names) and for a ``MultimodalSDM`` with the
        env modality, none otherwise).
    encoder_kwargs
        ``MultimodalSDM`` only: the encoder arguments given to
        :func:`geoplant.experiment.fit_torch`.
    meta
        Extra JSON-able information (method, metrics...).

    Returns
    -------
    Path
        The folder.
    """
    if hasattr(model, "history") and hasattr(model, "model"):  # a TrainResult
        model = model.model
    species = store.species["speciesId"].to_numpy(np.int64)
    kind = _to_kind(model)
    if feature_names is None:
        if kind == "MaxentPO":
            feature_names = list(model.feature_names_)
        elif kind == "MultimodalSDM":
            feature_names = env_columns(store) if "env" in model.modalities else []
        else:
            feature_names = env_feature_names(store)
    info: dict[str, Any] = {"store": store.path, **dict(meta or {})}
    if kind == "MultimodalSDM":
        info.setdefault("modalities", list(model.modalities))
    if val is not None and getattr(val, "labels", None) is not None:
        from geoplant.indicators import max_tss_thresholds

        if not np.array_equal(np.asarray(val.species_ids, np.int64), species):
            raise GeoplantError("validation predictions are not over the store's species",
                                fix="pass the Predictions of this model on this store")
        values = max_tss_thresholds(val.labels, val.probs)
        info[THRESHOLDS_KEY] = [float(v) if np.isfinite(v) else None
                                for v in values]
        info["threshold_surveys"] = len(val.survey_ids)
    return save_model(model, folder, species_ids=species, feature_names=feature_names,
                      meta=info, encoder_kwargs=encoder_kwargs)


def _to_kind(model: Any) -> str:
    from geoplant.models.classic import EnvLogisticBaseline, FrequencyBaseline
    from geoplant.models.maxent import MaxentPO

    for cls in (EnvLogisticBaseline, FrequencyBaseline, MaxentPO):
        if isinstance(model, cls):
            return cls.__name__
    if _is_multimodal(model):
        return "MultimodalSDM"
    raise GeoplantError(f"cannot save a {type(model).__name__}",
                        fix="save an EnvLogisticBaseline, FrequencyBaseline, MaxentPO or "
                            "MultimodalSDM (or fit_torch's TrainResult)")


def load_model(folder: str | os.PathLike[str]) -> SavedModel:
    """Read a model folder written by :func:`save_model`.

    A ``MultimodalSDM`` comes back inside a
    :class:`~geoplant.models.persist_torch.TorchPredictor` (this imports torch; the other
    kinds do not need it).

    Raises
    ------
    GeoplantError
        Missing folder or files, unknown format or model class, damaged files.
    """
    path = Path(folder)
    doc_path, weights_path = path / "model.json", path / "weights.npz"
    if not path.is_dir():
        raise GeoplantError("no such model folder", path=path,
                            fix="pass a folder written by geoplant.models.persist.save_model")
    if not doc_path.is_file() or not weights_path.is_file():
        raise GeoplantError("not a model folder (no model.json + weights.npz)", path=path,
                            fix="pass a folder written by geoplant.models.persist.save_model")
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
        with np.load(weights_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as err:
        raise GeoplantError(f"damaged model files ({err})", path=path,
                            fix="save the model again") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise GeoplantError(f"unknown model format {found!r}", path=doc_path,
                            fix=f"expected {FORMAT}")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise GeoplantError(f"unknown model kind {kind!r}", path=doc_path,
                            fix=f"use one of {', '.join(KINDS)}")
    names = [str(n) for n in doc["feature_names"]]
    model = _from_arrays(str(kind), dict(doc.get("settings", {})), arrays, names, path)
    return SavedModel(model, arrays["species_ids"].astype(np.int64), names,
                      dict(doc.get("meta", {})), path, str(kind))


def _from_arrays(kind: str, settings: dict[str, Any], arrays: dict[str, np.ndarray],
                 names: list[str], path: Path) -> Any:
    from geoplant.models.classic import EnvLogisticBaseline, FrequencyBaseline

    try:
        if kind == "EnvLogisticBaseline":
            logistic = EnvLogisticBaseline(**settings)
            for k in _LOGISTIC_ARRAYS:
                value = arrays[k]
                setattr(logistic, k, float(value) if value.ndim == 0 else value)
            return logistic
        if kind == "FrequencyBaseline":
            freq = FrequencyBaseline(**settings)
            freq.prior_ = arrays["prior_"]
            freq.n_species_ = len(freq.prior_)
            freq.table_ = {tuple(int(v) for v in key): row
                           for key, row in zip(arrays["table_keys"], arrays["table_probs"],
                                               strict=True)}
            return freq
        if kind == "MaxentPO":
            from geoplant.models.maxent import MaxentPO

            return MaxentPO.from_arrays(settings, arrays)
        from geoplant.models.persist_torch import TorchPredictor, rebuild_model

        return TorchPredictor(rebuild_model(settings, arrays), names)
    except (KeyError, TypeError) as err:
        raise GeoplantError(f"damaged {kind} files ({type(err).__name__}: {err})", path=path,
                            fix="save the model again") from None
