"""Evaluation metrics: the GeoLifeCLEF / GeoPlant competition metric and the SDM community's.

The competition metric (GLC24 Kaggle, GeoPlant benchmark) is the **samples-averaged F1**:

.. math::

    F1 = \\frac{1}{N} \\sum_i \\frac{TP_i}{TP_i + (FP_i + FN_i) / 2}
       = \\frac{1}{N} \\sum_i \\frac{2 |\\hat Y_i \\cap Y_i|}{|\\hat Y_i| + |Y_i|}

with :math:`Y_i` the true species set of survey *i* and :math:`\\hat Y_i` the predicted set
(any size). Every survey weighs the same.

Inputs
------
Species *sets* (``y_true``, ``y_pred`` of the set metrics) may be given as

- a dense array ``(n_surveys, n_species)`` of 0/1 or bool (any non-zero counts as present);
- a ``scipy.sparse`` matrix of the same shape;
- a sequence (one item per survey) of iterables of integer species ids (sets, lists, arrays).

Matrix inputs are compared column by column. When *both* inputs are sequences of id sets
they are compared by id. When one is a matrix and the other a sequence of sets, the ids are
mapped to columns through ``species_ids`` (the species id of each column); without it the
ids are taken to be column indices.

*Scores* (``y_score`` of the ranking metrics: top-K, AUC, max-TSS) are dense float arrays
``(n_surveys, n_species)``; their ``y_true`` is a matrix of the same shape.

Degenerate cases (documented once, applied everywhere)
------------------------------------------------------
- **Empty truth and empty prediction** (per survey): the Kaggle formula is 0/0. We score it
  ``empty_score`` (default 1.0: predicting "nothing" where nothing is present is perfect;
  this is scikit-learn's ``zero_division=1.0``). With the real GLC24 test data the case
  never arises (every PA test survey lists at least one species).
- Empty prediction, non-empty truth: F1 = 0, precision = 0 (0/0 taken as 0), recall = 0.
- Empty truth, non-empty prediction: F1 = 0, precision = 0, recall = 0 (0/0 taken as 0).
- Per-species (macro) F1 ignores species that are neither present nor predicted (NaN).
- AUC and TSS are NaN for a row/column that has only presences or only absences; their
  averages skip NaN (``numpy.nanmean``) and are NaN only when every row/column is degenerate.
- Top-K metrics break ties in the scores arbitrarily (``numpy.argpartition``).

Library functions raise ``ValueError`` for inconsistent arguments (shapes, types).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

__all__ = [
    "IndicatorInput",
    "SetInput",
    "auc_per_sample",
    "auc_per_species",
    "bootstrap_interval",
    "bootstrap_intervals",
    "bootstrap_means",
    "confusion_per_sample",
    "confusion_per_species",
    "evaluate_scores",
    "evaluate_sets",
    "f1_per_species",
    "macro_f1",
    "max_tss_per_species",
    "micro_f1",
    "micro_precision",
    "micro_recall",
    "samples_f1",
    "samples_f1_per_survey",
    "samples_precision",
    "samples_recall",
    "to_indicator",
    "top_k_accuracy",
    "top_k_recall",
    "tss",
    "tss_per_species",
]

#: What the set metrics accept: a dense 0/1 array, a scipy sparse matrix, or id sets.
SetInput: TypeAlias = "np.ndarray | sp.spmatrix | sp.sparray | Sequence[Iterable[int]]"
#: What the ranking metrics accept as truth: a dense 0/1 array-like or a scipy sparse matrix.
IndicatorInput: TypeAlias = "ArrayLike | sp.spmatrix | sp.sparray"


# ---------------------------------------------------------------------------------------------
# input conversion


def _is_matrix(y: object) -> bool:
    return sp.issparse(y) or (isinstance(y, np.ndarray) and y.ndim == 2)


def _matrix_to_csr(y: IndicatorInput) -> sp.csr_matrix:
    if sp.issparse(y):
        m = sp.csr_matrix(y, copy=True)
        m.eliminate_zeros()
        m.data = np.ones_like(m.data, dtype=bool)
        return m.astype(bool)
    arr = np.asarray(y)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-d indicator matrix, got shape {arr.shape}")
    return sp.csr_matrix(arr != 0)


def _sets_to_csr(sets: Iterable[Iterable[int]], column_of: np.ndarray | None,
                 ids: np.ndarray | None, n_cols: int) -> sp.csr_matrix:
    """Rows of id sets -> CSR; ``ids`` sorted ids of the columns (None: ids are columns)."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for i, row in enumerate(sets):
        if isinstance(row, str | bytes):
            raise ValueError(f"row {i}: expected an iterable of integer ids, got a string")
        values = np.fromiter((int(v) for v in row), dtype=np.int64)
        if ids is not None:
            pos = np.searchsorted(ids, values)
            found = pos < len(ids)
            found[found] = ids[pos[found]] == values[found]
            if not found.all():
                raise ValueError(f"row {i}: species id {int(values[~found][0])} is not in "
                                 "species_ids")
            values = pos if column_of is None else column_of[pos]
        elif len(values) and (values.min() < 0 or values.max() >= n_cols):
            raise ValueError(f"row {i}: column {int(values.max())} out of range 0..{n_cols - 1}"
                             " (pass species_ids to map species ids to columns)")
        rows.append(np.full(len(values), i, dtype=np.int64))
        cols.append(values)
    n_rows = len(rows)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    m = sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    m.data[:] = True
    return m


def to_indicator(y_true: SetInput, y_pred: SetInput, *,
                 species_ids: Sequence[int] | np.ndarray | None = None
                 ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Convert a pair of set inputs to two boolean CSR matrices with the same columns.

    Parameters
    ----------
    y_true, y_pred
        Dense 0/1 arrays, sparse matrices, or sequences of iterables of species ids
        (see the module docstring).
    species_ids
        Species id of each matrix column, used to map id sets onto the columns of the other
        (matrix) argument. Ignored when both are matrices.

    Returns
    -------
    (csr_matrix, csr_matrix)
        Boolean matrices of equal shape ``(n_surveys, n_columns)``.
    """
    mt, mp = _is_matrix(y_true), _is_matrix(y_pred)
    if mt and mp:
        t, p = _matrix_to_csr(y_true), _matrix_to_csr(y_pred)
    elif mt or mp:
        t = _matrix_to_csr(y_true) if mt else None
        p = _matrix_to_csr(y_pred) if mp else None
        matrix = t if t is not None else p
        assert matrix is not None
        n_cols = matrix.shape[1]
        sets = y_pred if mt else y_true
        if species_ids is not None:
            sid = np.asarray(species_ids, dtype=np.int64)
            if len(sid) != n_cols:
                raise ValueError(f"species_ids has {len(sid)} entries for {n_cols} columns")
            order = np.argsort(sid, kind="stable")
            other = _sets_to_csr(sets, order, sid[order], n_cols)
        else:
            other = _sets_to_csr(sets, None, None, n_cols)
        t, p = (matrix, other) if mt else (other, matrix)
    else:
        true_sets = [np.fromiter((int(v) for v in row), np.int64) for row in y_true]
        pred_sets = [np.fromiter((int(v) for v in row), np.int64) for row in y_pred]
        ids = np.unique(np.concatenate([*true_sets, *pred_sets, np.zeros(0, np.int64)]))
        t = _sets_to_csr(true_sets, None, ids, len(ids))
        p = _sets_to_csr(pred_sets, None, ids, len(ids))
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    return t, p


def _dense_truth(y_true: IndicatorInput, shape: tuple[int, ...]) -> np.ndarray:
    t = y_true.toarray() if isinstance(y_true, sp.spmatrix | sp.sparray) \
        else np.asarray(y_true)
    if t.shape != shape:
        raise ValueError(f"y_true has shape {t.shape} but y_score has shape {shape}")
    return t != 0


def _scores(y_score: ArrayLike) -> np.ndarray:
    s = np.asarray(y_score)
    if s.ndim != 2:
        raise ValueError(f"y_score must be 2-d (n_surveys, n_species), got shape {s.shape}")
    return s


# ---------------------------------------------------------------------------------------------
# confusion counts


def confusion_per_sample(y_true: SetInput, y_pred: SetInput, *,
                         species_ids: Sequence[int] | np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-survey counts ``(tp, n_true, n_pred)`` (int64 arrays of length n_surveys)."""
    t, p = to_indicator(y_true, y_pred, species_ids=species_ids)
    tp = np.asarray(t.multiply(p).sum(axis=1)).ravel().astype(np.int64)
    n_true = np.diff(t.indptr).astype(np.int64)
    n_pred = np.diff(p.indptr).astype(np.int64)
    return tp, n_true, n_pred


def confusion_per_species(y_true: SetInput, y_pred: SetInput, *,
                          species_ids: Sequence[int] | np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-column counts ``(tp, fp, fn, tn)`` (int64 arrays of length n_columns)."""
    t, p = to_indicator(y_true, y_pred, species_ids=species_ids)
    tp = np.asarray(t.multiply(p).sum(axis=0)).ravel().astype(np.int64)
    n_true = np.asarray(t.sum(axis=0)).ravel().astype(np.int64)
    n_pred = np.asarray(p.sum(axis=0)).ravel().astype(np.int64)
    fp, fn = n_pred - tp, n_true - tp
    tn = t.shape[0] - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: np.ndarray, den: np.ndarray, fill: float | np.ndarray) -> np.ndarray:
    out = np.empty(len(num), dtype=np.float64)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    out[~ok] = fill if np.isscalar(fill) else np.asarray(fill)[~ok]
    return out


# ---------------------------------------------------------------------------------------------
# set metrics


def samples_f1_per_survey(y_true: SetInput, y_pred: SetInput, *, empty_score: float = 1.0,
                          species_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """F1 of each survey: ``2 |Ŷ ∩ Y| / (|Ŷ| + |Y|)``; ``empty_score`` when both are empty."""
    tp, n_true, n_pred = confusion_per_sample(y_true, y_pred, species_ids=species_ids)
    return _ratio(2.0 * tp, (n_true + n_pred).astype(np.float64), float(empty_score))


def samples_f1(y_true: SetInput, y_pred: SetInput, *, empty_score: float = 1.0,
               species_ids: Sequence[int] | np.ndarray | None = None) -> float:
    """The competition metric: samples-averaged F1.

    Parameters
    ----------
    y_true, y_pred
        True and predicted species sets (dense 0/1, sparse, or sequences of id sets; see the
        module docstring). Any number of predicted species per survey.
    empty_score
        Score of a survey whose true and predicted sets are both empty (0/0 in the Kaggle
        formula). 1.0 by default, as scikit-learn's ``zero_division=1.0``.
    species_ids
        Species id of each column when mixing a matrix with id sets.

    Returns
    -------
    float
        Mean over surveys of ``TP / (TP + (FP + FN) / 2)``; NaN for zero surveys.

    Examples
    --------
    >>> samples_f1([{1, 2}, {3}], [{1}, {3, 4}])
    0.6666666666666666
    """
    f1 = samples_f1_per_survey(y_true, y_pred, empty_score=empty_score, species_ids=species_ids)
    return float(f1.mean()) if len(f1) else float("nan")


def samples_precision(y_true: SetInput, y_pred: SetInput, *, empty_score: float = 1.0,
                      species_ids: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean over surveys of ``|Ŷ ∩ Y| / |Ŷ|`` (empty prediction: 0, or ``empty_score`` when
    the truth is empty too)."""
    tp, n_true, n_pred = confusion_per_sample(y_true, y_pred, species_ids=species_ids)
    fill = np.where(n_true == 0, float(empty_score), 0.0)
    values = _ratio(tp.astype(np.float64), n_pred.astype(np.float64), fill)
    return float(values.mean()) if len(values) else float("nan")


def samples_recall(y_true: SetInput, y_pred: SetInput, *, empty_score: float = 1.0,
                   species_ids: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean over surveys of ``|Ŷ ∩ Y| / |Y|`` (empty truth: 0, or ``empty_score`` when the
    prediction is empty too)."""
    tp, n_true, n_pred = confusion_per_sample(y_true, y_pred, species_ids=species_ids)
    fill = np.where(n_pred == 0, float(empty_score), 0.0)
    values = _ratio(tp.astype(np.float64), n_true.astype(np.float64), fill)
    return float(values.mean()) if len(values) else float("nan")


def _micro(y_true: SetInput, y_pred: SetInput,
           species_ids: Sequence[int] | np.ndarray | None) -> tuple[int, int, int]:
    tp, n_true, n_pred = confusion_per_sample(y_true, y_pred, species_ids=species_ids)
    return int(tp.sum()), int(n_true.sum()), int(n_pred.sum())


def micro_f1(y_true: SetInput, y_pred: SetInput, *,
             species_ids: Sequence[int] | np.ndarray | None = None) -> float:
    """F1 over all (survey, species) pairs pooled: ``2 ΣTP / (Σ|Ŷ| + Σ|Y|)`` (0 when both
    are empty everywhere)."""
    tp, nt, npred = _micro(y_true, y_pred, species_ids)
    return 2.0 * tp / (nt + npred) if nt + npred else 0.0


def micro_precision(y_true: SetInput, y_pred: SetInput, *,
                    species_ids: Sequence[int] | np.ndarray | None = None) -> float:
    """Pooled precision ``ΣTP / Σ|Ŷ|`` (0 when nothing is predicted)."""
    tp, _, npred = _micro(y_true, y_pred, species_ids)
    return tp / npred if npred else 0.0


def micro_recall(y_true: SetInput, y_pred: SetInput, *,
                 species_ids: Sequence[int] | np.ndarray | None = None) -> float:
    """Pooled recall ``ΣTP / Σ|Y|`` (0 when nothing is present)."""
    tp, nt, _ = _micro(y_true, y_pred, species_ids)
    return tp / nt if nt else 0.0


def f1_per_species(y_true: SetInput, y_pred: SetInput, *,
                   species_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """F1 of each column; NaN for a species neither present nor predicted."""
    tp, fp, fn, _ = confusion_per_species(y_true, y_pred, species_ids=species_ids)
    return _ratio(2.0 * tp, (2 * tp + fp + fn).astype(np.float64), np.nan)


def macro_f1(y_true: SetInput, y_pred: SetInput, *,
             species_ids: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean per-species F1 over the species present or predicted at least once.

    Species that are neither present nor predicted are skipped (scikit-learn would count them
    with ``zero_division``); over id sets the columns are the union of the ids seen anyway.
    """
    values = f1_per_species(y_true, y_pred, species_ids=species_ids)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def tss_per_species(y_true: SetInput, y_pred: SetInput, *,
                    species_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """True skill statistic of each column: sensitivity + specificity - 1.

    Sensitivity = TP / (TP + FN), specificity = TN / (TN + FP). NaN for a species with no
    presence or no absence among the surveys (one of the two is undefined).
    """
    tp, fp, fn, tn = confusion_per_species(y_true, y_pred, species_ids=species_ids)
    sens = _ratio(tp.astype(np.float64), (tp + fn).astype(np.float64), np.nan)
    spec = _ratio(tn.astype(np.float64), (tn + fp).astype(np.float64), np.nan)
    return sens + spec - 1.0


def tss(y_true: SetInput, y_pred: SetInput, *,
        species_ids: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean per-species TSS over the species with both presences and absences."""
    values = tss_per_species(y_true, y_pred, species_ids=species_ids)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


# ---------------------------------------------------------------------------------------------
# ranking metrics (from scores)


def _top_k_hits(y_true: IndicatorInput, y_score: ArrayLike,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    s = _scores(y_score)
    t = _dense_truth(y_true, s.shape)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, s.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    hits = np.take_along_axis(t, top, axis=1).sum(axis=1)
    return hits, t.sum(axis=1)


def top_k_accuracy(y_true: IndicatorInput, y_score: ArrayLike, k: int = 30) -> float:
    """Fraction of surveys with at least one present species among the K best scores.

    With one present species per survey this is the usual top-K accuracy (GLC 2020-2023).
    Surveys with no present species count as misses.
    """
    hits, _ = _top_k_hits(y_true, y_score, k)
    return float(np.mean(hits > 0)) if len(hits) else float("nan")


def top_k_recall(y_true: IndicatorInput, y_score: ArrayLike, k: int = 25) -> float:
    """Mean over surveys of the fraction of present species among the K best scores
    (GeoPlant's recall@K). Surveys with no present species are skipped."""
    hits, n_true = _top_k_hits(y_true, y_score, k)
    ok = n_true > 0
    return float(np.mean(hits[ok] / n_true[ok])) if np.any(ok) else float("nan")


def _roc_rows(truth: np.ndarray, scores: np.ndarray, *, with_tss: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, from one sort: ROC AUC (mid-ranks for ties), max TSS and its threshold.

    NaN where a row has only presences or only absences.
    """
    n_rows, n = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")  # decreasing scores
    s_sorted = np.take_along_axis(scores, order, axis=1)
    t_sorted = np.take_along_axis(truth, order, axis=1)
    del order
    n_pos = t_sorted.sum(axis=1).astype(np.float64)
    n_neg = n - n_pos
    degenerate = (n_pos == 0) | (n_neg == 0)
    pos = np.arange(n)
    ends = np.ones((n_rows, n), dtype=bool)  # last position of a run of tied scores
    ends[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    starts = np.ones((n_rows, n), dtype=bool)
    starts[:, 1:] = ends[:, :-1]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, n)[:, ::-1], axis=1)[:, ::-1]
    # ascending mid-rank of a descending position: n + 1 - (mean of its tie run, 1-based)
    asc_rank = n - (first + last) / 2.0
    rank_sum = np.where(t_sorted, asc_rank, 0.0).sum(axis=1)
    del first, last, asc_rank, starts
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[degenerate] = np.nan
    if not with_tss:
        return auc, np.full(n_rows, np.nan), np.full(n_rows, np.nan)
    tp = np.cumsum(t_sorted, axis=1, dtype=np.int32)
    fp = (pos + 1)[None, :] - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        j = tp / n_pos[:, None] - fp / n_neg[:, None]
    j[~ends] = -np.inf  # a threshold falls only between distinct scores
    best = np.argmax(j, axis=1)
    r = np.arange(n_rows)
    best_j = j[r, best]
    thr = np.where(best_j > 0, s_sorted[r, best], np.inf).astype(np.float64)
    best_j = np.maximum(best_j, 0.0)  # predicting nothing: J = 0
    best_j[degenerate] = np.nan
    thr[degenerate] = np.nan
    return auc, best_j, thr


def _block_rows(y_true: Any, rows: slice) -> Any:
    return y_true[rows] if sp.issparse(y_true) else np.asarray(y_true)[rows]


def _species_roc(y_true: IndicatorInput, y_score: ArrayLike, *, with_tss: bool,
                 block: int = 1024
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = _scores(y_score)
    truth_t = (sp.csr_matrix(y_true).T.tocsr() if sp.issparse(y_true)
               else np.asarray(y_true).T)
    if truth_t.shape != s.T.shape:
        raise ValueError(f"y_true has shape {truth_t.shape[::-1]} but y_score has shape "
                         f"{s.shape}")
    out = np.empty((3, s.shape[1]))
    for start in range(0, s.shape[1], block):
        cols = slice(start, start + block)
        st = np.ascontiguousarray(s.T[cols])
        out[:, cols] = _roc_rows(_dense_truth(_block_rows(truth_t, cols), st.shape), st,
                                 with_tss=with_tss)
    return out[0], out[1], out[2]


def auc_per_species(y_true: IndicatorInput, y_score: ArrayLike) -> np.ndarray:
    """ROC AUC of each species (column); NaN where a species is always or never present.

    Ties in the scores count one half (mid-ranks), as in ``sklearn.metrics.roc_auc_score``.
    """
    return _species_roc(y_true, y_score, with_tss=False)[0]


def auc_per_sample(y_true: np.ndarray | sp.spmatrix | sp.sparray, y_score: ArrayLike, *,
                   block: int = 512) -> np.ndarray:
    """ROC AUC of each survey (ranking its species); NaN where a survey has all or none."""
    s = _scores(y_score)
    if tuple(y_true.shape) != s.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_score has shape {s.shape}")
    out = np.empty(s.shape[0], dtype=np.float64)
    for start in range(0, s.shape[0], block):
        rows = slice(start, start + block)
        out[rows] = _roc_rows(_dense_truth(_block_rows(y_true, rows), s[rows].shape), s[rows],
                              with_tss=False)[0]
    return out


def max_tss_per_species(y_true: IndicatorInput,
                        y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Maximum TSS of each species over score thresholds, and the threshold reaching it.

    The SDM practice of reporting TSS at the species' best threshold (equivalently Youden's
    J = max over the ROC curve of TPR - FPR). Presence is predicted where
    ``score >= threshold``; when no threshold beats predicting nothing (J = 0) the threshold
    is ``inf``.

    Returns
    -------
    (ndarray, ndarray)
        ``max_tss`` and ``threshold`` per column; NaN for degenerate species.
    """
    _, best, thr = _species_roc(y_true, y_score, with_tss=True)
    return best, thr


# ---------------------------------------------------------------------------------------------
# summaries


def evaluate_sets(y_true: SetInput, y_pred: SetInput, *, empty_score: float = 1.0,
                  species_ids: Sequence[int] | np.ndarray | None = None) -> dict[str, float]:
    """All set metrics in one dict (the samples-F1 first; the competition metric).

    Keys: ``samples_f1``, ``samples_precision``, ``samples_recall``, ``micro_f1``,
    ``micro_precision``, ``micro_recall``, ``macro_f1``, ``tss``, ``mean_predicted``,
    ``mean_true``, ``n_surveys``, ``n_empty_predictions``.
    """
    t, p = to_indicator(y_true, y_pred, species_ids=species_ids)
    tp, n_true, n_pred = confusion_per_sample(t, p)
    n = len(tp)
    f1 = _ratio(2.0 * tp, (n_true + n_pred).astype(np.float64), float(empty_score))
    prec = _ratio(tp.astype(np.float64), n_pred.astype(np.float64),
                  np.where(n_true == 0, float(empty_score), 0.0))
    rec = _ratio(tp.astype(np.float64), n_true.astype(np.float64),
                 np.where(n_pred == 0, float(empty_score), 0.0))

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if len(x) else float("nan")

    return {
        "samples_f1": mean(f1),
        "samples_precision": mean(prec),
        "samples_recall": mean(rec),
        "micro_f1": micro_f1(t, p),
        "micro_precision": micro_precision(t, p),
        "micro_recall": micro_recall(t, p),
        "macro_f1": macro_f1(t, p),
        "tss": tss(t, p),
        "mean_predicted": mean(n_pred.astype(np.float64)),
        "mean_true": mean(n_true.astype(np.float64)),
        "n_surveys": float(n),
        "n_empty_predictions": float(np.sum(n_pred == 0)),
    }


def evaluate_scores(y_true: np.ndarray | sp.spmatrix | sp.sparray, y_score: ArrayLike, *,
                    k: int = 25) -> dict[str, float]:
    """Ranking metrics from scores: ``top_k_recall``, ``top_k_accuracy``, ``auc_species``
    (macro over non-degenerate species), ``auc_samples`` (mean over non-degenerate surveys),
    ``max_tss`` (mean per-species best-threshold TSS)."""
    a_sp, mt, _ = _species_roc(y_true, y_score, with_tss=True)
    a_sa = auc_per_sample(y_true, y_score)

    def nanmean(x: np.ndarray) -> float:
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")

    return {
        f"top_{k}_recall": top_k_recall(y_true, y_score, k),
        f"top_{k}_accuracy": top_k_accuracy(y_true, y_score, k),
        "auc_species": nanmean(a_sp),
        "auc_samples": nanmean(a_sa),
        "max_tss": nanmean(mt),
    }


# ---------------------------------------------------------------------------------------------
# uncertainty: bootstrap over surveys


def _n_rows(arrays: Sequence[Any]) -> int:
    if not arrays:
        raise ValueError("bootstrap needs at least one array (surveys on the rows)")
    sizes = {a.shape[0] if hasattr(a, "shape") else len(a) for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"arrays have different numbers of rows: {sorted(sizes)}")
    return sizes.pop()


def _take_rows(a: Any, rows: np.ndarray) -> Any:
    if sp.issparse(a):
        return a[rows]
    if isinstance(a, np.ndarray):
        return a[rows]
    return [a[int(i)] for i in rows]  # a sequence of id sets


def _replicates(metric: Callable[..., Any], arrays: Sequence[Any], n: int,
                seed: int) -> Iterable[Any]:
    """``metric`` on ``n`` resamples of the rows (with replacement, the same rows for all)."""
    n_rows = _n_rows(arrays)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        rows = rng.integers(0, n_rows, n_rows)
        yield metric(*(_take_rows(a, rows) for a in arrays))


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _check_bootstrap(n: int, level: float) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_interval(metric: Callable[..., float], *arrays: Any, n: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a score, resampling surveys (rows).

    Parameters
    ----------
    metric
        ``metric(*arrays) -> float``, e.g. :func:`samples_f1` or
        ``lambda t, s: float(np.nanmean(auc_per_species(t, s)))``.
    *arrays
        The metric's inputs, surveys on the rows: NumPy arrays, ``scipy.sparse`` matrices or
        sequences (id sets); each resample takes the same rows of every array.
    n
        Bootstrap resamples.
    seed
        Seed of the resampling (the interval is deterministic per seed).
    level
        Coverage of the interval (0.95: the 2.5 and 97.5 percentiles).

    Returns
    -------
    (float, float)
        ``(lo, hi)``; resamples where the metric is NaN (e.g. an AUC with no presence) are
        dropped; ``(nan, nan)`` if all are.

    Examples
    --------
    >>> y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    >>> lo, hi = bootstrap_interval(samples_f1, y, y, n=50)
    >>> (lo, hi)
    (1.0, 1.0)
    """
    _check_bootstrap(n, level)
    values = np.fromiter((float(v) for v in _replicates(metric, arrays, n, seed)),
                         dtype=np.float64, count=n)
    return _percentiles(values, level)


def bootstrap_intervals(metric: Callable[..., Mapping[str, float]], *arrays: Any,
                        n: int = 1000, seed: int = 0, level: float = 0.95
                        ) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_interval` of every score of a metric returning a dict.

    One resample feeds all the scores (e.g. :func:`evaluate_sets`), so their intervals come
    from the same resamples and cost one metric call each.

    Returns
    -------
    dict
        ``{name: (lo, hi)}`` for every key of the metric's result.
    """
    _check_bootstrap(n, level)
    collected: dict[str, list[float]] = {}
    for result in _replicates(metric, arrays, n, seed):
        for key, value in result.items():
            collected.setdefault(key, []).append(float(value))
    return {k: _percentiles(np.asarray(v, dtype=np.float64), level)
            for k, v in collected.items()}


def bootstrap_means(per_survey: Mapping[str, Any], *, ratios: Mapping[str, tuple[str, str]]
                    | None = None, differences: Mapping[str, tuple[str, str]] | None = None,
                    n: int = 1000, seed: int = 0, level: float = 0.95
                    ) -> dict[str, tuple[float, float]]:
    """Paired percentile bootstrap of means of per-survey scores (surveys resampled).

    Every score is resampled with the *same* surveys, so the interval of a ratio or a
    difference of two means accounts for their correlation (two models scored on the same
    hard surveys): the way to say whether A beats B.

    Parameters
    ----------
    per_survey
        ``{name: values}``, one value per survey (same surveys, same order), e.g.
        :func:`samples_f1_per_survey` of a model and of the oracle.
    ratios, differences
        ``{new name: (a, b)}``: intervals of ``mean(a) / mean(b)`` and ``mean(a) - mean(b)``.
    n, seed, level
        Resamples, their seed, coverage.

    Returns
    -------
    dict
        ``{name: (lo, hi)}`` for each entry of ``per_survey``, ``ratios`` and ``differences``.

    Examples
    --------
    >>> a, b = np.array([1.0, 0.0, 1.0, 1.0]), np.array([1.0, 0.0, 1.0, 0.0])
    >>> bootstrap_means({"a": a, "b": b}, differences={"a-b": ("a", "b")}, n=200)["a-b"][0]
    0.0
    """
    _check_bootstrap(n, level)
    values = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in per_survey.items()}
    n_rows = _n_rows(list(values.values()))
    if n_rows == 0:
        raise ValueError("bootstrap needs at least one survey")
    rows = np.random.default_rng(seed).integers(0, n_rows, (n, n_rows))
    means = {k: v[rows].mean(axis=1) for k, v in values.items()}
    out = {k: _percentiles(m, level) for k, m in means.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, (a, b) in (ratios or {}).items():
            out[name] = _percentiles(means[a] / means[b], level)
    for name, (a, b) in (differences or {}).items():
        out[name] = _percentiles(means[a] - means[b], level)
    return out
