"""geoplant.decode: decoders, exact expected-F1-optimal sets (vs brute force), tuning."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from geoplant import decode as gd
from geoplant import metrics as gm


def _brute_force(p: np.ndarray) -> tuple[float, dict[tuple[int, ...], float]]:
    """E[F1] of every subset under independence, by enumerating all outcomes."""
    n = len(p)
    outcomes = np.array(list(itertools.product([0, 1], repeat=n)))
    prob = np.prod(np.where(outcomes == 1, p, 1 - p), axis=1)
    table = {}
    for s in itertools.product([0, 1], repeat=n):
        s_arr = np.array(s)
        tp = outcomes @ s_arr
        den = outcomes.sum(1) + s_arr.sum()
        f1 = np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)
        table[s] = float(f1 @ prob)
    return max(table.values()), table


@pytest.mark.parametrize("seed", range(6))
def test_expected_f1_exact_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    p = rng.random(n) ** rng.uniform(0.3, 3.0)
    if seed == 0:
        p[0] = 1.0
    best, table = _brute_force(p)
    expected = gd.expected_f1_top_k(p[None], n, n_exact=None)[0]
    order = np.argsort(-p)
    for k in range(n + 1):
        s = np.zeros(n, int)
        s[order[:k]] = 1
        assert expected[k] == pytest.approx(table[tuple(s)], abs=1e-12)
    sets, e = gd.expected_f1_optimal(p[None], return_expected=True)
    assert e[0] == pytest.approx(best, abs=1e-12)  # top-k sets are optimal (Ye et al. 2012)
    chosen = tuple(int(v) for v in sets.toarray()[0])
    assert table[chosen] == pytest.approx(best, abs=1e-12)


def test_poisson_tail_is_close_and_doubling_finds_large_sets() -> None:
    rng = np.random.default_rng(0)
    p = 1 / (1 + np.exp(-rng.normal(-4, 2, (20, 600))))
    exact = gd.expected_f1_top_k(p, 30, n_exact=None)
    approx = gd.expected_f1_top_k(p, 30, n_exact=32)
    assert np.abs(exact - approx).max() < 1e-3
    rich = np.full((2, 300), 0.01)
    rich[:, :150] = 0.9  # the best set has ~150 species: beyond the first bound of 64
    sets = gd.expected_f1_optimal(rich)
    capped = gd.expected_f1_optimal(rich, max_k=64)
    assert sets.sum(1).min() > 64
    assert capped.sum(1).max() == 64
    assert np.array_equal(sets.toarray(), gd.expected_f1_optimal(rich, max_k=300).toarray())


def test_expected_f1_rejects_non_probabilities() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gd.expected_f1_optimal(np.array([[0.2, 1.5]]))


def test_simple_decoders() -> None:
    p = np.array([[0.9, 0.5, 0.1, 0.3], [0.2, 0.1, 0.05, 0.0]])
    np.testing.assert_array_equal(gd.top_k(p, 2).toarray(),
                                  [[1, 1, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(gd.top_k(p, [1, 3]).toarray(),
                                  [[1, 0, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_array_equal(gd.threshold(p, 0.3).toarray(),
                                  [[1, 1, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(gd.relative_threshold(p, 0.5).toarray(),
                                  [[1, 1, 0, 0], [1, 1, 0, 0]])
    # 2 per survey on average: the 4 largest values of the matrix
    avg = gd.average_k(p, 2)
    np.testing.assert_array_equal(avg.toarray(), [[1, 1, 0, 1], [1, 0, 0, 0]])
    # 2.5 per survey: the 5th largest value (0.1) is tied with the 6th; ties are all kept
    assert gd.average_k(p, 2.5).sum() == 6
    with pytest.raises(ValueError, match="alpha"):
        gd.relative_threshold(p, 0.0)
    with pytest.raises(ValueError, match="unknown decoder"):
        gd.decode(p, "nope", 1)


def test_average_k_mean_size() -> None:
    p = np.random.default_rng(3).random((200, 50))
    assert gd.average_k(p, 7).sum(1).mean() == pytest.approx(7.0)


@pytest.mark.parametrize("method", ["top_k", "threshold", "relative_threshold", "average_k"])
def test_tune_matches_decode(method: str) -> None:
    rng = np.random.default_rng(4)
    p = (rng.random((150, 40)) ** 3).astype(np.float32)
    y = rng.random(p.shape) < p
    result = gd.tune(p, y, method)
    assert len(result.table) == len(gd.DEFAULT_GRIDS[method])
    # every grid row equals the metric of the decoded sets
    for _, row in result.table.sample(8, random_state=0).iterrows():
        sets = gd.decode(p, method, row["param"])
        assert row["samples_f1"] == pytest.approx(gm.samples_f1(y, sets))
        assert row["mean_set_size"] == pytest.approx(sets.sum(1).mean())
    assert result.best_score == pytest.approx(result.table["samples_f1"].max())
    assert result.best_score == pytest.approx(
        gm.samples_f1(y, gd.decode(p, method, result.best_param)))


def test_tune_picks_obvious_k() -> None:
    p = np.tile(np.linspace(1, 0, 10), (5, 1))
    y = np.zeros_like(p, dtype=bool)
    y[:, :3] = True  # the 3 most probable species are exactly the present ones
    result = gd.tune(p, y, "top_k", grid=range(1, 10))
    assert result.best_param == 3 and result.best_score == pytest.approx(1.0)
