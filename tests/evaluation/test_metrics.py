"""Classification metrics equal scikit-learn / hand computations; the bootstrap really resamples and is seeded."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from reaf.evaluation.metrics import (
    binary_metrics,
    bootstrap_counts,
    bootstrap_indices,
    classification_metrics,
    classification_subsets,
    ctclip_threshold,
    weighted_auroc,
)


def _random_case(seed: int, n: int = 60, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    labels[:2] = [True, False]
    scores = rng.random(n) + 0.4 * labels
    if ties:
        scores = np.round(scores, 1)  # many exact ties
    return labels, scores


def test_auroc_by_hand():
    # positives 0.8, 0.4; negatives 0.6, 0.4, 0.1 -> pairs: (0.8 beats all 3), (0.4 beats 0.1, ties 0.4, loses 0.6)
    labels = np.array([1, 0, 1, 0, 0], bool)
    scores = np.array([0.8, 0.6, 0.4, 0.4, 0.1])
    assert weighted_auroc(labels, scores)[0] == pytest.approx((3 + 1 + 0.5) / 6)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_auroc_equals_sklearn(seed, ties):
    labels, scores = _random_case(seed, ties=ties)
    assert weighted_auroc(labels, scores)[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_degenerate_auroc_is_nan():
    assert np.isnan(weighted_auroc(np.zeros(5, bool), np.arange(5.0))[0])


def test_bootstrap_resamples_are_real_resamples():
    labels, scores = _random_case(3, ties=True)
    idx = bootstrap_indices(len(labels), 20, seed=7)
    counts = bootstrap_counts(len(labels), 20, seed=7)
    assert counts.sum(axis=1).tolist() == [len(labels)] * 20
    assert (counts.max(axis=1) > 1).all()  # sampling with replacement repeats volumes
    resampled = weighted_auroc(labels, scores, counts)
    for b in range(20):
        expected = roc_auc_score(labels[idx[b]], scores[idx[b]])
        assert resampled[b] == pytest.approx(expected, abs=1e-12)
    assert len(set(np.round(resampled, 10))) > 10  # the resamples differ from each other


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_equal_sklearn(seed):
    labels, scores = _random_case(seed)
    pred = scores > 0.7
    got = binary_metrics(labels, pred)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert got["weighted_f1"] == pytest.approx(f1_score(labels, pred, average="weighted"))
    assert got["recall"] == pytest.approx(recall_score(labels, pred))
    assert got["precision"] == pytest.approx(precision_score(labels, pred))


def test_binary_metrics_nothing_predicted_positive():
    labels = np.array([1, 0, 0, 1], bool)
    pred = np.zeros(4, bool)
    got = binary_metrics(labels, pred)
    assert got["precision"] == 0.0 == precision_score(labels, pred, zero_division=0)
    assert got["weighted_f1"] == pytest.approx(f1_score(labels, pred, average="weighted", zero_division=0))


def _ctclip_threshold_by_loop(labels, scores):
    best, best_distance = 0.0, np.inf
    for t in np.linspace(0, 1, 100):
        pred = scores > t
        tpr = (pred & labels).sum() / labels.sum()
        fpr = (pred & ~labels).sum() / (~labels).sum()
        distance = np.sqrt((1 - tpr) ** 2 + fpr**2)
        if distance <= best_distance:
            best, best_distance = t, distance
    return best


@pytest.mark.parametrize("seed", [0, 4, 5])
def test_ctclip_threshold_equals_reference_loop(seed):
    labels, scores = _random_case(seed)
    scores = scores / scores.max()
    assert ctclip_threshold(labels, scores) == pytest.approx(_ctclip_threshold_by_loop(labels, scores))


def test_classification_metrics_report():
    rng = np.random.default_rng(0)
    n, classes = 80, ["a", "b", "c"]
    labels = (rng.random((n, 3)) < 0.4).astype(float)
    labels[:, 2] = 0.0  # class c has no positives: undefined AUC, left out of the mean
    labels[5, 1] = np.nan  # an unknown label: volume 5 is left out of class b only
    probs = np.clip(rng.random((n, 3)) * 0.7 + 0.3 * np.nan_to_num(labels), 0, 1)
    out = classification_metrics(labels, probs, classes, n_boot=200, seed=3)
    assert out["classes_in_mean"] == ["a", "b"] and out["classes_without_both_labels"] == ["c"]
    known = np.isfinite(labels[:, 1])
    expected_b = roc_auc_score(labels[known, 1], probs[known, 1])
    assert out["per_class"]["b"]["auc"] == pytest.approx(expected_b) and out["per_class"]["b"]["n"] == n - 1
    expected_mean = (roc_auc_score(labels[:, 0], probs[:, 0]) + expected_b) / 2
    assert out["mean"]["auc"] == pytest.approx(expected_mean)
    assert out["per_class"]["c"]["auc"] is None
    argmax_a = balanced_accuracy_score(labels[:, 0], probs[:, 0] > 0.5)
    assert out["per_class"]["a"]["argmax"]["balanced_accuracy"] == pytest.approx(argmax_a)
    for entry in (out["per_class"]["a"], out["per_class"]["b"], out["mean"]):
        lo, hi = entry["auc_ci95"]
        assert lo < entry["auc"] < hi and hi - lo < 0.5
    again = classification_metrics(labels, probs, classes, n_boot=200, seed=3)
    other = classification_metrics(labels, probs, classes, n_boot=200, seed=4)
    assert again["mean"]["auc_ci95"] == out["mean"]["auc_ci95"]
    assert other["mean"]["auc_ci95"] != out["mean"]["auc_ci95"]


def test_bootstrap_counts_degenerate_resamples():
    labels = np.zeros(30)
    labels[0] = 1  # one positive: every resample that misses volume 0 is degenerate
    probs = np.linspace(0, 1, 30)
    out = classification_metrics(labels[:, None], probs[:, None], ["x"], n_boot=300, seed=0)
    skipped = out["per_class"]["x"]["auc_bootstrap_skipped"]
    counts = bootstrap_counts(30, 300, 0)
    assert skipped == int((counts[:, 0] == 0).sum()) and 0 < skipped < 300
    assert out["mean"]["auc_bootstrap_skipped"] == skipped


def test_subsets_equal_separate_runs():
    rng = np.random.default_rng(5)
    labels = (rng.random((50, 4)) < 0.4).astype(float)
    probs = rng.random((50, 4))
    names = ["a", "b", "c", "d"]
    both = classification_subsets(labels, probs, names, {"all": names, "bd": ["b", "d"]}, n_boot=100, seed=2)
    alone = classification_metrics(labels[:, [1, 3]], probs[:, [1, 3]], ["b", "d"], n_boot=100, seed=2)
    assert both["bd"] == alone
    assert both["all"]["per_class"]["b"] == alone["per_class"]["b"] and both["all"]["mean"] != alone["mean"]
