"""The truth of a synthetic release, and the oracle: decoders scored on the true probabilities.

``geoplant sample`` writes, beside the release, a ``truth/`` folder (see
:mod:`geoplant.synthetic.release`): ``species.csv`` (the column order of the world's species)
and, for every PA test split, ``<split>_survey_ids.npy`` (row order),
``<split>_probabilities.npy`` (the true occurrence probabilities) and
``<split>_presences.csv`` (the drawn presences, the withheld labels). This module reads it back
(:func:`read_synthetic_truth`) and tells what samples-F1 each decoding strategy of
:mod:`geoplant.decode` reaches with perfect probabilities (:func:`oracle_report`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from geoplant import metrics
from geoplant.decode import DEFAULT_GRIDS, decode, expected_f1_optimal, tune
from geoplant.errors import GeoplantError

__all__ = [
    "SyntheticTruth",
    "oracle_report",
    "read_synthetic_truth",
    "truth_folder",
    "truth_splits",
]

_PROBABILITIES = "_probabilities.npy"


@dataclass(frozen=True)
class SyntheticTruth:
    """The truth of one test split of a synthetic release (``geoplant sample``).

    Attributes
    ----------
    probabilities
        float32 ``(n_surveys, n_species)`` true occurrence probabilities.
    survey_ids
        int64 row order.
    species_ids
        int64 column order (``truth/species.csv``).
    labels
        Boolean CSR ``(n_surveys, n_species)`` of the drawn presences.
    """

    probabilities: np.ndarray
    survey_ids: np.ndarray
    species_ids: np.ndarray
    labels: sp.csr_matrix


def truth_folder(path: str | os.PathLike[str]) -> Path:
    """The ``truth/`` folder of a synthetic release (``path`` may be the release itself).

    Raises
    ------
    GeoplantError
        If neither ``path`` nor ``path/truth`` holds a ``species.csv``.
    """
    folder = Path(path)
    if (folder / "truth" / "species.csv").is_file():
        folder = folder / "truth"
    if not (folder / "species.csv").is_file():
        raise GeoplantError("not a synthetic truth folder (no species.csv)", path=folder,
                            fix="pass the truth/ folder written by `geoplant sample`")
    return folder


def truth_splits(path: str | os.PathLike[str]) -> list[str]:
    """Test splits with truth in a synthetic truth folder (or release), sorted by name."""
    folder = truth_folder(path)
    return sorted(f.name[: -len(_PROBABILITIES)] for f in folder.glob(f"*{_PROBABILITIES}"))


def read_synthetic_truth(path: str | os.PathLike[str], split: str | None = None
                         ) -> SyntheticTruth:
    """Read one split's truth from a synthetic release (its ``truth/`` folder or its root).

    Parameters
    ----------
    path
        The release or its ``truth/`` folder.
    split
        The test split; may be omitted when the folder holds a single one.

    Returns
    -------
    SyntheticTruth

    Raises
    ------
    GeoplantError
        If the split has no truth here, or the files disagree with each other.
    """
    folder = truth_folder(path)
    splits = truth_splits(folder)
    if split is None:
        if len(splits) != 1:
            raise GeoplantError(f"{len(splits)} test splits with truth here", path=folder,
                                fix=f"choose one with --split: {', '.join(splits) or '-'}")
        split = splits[0]
    if split not in splits:
        raise GeoplantError(f"no truth for split {split!r}", path=folder,
                            fix=f"use one of: {', '.join(splits) or '-'}")
    probs = np.load(folder / f"{split}{_PROBABILITIES}")
    survey_ids = np.load(folder / f"{split}_survey_ids.npy").astype(np.int64)
    species_ids = pd.read_csv(folder / "species.csv")["speciesId"].to_numpy(np.int64)
    if probs.shape != (len(survey_ids), len(species_ids)):
        raise GeoplantError(f"probabilities have shape {probs.shape}, expected "
                            f"({len(survey_ids)}, {len(species_ids)})", path=folder,
                            fix="regenerate the release with `geoplant sample`")
    labels = _presence_labels(folder / f"{split}_presences.csv", survey_ids, species_ids)
    return SyntheticTruth(probs, survey_ids, species_ids, labels)


def _presence_labels(presences_csv: Path, survey_ids: np.ndarray,
                     species_ids: np.ndarray) -> sp.csr_matrix:
    """The drawn presences as a boolean matrix in the truth's row and column order."""
    pres = pd.read_csv(presences_csv)
    row_order = np.argsort(survey_ids)
    col_order = np.argsort(species_ids)
    sid = pres["surveyId"].to_numpy(np.int64)
    spid = pres["speciesId"].to_numpy(np.int64)
    r = row_order[np.searchsorted(survey_ids[row_order], sid)]
    c = col_order[np.searchsorted(species_ids[col_order], spid)]
    if not (np.array_equal(survey_ids[r], sid) and np.array_equal(species_ids[c], spid)):
        raise GeoplantError("presences name surveys or species absent from the truth",
                            path=presences_csv,
                            fix="regenerate the release with `geoplant sample`")
    labels = sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)),
                           shape=(len(survey_ids), len(species_ids)))
    labels.sum_duplicates()
    return labels


def oracle_report(truth_dir: str | os.PathLike[str], split: str | None = None, *,
                  fixed: dict[str, float] | None = None) -> pd.DataFrame:
    """Score every decoder applied to the TRUE probabilities of a synthetic test split.

    This is the oracle: the samples-F1 reachable with perfect probabilities, per decoding
    strategy. Each parameterised decoder is reported twice: at a fixed, conventional
    parameter (``fixed``; default top-25, threshold 0.5, alpha 0.5, average-25) and at the
    parameter tuned on this very split (an optimistic upper bound for that decoder).
    ``expected_f1`` needs no parameter; its ``expected_f1`` column is the mean expected F1
    the decoder predicted for itself (no labels used).

    Parameters
    ----------
    truth_dir
        The release or its ``truth/`` folder.
    split
        The test split (see :func:`read_synthetic_truth`).
    fixed
        Fixed parameters overriding the defaults, by decoder name.

    Returns
    -------
    DataFrame
        Columns ``decoder``, ``param``, ``tuned``, ``samples_f1``, ``samples_precision``,
        ``samples_recall``, ``micro_f1``, ``mean_set_size``, ``expected_f1``; sorted by
        decreasing samples-F1.
    """
    truth = read_synthetic_truth(truth_dir, split)
    p, y = truth.probabilities, truth.labels
    fixed_params = {"top_k": 25.0, "threshold": 0.5, "relative_threshold": 0.5,
                    "average_k": 25.0, **(fixed or {})}
    rows: list[dict[str, Any]] = []

    def add(name: str, param: float | None, tuned: bool, sets: sp.csr_matrix,
            expected: float = float("nan")) -> None:
        m = metrics.evaluate_sets(y, sets)
        rows.append({"decoder": name, "param": param, "tuned": tuned,
                     "samples_f1": m["samples_f1"], "samples_precision": m["samples_precision"],
                     "samples_recall": m["samples_recall"], "micro_f1": m["micro_f1"],
                     "mean_set_size": m["mean_predicted"], "expected_f1": expected})

    for name in DEFAULT_GRIDS:
        add(name, fixed_params[name], False, decode(p, name, fixed_params[name]))
        best = tune(p, y, name)
        add(name, best.best_param, True, decode(p, name, best.best_param))
    sets, expected = expected_f1_optimal(p, return_expected=True)
    add("expected_f1", None, False, sets, float(np.mean(expected)))
    return (pd.DataFrame(rows).sort_values("samples_f1", ascending=False, kind="stable")
            .reset_index(drop=True))
