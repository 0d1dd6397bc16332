"""Presence-only (PO) records as training data: sites, pooled cells, env features, weights.

PO records (``po_train``: 5M GBIF records) say where a species was seen, never where it is
absent. The steps here turn them into what a model trains on, with NumPy/SciPy/pandas only:

- :func:`po_sites`: the PO surveys as sites (location, species recorded there);
- :func:`pool_cells`: pseudo-presence sets, the union of the species recorded within a grid
  cell of ``cell_km`` (a lat-corrected, near equal-area grid: rows of ``cell_km`` of
  latitude, columns of ``cell_km`` of ground distance along each row), one row per cell (as
  the GLC24/GLC25 working notes pool PO records within a patch footprint);
- :func:`po_env`: env features of the sites in the env cube's column order, from the
  ``po_train`` env cube when the store has one, else sampled from the rasters;
- :func:`species_counts`, :func:`species_weights`: presences per species and weights from
  them; :func:`match_prevalence`: per-species logit offsets that give each species a
  target mean probability (the intercept calibration of a PO model scored on PA data).

The deep PO models train on these with a PO loss (``"po_an"``, ``"po_maxent"``:
:mod:`geoplant.train.losses`); :func:`fit_po` (torch imported when it runs) trains a
:class:`~geoplant.models.MultimodalSDM` on them, :func:`fit_maxent` fits
:class:`~geoplant.models.maxent.MaxentPO`, and :func:`save_pretrained` /
:func:`load_pretrained` carry PO-trained weights into a PA model
(``geoplant.experiment.fit_torch(init_from=...)``). Both are scored on the PA surveys, as
the competition scores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import scipy.sparse as sp

from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    from geoplant.experiment import Plan, Predictions
    from geoplant.store import Store
    from geoplant.train import TrainResult

__all__ = [
    "DEEP_LOSSES",
    "LOCATIONS",
    "POSites",
    "calibrate_intercepts",
    "cell_index",
    "fit_maxent",
    "fit_po",
    "load_pretrained",
    "match_prevalence",
    "po_env",
    "po_sites",
    "pool_cells",
    "pretrained_digest",
    "save_pretrained",
    "species_counts",
    "species_weights",
]

#: Mean Earth radius (km) of the cell grid.
EARTH_RADIUS_KM: Final = 6371.0088
#: Where a pooled cell is located: the mean of its sites, or its first site.
LOCATIONS: Final = ("mean", "first")
#: The PO losses :func:`fit_po` trains with.
DEEP_LOSSES: Final = ("po_an", "po_maxent", "po_maxent_uniform")
#: PA training surveys (at most) whose logits :func:`fit_po` calibrates the intercepts on
#: (10k x 11k species float32: 440 MB); the target prevalence uses all of them.
CALIBRATION_SURVEYS: Final = 10_000
#: Kinds of :func:`species_weights`.
WEIGHTINGS: Final = ("uniform", "inverse", "inverse_sqrt")

#: A classic MaxEnt predictor set (few, little correlated): annual temperature, its
#: seasonality, annual precipitation, elevation, soil pH and sand, human footprint.
MAXENT_FEATURES: Final = ("Bio1", "Bio4", "Bio12", "Elevation", "Soilgrid-phh2o",
                          "Soilgrid-sand", "HumanFootprint-HFP2009")


@dataclass(frozen=True)
class POSites:
    """PO sites: one row per PO survey, or per grid cell after :func:`pool_cells`.

    Attributes
    ----------
    survey_ids
        int64 PO ``surveyId`` of each row (after pooling: the cell's first survey).
    lon, lat
        float64 location (after pooling: per :func:`pool_cells`' ``location``).
    labels
        ``scipy.sparse.csr_matrix`` (rows x store species) of 0/1 (uint8): species recorded.
    species_ids
        int32 column index (the store's species table order).
    n_surveys
        int64 PO surveys pooled into each row (1 before pooling).
    cell_km
        The pooling cell size (None: not pooled).
    """

    survey_ids: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    labels: sp.csr_matrix
    species_ids: np.ndarray
    n_surveys: np.ndarray
    cell_km: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.survey_ids)


def po_sites(store: Store) -> POSites:
    """The store's PO surveys as sites (sorted by ``surveyId``) with the species recorded."""
    labels = store.labels("po_train")
    coords = store.records("po_train", columns=["surveyId", "lon", "lat"]) \
        .drop_duplicates("surveyId").set_index("surveyId").loc[labels.survey_ids]
    n = len(labels.survey_ids)
    return POSites(np.asarray(labels.survey_ids, np.int64),
                   coords["lon"].to_numpy(np.float64), coords["lat"].to_numpy(np.float64),
                   labels.matrix.tocsr(), np.asarray(labels.species_ids),
                   np.ones(n, np.int64))


def cell_index(lon: Any, lat: Any, cell_km: float) -> np.ndarray:
    """Grid cell of each point: ``(row, col)`` int64 pairs ``(n, 2)``.

    Rows are bands of ``cell_km`` of latitude (meridian distance); within a row, columns
    are ``cell_km`` of ground distance at the row's central latitude, so cells are close to
    ``cell_km`` squares of (near) equal area at every latitude.

    Raises
    ------
    GeoplantError
        ``cell_km`` is not positive, or a coordinate is not finite.
    """
    if not cell_km > 0:
        raise GeoplantError(f"cell_km must be > 0, got {cell_km}")
    x = np.radians(np.asarray(lon, np.float64).ravel())
    y = np.radians(np.asarray(lat, np.float64).ravel())
    if x.shape != y.shape or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise GeoplantError("lon/lat must be finite and of one length")
    row = np.floor(y * EARTH_RADIUS_KM / cell_km)
    centre = (row + 0.5) * cell_km / EARTH_RADIUS_KM
    # a floor of one cell of circumference near the poles keeps columns finite
    width = np.maximum(np.cos(centre), cell_km / EARTH_RADIUS_KM)
    col = np.floor(x * EARTH_RADIUS_KM * width / cell_km)
    return np.column_stack([row, col]).astype(np.int64)


def pool_cells(sites: POSites, cell_km: float = 1.0, *, location: str = "mean") -> POSites:
    """Pseudo-presence sets: the union of the species recorded in each grid cell.

    Parameters
    ----------
    sites
        PO sites (:func:`po_sites`).
    cell_km
        Cell size (:func:`cell_index`); ~1 km by default (a PA plot's neighbourhood).
    location
        ``"mean"``: the cell's row sits at the mean location of its sites; ``"first"``: at
        its first site (lowest ``surveyId``), whose env row a ``po_train`` cube then gives
        exactly.

    Returns
    -------
    POSites
        One row per occupied cell (ordered by first ``surveyId``); ``n_surveys`` counts its
        PO surveys, ``info["records_per_cell"]`` summarises them.
    """
    if location not in LOCATIONS:
        raise GeoplantError(f"unknown location {location!r}", fix=f"use one of {LOCATIONS}")
    if not len(sites):
        raise GeoplantError("no PO sites to pool", fix="build the store with po_train records")
    cells = cell_index(sites.lon, sites.lat, cell_km)
    # first occurrence order: sites are sorted by surveyId, so cells follow their first one
    _, first, inverse = np.unique(cells, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    cell_of_site = rank[np.asarray(inverse).ravel()]
    n_cells = len(order)
    member = sp.csr_matrix((np.ones(len(sites), np.float64),
                            (cell_of_site, np.arange(len(sites)))), shape=(n_cells, len(sites)))
    pooled = (member @ sites.labels.astype(np.float64)).tocsr()
    pooled.data[:] = 1  # a union: a species recorded twice in the cell is one presence
    n_surveys = np.asarray(member.sum(axis=1)).ravel().astype(np.int64)
    if location == "mean":
        lon = (member @ sites.lon) / n_surveys
        lat = (member @ sites.lat) / n_surveys
    else:
        lon, lat = sites.lon[first[order]], sites.lat[first[order]]
    info = {"cell_km": float(cell_km), "location": location, "po_surveys": len(sites),
            "cells": n_cells, "surveys_per_cell_mean": round(float(n_surveys.mean()), 3),
            "species_per_cell_mean": round(float(pooled.getnnz(axis=1).mean()), 3)}
    return POSites(sites.survey_ids[first[order]], np.asarray(lon, np.float64),
                   np.asarray(lat, np.float64), pooled.astype(np.uint8),
                   sites.species_ids, n_surveys, float(cell_km), info)


def species_counts(labels: Any) -> np.ndarray:
    """Presences (rows listing it) of each species: int64 ``(n_species,)``."""
    if sp.issparse(labels):
        return np.asarray((labels != 0).sum(axis=0)).ravel().astype(np.int64)
    return (np.asarray(labels) != 0).sum(axis=0).astype(np.int64)


def species_weights(counts: Any, kind: str = "inverse") -> np.ndarray:
    """Per-species weights from presence counts, mean 1 over the species with presences.

    Parameters
    ----------
    counts
        Presences per species (:func:`species_counts`).
    kind
        ``"inverse"`` (``1 / n_s``: every species counts equally, as DeepMaxent's
        weighting), ``"inverse_sqrt"`` (``n_s ** -0.5``: between the two) or ``"uniform"``
        (every presence equally). Species without presences get 0.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_species,)``.
    """
    n = np.asarray(counts, np.float64).ravel()
    if (n < 0).any():
        raise GeoplantError("species counts must be >= 0")
    if kind not in WEIGHTINGS:
        raise GeoplantError(f"unknown weighting {kind!r}", fix=f"use one of {WEIGHTINGS}")
    power = {"uniform": 0.0, "inverse": 1.0, "inverse_sqrt": 0.5}[kind]
    w = np.zeros_like(n)
    present = n > 0
    w[present] = n[present] ** -power
    return w / w[present].mean() if present.any() else w


def _env_names(store: Store) -> list[str]:
    """The env cube's column names (``Bio1``...) in the PA cubes' order."""
    split = next((s for s in store.splits if s != "po_train" and "env" in store.modalities(s)),
                 None)
    if split is None:
        raise GeoplantError("the store has no env cube to take the env columns from",
                            path=store.path, fix="build it with the env modality")
    return [str(v) for v in store.cube(split)["env_variable"].values]


def po_env(store: Store, sites: POSites, feature_names: Sequence[str] | None = None
           ) -> np.ndarray:
    """Env values at the sites: float32 ``(n_sites, n_env)`` in the env cube's column order.

    From the ``po_train`` env cube when the store holds one (the row of each site's
    ``survey_ids``: exact for unpooled sites and ``location="first"`` cells, the cell's
    first site otherwise), else sampled from the store's rasters at the sites' lon/lat
    (:func:`geoplant.points.point_features`). NaN where a value is missing.

    Raises
    ------
    GeoplantError
        The store has neither a ``po_train`` env cube nor rasters.
    """
    names = [str(n) for n in feature_names] if feature_names is not None else _env_names(store)
    if "env" in store.modalities("po_train"):
        env = store.cube("po_train")["env"]
        if [str(v) for v in env["env_variable"].values] == names:
            return np.asarray(env.sel(surveyId=sites.survey_ids).values, np.float32)
    from geoplant.points import point_features

    if not store.manifest.get("rasters"):
        raise GeoplantError("no po_train env cube and no rasters to sample env at PO sites",
                            path=store.path, fix="build the store with its rasters")
    values = point_features(store.rasters(), sites.lon, sites.lat, names)
    return np.asarray(values, np.float32)


def match_prevalence(logits: np.ndarray, prevalence: Any, *, eps: float = 1e-4,
                     iters: int = 60, block: int = 256) -> np.ndarray:
    """Per-species offsets ``c`` with ``mean_i sigmoid(logits[i, s] + c[s]) = prevalence[s]``.

    The maximum-likelihood intercept of a logistic model whose slope is fixed (the score
    equation of the intercept); found by bisection, all species at once. Prevalences are
    clipped to ``[eps, 1 - eps]``.

    Parameters
    ----------
    logits
        ``(n, n_species)`` (e.g. a PO model's outputs on PA training surveys).
    prevalence
        Target mean probability of each species ``(n_species,)``.
    eps, iters, block
        Clip of the prevalences; bisection steps; species per block.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_species,)``.
    """
    logits = np.asarray(logits)
    target = np.clip(np.asarray(prevalence, np.float64).ravel(), eps, 1 - eps)
    if logits.ndim != 2 or logits.shape[1] != len(target) or not len(logits):
        raise GeoplantError(f"logits {logits.shape} do not match {len(target)} prevalences")
    # blocks of species: the float64 temporaries stay ~block x n_surveys
    return np.concatenate([_match_block(logits[:, a:a + block], target[a:a + block], iters)
                           for a in range(0, len(target), block)])


def _match_block(logits: np.ndarray, target: np.ndarray, iters: int) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.where(np.isfinite(z), z, 0.0)
    logit_t = np.log(target) - np.log1p(-target)
    # the offset lies between the target logit minus the largest and minus the smallest
    lo = logit_t - z.max(axis=0) - 1.0
    hi = logit_t - z.min(axis=0) + 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        mean = (0.5 * (1 + np.tanh((z + mid) / 2))).mean(axis=0)  # a stable sigmoid
        above = mean > target
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return (lo + hi) / 2


# ---------------------------------------------------------------------------------------------
# training (torch imported when these run)


def _pa_dataset(store: Store, split: str, ids: np.ndarray, stats: Mapping[str, Any]) -> Any:
    from geoplant.torch import SurveyDataset

    return SurveyDataset(store, split, ["env"], normalize=False, stats=dict(stats),
                         survey_ids=ids)


def _logits(model: Any, loader: Any) -> np.ndarray:
    """Raw logits of ``model`` over ``loader`` (CPU float32)."""
    import torch

    from geoplant.train import select_device
    from geoplant.train.device import to_device

    device = select_device()
    model.to(device).eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            out.append(model(to_device(batch, device)).float().cpu())
    return torch.cat(out).numpy()


def calibrate_intercepts(model: Any, loader: Any, prevalence: Any) -> np.ndarray:
    """Shift ``model.output.bias`` so each species' mean probability over ``loader`` is its
    ``prevalence`` (:func:`match_prevalence`); returns the offsets added.

    A PO model's logits have no meaningful per-species level: DeepMaxent's loss ignores it,
    and assume-negative BCE learns the rate of being *recorded*, not of being present. On
    the PA training surveys with their PA prevalence, the offsets make the outputs read as
    presence probabilities, so a decoder (top-K across species, a threshold) can compare
    species.
    """
    import torch

    offsets = match_prevalence(_logits(model, loader), prevalence)
    with torch.no_grad():
        model.output.bias.add_(torch.as_tensor(offsets, dtype=model.output.bias.dtype,
                                               device=model.output.bias.device))
    return offsets


@dataclass(frozen=True)
class _POData:
    sites: POSites
    env: np.ndarray
    pos_weight: np.ndarray | float | None


def _po_data(store: Store, *, loss: str, cell_km: float | None, location: str,
             lam: float | str | None, n_background: int, seed: int) -> _POData:
    """Sites (pooled, plus background rows without records), their env and the lambda."""
    sites = po_sites(store)
    if cell_km:
        sites = pool_cells(sites, cell_km, location=location)
    if n_background:  # Cole et al.'s "full" assume-negative: random places, no species
        from geoplant.models.maxent import background_points

        blon, blat = background_points(store, "uniform", n_background, seed=seed)
        empty = sp.csr_matrix((n_background, sites.labels.shape[1]), dtype=np.uint8)
        sites = replace(sites, survey_ids=np.r_[sites.survey_ids, -1 - np.arange(n_background)],
                        lon=np.r_[sites.lon, blon], lat=np.r_[sites.lat, blat],
                        labels=sp.vstack([sites.labels, empty]).tocsr(),
                        n_surveys=np.r_[sites.n_surveys, np.zeros(n_background, np.int64)],
                        info={**sites.info, "background": n_background})
    env = po_env(store, sites)
    pos_weight: np.ndarray | float | None = None
    if loss == "po_an":
        if lam is None or lam == "species":  # (n_neg / n_pos) ** 0.5 per species
            counts = species_counts(sites.labels)
            ratio = (len(sites) - counts) / np.maximum(counts, 1)
            pos_weight = np.clip(ratio ** 0.5, 1.0, 100.0).astype(np.float32)
        elif isinstance(lam, str):
            raise GeoplantError(f"unknown lam {lam!r}", fix='use a number or "species"')
        else:
            pos_weight = float(lam)
    return _POData(sites, env, pos_weight)


def _po_loader(data: _POData, batch_size: int, seed: int) -> Any:
    from geoplant.torch.arrays import ArrayDataset

    ds = ArrayDataset({"env": data.env}, data.sites.labels, data.sites.survey_ids)
    return ds.loader(batch_size, shuffle=True, seed=seed)


def fit_po(store: Store, plan: Plan, *, loss: str = "po_maxent", cell_km: float | None = 1.0,
           location: str = "mean", lam: float | str | None = None, n_background: int = 0,
           epochs: int = 6, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
           patience: int | None = 4, calibrate: bool = True,
           encoder_kwargs: Mapping[str, Any] | None = None,
           out_dir: str | os.PathLike[str] | None = None, fresh: bool = False,
           progress: bool = True) -> tuple[Predictions, Predictions, TrainResult]:
    """Train an env :class:`~geoplant.models.MultimodalSDM` on PO sites; predict PA val/test.

    The PO sites (pooled into ``cell_km`` cells, env from :func:`po_env`) are the training
    batches; the plan's PA validation surveys drive early stopping (DeepMaxent: the PO loss
    of their presences; assume-negative: samples-F1); env is standardised with the PA
    training statistics (:func:`geoplant.experiment.training_stats`), as a PA model on the
    same store would be, so the encoder carries over (:func:`save_pretrained`).

    Parameters
    ----------
    store, plan
        The data and its PA train/validation/test surveys.
    loss
        ``"po_an"``, ``"po_maxent"`` (DeepMaxent, 1/n_s) or ``"po_maxent_uniform"``.
    cell_km, location
        Pooling (:func:`pool_cells`; None or 0: one row per PO survey).
    lam
        ``"po_an"``'s presence weight: a number (a global lambda, as Cole et al.) or None /
        ``"species"``: ``sqrt(n_neg / n_pos)`` per species on the PO rows, clipped to
        [1, 100].
    n_background
        Extra rows at uniform random land cells with no species (Cole et al.'s "full"
        assume-negative; ``"po_an"`` mostly).
    epochs, batch_size, lr, seed, patience, fresh, progress
        As in :func:`geoplant.experiment.fit_torch`.
    calibrate
        Shift the per-species intercepts to the PA training prevalence
        (:func:`calibrate_intercepts`): needed for DeepMaxent's logits to read as
        probabilities; it uses the PA labels' prevalence only, no PA fitting.
    encoder_kwargs
        Env encoder arguments (:class:`~geoplant.models.EnvMLP`).
    out_dir
        Checkpoints (``out_dir/checkpoints``) and ``normalization.json``.

    Returns
    -------
    (validation predictions with labels, test predictions, TrainResult)
        As :func:`geoplant.experiment.fit_torch`; ``info`` adds the PO settings and counts.
    """
    from geoplant import experiment as ex
    from geoplant.models import MultimodalSDM
    from geoplant.torch import DeviceNormalizer
    from geoplant.train import TrainConfig, fit, predict, seed_everything

    if loss not in DEEP_LOSSES:
        raise GeoplantError(f"unknown PO loss {loss!r}", fix=f"use one of {DEEP_LOSSES}")
    data = _po_data(store, loss=loss, cell_km=cell_km, location=location, lam=lam,
                    n_background=n_background, seed=seed)
    stats = ex.training_stats(store, plan, ["env"], out_dir)
    n_species = len(store.species)
    seed_everything(seed)
    prevalence = species_counts(data.sites.labels) / max(len(data.sites), 1)
    model = MultimodalSDM(["env"], n_species, prior=np.clip(prevalence, 1e-4, 1 - 1e-4),
                          encoder_kwargs={"env": dict(encoder_kwargs or {})},
                          normalizer=DeviceNormalizer.from_stats(stats, ["env"]))
    settings = {"po": {"cell_km": cell_km, "location": location, "lam": lam,
                       "n_background": n_background, "rows": len(data.sites),
                       "batch_size": batch_size},
                "val_surveys_sha256": ex._ids_sha256(plan.val_ids),
                "encoder_kwargs": dict(encoder_kwargs or {})}
    config = TrainConfig(
        epochs=epochs, lr=lr, loss=loss, pos_weight=data.pos_weight, seed=seed,
        # DeepMaxent logits are uncalibrated during training: their F1 means little
        metric="f1_threshold" if loss == "po_an" else "loss", patience=patience,
        checkpoint_dir=str(Path(out_dir) / "checkpoints") if out_dir else None,
        resume=not fresh, progress=progress, extra_settings=settings)
    val_ds, test_ds = (_pa_dataset(store, "pa_train", plan.val_ids, stats),
                       _pa_dataset(store, plan.test_split, plan.test_ids, stats))
    result = fit(model, _po_loader(data, batch_size, seed),
                 val_ds.loader(batch_size, shuffle=False), config)
    offsets = None
    if calibrate:  # on at most CALIBRATION_SURVEYS of them: logits of all would not fit
        ids = plan.train_ids
        if len(ids) > CALIBRATION_SURVEYS:
            ids = np.sort(np.random.default_rng(seed).choice(ids, CALIBRATION_SURVEYS,
                                                             replace=False))
        train_ds = _pa_dataset(store, "pa_train", ids, stats)
        offsets = calibrate_intercepts(result.model, train_ds.loader(512, shuffle=False),
                                       ex._frequency(store, plan.train_ids))
    val_ids, val_probs = predict(result.model, val_ds.loader(512, shuffle=False),
                                 progress=progress)
    test_ids, test_probs = predict(result.model, test_ds.loader(512, shuffle=False),
                                   progress=progress)
    info = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "device": str(result.device), "world_size": 1, "po_loss": loss,
            "po_rows": len(data.sites), "po_cell_km": cell_km, "po_background": n_background,
            "po_lambda": lam if loss == "po_an" else None, "calibrated": calibrate,
            "calibration_offset_mean": None if offsets is None
            else round(float(offsets.mean()), 4), **data.sites.info}
    species = store.species["speciesId"].to_numpy(np.int64)
    return (ex.Predictions(val_ids, val_probs, species, ex._labels_for(store, val_ids), info),
            ex.Predictions(test_ids, test_probs, species, None, info), result)


def save_pretrained(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write a :class:`~geoplant.models.MultimodalSDM`'s weights for
    :func:`load_pretrained` (``fit_torch(init_from=path)``): its state dict, modalities and
    embedding widths, in one ``torch.save`` file read back with ``weights_only=True``."""
    import torch

    from geoplant.files import atomic_write_with

    state = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "modalities": list(model.modalities),
             "embed_dims": [int(model.encoders[m].out_dim) for m in model.modalities],
             "n_species": int(model.n_species)}
    return atomic_write_with(Path(path), lambda tmp: torch.save(state, tmp))


def _read_pretrained(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The dict :func:`save_pretrained` wrote (``weights_only``: no code runs)."""
    import pickle

    import torch

    try:
        saved = torch.load(Path(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "modalities", "embed_dims"):
            saved[key]
    except (OSError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise GeoplantError(f"not a pretrained-weights file ({err})", path=path,
                            fix="write one with geoplant.presence_only.save_pretrained") from None
    return dict(saved)


def pretrained_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of the weights in a :func:`save_pretrained` file (names, dtypes, shapes and
    values, in name order), whatever the file's bytes: what a resume compares."""
    import hashlib

    import torch

    saved = _read_pretrained(path)
    digest = hashlib.sha256(repr(saved["modalities"]).encode())
    for name in sorted(saved["state_dict"]):
        t = saved["state_dict"][name].contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_pretrained(model: Any, path: str | os.PathLike[str], *, head: bool = True
                    ) -> dict[str, Any]:
    """Initialise ``model`` (a :class:`~geoplant.models.MultimodalSDM`) from a
    :func:`save_pretrained` file: every encoder the two share (same modality, same shapes),
    and with ``head`` the output weights of the shared modalities' embedding columns when
    both heads are linear over the same species. Normaliser statistics and the output bias
    stay the model's own.

    Returns
    -------
    dict
        ``{"encoders": [...], "head_columns": n}``: what was copied.

    Raises
    ------
    GeoplantError
        The file is unreadable, or no encoder matches.
    """
    saved = _read_pretrained(path)
    source, mods, dims = saved["state_dict"], saved["modalities"], saved["embed_dims"]
    target = model.state_dict()
    update: dict[str, Any] = {}
    copied = []
    for m in mods:
        prefix = f"encoders.{m}."
        keys = [k for k in source if k.startswith(prefix)]
        if m in model.modalities and keys and all(
                k in target and target[k].shape == source[k].shape for k in keys):
            update.update({k: source[k] for k in keys})
            copied.append(m)
    for m in copied:  # reported by geoplant.experiment.weights_sources
        model.encoders[m].weights_source = f"pretrained:{Path(path).name}"
    if not copied:
        raise GeoplantError(f"no encoder of {mods} fits the model's {list(model.modalities)}",
                            path=path, fix="pre-train the modalities the model uses")
    columns = 0
    w_new = target["output.weight"].clone()
    w_old = source.get("output.weight")
    if head and w_old is not None and w_old.shape[0] == w_new.shape[0] \
            and w_new.shape[1] == model.embed_dim:
        start_old = np.cumsum([0, *dims])
        widths = [int(model.encoders[m].out_dim) for m in model.modalities]
        start_new = np.cumsum([0, *widths])
        for m in copied:
            i, j = mods.index(m), model.modalities.index(m)
            if dims[i] == widths[j] and w_old.shape[1] == start_old[-1]:
                w_new[:, start_new[j]:start_new[j + 1]] = w_old[:, start_old[i]:start_old[i + 1]]
                columns += dims[i]
        if columns:
            update["output.weight"] = w_new
            update.update({k: w_new for k in target
                           if k.startswith("head.") and k.endswith(".weight")
                           and target[k].data_ptr() == target["output.weight"].data_ptr()})
    model.load_state_dict({**target, **update})
    return {"encoders": copied, "head_columns": columns}


# ---------------------------------------------------------------------------------------------
# MaxEnt


def fit_maxent(store: Store, plan: Plan, *, background: str = "target-group",
               features: Sequence[str] | None = None,
               **kwargs: Any) -> tuple[Predictions, Predictions, Any]:
    """:class:`~geoplant.models.maxent.MaxentPO` fitted on the PO records, predicting the
    plan's PA validation and test surveys from their env cube rows.

    ``features`` are env-cube column names (None: every column; MaxEnt users pick a few,
    e.g. :data:`MAXENT_FEATURES`); ``kwargs`` go to ``MaxentPO`` (``n_background``,
    ``min_records``, ``max_species``...).

    Raises
    ------
    GeoplantError
        A feature that is no env-cube column.
    """
    from geoplant import experiment as ex
    from geoplant.models.maxent import MaxentPO

    columns = [str(v) for v in store.cube("pa_train")["env_variable"].values]
    names = list(features) if features is not None else columns
    unknown = [f for f in names if f not in columns]
    if unknown:
        raise GeoplantError(f"unknown MaxEnt features {unknown}", path=store.path,
                            fix=f"use env columns of the store: {', '.join(columns)}")
    model = MaxentPO(background=background, **kwargs)  # type: ignore[arg-type]
    model.fit_store(store, names)
    species = store.species["speciesId"].to_numpy(np.int64)
    # env_features puts lon, lat first: MaxentPO takes its env columns only
    cols = [2 + columns.index(f) for f in names]
    x_val = ex.env_features(store, "pa_train", plan.val_ids)[:, cols]
    x_test = ex.env_features(store, plan.test_split, plan.test_ids)[:, cols]
    info = {"device": "cpu", "world_size": 1, "background": background,
            "fitted_species": len(model.fitted_species_)}
    val = ex.Predictions(plan.val_ids, model.predict_proba(x_val), species,
                         ex._labels_for(store, plan.val_ids), info)
    test = ex.Predictions(plan.test_ids, model.predict_proba(x_test), species, None, info)
    return val, test, model

