"""The steps the baseline notebooks share: locate data, split, train, predict, decode, score.

Notebooks stay thin by calling these; each step is also usable from a script. A baseline's
flow is::

    store = open_store(locate_data(data))
    plan = make_plan(store)                           # spatial-block validation split
    val, test = fit_torch(store, plan, ["landsat"])   # or fit_classic(store, plan, "logistic")
    decoder = choose_decoder(val)                     # tuned on validation only
    metrics = score(store, plan, test, decoder)       # vs the synthetic truth when there is one
    write_metrics(out_dir, metrics)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from geoplant.errors import GeoplantError
from geoplant.files import atomic_write_text
from geoplant.splits import spatial_block_split
from geoplant.store import Store

if TYPE_CHECKING:  # torch and the models load only when a step needs them
    from geoplant.models import EnvLogisticBaseline, FrequencyBaseline
    from geoplant.train import TrainResult

#: Where Kaggle mounts attached datasets.
KAGGLE_INPUT = Path(os.environ.get("GEOPLANT_KAGGLE_INPUT", "/kaggle/input"))


def on_kaggle() -> bool:
    """True inside a Kaggle kernel."""
    return KAGGLE_INPUT.is_dir() or "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def locate_data(data: str | None) -> str:
    """The store to use: ``data`` if given, else one attached under ``/kaggle/input``.

    On Kaggle, attach a dataset holding a store built by ``geoplant build`` (a folder with
    ``manifest.json``); the first one found is used.
    """
    if data:
        return str(data)
    if KAGGLE_INPUT.is_dir():
        for manifest in sorted(KAGGLE_INPUT.glob("**/manifest.json")):
            return str(manifest.parent)
    raise GeoplantError("no data given and no store under /kaggle/input",
                        fix="pass the store folder (parameter `data`), e.g. one built by "
                            "`geoplant build`")


@dataclass(frozen=True)
class Plan:
    """Survey ids of the training, validation and test parts."""

    train_ids: np.ndarray
    val_ids: np.ndarray
    test_split: str
    test_ids: np.ndarray


def evaluation_split(store: Store) -> str:
    """The split a baseline is scored on: the store's (first) PA test split.

    ``pa_test`` (GLC24) or ``pa_test_iid`` (GeoPlant).

    Raises
    ------
    GeoplantError
        The store holds no PA test split.
    """
    tests = [s for s in store.splits if s.startswith("pa_test")]
    if not tests:
        raise GeoplantError("the store has no PA test split", path=store.path,
                            fix="build it with the test split (geoplant build --splits ...)")
    return tests[0]


def make_plan(store: Store, *, val_fraction: float = 0.15, block_km: float = 10.0,
              seed: int = 0, test_split: str | None = None) -> Plan:
    """Split ``pa_train`` into training and validation by ~10 km spatial blocks.

    Parameters
    ----------
    store
        The store to plan on.
    val_fraction, block_km, seed
        As in :func:`geoplant.splits.spatial_block_split`.
    test_split
        The split to predict and score (default: :func:`evaluation_split`).

    Returns
    -------
    Plan
    """
    surveys = store.records("pa_train", columns=["surveyId", "lon", "lat"]) \
        .drop_duplicates("surveyId").sort_values("surveyId")
    val = spatial_block_split(surveys["lon"].to_numpy(), surveys["lat"].to_numpy(),
                              block_km=block_km, val_fraction=val_fraction, seed=seed)
    ids = surveys["surveyId"].to_numpy(np.int64)
    split = test_split or evaluation_split(store)
    test_ids = np.unique(store.records(split, columns=["surveyId"])["surveyId"]
                         .to_numpy(np.int64))
    return Plan(ids[~val], ids[val], split, test_ids)


@dataclass
class Predictions:
    """Probabilities over the store's species (columns: ``species_ids``)."""

    survey_ids: np.ndarray
    probs: np.ndarray
    species_ids: np.ndarray
    labels: sp.csr_matrix | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _labels_for(store: Store, survey_ids: np.ndarray) -> sp.csr_matrix:
    labels = store.labels("pa_train")
    rows = np.searchsorted(labels.survey_ids, survey_ids)
    return labels.matrix[rows]


def _frequency(store: Store, ids: np.ndarray) -> np.ndarray:
    labels = _labels_for(store, ids)
    return np.asarray(labels.mean(axis=0)).ravel()


def fit_torch(store: Store, plan: Plan, modalities: list[str], *, epochs: int = 6,
              batch_size: int = 64, lr: float = 1e-3, loss: str = "bce", seed: int = 0,
              num_workers: int = 0, out_dir: str | os.PathLike[str] | None = None,
              patience: int | None = 4,
              encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
              ) -> tuple[Predictions, Predictions, TrainResult]:
    """Train :class:`~geoplant.models.MultimodalSDM` on ``modalities``; predict val and test.

    Returns
    -------
    (validation predictions with labels, test predictions, TrainResult)
    """
    from geoplant.models import MultimodalSDM
    from geoplant.torch import SurveyDataset
    from geoplant.train import TrainConfig, fit, predict, seed_everything

    species = store.species["speciesId"].to_numpy(np.int64)
    kwargs: dict[str, Any] = {"num_workers": num_workers}
    if num_workers:
        kwargs["persistent_workers"] = True
    train = SurveyDataset(store, "pa_train", modalities, survey_ids=plan.train_ids)
    val = SurveyDataset(store, "pa_train", modalities, survey_ids=plan.val_ids)
    test = SurveyDataset(store, plan.test_split, modalities, survey_ids=plan.test_ids)
    seed_everything(seed)  # fit() seeds too late: the initial weights come from here
    model = MultimodalSDM(modalities, len(species), encoder_kwargs=encoder_kwargs,
                          prior=_frequency(store, plan.train_ids))
    config = TrainConfig(epochs=epochs, lr=lr, loss=loss, seed=seed, metric="f1_threshold",
                         patience=patience,
                         checkpoint_dir=str(Path(out_dir) / "checkpoints") if out_dir else None)
    result = fit(model, train.loader(batch_size, shuffle=True, seed=seed, **kwargs),
                 val.loader(batch_size, shuffle=False, **kwargs), config)
    val_ids, val_probs = predict(result.model, val.loader(batch_size, shuffle=False))
    test_ids, test_probs = predict(result.model, test.loader(batch_size, shuffle=False))
    info = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "device": str(result.device),
            "train_samples_per_s": round(float(np.mean(
                [h.samples_per_s for h in result.history])), 1) if result.history else None}
    return (Predictions(val_ids, val_probs, species, _labels_for(store, val_ids), info),
            Predictions(test_ids, test_probs, species, None, info), result)


def env_features(store: Store, split: str, survey_ids: np.ndarray) -> np.ndarray:
    """Env values plus lon/lat per survey (the classic baselines' inputs)."""
    cube = store.cube(split)
    env = cube["env"].sel(surveyId=survey_ids).values.astype(np.float64)
    env[~np.isfinite(env)] = np.nan
    records = store.records(split, columns=["surveyId", "lon", "lat"]) \
        .drop_duplicates("surveyId").set_index("surveyId").loc[survey_ids]
    return np.column_stack([records["lon"].to_numpy(), records["lat"].to_numpy(), env])


def fit_classic(store: Store, plan: Plan, method: str, **kwargs: Any
                ) -> tuple[Predictions, Predictions, FrequencyBaseline | EnvLogisticBaseline]:
    """Fit a non-torch baseline: ``"frequency"`` (naive, global or per cell) or
    ``"logistic"`` (per-species logistic regression on env values, MaxEnt-style)."""
    from geoplant.models import EnvLogisticBaseline, FrequencyBaseline

    species = store.species["speciesId"].to_numpy(np.int64)
    x_train = env_features(store, "pa_train", plan.train_ids)
    x_val = env_features(store, "pa_train", plan.val_ids)
    x_test = env_features(store, plan.test_split, plan.test_ids)
    y_train = _labels_for(store, plan.train_ids)
    if method == "frequency":
        model: FrequencyBaseline | EnvLogisticBaseline = FrequencyBaseline(**kwargs)
    elif method == "logistic":
        model = EnvLogisticBaseline(**kwargs)
    else:
        raise GeoplantError(f"unknown classic method {method!r}",
                            fix="use 'frequency' or 'logistic'")
    model.fit(x_train, y_train)
    val = Predictions(plan.val_ids, model.predict_proba(x_val), species,
                      _labels_for(store, plan.val_ids))
    test = Predictions(plan.test_ids, model.predict_proba(x_test), species)
    return val, test, model


def choose_decoder(val: Predictions, methods: tuple[str, ...] = ("top_k", "average_k",
                                                                  "threshold", "expected_f1")
                   ) -> dict[str, Any]:
    """The decoder (and parameter) with the best validation samples-F1."""
    from geoplant import decode, metrics

    if val.labels is None:
        raise GeoplantError("validation predictions carry no labels")
    best: dict[str, Any] = {"samples_f1": -1.0}
    table = {}
    for method in methods:
        if method == "expected_f1":
            score = metrics.samples_f1(val.labels, decode.expected_f1_optimal(val.probs))
            param = None
        else:
            tuned = decode.tune(val.probs, val.labels, method)
            score, param = tuned.best_score, tuned.best_param
        table[method] = {"param": param, "samples_f1": round(float(score), 4)}
        if score > best["samples_f1"]:
            best = {"method": method, "param": param, "samples_f1": float(score)}
    best["candidates"] = table
    return best


def truth_dir(store: Store) -> Path | None:
    """The synthetic truth folder of the store's raw release, if any."""
    folder = Path(store.manifest.get("raw_root", "")) / "truth"
    return folder if (folder / "species.csv").is_file() else None


def score(store: Store, plan: Plan, test: Predictions, decoder: dict[str, Any],
          val: Predictions | None = None) -> dict[str, Any]:
    """Metrics of the decoded test predictions against the synthetic truth, with the oracle's.

    Without a truth (real data), only validation metrics are returned.
    """
    from geoplant import decode, metrics

    out: dict[str, Any] = {"decoder": decoder["method"], "decoder_param": decoder["param"],
                           "val_samples_f1": round(decoder["samples_f1"], 4)}
    if val is not None:
        out["val_auc_mean"] = _nanmean(metrics.auc_per_species(val.labels, val.probs))
    folder = truth_dir(store)
    if folder is None:
        return out
    truth = decode.read_synthetic_truth(folder, plan.test_split)
    # Our columns are the store's species; the truth's all species of the world.
    probs = np.zeros_like(truth.probabilities)
    col = {int(s): i for i, s in enumerate(truth.species_ids)}
    ours = np.array([col.get(int(s), -1) for s in test.species_ids])
    rows = np.searchsorted(truth.survey_ids, test.survey_ids) \
        if np.all(np.diff(truth.survey_ids) > 0) else \
        np.array([np.flatnonzero(truth.survey_ids == s)[0] for s in test.survey_ids])
    keep = ours >= 0
    probs[np.ix_(rows, ours[keep])] = test.probs[:, keep]
    sets = decode.decode(probs, decoder["method"], decoder["param"])
    oracle_sets = decode.expected_f1_optimal(truth.probabilities)
    summary = metrics.evaluate_sets(truth.labels, sets)
    out.update({
        "test_samples_f1": round(float(summary["samples_f1"]), 4),
        "test_samples_precision": round(float(summary["samples_precision"]), 4),
        "test_samples_recall": round(float(summary["samples_recall"]), 4),
        "test_mean_set_size": round(float(sets.sum(axis=1).mean()), 2),
        "test_auc_mean": _nanmean(metrics.auc_per_species(truth.labels, probs)),
        "oracle_samples_f1": round(float(metrics.samples_f1(truth.labels, oracle_sets)), 4),
    })
    out["fraction_of_oracle"] = round(out["test_samples_f1"] / out["oracle_samples_f1"], 4)
    return out


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return round(float(np.nanmean(values)), 4) if np.isfinite(values).any() else float("nan")


def write_metrics(out_dir: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` (atomically) into ``out_dir`` (created if needed).

    NumPy scalars and arrays become JSON numbers and lists; anything else unknown, its
    ``str``. Returns the file's path.
    """
    text = json.dumps(metrics, indent=1, default=_jsonable) + "\n"
    return atomic_write_text(Path(out_dir) / "metrics.json", text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
