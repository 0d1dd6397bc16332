"""Non-deep baselines with one interface: ``fit(X, Y)`` then ``predict_proba(X)``.

``X`` is a float array ``(n_surveys, n_features)`` (for example the store's ``env`` values
with longitude and latitude appended), ``Y`` the presence matrix ``(n_surveys, n_species)``,
dense 0/1/bool or ``scipy.sparse`` (as :meth:`geoplant.store.Store.labels` gives it).
``predict_proba`` returns float32 probabilities ``(n_surveys, n_species)``; turn them into
species sets with top-K or thresholds (:mod:`geoplant.decode`).

- :class:`FrequencyBaseline` — the naive baseline of GLC24: every survey gets the species'
  training frequency; optionally per spatial cell (or per region code column), smoothed
  towards the global frequency. The official notebooks' "top-25 most frequent" and
  "top-25 per district" are this model with top-25 decoding.
- :class:`EnvLogisticBaseline` — a MaxEnt-style presence/absence model: one L2-regularised
  logistic regression per species on standardised environmental values (linear +
  quadratic features, MaxEnt's default feature classes; lon/lat may be among the columns).
  Rare species (fewer than ``min_presences`` presences) fall back to their frequency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit

from geoplant.errors import GeoplantError

__all__ = ["EnvLogisticBaseline", "FrequencyBaseline", "ProbabilisticBaseline"]


@runtime_checkable
class ProbabilisticBaseline(Protocol):
    """What every non-torch baseline offers."""

    def fit(self, X: Any, Y: Any) -> Self:
        """Learn from features ``X (n, f)`` and presences ``Y (n, n_species)``."""
        ...

    def predict_proba(self, X: Any) -> np.ndarray:
        """Presence probabilities ``(n, n_species)`` (float32)."""
        ...


def _as_X(X: Any, name: str = "X") -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise GeoplantError(f"{name} must be 2-d (n_surveys, n_features), got shape {arr.shape}")
    return arr


def _as_Y(Y: Any, n: int) -> sp.csc_matrix:
    m = sp.csc_matrix(Y) if sp.issparse(Y) else sp.csc_matrix(np.asarray(Y) != 0)
    if m.ndim != 2 or m.shape[0] != n:
        raise GeoplantError(f"Y has shape {m.shape}, expected ({n}, n_species)")
    m = (m != 0).astype(np.float64)
    return sp.csc_matrix(m)


class FrequencyBaseline:
    """Species frequency as presence probability, globally or per spatial cell / region.

    Parameters
    ----------
    cell_size
        If given, frequencies are computed per ``cell_size x cell_size`` degree cell of
        the coordinates in ``X[:, coord_columns]`` (longitude, latitude).
    coord_columns
        Columns of ``X`` holding longitude and latitude (used with ``cell_size``).
    group_column
        Alternatively, a column of ``X`` holding an integer region code (country,
        district, biogeographic region...): frequencies per region.
    smoothing
        Pseudo-surveys of the global frequency added to each cell/region:
        ``p = (presences + smoothing * p_global) / (surveys + smoothing)``. Cells or regions
        unseen in training get the global frequency.

    Examples
    --------
    >>> Y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    >>> FrequencyBaseline().fit(np.zeros((4, 1)), Y).predict_proba(np.zeros((1, 1)))
    array([[0.75, 0.25]], dtype=float32)
    """

    def __init__(self, *, cell_size: float | None = None, coord_columns: Sequence[int] = (0, 1),
                 group_column: int | None = None, smoothing: float = 1.0) -> None:
        if cell_size is not None and group_column is not None:
            raise GeoplantError("give cell_size or group_column, not both")
        if cell_size is not None and cell_size <= 0:
            raise GeoplantError(f"cell_size must be > 0, got {cell_size}")
        if smoothing < 0:
            raise GeoplantError(f"smoothing must be >= 0, got {smoothing}")
        self.cell_size = cell_size
        self.coord_columns = tuple(coord_columns)
        self.group_column = group_column
        self.smoothing = float(smoothing)

    def _keys(self, X: np.ndarray) -> np.ndarray | None:
        if self.group_column is not None:
            return X[:, self.group_column].astype(np.int64)[:, None]
        if self.cell_size is not None:
            lon, lat = (X[:, c] for c in self.coord_columns)
            return np.stack([np.floor(lon / self.cell_size),
                             np.floor(lat / self.cell_size)], axis=1).astype(np.int64)
        return None

    def fit(self, X: Any, Y: Any) -> Self:
        """Count presences globally and per cell/region."""
        X = _as_X(X)
        Ym = _as_Y(Y, len(X)).tocsr()
        self.n_species_ = Ym.shape[1]
        self.prior_ = np.asarray(Ym.mean(axis=0)).ravel()
        self.table_: dict[tuple[int, ...], np.ndarray] = {}
        keys = self._keys(X)
        if keys is not None:
            uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
            inverse = inverse.ravel()
            onehot = sp.csr_matrix((np.ones(len(X)), (inverse, np.arange(len(X)))),
                                   shape=(len(uniq), len(X)))
            counts = np.asarray((onehot @ Ym).todense())
            n = np.bincount(inverse, minlength=len(uniq))[:, None]
            probs = (counts + self.smoothing * self.prior_) / (n + self.smoothing)
            self.table_ = {tuple(int(v) for v in k): probs[i] for i, k in enumerate(uniq)}
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Frequencies of each species for each survey's cell/region (float32)."""
        if not hasattr(self, "prior_"):
            raise GeoplantError("FrequencyBaseline is not fitted", fix="call fit(X, Y) first")
        X = _as_X(X)
        out = np.tile(self.prior_.astype(np.float32), (len(X), 1))
        keys = self._keys(X)
        if keys is not None:
            for i, k in enumerate(map(tuple, keys.tolist())):
                row = self.table_.get(k)
                if row is not None:
                    out[i] = row
        return out


class EnvLogisticBaseline:
    """Per-species L2 logistic regression on standardised environmental values (MaxEnt-style).

    Parameters
    ----------
    C
        Inverse regularisation strength, as in scikit-learn's ``LogisticRegression``: the
        objective of each species is ``C * sum(log-loss) + ||w||^2 / 2`` (intercept not
        penalised), so the fitted coefficients equal scikit-learn's (tested).
    quadratic
        Add squared standardised features (MaxEnt's "quadratic" feature class): a species
        can then have an optimum in the middle of an environmental gradient.
    min_presences
        Species with fewer training presences (or with no absences) are not fitted: they
        get their (constant) training frequency.
    max_iter, tol
        L-BFGS iterations and gradient tolerance.
    species_block
        Species fitted together in one L-BFGS problem (bounds memory: a block needs a few
        ``n_surveys x species_block`` float64 arrays).

    Notes
    -----
    The species' problems are independent; they are solved a block of species at a time
    with one vectorised L-BFGS (the objectives are separable, so the joint minimum is each
    species' minimum). Matrix products dominate, so this is far faster than looping a
    scikit-learn estimator over species: 500 species x 10,000 surveys x 48 columns
    (96 features) fitted in 35 s on 2 CPU cores shared with other jobs (load ~5), where a
    ``LogisticRegression`` loop took ~0.5 s per species (~4 minutes); prediction 0.7 s.
    The coefficients equal scikit-learn's (tested). NaN inputs are imputed by the training
    mean (0 after scaling).
    """

    def __init__(self, *, C: float = 1.0, quadratic: bool = True, min_presences: int = 5,
                 max_iter: int = 300, tol: float = 1e-4, species_block: int = 512) -> None:
        if C <= 0:
            raise GeoplantError(f"C must be > 0, got {C}")
        self.C = float(C)
        self.quadratic = bool(quadratic)
        self.min_presences = int(min_presences)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.species_block = int(species_block)

    def _features(self, X: np.ndarray) -> np.ndarray:
        Z = (X - self.mean_) / self.scale_
        Z = np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0)
        if self.quadratic:
            Q = (Z**2 - self.qmean_) / self.qscale_
            Z = np.concatenate([Z, Q], axis=1)
        return Z

    def _fit_block(self, F: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Joint L-BFGS for the species columns of ``Y``; returns ``(f + 1, s)`` (bias last)."""
        f, s = F.shape[1], Y.shape[1]
        C = self.C
        prior = Y.mean(axis=0).clip(1e-6, 1 - 1e-6)
        w0 = np.zeros((f + 1, s))
        w0[-1] = np.log(prior) - np.log1p(-prior)

        def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
            W = w.reshape(f + 1, s)
            Z = F @ W[:-1] + W[-1]
            loss = (C * float((np.logaddexp(0.0, Z) - Y * Z).sum())
                    + 0.5 * float((W[:-1] ** 2).sum()))
            G = expit(Z) - Y
            grad = np.empty_like(W)
            grad[:-1] = C * (F.T @ G) + W[:-1]
            grad[-1] = C * G.sum(axis=0)
            return loss, grad.ravel()

        res = minimize(fun, w0.ravel(), jac=True, method="L-BFGS-B",
                       options={"maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = max(getattr(self, "n_iter_", 0), int(res.nit))
        return res.x.reshape(f + 1, s)

    def fit(self, X: Any, Y: Any) -> Self:
        """Standardise, build features, fit every species with enough presences."""
        X = _as_X(X)
        Ym = _as_Y(Y, len(X))
        n, s = Ym.shape
        self.mean_ = np.nanmean(X, axis=0)
        self.mean_ = np.nan_to_num(self.mean_)
        sd = np.nanstd(X, axis=0)
        self.scale_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        self.qmean_: np.ndarray | float = 0.0
        self.qscale_: np.ndarray | float = 1.0
        if self.quadratic:
            Z = np.nan_to_num((X - self.mean_) / self.scale_) ** 2
            self.qmean_ = Z.mean(axis=0)
            qsd = Z.std(axis=0)
            self.qscale_ = np.where(qsd > 0, qsd, 1.0)
        F = self._features(X)
        presences = np.asarray(Ym.sum(axis=0)).ravel()
        self.prior_ = presences / max(n, 1)
        self.fitted_species_ = np.flatnonzero((presences >= self.min_presences)
                                              & (presences < n))
        self.coef_ = np.zeros((F.shape[1], s))
        self.intercept_ = np.log(np.clip(self.prior_, 1e-6, 1 - 1e-6))
        self.intercept_ -= np.log1p(-np.clip(self.prior_, 1e-6, 1 - 1e-6))
        self.n_iter_ = 0
        for start in range(0, len(self.fitted_species_), self.species_block):
            cols = self.fitted_species_[start:start + self.species_block]
            W = self._fit_block(F, Ym[:, cols].toarray())
            self.coef_[:, cols] = W[:-1]
            self.intercept_[cols] = W[-1]
        # exact frequencies for the species not fitted (also 0 and 1)
        self._constant = np.setdiff1d(np.arange(s), self.fitted_species_)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Presence probabilities ``(n, n_species)`` (float32)."""
        if not hasattr(self, "coef_"):
            raise GeoplantError("EnvLogisticBaseline is not fitted", fix="call fit(X, Y) first")
        X = _as_X(X)
        if X.shape[1] != len(self.mean_):
            raise GeoplantError(f"X has {X.shape[1]} features, the model was fitted on "
                                f"{len(self.mean_)}")
        out = expit(self._features(X) @ self.coef_ + self.intercept_).astype(np.float32)
        out[:, self._constant] = self.prior_[self._constant].astype(np.float32)
        return out
