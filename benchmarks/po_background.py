"""Target-group vs uniform background for presence-only MaxEnt, on a synthetic world.

Fits :class:`geoplant.models.maxent.MaxentPO` twice on the same PO records, features and
species, once with a uniform background (random land cells) and once with a target-group
background (locations of all PO records), then scores both on the PA test surveys against
the world's truth (the drawn presences, and the true probabilities), with 95% bootstrap
intervals (surveys resampled) for each model and for the difference. Prints JSON.

    python benchmarks/po_background.py --release RAW --store STORE
    python benchmarks/po_background.py --preset tiny --work /tmp/po-bench   # generates it

Why the two differ: the synthetic world draws PO sites with an observer bias
(``geoplant/synthetic/release.py``: cell weight ``(hfp / 50) ** 1.5 + 0.3 * roads + 0.01``,
towns and roads of ``world.py``), while PA surveys are not biased that way. Against a
uniform background, every species' presences look attracted to high human footprint; the
target-group background shares the bias, so it cancels.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from _synthetic import synthetic_release_and_store

from geoplant import metrics
from geoplant.models.maxent import MaxentPO
from geoplant.store import Store, open_store
from geoplant.synthetic.truth import read_synthetic_truth

#: Env-cube columns close to the world's niche drivers (temperature, precipitation,
#: continentality, elevation, soil pH and sand, human footprint): a compact, fast MaxEnt.
FEATURES = ("Bio1", "Bio12", "Bio4", "Elevation", "Soilgrid-phh2o", "Soilgrid-sand",
            "HumanFootprint-HFP2009")


def _prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.release and args.store:
        return Path(args.release), Path(args.store)
    return synthetic_release_and_store(args.work, args.preset, args.seed)


def _test_data(store: Store, raw: Path) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray,
                                                  np.ndarray]:
    """Test env features (FEATURES order), true presences and probabilities (store species
    order), and the HFP column, rows in the cube's survey order."""
    cube = store.cube("pa_test")
    names = [str(v) for v in cube["env_variable"].values]
    env = cube["env"].values.astype(np.float64)
    X = env[:, [names.index(f) for f in FEATURES]]
    truth = read_synthetic_truth(raw, "pa_test")
    rows = _positions(truth.survey_ids, cube["surveyId"].values.astype(np.int64))
    cols = _positions(truth.species_ids, store.species["speciesId"].to_numpy(np.int64))
    labels = truth.labels[rows][:, cols].tocsr()
    probs = truth.probabilities[rows][:, cols]
    return X, labels, probs, X[:, FEATURES.index("HumanFootprint-HFP2009")]


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    order = np.argsort(ids)
    pos = order[np.searchsorted(ids[order], wanted)]
    if not np.array_equal(ids[pos], wanted):
        raise SystemExit("truth and store disagree on surveys or species")
    return pos


def _spearman_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column pair (NaN where one is constant)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    den = np.sqrt((ra**2).sum(axis=0) * (rb**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(axis=0) / den


def _mean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.any(np.isfinite(x)) else float("nan")


def auc(t: Any, s: np.ndarray) -> float:
    """Mean per-species AUC against the presences."""
    return _mean(metrics.auc_per_species(t, s))


def auc_difference(t: Any, s_target: np.ndarray, s_uniform: np.ndarray) -> float:
    """Target-group minus uniform AUC, on the same resample."""
    return auc(t, s_target) - auc(t, s_uniform)


def spearman(p: np.ndarray, s: np.ndarray) -> float:
    """Mean per-species Spearman correlation with the true probabilities."""
    return _mean(_spearman_cols(p, s))


def spearman_difference(p: np.ndarray, s_target: np.ndarray, s_uniform: np.ndarray) -> float:
    """Target-group minus uniform Spearman, on the same resample."""
    return spearman(p, s_target) - spearman(p, s_uniform)


def _score(name: str, fn: Any, *arrays: Any, n: int, seed: int) -> dict[str, Any]:
    lo, hi = metrics.bootstrap_interval(fn, *arrays, n=n, seed=seed)
    return {name: fn(*arrays), f"{name}_ci": [lo, hi]}


def main() -> None:
    """Run the comparison and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", help="synthetic release (with truth/)")
    parser.add_argument("--store", help="its built store")
    parser.add_argument("--preset", default="tiny", help="preset to generate (no --store)")
    parser.add_argument("--work", default="/tmp/geoplant-po-bench", help="where to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-background", type=int, default=10_000)
    parser.add_argument("--min-records", type=int, default=20)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # sklearn convergence chatter from elapid
    raw, store_path = _prepare(args)
    store = open_store(store_path)
    X, labels, probs, hfp = _test_data(store, raw)
    out: dict[str, Any] = {"store": str(store_path), "features": list(FEATURES),
                           "n_test_surveys": len(X), "n_background": args.n_background}
    scores: dict[str, np.ndarray] = {}
    for kind in ("uniform", "target-group"):
        t0 = time.perf_counter()
        model = MaxentPO(background=kind, n_background=args.n_background,  # type: ignore[arg-type]
                         min_records=args.min_records, seed=args.seed)
        model.fit_store(store, FEATURES)
        fitted = model.fitted_species_
        scores[kind] = model.predict_proba(X)[:, fitted]
        out[f"fit_s_{kind}"] = round(time.perf_counter() - t0, 1)
    out["n_species_fitted"] = len(fitted)
    t, p = labels[:, fitted], probs[:, fitted]
    n, seed = args.bootstrap, args.seed
    for kind, s in scores.items():
        out[kind] = (_score("auc", auc, t, s, n=n, seed=seed)
                     | _score("spearman_true_p", spearman, p, s, n=n, seed=seed)
                     | {"spearman_with_hfp": spearman(np.repeat(hfp[:, None], s.shape[1], 1),
                                                      s)})
    out["truth_spearman_with_hfp"] = spearman(np.repeat(hfp[:, None], p.shape[1], 1), p)
    out["difference_target_minus_uniform"] = (
        _score("auc", auc_difference, t, scores["target-group"], scores["uniform"],
               n=n, seed=seed)
        | _score("spearman_true_p", spearman_difference, p, scores["target-group"],
                 scores["uniform"], n=n, seed=seed))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
