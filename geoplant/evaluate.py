"""``geoplant evaluate``: score a Kaggle submission against presence-absence truth.

``geoplant evaluate SUBMISSION --truth PATH [--split SPLIT] [--subset] [--json]``

``PATH`` is one of

- a PA records CSV with ``surveyId,speciesId`` columns (e.g. ``GLC24_PA_metadata_train.csv``;
  speciesIds may be written as floats such as ``2414.0``; a row with an empty speciesId
  still makes its survey part of the truth);
- a solution CSV ``surveyId,predictions`` (the Kaggle solution format; extra columns such as
  ``Usage`` are ignored);
- a synthetic release or its ``truth/`` folder (``geoplant sample``): then the oracle's
  samples-F1 (sets decoded from the *true* probabilities) is printed for comparison.

The submission is validated first (:func:`geoplant.submission.validate_submission`): it must
list exactly the truth's surveys, or, with ``--subset``, any subset of them (e.g. a
validation fold of ``GLC24_PA_metadata_train.csv``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from geoplant.errors import GeoplantError

__all__ = ["ReferenceSets", "configure_parser", "evaluate_submission", "load_truth", "run"]


@dataclass(frozen=True)
class ReferenceSets:
    """What a submission is scored against: surveys and their true species sets.

    Attributes
    ----------
    survey_ids
        Sorted int64 surveyIds.
    labels
        Boolean CSR ``(n_surveys, n_columns)``; column = speciesId.
    kind
        ``"records"``, ``"solution"`` or ``"synthetic"``.
    path
        Where it was read from.
    split
        The split (synthetic truth only).
    probabilities
        True probabilities ``(n_surveys, n_species)`` (synthetic only; columns
        ``species_ids``), rows in ``survey_ids`` order.
    species_ids
        The species of the world (synthetic only).
    """

    survey_ids: np.ndarray
    labels: sp.csr_matrix
    kind: str
    path: str
    split: str | None = None
    probabilities: np.ndarray | None = None
    species_ids: np.ndarray | None = None


def _n_columns(max_id: int) -> int:
    from geoplant.submission import MAX_SPECIES_ID

    return max(MAX_SPECIES_ID, max_id) + 1


def _labels(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> sp.csr_matrix:
    n_cols = _n_columns(int(cols.max()) if len(cols) else 0)
    m = sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.sort_indices()
    return m


def load_truth(path: str | os.PathLike[str], split: str | None = None) -> ReferenceSets:
    """Read the reference sets from a records CSV, a solution CSV or a synthetic truth folder.

    Parameters
    ----------
    path
        A PA records CSV (``surveyId,speciesId``), a solution CSV (``surveyId,predictions``),
        or a synthetic release or its ``truth/`` folder.
    split
        The test split of a synthetic truth folder (needed only if it has several).

    Returns
    -------
    ReferenceSets

    Raises
    ------
    GeoplantError
        If the path is missing or unreadable, or its columns are not recognised.
    """
    p = Path(path)
    if p.is_dir():
        from geoplant.synthetic.truth import read_synthetic_truth, truth_folder, truth_splits

        folder = truth_folder(p)
        t = read_synthetic_truth(folder, split)
        order = np.argsort(t.survey_ids)
        labels = t.labels[order]
        coo = labels.tocoo()
        split_name = split or truth_splits(folder)[0]
        return ReferenceSets(t.survey_ids[order], _labels(coo.row, t.species_ids[coo.col],
                                                          len(order)),
                             "synthetic", str(folder), split_name, t.probabilities[order],
                             t.species_ids)
    if not p.is_file():
        raise GeoplantError("no such file or folder", path=p,
                            fix="pass a PA CSV, a solution CSV or a synthetic truth/ folder")
    if split is not None:
        raise GeoplantError("--split applies to a synthetic truth folder only", path=p,
                            fix="drop --split")
    try:
        columns = list(pd.read_csv(p, nrows=0).columns)
    except (ValueError, OSError) as err:
        raise GeoplantError(f"cannot read as CSV ({err})", path=p,
                            fix="pass a CSV file") from None
    if "surveyId" in columns and "speciesId" in columns:
        frame = pd.read_csv(p, usecols=["surveyId", "speciesId"])
        survey = frame["surveyId"].to_numpy(np.float64)
        species = frame["speciesId"].to_numpy(np.float64)
        if np.isnan(survey).any() or np.any(survey != np.round(survey)):
            raise GeoplantError("surveyId has missing or non-integer values", path=p,
                                fix="check the file")
        present = ~np.isnan(species)
        if np.any(species[present] != np.round(species[present])) or \
                np.any(species[present] < 0):
            raise GeoplantError("speciesId has non-integer or negative values", path=p,
                                fix="check the file")
        survey_ids = np.unique(survey.astype(np.int64))
        rows = np.searchsorted(survey_ids, survey[present].astype(np.int64))
        return ReferenceSets(survey_ids, _labels(rows, species[present].astype(np.int64),
                                                 len(survey_ids)), "records", str(p))
    if columns[:2] == ["surveyId", "predictions"]:
        frame = pd.read_csv(p, usecols=["surveyId", "predictions"], dtype=str,
                            keep_default_na=False)
        tmp_sets = [np.array(s.split(), dtype=np.int64) for s in frame["predictions"]]
        ids = frame["surveyId"].astype(np.int64).to_numpy()
        if len(np.unique(ids)) != len(ids):
            raise GeoplantError("a surveyId is listed twice", path=p, fix="check the file")
        order = np.argsort(ids)
        rows = np.concatenate([np.full(len(tmp_sets[i]), r) for r, i in enumerate(order)]
                              + [np.zeros(0, np.int64)]).astype(np.int64)
        cols = np.concatenate([tmp_sets[i] for i in order] + [np.zeros(0, np.int64)])
        return ReferenceSets(ids[order], _labels(rows, cols, len(ids)), "solution", str(p))
    raise GeoplantError(f"unrecognised columns {columns[:4]}", path=p,
                        fix="pass a CSV with surveyId,speciesId (PA records) or "
                            "surveyId,predictions (solution), or a synthetic truth/ folder")


def evaluate_submission(submission: str | os.PathLike[str], truth: ReferenceSets, *,
                        subset: bool = False, bootstrap: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, Any]:
    """Validate ``submission`` against ``truth`` and score it.

    Parameters
    ----------
    submission
        The submission CSV (``surveyId,predictions``).
    truth
        The reference sets (:func:`load_truth`).
    subset
        Score the submission's surveys only (any subset of the truth's); otherwise it must
        list exactly the truth's surveys.
    bootstrap
        Bootstrap resamples of the surveys for the intervals (0: no intervals).
    seed, level
        Seed and coverage of the bootstrap intervals
        (:func:`geoplant.metrics.bootstrap_intervals`).

    Returns
    -------
    dict
        ``submission``, ``truth``, ``kind``, ``split``, ``n_surveys``, ``metrics`` (see
        :func:`geoplant.metrics.evaluate_sets`; with ``bootstrap``, every score ``<name>``
        also has ``<name>_ci = [lo, hi]``), ``oracle`` (synthetic truth only: samples-F1
        of the F1-optimal and top-25 sets decoded from the true probabilities, on the same
        surveys, with their ``_ci``), ``bootstrap`` (resamples, seed, level) and
        ``warnings``.
    """
    from geoplant import decode, metrics
    from geoplant.submission import read_submission, validate_submission

    known = truth.species_ids if truth.kind == "synthetic" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if subset:
            sub = read_submission(submission, known_species=known, warn_empty=False)
            extra = ~np.isin(sub.survey_ids, truth.survey_ids)
            if np.any(extra):
                i = int(np.argmax(extra))
                raise GeoplantError(f"line {int(sub.lines[i])}: surveyId "
                                    f"{int(sub.survey_ids[i])} is not in the truth",
                                    path=os.fspath(submission),
                                    fix="score only surveys of the truth file")
            eval_ids = np.sort(sub.survey_ids)
        else:
            sub = validate_submission(submission, truth.survey_ids, known_species=known,
                                      warn_empty=False)
            eval_ids = truth.survey_ids
    rows = np.searchsorted(truth.survey_ids, eval_ids)
    y_true = truth.labels[rows]
    y_pred = sub.to_indicator(eval_ids, max(y_true.shape[1], _n_columns(0)))
    if y_pred.shape[1] > y_true.shape[1]:
        y_true = sp.hstack([y_true, sp.csr_matrix((len(rows), y_pred.shape[1]
                                                   - y_true.shape[1]), dtype=bool)]).tocsr()
    y_true, y_pred = metrics.to_indicator(y_true, y_pred)  # once, not per resample
    boot = {"n": int(bootstrap), "seed": int(seed), "level": float(level)}
    scores = metrics.evaluate_sets(y_true, y_pred)
    result: dict[str, Any] = {
        "submission": os.fspath(submission), "truth": truth.path, "kind": truth.kind,
        "split": truth.split, "n_surveys": len(eval_ids),
        "metrics": scores | _intervals(metrics.evaluate_sets, (y_true, y_pred), boot,
                                       skip=_COUNTS),
        "oracle": None, "bootstrap": boot if bootstrap > 0 else None,
        "warnings": list(sub.warnings),
    }
    if truth.probabilities is not None and truth.species_ids is not None:
        probs = truth.probabilities[rows]
        own_true = y_true[:, truth.species_ids]
        f1_sets, expected = decode.expected_f1_optimal(probs, return_expected=True)
        top25 = decode.top_k(probs, 25)

        def oracle(t: Any, f1: Any, top: Any) -> dict[str, float]:
            return {"samples_f1_expected_f1_sets": metrics.samples_f1(t, f1),
                    "samples_f1_top_25": metrics.samples_f1(t, top)}

        result["oracle"] = (oracle(own_true, f1_sets, top25)
                            | _intervals(oracle, (own_true, f1_sets, top25), boot)
                            | {"expected_samples_f1": float(np.mean(expected))
                               if len(expected) else None})
    return result


#: Counts, not scores: no interval.
_COUNTS = ("n_surveys", "n_empty_predictions")


def _intervals(metric: Any, arrays: tuple[Any, ...], boot: dict[str, Any],
               skip: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """``{<name>_ci: [lo, hi]}`` of every score of ``metric`` (surveys resampled)."""
    from geoplant import metrics

    if boot["n"] <= 0 or arrays[0].shape[0] == 0:
        return {}
    found = metrics.bootstrap_intervals(metric, *arrays, n=boot["n"], seed=boot["seed"],
                                        level=boot["level"])
    return {f"{k}_ci": [lo, hi] for k, (lo, hi) in found.items() if k not in skip}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` command's options."""
    parser.add_argument("submission",
                        help="submission CSV (surveyId,predictions), or a maps folder written "
                             "by `geoplant map` (scored against a synthetic world's true maps)")
    parser.add_argument("--truth", required=True,
                        help="PA records CSV (surveyId,speciesId), solution CSV "
                             "(surveyId,predictions), or a synthetic release / truth folder")
    parser.add_argument("--split", default=None,
                        help="test split of a synthetic truth folder (if it has several)")
    parser.add_argument("--subset", action="store_true",
                        help="score the submission's surveys only (a subset of the truth)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples of the surveys for the 95%% intervals "
                             "(default 1000; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


_ROWS = (("samples_f1", "samples-F1 (competition metric)"),
         ("samples_precision", "samples precision"), ("samples_recall", "samples recall"),
         ("micro_f1", "micro F1"), ("micro_precision", "micro precision"),
         ("micro_recall", "micro recall"), ("macro_f1", "macro F1 (species seen)"),
         ("tss", "TSS (mean over species)"), ("mean_predicted", "mean predicted set size"),
         ("mean_true", "mean true set size"))


def _ensure_truth_maps(truth: Path, species: set[int]) -> None:
    """Write the true maps of ``species`` unless ``truth/maps`` already holds them all."""
    import xarray as xr

    from geoplant.synthetic.maps import write_truth_maps

    written = truth / "maps" / "probability.zarr"
    have: set[int] = set()
    if written.is_dir():
        have = {int(s) for s in xr.open_zarr(written, consolidated=False)["species"].values}
    if not species <= have:
        write_truth_maps(truth, sorted(species | have))


def _run_maps(args: argparse.Namespace) -> int:
    """Score a maps folder against the true maps of a synthetic world (written if missing)."""
    from geoplant.map_eval import score_maps
    from geoplant.maps import open_maps
    from geoplant.synthetic.truth import truth_folder

    truth = truth_folder(args.truth)
    _ensure_truth_maps(truth, {int(s) for s in open_maps(args.submission)["species"].values})
    scores = score_maps(args.submission, truth)
    table = scores.pop("species")
    if args.json:
        print(json.dumps(_plain(scores | {"species": table.to_dict("records")}), indent=2,
                         allow_nan=False))
        return 0
    print(f"{args.submission} vs {truth / 'maps'} ({scores['n_species']} species, "
          f"{scores['n_cells']:,} cells; Spearman over the {scores['n_species_ranked']} whose "
          f"map varies)")
    lo, hi = scores["spearman_mean_ci"]
    print(f"  {'Spearman, mean [95% CI] (median)':<34}{scores['spearman_mean']:.3f} "
          f"[{lo:.3f}, {hi:.3f}] ({scores['spearman_median']:.3f})")
    lo, hi = scores["auc_mean_ci"]
    print(f"  {'expected AUC, mean [95% CI]':<34}{scores['auc_mean']:.3f} [{lo:.3f}, {hi:.3f}]")
    print(f"  {'richness Pearson / Spearman':<34}{scores['richness_pearson']:.3f} / "
          f"{scores['richness_spearman']:.3f}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``geoplant evaluate``."""
    if (Path(args.submission) / "map.json").is_file():
        return _run_maps(args)
    truth = load_truth(args.truth, args.split)
    result = evaluate_submission(args.submission, truth, subset=args.subset,
                                 bootstrap=getattr(args, "bootstrap", 1000),
                                 seed=getattr(args, "seed", 0))
    for note in result["warnings"]:
        print(f"geoplant evaluate: warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(_plain(result), indent=2, allow_nan=False))
        return 0
    split = f", split {result['split']}" if result["split"] else ""
    print(f"{result['submission']} vs {result['truth']} ({result['kind']}{split}, "
          f"{result['n_surveys']:,} surveys)")
    m = result["metrics"]
    if result["bootstrap"]:
        print(f"  [lo, hi]: {result['bootstrap']['level']:.0%} bootstrap intervals "
              f"({result['bootstrap']['n']} resamples of the surveys)")
    for key, label in _ROWS:
        print(f"  {label:<34}{m[key]:.4f}{_ci(m, key)}")
    print(f"  {'empty predictions':<34}{int(m['n_empty_predictions'])}")
    oracle = result["oracle"]
    if oracle:
        best = oracle["samples_f1_expected_f1_sets"]
        share = m["samples_f1"] / best if best else float("nan")
        print(f"  oracle (true probabilities): samples-F1 {best:.4f}"
              f"{_ci(oracle, 'samples_f1_expected_f1_sets')} with expected-F1-optimal sets, "
              f"{oracle['samples_f1_top_25']:.4f}{_ci(oracle, 'samples_f1_top_25')} with "
              f"top-25; this submission reaches {share:.1%} of the oracle")
    return 0


def _ci(scores: dict[str, Any], key: str) -> str:
    """`` [lo, hi]`` of a score, or nothing without intervals."""
    ci = scores.get(f"{key}_ci")
    return f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
