"""geoplant.metrics against scikit-learn on random inputs and against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import metrics as skm

from geoplant import metrics as gm


def _random_sets(rng: np.random.Generator, n: int = 60, s: int = 25, density: float = 0.2
                 ) -> tuple[np.ndarray, np.ndarray]:
    t = rng.random((n, s)) < density
    p = rng.random((n, s)) < density
    t[np.arange(n), rng.integers(0, s, n)] = True  # no empty rows: sklearn and we agree
    p[np.arange(n), rng.integers(0, s, n)] = True
    return t, p


@pytest.mark.parametrize("seed", range(5))
def test_set_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t, p = _random_sets(rng)
    assert gm.samples_f1(t, p) == pytest.approx(skm.f1_score(t, p, average="samples"))
    assert gm.samples_precision(t, p) == pytest.approx(
        skm.precision_score(t, p, average="samples"))
    assert gm.samples_recall(t, p) == pytest.approx(skm.recall_score(t, p, average="samples"))
    assert gm.micro_f1(t, p) == pytest.approx(skm.f1_score(t, p, average="micro"))
    assert gm.micro_precision(t, p) == pytest.approx(skm.precision_score(t, p, average="micro"))
    assert gm.micro_recall(t, p) == pytest.approx(skm.recall_score(t, p, average="micro"))
    used = t.any(0) | p.any(0)
    assert gm.macro_f1(t, p) == pytest.approx(
        skm.f1_score(t[:, used], p[:, used], average="macro"))
    # sparse input and id-set input give the same numbers
    assert gm.samples_f1(sp.csr_matrix(t), sp.csc_matrix(p)) == pytest.approx(
        gm.samples_f1(t, p))
    sets_t = [set(np.flatnonzero(r) + 1000) for r in t]
    sets_p = [list(np.flatnonzero(r) + 1000) for r in p]
    assert gm.samples_f1(sets_t, sets_p) == pytest.approx(gm.samples_f1(t, p))
    ids = np.arange(t.shape[1]) + 1000
    assert gm.samples_f1(t, sets_p, species_ids=ids) == pytest.approx(gm.samples_f1(t, p))


def test_samples_f1_hand_worked_and_kaggle_formula() -> None:
    # survey 1: Y={1,2,3}, Ŷ={1,4}: TP=1, FP=1, FN=2 -> 1 / (1 + 3/2) = 0.4
    # survey 2: Y={5}, Ŷ={5}: 1; survey 3: Y={6}, Ŷ={} -> 0
    y_true = [{1, 2, 3}, {5}, {6}]
    y_pred = [{1, 4}, {5}, set()]
    per = gm.samples_f1_per_survey(y_true, y_pred)
    np.testing.assert_allclose(per, [0.4, 1.0, 0.0])
    assert gm.samples_f1(y_true, y_pred) == pytest.approx(1.4 / 3)
    assert gm.samples_precision(y_true, y_pred) == pytest.approx((0.5 + 1 + 0) / 3)
    assert gm.samples_recall(y_true, y_pred) == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert gm.micro_f1(y_true, y_pred) == pytest.approx(2 * 2 / (3 + 5))


def test_empty_vs_empty_is_defined_and_sklearn_consistent() -> None:
    t = np.array([[0, 0, 0], [1, 0, 1]])
    p = np.array([[0, 0, 0], [1, 1, 0]])
    assert gm.samples_f1(t, p) == pytest.approx((1.0 + 0.5) / 2)
    assert gm.samples_f1(t, p) == pytest.approx(
        skm.f1_score(t, p, average="samples", zero_division=1.0))
    assert gm.samples_f1(t, p, empty_score=0.0) == pytest.approx(0.25)
    # empty truth with a prediction scores 0, not 0/0
    assert gm.samples_f1([set()], [{3}]) == 0.0
    assert gm.samples_f1([{3}], [set()]) == 0.0


def test_shape_and_id_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        gm.samples_f1(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="not in species_ids"):
        gm.samples_f1(np.zeros((1, 3)), [{99}], species_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="out of range"):
        gm.samples_f1(np.zeros((1, 3)), [{5}])


@pytest.mark.parametrize("seed", range(3))
def test_auc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = rng.random((40, 12)) < 0.3
    s = np.round(rng.random((40, 12)), 1)  # many ties
    t[:, 0] = False  # degenerate species
    t[0] = False  # degenerate survey (no presence)
    per_species = gm.auc_per_species(t, s)
    assert np.isnan(per_species[0])
    for j in range(1, 12):
        assert per_species[j] == pytest.approx(skm.roc_auc_score(t[:, j], s[:, j]))
    per_sample = gm.auc_per_sample(sp.csr_matrix(t), s)
    assert np.isnan(per_sample[0])
    for i in range(1, 40):
        if 0 < t[i].sum() < 12:
            assert per_sample[i] == pytest.approx(skm.roc_auc_score(t[i], s[i]))


def test_tss_per_species_and_max_tss() -> None:
    t = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 1]])
    p = np.array([[1, 1, 1], [0, 0, 1], [0, 0, 0], [1, 0, 1]])
    # species 0: sens 1/2, spec 1/2 -> 0; species 1: no presence -> NaN;
    # species 2: sens 2/3, spec 0/1 -> -1/3
    np.testing.assert_allclose(gm.tss_per_species(t, p), [0.0, np.nan, -1 / 3])
    assert gm.tss(t, p) == pytest.approx(-1 / 6)
    rng = np.random.default_rng(0)
    y = rng.random((80, 6)) < 0.4
    s = rng.random((80, 6)) + y * 0.3
    best, thr = gm.max_tss_per_species(y, s)
    for j in range(6):
        fpr, tpr, _ = skm.roc_curve(y[:, j], s[:, j])
        assert best[j] == pytest.approx(max(0.0, np.max(tpr - fpr)))
        pred = s[:, j] >= thr[j]
        assert gm.tss_per_species(y[:, [j]], pred[:, None])[0] == pytest.approx(best[j])


def test_top_k_metrics() -> None:
    rng = np.random.default_rng(1)
    s = rng.random((50, 20))
    labels = rng.integers(0, 20, 50)
    onehot = np.zeros((50, 20), bool)
    onehot[np.arange(50), labels] = True
    for k in (1, 3, 10):
        assert gm.top_k_accuracy(onehot, s, k) == pytest.approx(
            skm.top_k_accuracy_score(labels, s, k=k, labels=np.arange(20)))
    t = np.array([[1, 1, 0, 0], [0, 0, 1, 0]])
    sc = np.array([[0.9, 0.1, 0.8, 0.0], [0.5, 0.6, 0.7, 0.1]])
    # survey 1: top-2 = {0, 2} holds 1 of 2; survey 2: top-2 = {2, 1} holds 1 of 1
    assert gm.top_k_recall(t, sc, 2) == pytest.approx(0.75)
    assert gm.top_k_accuracy(t, sc, 1) == pytest.approx(1.0)  # 0.9 and 0.7 are both hits


def test_evaluate_summaries() -> None:
    rng = np.random.default_rng(2)
    t, p = _random_sets(rng)
    out = gm.evaluate_sets(t, p)
    assert out["samples_f1"] == pytest.approx(gm.samples_f1(t, p))
    assert out["mean_predicted"] == pytest.approx(p.sum(1).mean())
    scores = gm.evaluate_scores(t, rng.random(t.shape) + t, k=5)
    assert scores["auc_species"] > 0.7 and scores["top_5_recall"] > 0.3


# ---------------------------------------------------------------------------------------------
# bootstrap intervals


def _f1_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return _random_sets(rng, n=n, s=30, density=0.3)


def test_bootstrap_brackets_point_estimate_and_is_deterministic() -> None:
    t, p = _f1_data(200)
    point = gm.samples_f1(t, p)
    lo, hi = gm.bootstrap_interval(gm.samples_f1, t, p, n=300, seed=3)
    assert lo < point < hi
    assert gm.bootstrap_interval(gm.samples_f1, t, p, n=300, seed=3) == (lo, hi)
    assert gm.bootstrap_interval(gm.samples_f1, t, p, n=300, seed=4) != (lo, hi)
    # sparse rows and id sets give the same resamples, hence the same interval
    assert gm.bootstrap_interval(gm.samples_f1, sp.csr_matrix(t), sp.csr_matrix(p), n=300,
                                 seed=3) == pytest.approx((lo, hi))
    sets_t = [np.flatnonzero(r) for r in t]
    sets_p = [np.flatnonzero(r) for r in p]
    assert gm.bootstrap_interval(gm.samples_f1, sets_t, sets_p, n=300,
                                 seed=3) == pytest.approx((lo, hi))
    # a wider level gives a wider interval
    lo99, hi99 = gm.bootstrap_interval(gm.samples_f1, t, p, n=300, seed=3, level=0.99)
    assert lo99 <= lo and hi99 >= hi


def test_bootstrap_shrinks_with_more_surveys() -> None:
    small = gm.bootstrap_interval(gm.samples_f1, *_f1_data(50), n=300)
    large = gm.bootstrap_interval(gm.samples_f1, *_f1_data(2000), n=300)
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])


def test_bootstrap_ranking_metric_and_dict() -> None:
    rng = np.random.default_rng(1)
    t = rng.random((300, 12)) < 0.3
    s = t + rng.normal(0, 0.8, t.shape)

    def auc(tt: np.ndarray, ss: np.ndarray) -> float:
        return float(np.nanmean(gm.auc_per_species(tt, ss)))

    lo, hi = gm.bootstrap_interval(auc, sp.csr_matrix(t), s, n=200)
    assert lo < auc(t, s) < hi
    found = gm.bootstrap_intervals(gm.evaluate_sets, t, t > 0, n=50)
    assert found["samples_f1"] == (1.0, 1.0) and "tss" in found


def test_bootstrap_errors_and_nan() -> None:
    t, p = _f1_data(20)
    with pytest.raises(ValueError, match="different numbers of rows"):
        gm.bootstrap_interval(gm.samples_f1, t, p[:10])
    with pytest.raises(ValueError, match="level"):
        gm.bootstrap_interval(gm.samples_f1, t, p, level=1.5)
    lo, hi = gm.bootstrap_interval(lambda a: float("nan"), t, n=10)
    assert np.isnan(lo) and np.isnan(hi)


def test_bootstrap_means_pairs_the_resamples() -> None:
    t, p = _f1_data(400)
    f1 = gm.samples_f1_per_survey(t, p)
    better = np.clip(f1 + 0.02, 0, 1)  # a model 0.02 better on every survey
    ci = gm.bootstrap_means({"a": better, "b": f1}, differences={"a-b": ("a", "b")},
                            ratios={"b/a": ("b", "a")}, n=300, seed=1)
    assert ci["b"][0] < gm.samples_f1(t, p) < ci["b"][1]
    # the marginal intervals overlap, the paired difference is narrow and excludes 0
    assert ci["a"][0] < ci["b"][1]
    lo, hi = ci["a-b"]
    assert 0 < lo <= hi < 0.021 and hi - lo < 0.25 * (ci["b"][1] - ci["b"][0])
    assert ci["b/a"][1] < 1.0
    # the same as resampling the rows with bootstrap_interval and the same seed
    assert ci["b"] == pytest.approx(gm.bootstrap_interval(np.mean, f1, n=300, seed=1))
    with pytest.raises(ValueError, match="different numbers of rows"):
        gm.bootstrap_means({"a": f1, "b": f1[:10]})
