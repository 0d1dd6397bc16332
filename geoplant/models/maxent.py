"""MaxEnt on presence-only (PO) records, through elapid (one ``MaxentModel`` per species).

Presence-only records say where a species was seen, not where it is absent. MaxEnt contrasts
the environment at a species' presences with the environment *available* to it, sampled as
background points:

- ``background="uniform"``: random land cells of the raster grid (what is available);
- ``background="target-group"``: the locations of *all* PO records of all species (Phillips
  et al. 2009). Observers go where observers go (towns, roads): background points drawn from
  the same observation effort carry the same bias as the presences, so the bias cancels in
  the presence/background contrast instead of being learnt as "habitat".

Features are the store's rasters sampled at the points (:meth:`geoplant.store.Store.extract`),
in the env cube's column order (``Bio1``... see :func:`geoplant.points.point_features`), so
``predict_proba`` takes the same columns as the env cube (``store.cube(split)["env"]``).
Species with fewer than ``min_records`` PO sites are not fitted: they get their PO frequency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import numpy as np
import scipy.sparse as sp

from geoplant.errors import GeoplantError

if TYPE_CHECKING:
    from geoplant.store import Store

__all__ = ["BACKGROUNDS", "MaxentPO", "background_points"]

#: Background kinds.
BACKGROUNDS: Final = ("uniform", "target-group")
Background = Literal["uniform", "target-group"]


def background_points(store: Store, kind: Background, n: int, *, seed: int = 0,
                      reference: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` background locations (EPSG:4326 lon, lat).

    Parameters
    ----------
    store
        An open store (``po_train`` records; rasters for ``"uniform"``).
    kind
        ``"uniform"``: cell centres drawn uniformly among the land cells (finite values) of
        the ``reference`` raster (default ``bio1``, else the first); ``"target-group"``: the
        locations of PO records drawn uniformly among all records of all species (so places
        with more observation effort give more background, as they give more presences).
    n
        Number of points (drawn without replacement when there are enough candidates).
    seed
        Seed of the draw.
    reference
        Raster defining land (``"uniform"`` only).
    """
    rng = np.random.default_rng(seed)
    if kind == "target-group":
        po = store.records("po_train", columns=["lon", "lat"])
        rows = rng.choice(len(po), n, replace=n > len(po))
        return po["lon"].to_numpy(np.float64)[rows], po["lat"].to_numpy(np.float64)[rows]
    if kind != "uniform":
        raise GeoplantError(f"unknown background {kind!r}", fix=f"use one of {BACKGROUNDS}")
    return _uniform_land(store, n, rng, reference)


def _uniform_land(store: Store, n: int, rng: np.random.Generator,
                  reference: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres of random land cells, in lon/lat."""
    rasters = store.rasters()
    if not rasters:
        raise GeoplantError("a uniform background needs the store's rasters", path=store.path,
                            fix="build the store with its rasters, or use target-group")
    name = reference or ("bio1" if "bio1" in rasters else next(iter(rasters)))
    da = rasters[name]
    da = da.isel(band=0) if "band" in da.dims else da
    land = np.flatnonzero(np.isfinite(np.asarray(da.values, dtype=np.float64)).ravel())
    if not len(land):
        raise GeoplantError(f"raster {name!r} has no finite cell", path=store.path)
    cells = rng.choice(land, n, replace=n > len(land))
    iy, ix = np.unravel_index(cells, (da.sizes["y"], da.sizes["x"]))
    x, y = da["x"].values[ix], da["y"].values[iy]
    from pyproj import CRS, Transformer

    crs = da.rio.crs
    if crs is not None and not CRS.from_user_input(crs).equals(CRS.from_epsg(4326)):
        x, y = Transformer.from_crs(CRS.from_user_input(crs), 4326,
                                    always_xy=True).transform(x, y)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


class MaxentPO:
    """Presence-only MaxEnt per species (elapid), background uniform or target-group.

    Parameters
    ----------
    background
        ``"target-group"`` (default; corrects observer bias) or ``"uniform"``.
    n_background
        Background points.
    min_records
        Species with fewer presence sites are not fitted (they get their PO frequency).
    max_species
        Fit at most this many species (the most recorded); others get their frequency.
    feature_types
        elapid / MaxEnt feature classes (``"linear"``, ``"quadratic"``, ``"hinge"``,
        ``"product"``, ``"threshold"``).
    beta_multiplier
        MaxEnt regularisation multiplier.
    n_hinge_features
        Hinge knots per variable.
    categorical
        Feature names treated as categorical (one-hot; default: ``LandCover``).
    tolerance
        Stopping tolerance of elapid's liblinear solver. elapid's default (2e-6) took 4.7 s
        for each of the 5 most recorded species of the demo world (7 features); 3e-5 took
        0.9 s, its predictions correlating >= 0.993 with the tighter fit's.
    seed
        Seed of the background draw and of elapid.

    Attributes
    ----------
    feature_names_
        Columns of ``X`` (set by :meth:`fit_store`; ``fit`` keeps the given names).
    fitted_species_
        Column indices of the fitted species.
    models_
        ``{column: elapid.MaxentModel}``.
    prior_
        PO frequency of each species (share of PO sites listing it): the fallback.
    """

    def __init__(self, *, background: Background = "target-group", n_background: int = 10_000,
                 min_records: int = 20, max_species: int | None = None,
                 feature_types: Sequence[str] = ("linear", "quadratic", "hinge"),
                 beta_multiplier: float = 1.5, n_hinge_features: int = 10,
                 categorical: Sequence[str] = ("LandCover",), tolerance: float = 3e-5,
                 seed: int = 0) -> None:
        if background not in BACKGROUNDS:
            raise GeoplantError(f"unknown background {background!r}",
                                fix=f"use one of {BACKGROUNDS}")
        if n_background < 1:
            raise GeoplantError(f"n_background must be >= 1, got {n_background}")
        if not tolerance > 0:
            raise GeoplantError(f"tolerance must be > 0, got {tolerance}")
        self.tolerance = float(tolerance)
        self.background = background
        self.n_background = int(n_background)
        self.min_records = int(min_records)
        self.max_species = max_species
        self.feature_types = list(feature_types)
        self.beta_multiplier = float(beta_multiplier)
        self.n_hinge_features = int(n_hinge_features)
        self.categorical = list(categorical)
        self.seed = int(seed)
        self.feature_names_: list[str] = []

    # -- fitting ------------------------------------------------------------------------------
    def fit_store(self, store: Store, feature_names: Sequence[str] | None = None) -> Self:
        """Fit on the store's PO records: presences at PO sites, background drawn per
        :attr:`background`, features extracted from the rasters.

        Parameters
        ----------
        store
            An open store with ``po_train`` records and rasters.
        feature_names
            Env-cube column names (default: all the env cube's columns, ``pa_train`` order).
        """
        from geoplant.points import point_features
        from geoplant.presence_only import po_sites

        if feature_names is None:
            split = next(s for s in store.splits if s != "po_train")
            feature_names = [str(v) for v in store.cube(split)["env_variable"].values]
        names = [str(n) for n in feature_names]
        rasters = store.rasters()
        sites = po_sites(store)
        X = point_features(rasters, sites.lon, sites.lat, names)
        blon, blat = background_points(store, self.background, self.n_background,
                                       seed=self.seed)
        B = point_features(rasters, blon, blat, names)
        self.fit(X, sites.labels, background=B, feature_names=names)
        self.background_lonlat_ = np.column_stack([blon, blat])
        return self

    def fit(self, X: Any, Y: Any, *, background: Any | None = None,
            feature_names: Sequence[str] | None = None) -> Self:
        """Fit one MaxEnt model per species with enough presence sites.

        Parameters
        ----------
        X
            Features of the PO sites ``(n_sites, n_features)``.
        Y
            Presences ``(n_sites, n_species)`` (dense 0/1 or sparse).
        background
            Background features ``(n_background, n_features)``. May be omitted with
            ``background="target-group"``: ``n_background`` rows of ``X`` are then drawn
            (the sites of all species are the target group).
        feature_names
            Column names (for the categorical columns and for saving).
        """
        X = _as_2d(X, "X")
        Ym = sp.csc_matrix(Y if sp.issparse(Y) else np.asarray(Y) != 0)
        if Ym.shape[0] != len(X):
            raise GeoplantError(f"Y has {Ym.shape[0]} rows for {len(X)} sites")
        names = [str(n) for n in feature_names] if feature_names is not None \
            else [f"x{i}" for i in range(X.shape[1])]
        if len(names) != X.shape[1]:
            raise GeoplantError(f"{len(names)} feature names for {X.shape[1]} features")
        B = self._background(X, background)
        self.feature_names_ = names
        # sites and background off the grid carry no environment: left out
        keep = np.isfinite(X).any(axis=1)
        B = B[np.isfinite(B).any(axis=1)]
        self.fill_ = np.nan_to_num(np.nanmedian(np.vstack([X[keep], B]), axis=0))
        Xf, Bf = self._impute(X[keep]), self._impute(B)
        Yk = Ym[keep]
        counts = np.asarray(Yk.sum(axis=0)).ravel()
        self.prior_ = counts / max(len(Xf), 1)
        candidates = np.flatnonzero(counts >= self.min_records)
        candidates = candidates[np.argsort(-counts[candidates], kind="stable")]
        if self.max_species is not None:
            candidates = candidates[:self.max_species]
        self.fitted_species_ = np.sort(candidates)
        self.models_: dict[int, Any] = {}
        cat = [i for i, n in enumerate(names) if n in self.categorical]
        for col in self.fitted_species_:
            present = Yk[:, col].nonzero()[0]
            self.models_[int(col)] = self._fit_one(Xf[present], Bf, cat)
        self.n_species_ = Ym.shape[1]
        return self

    def _background(self, X: np.ndarray, background: Any | None) -> np.ndarray:
        if background is not None:
            B = _as_2d(background, "background")
            if B.shape[1] != X.shape[1]:
                raise GeoplantError(f"background has {B.shape[1]} features, X has "
                                    f"{X.shape[1]}")
            return B
        if self.background != "target-group":
            raise GeoplantError("a uniform background needs background points",
                                fix="pass background=... or use fit_store(store)")
        rng = np.random.default_rng(self.seed)
        return X[rng.choice(len(X), self.n_background, replace=self.n_background > len(X))]

    def _impute(self, X: np.ndarray) -> np.ndarray:
        # elapid cannot take NaN: a missing value gets the training median
        return np.where(np.isfinite(X), X, self.fill_)

    def _fit_one(self, presences: np.ndarray, background: np.ndarray,
                 categorical: list[int]) -> Any:
        from elapid import MaxentModel

        model = MaxentModel(feature_types=self.feature_types, transform="cloglog",
                            beta_multiplier=self.beta_multiplier,
                            n_hinge_features=self.n_hinge_features, n_cpus=1,
                            use_sklearn=True, convergence_tolerance=self.tolerance,
                            random_state=self.seed)
        x = np.vstack([presences, background])
        y = np.r_[np.ones(len(presences)), np.zeros(len(background))]
        model.fit(x, y, categorical=categorical or None)
        _ignore_unknown_categories(model)
        return model

    # -- prediction ---------------------------------------------------------------------------
    def predict_proba(self, X: Any, columns: slice | None = None) -> np.ndarray:
        """MaxEnt cloglog outputs ``(n, n_species)`` (float32); PO frequency for the species
        not fitted. ``X`` holds the env columns in :attr:`feature_names_` order.

        ``columns`` (a slice of species columns) predicts only those: ``(n, len(columns))``
        (bounded memory when mapping thousands of species).
        """
        if not hasattr(self, "models_"):
            raise GeoplantError("MaxentPO is not fitted", fix="call fit_store(store) first")
        X = _as_2d(X, "X")
        if X.shape[1] != len(self.fill_):
            raise GeoplantError(f"X has {X.shape[1]} features, the model was fitted on "
                                f"{len(self.fill_)}")
        wanted = np.arange(len(self.prior_))[columns if columns is not None else slice(None)]
        Xf = self._impute(X)
        out = np.tile(self.prior_[wanted].astype(np.float32), (len(X), 1))
        for j, col in enumerate(wanted):
            model = self.models_.get(int(col))
            if model is not None:
                out[:, j] = np.asarray(model.predict(Xf), dtype=np.float32).ravel()
        return out

    # -- persistence (no pickle) -----------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON settings and the fitted arrays that :meth:`from_arrays` rebuilds from.

        Per fitted species: the MaxEnt coefficients (``beta_scores_``), ``alpha_`` and
        ``entropy_``, and the feature transformer's fitted ranges, knots and categories:
        what elapid's ``MaxentModel.predict`` reads. Arrays are keyed ``maxent.<column>.<name>``.

        Raises
        ------
        GeoplantError
            The model is not fitted.
        """
        if not hasattr(self, "models_"):
            raise GeoplantError("MaxentPO is not fitted", fix="call fit_store(store) first")
        settings: dict[str, Any] = {
            "background": self.background, "n_background": self.n_background,
            "min_records": self.min_records, "max_species": self.max_species,
            "feature_types": self.feature_types, "beta_multiplier": self.beta_multiplier,
            "n_hinge_features": self.n_hinge_features, "categorical": self.categorical,
            "tolerance": self.tolerance, "seed": self.seed}
        arrays: dict[str, np.ndarray] = {
            "maxent.fill_": self.fill_, "maxent.prior_": np.asarray(self.prior_, np.float64),
            "maxent.fitted_species_": np.asarray(self.fitted_species_, np.int64),
            "maxent.n_species_": np.array(self.n_species_, np.int64)}
        state: dict[str, Any] = {"feature_names": self.feature_names_}
        for col, model in self.models_.items():
            arrays.update(_maxent_arrays(model, f"maxent.{col}."))
            state.setdefault("models", _maxent_settings(model))
        return {"settings": settings, **state}, arrays

    @classmethod
    def from_arrays(cls, doc: dict[str, Any], arrays: dict[str, np.ndarray]) -> MaxentPO:
        """The model :meth:`to_arrays` described (it predicts exactly what the fitted one did).

        Raises
        ------
        GeoplantError
            Arrays missing (damaged or hand-edited files).
        """
        try:
            model = cls(**doc["settings"])
            model.feature_names_ = [str(n) for n in doc["feature_names"]]
            model.fill_ = np.asarray(arrays["maxent.fill_"], np.float64)
            model.prior_ = np.asarray(arrays["maxent.prior_"], np.float64)
            model.fitted_species_ = np.asarray(arrays["maxent.fitted_species_"], np.int64)
            model.n_species_ = int(arrays["maxent.n_species_"])
            model.models_ = {int(col): _maxent_model(doc["models"], arrays, f"maxent.{col}.")
                            for col in model.fitted_species_}
        except KeyError as err:
            raise GeoplantError(f"saved MaxentPO lacks {err}", fix="save the model again") \
                from None
        return model


def _as_2d(X: Any, name: str) -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise GeoplantError(f"{name} must be 2-d (n, n_features), got shape {arr.shape}")
    return arr


# -- elapid models as arrays --------------------------------------------------------------
#: Transformer parts whose state is one MinMaxScaler (itself, or its ``estimator``).
_SCALED: Final = ("linear", "quadratic", "product")


def _ignore_unknown_categories(model: Any) -> None:
    """A category the fit never saw (a land-cover class absent from presences and
    background) gets an all-zero one-hot instead of an error: maps meet such cells."""
    cat = model.transformer.estimators_.get("categorical")
    for encoder in getattr(cat, "estimators_", None) or []:
        encoder.handle_unknown = "ignore"


def _scaler(transformer: Any, part: str) -> Any:
    est = transformer.estimators_[part]
    return est if part == "linear" else est.estimator


def _maxent_settings(model: Any) -> dict[str, Any]:
    """What every species' elapid model shares (this class fits them all alike)."""
    t = model.transformer
    return {"transform": model.transform, "tau": float(model.tau),
            "feature_types": list(t.feature_types), "clamp": bool(t.clamp),
            "n_hinge_features": int(t.n_hinge_features),
            "n_threshold_features": int(t.n_threshold_features),
            "categorical_": None if t.categorical_ is None else [int(i) for i in t.categorical_],
            "continuous_": [int(i) for i in t.continuous_]}


def _maxent_arrays(model: Any, prefix: str) -> dict[str, np.ndarray]:
    t = model.transformer
    out = {f"{prefix}beta": np.asarray(model.beta_scores_, np.float64),
           f"{prefix}alpha": np.array(model.alpha_, np.float64),
           f"{prefix}entropy": np.array(model.entropy_, np.float64)}
    for part in _SCALED:
        if t.estimators_.get(part) is not None:
            scaler = _scaler(t, part)
            out[f"{prefix}{part}.min"] = scaler.data_min_
            out[f"{prefix}{part}.max"] = scaler.data_max_
    if t.estimators_.get("threshold") is not None:
        out[f"{prefix}threshold.indices"] = t.estimators_["threshold"].threshold_indices_
    if t.estimators_.get("hinge") is not None:
        hinge = t.estimators_["hinge"]
        out |= {f"{prefix}hinge.mins": hinge.mins_, f"{prefix}hinge.maxs": hinge.maxs_,
                f"{prefix}hinge.indices": hinge.hinge_indices_}
    if t.estimators_.get("categorical") is not None:
        for j, encoder in enumerate(t.estimators_["categorical"].estimators_):
            out[f"{prefix}categorical.{j}"] = np.asarray(encoder.categories_[0])
    return out


def _maxent_model(shared: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """An elapid ``MaxentModel`` ready to ``predict``: its transformer rebuilt with elapid's
    own classes, fitted state set from the arrays (the fit-time solver is not kept)."""
    from elapid import MaxentModel
    from elapid.features import (
        CategoricalTransformer,
        HingeTransformer,
        LinearTransformer,
        MaxentFeatureTransformer,
        ProductTransformer,
        QuadraticTransformer,
        ThresholdTransformer,
    )
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder

    t = MaxentFeatureTransformer(feature_types=shared["feature_types"], clamp=shared["clamp"],
                                 n_hinge_features=shared["n_hinge_features"],
                                 n_threshold_features=shared["n_threshold_features"])
    t.categorical_, t.continuous_ = shared["categorical_"], shared["continuous_"]
    parts = {"linear": LinearTransformer, "quadratic": QuadraticTransformer,
             "product": ProductTransformer}
    for part, kind in parts.items():
        if f"{prefix}{part}.min" not in arrays:
            continue
        # fitting a scaler on (min, max) gives exactly the fitted scale_ and min_
        bounds = np.vstack([arrays[f"{prefix}{part}.min"], arrays[f"{prefix}{part}.max"]])
        est = kind(clamp=t.clamp)
        if part == "linear":
            est.fit(bounds)
        else:
            est.estimator = MinMaxScaler(clip=t.clamp, feature_range=est.feature_range) \
                .fit(bounds)
        t.estimators_[part] = est
    if f"{prefix}threshold.indices" in arrays:
        thr = ThresholdTransformer(n_thresholds=t.n_threshold_features)
        thr.threshold_indices_ = arrays[f"{prefix}threshold.indices"]
        thr.mins_, thr.maxs_ = thr.threshold_indices_[0], thr.threshold_indices_[-1]
        t.estimators_["threshold"] = thr
    if f"{prefix}hinge.indices" in arrays:
        hinge = HingeTransformer(n_hinges=t.n_hinge_features)
        hinge.mins_, hinge.maxs_ = arrays[f"{prefix}hinge.mins"], arrays[f"{prefix}hinge.maxs"]
        hinge.hinge_indices_ = arrays[f"{prefix}hinge.indices"]
        t.estimators_["hinge"] = hinge
    if t.categorical_:
        cat = CategoricalTransformer()
        cat.estimators_ = [OneHotEncoder(dtype=np.uint8, sparse_output=False,
                                         handle_unknown="ignore")
                           .fit(np.asarray(arrays[f"{prefix}categorical.{j}"]).reshape(-1, 1))
                           for j in range(len(t.categorical_))]
        t.estimators_["categorical"] = cat
    model = MaxentModel(feature_types=shared["feature_types"], tau=shared["tau"],
                        transform=shared["transform"], clamp=shared["clamp"])
    model.transformer = t
    model.beta_scores_ = arrays[f"{prefix}beta"]
    model.alpha_ = float(arrays[f"{prefix}alpha"])
    model.entropy_ = float(arrays[f"{prefix}entropy"])
    model.initialized_ = True
    return model
