"""Save and load the classic env models as plain files: ``model.json`` + ``weights.npz``.

No pickle: the files can be read by any NumPy/JSON reader, survive refactorings of the model
classes and are safe to load from an untrusted source. A model folder holds

``model.json``
    format version, the model class, its constructor settings, the feature names in the order
    of the training columns (e.g. ``["lon", "lat", "Bio1", ...]``), the species ids in the order
    of the probability columns, and free ``meta`` (store, split, metrics...).
``weights.npz``
    the fitted arrays (standardisation, coefficients, intercepts, priors...).

:func:`geoplant.maps` reads such a folder (``geoplant map MODEL_DIR ...``).
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
    from geoplant.store import Store

__all__ = ["FORMAT", "SavedModel", "env_feature_names", "load_model", "save_model"]

#: Format tag written into ``model.json``.
FORMAT = "geoplant-model/1"

_LOGISTIC_SETTINGS = ("C", "quadratic", "min_presences", "max_iter", "tol", "species_block")
_LOGISTIC_ARRAYS = ("mean_", "scale_", "qmean_", "qscale_", "coef_", "intercept_", "prior_",
                    "fitted_species_", "_constant")
_FREQUENCY_SETTINGS = ("cell_size", "coord_columns", "group_column", "smoothing")


@dataclass
class SavedModel:
    """A model read back by :func:`load_model`.

    Attributes
    ----------
    model
        The fitted :class:`~geoplant.models.EnvLogisticBaseline` or
        :class:`~geoplant.models.FrequencyBaseline`.
    species_ids
        int64 species id of each probability column.
    feature_names
        Names of the input columns, in training order.
    meta
        Free metadata given to :func:`save_model`.
    path
        The model folder.
    """

    model: EnvLogisticBaseline | FrequencyBaseline
    species_ids: np.ndarray
    feature_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def env_feature_names(store: Store, split: str = "pa_train") -> list[str]:
    """Column names of :func:`geoplant.experiment.env_features`: lon, lat, then env variables."""
    names = store.cube(split)["env_variable"].values
    return ["lon", "lat", *(str(n) for n in names)]


def save_model(model: EnvLogisticBaseline | FrequencyBaseline, folder: str | os.PathLike[str],
               *, species_ids: Sequence[int] | np.ndarray, feature_names: Sequence[str],
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write a fitted classic model into ``folder`` (created; files replaced atomically).

    Parameters
    ----------
    model
        A fitted ``EnvLogisticBaseline`` or ``FrequencyBaseline``.
    folder
        Destination folder.
    species_ids
        Species id of each probability column (the store's species table order).
    feature_names
        Name of each input column, in the order the model was fitted on.
    meta
        JSON-able extra information (store path, split, validation metrics, threshold...).

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    GeoplantError
        Unfitted model, unknown model class, or sizes that disagree with the model.
    """
    from geoplant.models.classic import EnvLogisticBaseline, FrequencyBaseline

    species = np.asarray(species_ids, dtype=np.int64)
    names = [str(n) for n in feature_names]
    if isinstance(model, EnvLogisticBaseline):
        if not hasattr(model, "coef_"):
            raise GeoplantError("EnvLogisticBaseline is not fitted", fix="call fit(X, Y) first")
        kind = "EnvLogisticBaseline"
        settings = {k: getattr(model, k) for k in _LOGISTIC_SETTINGS}
        arrays = {k: np.asarray(getattr(model, k)) for k in _LOGISTIC_ARRAYS}
        n_features, n_species = len(model.mean_), model.coef_.shape[1]
    elif isinstance(model, FrequencyBaseline):
        if not hasattr(model, "prior_"):
            raise GeoplantError("FrequencyBaseline is not fitted", fix="call fit(X, Y) first")
        kind = "FrequencyBaseline"
        settings = {k: getattr(model, k) for k in _FREQUENCY_SETTINGS}
        settings["coord_columns"] = list(model.coord_columns)
        keys = sorted(model.table_)
        arrays = {"prior_": model.prior_,
                  "table_keys": np.array(keys, dtype=np.int64).reshape(len(keys), -1),
                  "table_probs": np.array([model.table_[k] for k in keys], dtype=np.float64)
                  .reshape(len(keys), len(model.prior_))}
        n_features, n_species = None, len(model.prior_)
    else:
        raise GeoplantError(f"cannot save a {type(model).__name__}",
                            fix="save an EnvLogisticBaseline or a FrequencyBaseline")
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


def load_model(folder: str | os.PathLike[str]) -> SavedModel:
    """Read a model folder written by :func:`save_model`.

    Raises
    ------
    GeoplantError
        Missing folder or files, unknown format or model class, damaged files.
    """
    from geoplant.models.classic import EnvLogisticBaseline, FrequencyBaseline

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
    settings = dict(doc.get("settings", {}))
    model: EnvLogisticBaseline | FrequencyBaseline
    if doc.get("kind") == "EnvLogisticBaseline":
        model = EnvLogisticBaseline(**settings)
        for k in _LOGISTIC_ARRAYS:
            value = arrays[k]
            setattr(model, k, float(value) if value.ndim == 0 else value)
    elif doc.get("kind") == "FrequencyBaseline":
        model = FrequencyBaseline(**settings)
        model.prior_ = arrays["prior_"]
        model.n_species_ = len(model.prior_)
        model.table_ = {tuple(int(v) for v in key): row
                        for key, row in zip(arrays["table_keys"], arrays["table_probs"],
                                            strict=True)}
    else:
        raise GeoplantError(f"unknown model kind {doc.get('kind')!r}", path=doc_path,
                            fix="use EnvLogisticBaseline or FrequencyBaseline")
    return SavedModel(model, arrays["species_ids"].astype(np.int64),
                      [str(n) for n in doc["feature_names"]], dict(doc.get("meta", {})), path)


