"""Score a maps folder (``geoplant map``) against the true maps of a synthetic world.

Per species, over the land cells both maps cover:

- ``spearman``: rank correlation of the predicted and the true probability (does the map put
  the species where it is likeliest?);
- ``auc``: the expected AUC of the predicted map against presences drawn from the truth, each
  cell counting as a presence with weight ``p_true`` and as an absence with ``1 - p_true``
  (what a survey in every cell would give on average);

and for the assemblage, the Pearson and Spearman correlations of the predicted richness with
the true richness over the same species. The species means carry a 95% bootstrap interval
(species resampled).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoplant.errors import GeoplantError

__all__ = ["score_maps"]


def _open_truth(truth_dir: str | os.PathLike[str]) -> Any:
    import xarray as xr

    folder = Path(truth_dir)
    for candidate in (folder, folder / "maps", folder / "truth" / "maps"):
        if (candidate / "probability.zarr").is_dir():
            return xr.open_zarr(candidate / "probability.zarr", consolidated=False,
                                decode_coords="all")
    raise GeoplantError("no true maps here (no probability.zarr)", path=folder,
                        fix="write them with geoplant.synthetic.maps.write_truth_maps")


def _expected_auc(pred: np.ndarray, truth: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if truth.sum() <= 0 or (1 - truth).sum() <= 0:
        return float("nan")
    y = np.concatenate([np.ones(len(pred)), np.zeros(len(pred))])
    score = np.concatenate([pred, pred])
    weight = np.concatenate([truth, 1.0 - truth])
    return float(roc_auc_score(y, score, sample_weight=weight))


def _bootstrap_mean(values: np.ndarray, *, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` (NaNs dropped), items resampled."""
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return float("nan"), float("nan")
    from geoplant.metrics import bootstrap_means

    return bootstrap_means({"mean": v}, n=n, seed=seed)["mean"]


def score_maps(maps_dir: str | os.PathLike[str], truth_dir: str | os.PathLike[str], *,
               max_cells: int = 50_000, seed: int = 0) -> dict[str, Any]:
    """Agreement of predicted maps with the true maps (synthetic worlds only).

    Parameters
    ----------
    maps_dir
        A folder written by :func:`geoplant.maps.make_maps`.
    truth_dir
        A folder holding the true ``probability.zarr`` (``truth/maps`` written by
        :func:`geoplant.synthetic.maps.write_truth_maps`), or the release / truth folder.
    max_cells
        Cells used per species (a fixed random subset of the common land cells when there
        are more; keeps scoring to seconds).
    seed
        Seed of that subset.

    Returns
    -------
    dict
        ``species`` (DataFrame: ``speciesId``, ``spearman``, ``auc``, ``true_mean``,
        ``predicted_mean``), ``spearman_mean`` (and ``spearman_mean_ci``, a 95% bootstrap
        interval over species), ``spearman_median``, ``auc_mean`` (``auc_mean_ci``),
        ``richness_pearson``, ``richness_spearman``, ``n_species``, ``n_cells`` and
        ``n_species_ranked``: the species whose predicted (and true) map varies, over which
        the Spearman mean runs (a constant map, e.g. of a species the training data never
        recorded, ranks nothing: its Spearman is NaN).

    Raises
    ------
    GeoplantError
        Missing folders, no species or no cell in common.
    """
    from scipy.stats import pearsonr, spearmanr

    from geoplant.maps import open_maps

    pred = open_maps(maps_dir)
    truth = _open_truth(truth_dir)
    common = np.intersect1d(pred["species"].values, truth["species"].values)
    if not len(common):
        raise GeoplantError("the maps and the true maps share no species", path=maps_dir)
    step = abs(float(truth["x"][1] - truth["x"][0])) if truth.sizes["x"] > 1 else 1.0
    try:
        true_p = truth["probability"].sel(species=common).sel(
            x=pred["x"].values, y=pred["y"].values, method="nearest", tolerance=step / 2)
    except KeyError:
        raise GeoplantError("the maps' grid is not inside the true maps' grid",
                            path=maps_dir) from None
    pred_p = pred["probability"].sel(species=common)
    tv = true_p.values.reshape(len(common), -1)
    pv = pred_p.values.reshape(len(common), -1)
    cells = np.flatnonzero(np.isfinite(tv).all(axis=0) & np.isfinite(pv).all(axis=0))
    if not len(cells):
        raise GeoplantError("the maps and the true maps share no cell with data",
                            path=maps_dir)
    if len(cells) > max_cells:
        cells = np.sort(np.random.default_rng(seed).choice(cells, max_cells, replace=False))
    rows = []
    for i, sid in enumerate(common):
        t, p = tv[i, cells].astype(np.float64), pv[i, cells].astype(np.float64)
        rho = spearmanr(p, t).statistic if np.ptp(p) > 0 and np.ptp(t) > 0 else np.nan
        rows.append({"speciesId": int(sid), "spearman": float(rho),
                     "auc": _expected_auc(p, t), "true_mean": float(t.mean()),
                     "predicted_mean": float(p.mean())})
    table = pd.DataFrame(rows)
    rich_t, rich_p = tv[:, cells].sum(axis=0), pv[:, cells].sum(axis=0)
    return {
        "species": table,
        "n_species": len(common), "n_cells": len(cells),
        "n_species_ranked": int(np.isfinite(table["spearman"].to_numpy(np.float64)).sum()),
        "spearman_mean": float(table["spearman"].mean()),
        "spearman_mean_ci": _bootstrap_mean(table["spearman"].to_numpy(np.float64), seed=seed),
        "spearman_median": float(table["spearman"].median()),
        "auc_mean": float(table["auc"].mean()),
        "auc_mean_ci": _bootstrap_mean(table["auc"].to_numpy(np.float64), seed=seed),
        "richness_pearson": float(pearsonr(rich_p, rich_t).statistic),
        "richness_spearman": float(spearmanr(rich_p, rich_t).statistic),
    }
