"""From species probabilities to species sets (what a GLC submission lists per survey).

Every decoder takes a dense ``(n_surveys, n_species)`` array of probabilities (or scores,
for the rank/threshold decoders) and returns a boolean ``scipy.sparse.csr_matrix`` of the
same shape: the predicted set of each survey. Pass it to :mod:`geoplant.metrics` or to
:func:`geoplant.submission.write_submission` with the species id of each column.

Decoders
--------
``top_k``
    The K highest-scoring species of each survey (K may differ per survey).
``threshold``
    Species with ``p >= t`` (one global threshold).
``relative_threshold``
    Species with ``p >= alpha * max_p`` of the survey (and ``p > 0``).
``average_k``
    One global threshold chosen so that the mean set size is K: the ``round(K * n_surveys)``
    highest probabilities of the whole matrix (ties at the cut are all kept).
``expected_f1``
    For each survey, the set maximising the **expected F1** when species occur independently
    with the given probabilities (:func:`expected_f1_optimal`). No parameter.

All of them select, per survey, a *prefix* of the species sorted by decreasing probability;
:func:`tune` uses that to score a whole grid of parameters from one partial sort.
Ties at the boundary of a top-K cut are broken arbitrarily (``numpy.argpartition``).

The F1-optimal sets
-------------------
Under independence, the set maximising expected F1 is one of the top-k sets of the sorted
probabilities (Lewis 1995; proven by Nan Ye, Chai, Lee & Chieu 2012, "Optimizing
F-measures: a tale of two approaches", Thm. 3; see also Waegeman et al. 2014, JMLR 15). For
the top-k set, with ``A`` the number of presences among the k chosen species and ``R`` the
number among the others (independent Poisson-binomial counts),

    E[F1(k)] = Σ_a P(A = a) · 2a · E[1 / (k + a + R)].

``P(A = a)`` follows from a forward recursion over the sorted species and
``S_i(m) = E[1 / (m + R_i)]`` (``R_i``: presences among the species ranked after i) from the
backward recursion ``S_{i-1}(m) = p_i S_i(m + 1) + (1 - p_i) S_i(m)`` — together O(n²) per
survey, the algorithm of Ye et al. (2012, Alg. 1), vectorised over surveys with numpy.

Two bounds keep it fast on 11,255 species:

- set sizes up to ``max_k`` are searched (default 64); a survey whose best size is
  ``max_k`` is searched again with ``max_k`` doubled, until it is not (or ``max_k = n``);
- the ``max_k + n_exact`` most probable species are treated exactly; the presences among
  the remaining (least probable) species are approximated by a Poisson count with the same
  mean. Its total-variation error is at most ``min(1, 1/λ) Σ p_j²`` over those species
  (Barbour & Hall 1984), which bounds the error of each E[F1(k)] by twice that; with
  ``n_exact >= n`` the computation is exact.

The empty set scores ``empty_score · Π(1 - p_j)`` (see :mod:`geoplant.metrics`).

The synthetic truth and the oracle (decoders applied to the true probabilities) live in
:mod:`geoplant.synthetic.truth`; their names stay importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # typed re-exports; at run time __getattr__ loads them on first use
    from geoplant.synthetic.truth import SyntheticTruth as SyntheticTruth
    from geoplant.synthetic.truth import oracle_report as oracle_report
    from geoplant.synthetic.truth import read_synthetic_truth as read_synthetic_truth
    from geoplant.synthetic.truth import truth_folder as truth_folder
    from geoplant.synthetic.truth import truth_splits as truth_splits

__all__ = [
    "DEFAULT_GRIDS",
    "METHODS",
    "TuneResult",
    "average_k",
    "average_k_threshold",
    "decode",
    "expected_f1_optimal",
    "expected_f1_top_k",
    "relative_threshold",
    "threshold",
    "top_k",
    "tune",
]

#: Names that moved to :mod:`geoplant.synthetic.truth`, still served from here.
_MOVED_TO_SYNTHETIC_TRUTH = frozenset(
    {"SyntheticTruth", "oracle_report", "read_synthetic_truth", "truth_folder", "truth_splits"})


def __getattr__(name: str) -> Any:
    # Lazy: decoding sits below the synthetic world, which imports this module.
    if name in _MOVED_TO_SYNTHETIC_TRUTH:
        from geoplant.synthetic import truth

        return getattr(truth, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Method = Literal["top_k", "threshold", "relative_threshold", "average_k", "expected_f1"]
#: Decoder names accepted by :func:`decode` and :func:`tune`.
METHODS: tuple[str, ...] = ("top_k", "threshold", "relative_threshold", "average_k",
                            "expected_f1")

#: Default parameter grids of :func:`tune`.
DEFAULT_GRIDS: dict[str, np.ndarray] = {
    "top_k": np.arange(1, 101),
    "threshold": np.round(np.arange(0.01, 1.0, 0.01), 2),
    "relative_threshold": np.round(np.arange(0.01, 1.0, 0.01), 2),
    "average_k": np.arange(1, 101),
}


def _probs(probs: ArrayLike, *, check_range: bool = False) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"expected a 2-d array (n_surveys, n_species), got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    if check_range and p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1] (apply a sigmoid to logits first)")
    return p


def _top_sorted(p: np.ndarray, kmax: int) -> np.ndarray:
    """Column indices of the ``kmax`` largest values of each row, by decreasing value."""
    n = p.shape[1]
    kmax = int(min(max(kmax, 0), n))
    if kmax == 0:
        return np.zeros((p.shape[0], 0), dtype=np.intp)
    if kmax < n:
        part = np.argpartition(p, n - kmax, axis=1)[:, n - kmax:]
    else:
        part = np.broadcast_to(np.arange(n), p.shape)
    order = np.argsort(-np.take_along_axis(p, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _sets_from_prefix(index: np.ndarray, sizes: np.ndarray, n_species: int) -> sp.csr_matrix:
    """CSR of the first ``sizes[i]`` columns listed in ``index[i]``."""
    n_rows = index.shape[0]
    sizes = np.minimum(np.asarray(sizes, dtype=np.int64), index.shape[1])
    mask = np.arange(index.shape[1])[None, :] < sizes[:, None]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(sizes, out=indptr[1:])
    m = sp.csr_matrix((np.ones(int(indptr[-1]), dtype=bool), index[mask], indptr),
                      shape=(n_rows, n_species))
    m.sort_indices()
    return m


def top_k(probs: ArrayLike, k: int | Sequence[int] | np.ndarray) -> sp.csr_matrix:
    """The ``k`` highest-scoring species of each survey.

    Parameters
    ----------
    probs
        ``(n_surveys, n_species)`` probabilities or scores.
    k
        One K for all surveys, or one per survey (e.g. a predicted species richness).
    """
    p = _probs(probs)
    sizes = np.broadcast_to(np.asarray(k, dtype=np.int64), (p.shape[0],))
    if np.any(sizes < 0):
        raise ValueError("k must be >= 0")
    index = _top_sorted(p, int(sizes.max()) if len(sizes) else 0)
    return _sets_from_prefix(index, sizes, p.shape[1])


def threshold(probs: ArrayLike, t: float) -> sp.csr_matrix:
    """Species with ``p >= t`` in each survey."""
    p = _probs(probs)
    return sp.csr_matrix(p >= t)


def _relative(p: np.ndarray) -> np.ndarray:
    """``p / max_p`` of each survey, -1 where ``p <= 0`` (never selected)."""
    top = p.max(axis=1, keepdims=True) if p.shape[1] else np.zeros((p.shape[0], 1), p.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = p / top
    return np.where(p > 0, ratio, -1.0).astype(p.dtype, copy=False)


def relative_threshold(probs: ArrayLike, alpha: float) -> sp.csr_matrix:
    """Species with ``p >= alpha * max_p`` of their survey (and ``p > 0``), ``0 < alpha <= 1``.

    Keeps at least the most probable species of every survey with a positive probability.
    (Computed as ``p / max_p >= alpha``.)
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return sp.csr_matrix(_relative(_probs(probs)) >= alpha)


def average_k_threshold(probs: ArrayLike, k: float) -> float:
    """The global threshold whose sets have ``k`` species on average (see :func:`average_k`)."""
    p = _probs(probs)
    m = round(k * p.shape[0])
    if m <= 0:
        return math.inf
    if m >= p.size:
        return -math.inf
    flat = p.ravel()
    return float(np.partition(flat, flat.size - m)[flat.size - m])


def average_k(probs: ArrayLike, k: float) -> sp.csr_matrix:
    """One global threshold so that the mean set size is ``k`` (the ``round(k * n_surveys)``
    highest values of the matrix; ties at the cut are all kept, so it may be a bit more)."""
    t = average_k_threshold(probs, k)
    p = _probs(probs)
    if math.isinf(t):
        return sp.csr_matrix(np.full(p.shape, t < 0))
    return threshold(p, t)


# ---------------------------------------------------------------------------------------------
# expected-F1-optimal sets


def _expected_f1_block(q: np.ndarray, tail: np.ndarray, log_empty: np.ndarray, k_max: int,
                       empty_score: float) -> np.ndarray:
    """E[F1] of the top-k sets, k = 0..k_max, for a block of surveys.

    ``q`` (B, L): the L largest probabilities of each survey in decreasing order (L >= k_max);
    ``tail`` (B,): the sum of the other probabilities (Poisson-approximated count);
    ``log_empty`` (B,): log P(no presence at all).
    """
    from scipy.stats import poisson

    b, n_exact = q.shape
    k_max = min(k_max, n_exact)
    width = n_exact + k_max + 2  # m = 0 .. n_exact + k_max + 1
    lam_max = float(tail.max()) if b else 0.0
    t_max = math.ceil(lam_max + 12.0 * math.sqrt(lam_max) + 12.0) if lam_max > 0 else 0
    t = np.arange(t_max + 1)
    pmf = poisson.pmf(t[None, :], tail[:, None]) if t_max else np.ones((b, 1))
    m = np.arange(width)
    with np.errstate(divide="ignore"):
        weights = 1.0 / (m[None, :] + t[:, None])
    weights[:, 0] = 0.0  # m = 0 is never used (it needs a >= 1, so m >= k + 1 >= 2)
    s = pmf @ weights  # S_L(m) = E[1 / (m + T)]
    stored = np.zeros((k_max, b, k_max))
    for i in range(n_exact, 0, -1):
        if i <= k_max:
            stored[i - 1, :, :i] = s[:, i + 1: 2 * i + 1]
        p_i = q[:, i - 1: i]
        step = np.subtract(s[:, 1:], s[:, :-1])
        step *= p_i
        step += s[:, :-1]
        s = step
    expected = np.zeros((b, k_max + 1))
    expected[:, 0] = empty_score * np.exp(log_empty)
    dist = np.zeros((b, k_max + 1))
    dist[:, 0] = 1.0
    two_a = 2.0 * np.arange(1, k_max + 1)
    for k in range(1, k_max + 1):
        p_k = q[:, k - 1: k]
        new = dist * (1.0 - p_k)
        new[:, 1:] += dist[:, :-1] * p_k
        dist = new
        expected[:, k] = np.einsum("ba,a,ba->b", dist[:, 1: k + 1], two_a[:k],
                                   stored[k - 1, :, :k])
    return expected


def _expected_f1_table(p: np.ndarray, k_max: int, n_exact: int | None, empty_score: float,
                       block_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """E[F1] of the top-k sets (k = 0..k_max) and the sorted top species index used."""
    n_rows, n = p.shape
    k_max = int(min(max(k_max, 0), n))
    n_top = n if n_exact is None else int(min(n, k_max + max(n_exact, 0)))
    index = _top_sorted(p, n_top)
    q = np.take_along_axis(p, index, axis=1).astype(np.float64)
    total = p.sum(axis=1, dtype=np.float64)
    tail = np.maximum(total - q.sum(axis=1), 0.0)
    with np.errstate(divide="ignore"):  # log P(no species present); -inf if some p = 1
        log_empty = np.log1p(-p).sum(axis=1, dtype=np.float64)
    out = np.empty((n_rows, k_max + 1))
    block = max(1, int(block_bytes // (8 * max(k_max, 1) ** 2 + 8 * 4 * (n_top + k_max + 2))))
    for start in range(0, n_rows, block):
        rows = slice(start, start + block)
        out[rows] = _expected_f1_block(q[rows], tail[rows], log_empty[rows], k_max,
                                       float(empty_score))
    return out, index


def expected_f1_top_k(probs: ArrayLike, k_max: int, *, n_exact: int | None = 256,
                      empty_score: float = 1.0) -> np.ndarray:
    """Expected F1 of the top-k set of each survey for k = 0..k_max, under independence.

    Parameters
    ----------
    probs
        ``(n_surveys, n_species)`` probabilities in [0, 1].
    k_max
        Largest set size (clipped to ``n_species``).
    n_exact
        Species beyond the ``k_max + n_exact`` most probable are summarised by a Poisson
        count (see the module docstring); ``None`` treats every species exactly.
    empty_score
        Score of an empty prediction on an empty truth.

    Returns
    -------
    ndarray
        ``(n_surveys, k_max + 1)`` float64; column k is E[F1] of the k most probable species.
    """
    p = _probs(probs, check_range=True)
    return _expected_f1_table(p, k_max, n_exact, empty_score)[0]


@overload
def expected_f1_optimal(probs: ArrayLike, *, max_k: int | None = None,
                        n_exact: int | None = 256, empty_score: float = 1.0,
                        return_expected: Literal[False] = False) -> sp.csr_matrix: ...


@overload
def expected_f1_optimal(probs: ArrayLike, *, max_k: int | None = None,
                        n_exact: int | None = 256, empty_score: float = 1.0,
                        return_expected: Literal[True]) -> tuple[sp.csr_matrix, np.ndarray]: ...


def expected_f1_optimal(probs: ArrayLike, *, max_k: int | None = None, n_exact: int | None = 256,
                        empty_score: float = 1.0, return_expected: bool = False
                        ) -> sp.csr_matrix | tuple[sp.csr_matrix, np.ndarray]:
    """For each survey, the set maximising expected F1 under independent presences.

    Parameters
    ----------
    probs
        ``(n_surveys, n_species)`` probabilities in [0, 1] (calibrated, ideally).
    max_k
        Largest set size searched. ``None`` (default): start at 64 and double for the surveys
        whose best size reaches the bound, until none does (or all species are searched).
        An integer is a hard bound.
    n_exact
        How many species beyond ``max_k`` are treated exactly before the Poisson tail
        (see the module docstring); ``None``: all (exact, slower).
    empty_score
        Score of an empty prediction on an empty truth (as in :mod:`geoplant.metrics`).
    return_expected
        Also return each survey's expected F1 of its chosen set.

    Returns
    -------
    csr_matrix or (csr_matrix, ndarray)
        The sets; with ``return_expected``, also E[F1] per survey (its mean estimates the
        samples-F1 the sets will score if the probabilities are right).
    """
    p = _probs(probs, check_range=True)
    n_rows, n = p.shape
    best_e = np.zeros(n_rows)
    todo = np.arange(n_rows)
    k = n if n == 0 else (min(n, 64) if max_k is None else int(min(max(max_k, 0), n)))
    done_rows: list[np.ndarray] = []
    pieces: list[sp.csr_matrix] = []
    while len(todo):
        expected, index = _expected_f1_table(p[todo], k, n_exact, empty_score)
        best_k = np.argmax(expected, axis=1)
        best_e[todo] = expected[np.arange(len(todo)), best_k]
        final = max_k is not None or k >= n
        done = np.ones(len(todo), bool) if final else best_k < k
        done_rows.append(todo[done])
        pieces.append(_sets_from_prefix(index[done], best_k[done], n))
        todo = todo[~done]
        k = min(n, 2 * k)
    if not pieces:
        sets = sp.csr_matrix((n_rows, n), dtype=bool)
    else:
        stacked = sp.vstack(pieces, format="csr")
        inverse = np.empty(n_rows, dtype=np.int64)
        inverse[np.concatenate(done_rows)] = np.arange(n_rows)
        sets = stacked[inverse]
    return (sets, best_e) if return_expected else sets


# ---------------------------------------------------------------------------------------------
# dispatch and tuning


def decode(probs: ArrayLike, method: str, param: float | None = None) -> sp.csr_matrix:
    """Apply the decoder ``method`` (one of :data:`METHODS`) with its parameter.

    Parameters
    ----------
    probs
        ``(n_surveys, n_species)`` probabilities (or scores, except for ``expected_f1``).
    method
        One of :data:`METHODS`.
    param
        The decoder's parameter (K, threshold, alpha or mean K); ``expected_f1`` has none.

    Returns
    -------
    csr_matrix
        Boolean ``(n_surveys, n_species)``: the predicted set of each survey.
    """
    if method == "expected_f1":
        return expected_f1_optimal(probs)
    if method not in METHODS:
        raise ValueError(f"unknown decoder {method!r}; use one of {', '.join(METHODS)}")
    if param is None:
        raise ValueError(f"decoder {method!r} needs a parameter")
    if method == "top_k":
        return top_k(probs, int(param))
    if method == "threshold":
        return threshold(probs, float(param))
    if method == "relative_threshold":
        return relative_threshold(probs, float(param))
    return average_k(probs, float(param))


def _count_at_least(values: np.ndarray, cuts: np.ndarray, block: int = 512) -> np.ndarray:
    """``out[g, i] = #{j : values[i, j] >= cuts[g]}`` in one pass over ``values``."""
    order = np.argsort(cuts, kind="stable")
    sorted_cuts = cuts[order].astype(values.dtype)  # compare as `values >= float(cut)` does
    n_rows, n_cuts = values.shape[0], len(cuts)
    out = np.empty((n_cuts, n_rows), dtype=np.int64)
    for start in range(0, n_rows, block):
        v = values[start: start + block]
        idx = np.searchsorted(sorted_cuts, v, side="right")  # cuts <= value
        offset = np.arange(v.shape[0])[:, None] * (n_cuts + 1)
        hist = np.bincount((idx + offset).ravel(), minlength=v.shape[0] * (n_cuts + 1))
        hist = hist.reshape(v.shape[0], n_cuts + 1)
        at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # [:, m] = #{idx >= m}
        out[order, start: start + v.shape[0]] = at_least[:, 1:].T
    return out


def _grid_sizes(p: np.ndarray, method: str, values: np.ndarray) -> np.ndarray:
    """Per-survey set sizes ``(n_grid, n_surveys)`` of a prefix decoder over a grid."""
    if method == "top_k":
        k = np.minimum(np.maximum(values.astype(np.int64), 0), p.shape[1])
        return np.repeat(k[:, None], p.shape[0], axis=1)
    if method == "threshold":
        return _count_at_least(p, values)
    if method == "relative_threshold":
        if np.any((values <= 0) | (values > 1)):
            raise ValueError("relative_threshold grid values must be in (0, 1]")
        return _count_at_least(_relative(p), values)
    # average_k: the m-th largest value of the matrix for each m = round(k * n_surveys)
    m = np.rint(values * p.shape[0]).astype(np.int64)
    flat = p.ravel()
    m_max = int(np.clip(m.max(), 0, flat.size))
    top = -np.sort(-np.partition(flat, flat.size - m_max)[flat.size - m_max:]) if m_max \
        else np.zeros(0, p.dtype)
    cuts = np.where(m <= 0, np.inf, np.where(m >= flat.size, -np.inf,
                                             top[np.clip(m - 1, 0, max(m_max - 1, 0))]
                                             if m_max else 0.0))
    return _count_at_least(p, cuts.astype(np.float64))


@dataclass(frozen=True)
class TuneResult:
    """Outcome of :func:`tune`.

    Attributes
    ----------
    method
        The decoder.
    best_param
        The grid value with the highest samples-F1 (the smallest such value on ties).
    best_score
        Its samples-F1.
    table
        One row per grid value: ``param``, ``samples_f1``, ``mean_set_size``.
    """

    method: str
    best_param: float
    best_score: float
    table: pd.DataFrame


def tune(probs: ArrayLike, y_true: ArrayLike | sp.spmatrix | sp.sparray, method: str,
         grid: Sequence[float] | np.ndarray | None = None, *,
         empty_score: float = 1.0) -> TuneResult:
    """Choose a decoder's parameter maximising samples-F1 on validation data.

    Parameters
    ----------
    probs
        ``(n_surveys, n_species)`` validation probabilities or scores.
    y_true
        The validation presences, dense 0/1 or sparse, same shape and column order.
    method
        ``"top_k"``, ``"threshold"``, ``"relative_threshold"`` or ``"average_k"``.
    grid
        Parameter values to try (default: :data:`DEFAULT_GRIDS`).
    empty_score
        As in :func:`geoplant.metrics.samples_f1`.

    Returns
    -------
    TuneResult
    """
    p = _probs(probs)
    if method not in DEFAULT_GRIDS:
        raise ValueError(f"decoder {method!r} cannot be tuned; use one of "
                         f"{', '.join(DEFAULT_GRIDS)}")
    values = np.asarray(DEFAULT_GRIDS[method] if grid is None else grid, dtype=np.float64)
    if values.size == 0:
        raise ValueError("empty grid")
    truth = y_true.toarray() if isinstance(y_true, sp.spmatrix | sp.sparray) \
        else np.asarray(y_true)
    if truth.shape != p.shape:
        raise ValueError(f"y_true has shape {truth.shape} but probs has shape {p.shape}")
    truth = truth != 0
    sizes = _grid_sizes(p, method, values)  # (n_grid, n_rows)
    index = _top_sorted(p, int(sizes.max()) if sizes.size else 0)
    hits = np.zeros((p.shape[0], index.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.take_along_axis(truth, index, axis=1), axis=1, out=hits[:, 1:])
    n_true = truth.sum(axis=1)
    rows = np.arange(p.shape[0])
    scores = np.empty(len(values))
    for g, size in enumerate(sizes):
        tp = hits[rows, size]
        den = (size + n_true).astype(np.float64)
        f1 = np.where(den > 0, 2.0 * tp / np.maximum(den, 1.0), empty_score)
        scores[g] = f1.mean() if len(f1) else np.nan
    best = int(np.nanargmax(scores))
    table = pd.DataFrame({"param": values, "samples_f1": scores,
                          "mean_set_size": sizes.mean(axis=1)})
    return TuneResult(method, float(values[best]), float(scores[best]), table)
