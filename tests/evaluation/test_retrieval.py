"""Retrieval ranks, recall@K, dup_all/dedup pools and volume->volume MAP@K on hand-made embeddings."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import reaf.evaluation.retrieval as retrieval
from reaf.evaluation.retrieval import (
    average_precision_at_k,
    dedup_indices,
    rank_summary,
    recall_curve,
    retrieval_metrics,
    target_ranks,
    volume_map,
)


def test_target_ranks_by_hand():
    gallery = np.eye(3, dtype=np.float32)
    queries = np.array([[1.0, 0.5, 0.0], [0.1, 0.2, 0.9], [0.6, 0.5, 0.4]])
    # q0: e0 > e1 > e2, target e1 -> 2; q1: e2 > e1 > e0, target e0 -> 3; q2: e0 > e1 > e2, target e2 -> 3
    assert target_ranks(queries, gallery, np.array([1, 0, 2])).tolist() == [2, 3, 3]


def test_ties_are_broken_by_gallery_order():
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # items 0 and 1 are identical
    queries = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert target_ranks(queries, gallery, np.array([0, 1])).tolist() == [1, 2]


def test_rank_summary_and_curve():
    ranks = np.array([1, 2, 6, 60, 200])
    out = rank_summary(ranks)
    assert out == {
        "R@1": 0.2,
        "R@5": 0.4,
        "R@10": 0.6,
        "R@50": 0.6,
        "R@100": 0.8,
        "median_rank": 6.0,
        "mean_rank": 53.8,
        "N": 5,
    }
    curve = recall_curve(ranks, 100)
    assert curve.shape == (100,) and curve[0] == 0.2 and curve[4] == 0.4 and curve[5] == 0.6 and curve[99] == 0.8


def _siblings_case():
    """Scan A has two reconstructions (same report text), scans B and C one each."""
    names = ["a_1", "a_2", "b_1", "c_1"]
    scan_ids = ["a", "a", "b", "c"]
    text_a, text_b, text_c = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
    text = np.array([text_a, text_a, text_b, text_c])
    # a_2 lies a little closer to report A than a_1 does; b_1 and c_1 are closest to their own reports
    image = np.array([[0.9, 0.3, 0.1], [0.95, 0.1, 0.1], [0.1, 0.9, 0.2], [0.2, 0.1, 0.9]])
    return image, text, scan_ids, names


def test_dup_all_vs_dedup_with_sibling_reconstructions():
    image, text, scan_ids, names = _siblings_case()
    metrics, ranks = retrieval_metrics(image, text, scan_ids, names, labels=None)
    # dup_all: report A (row 0) must find a_1 but a_2 is closer; volume a_2 ties report A with a_1's copy first
    assert ranks["dup_all"]["report_to_volume"].tolist() == [2, 1, 1, 1]
    assert ranks["dup_all"]["volume_to_report"].tolist() == [1, 2, 1, 1]
    assert metrics["dup_all"]["report_to_volume"]["R@1"] == 0.75 and metrics["dup_all"]["volume_to_report"]["N"] == 4
    # dedup: one volume per scan, so the sibling no longer counts as a miss
    assert ranks["dedup"]["report_to_volume"].tolist() == [1, 1, 1]
    assert metrics["dedup"]["volume_to_report"]["R@1"] == 1.0 and metrics["dedup"]["volume_to_report"]["N"] == 3
    assert "volume_to_volume" not in metrics["dedup"]


def test_dedup_keeps_first_reconstruction_by_name():
    names = ["s1_b_2", "s1_a_1", "s1_b_1", "s2_a_1"]
    scan_ids = ["s1_b", "s1_a", "s1_b", "s2_a"]
    assert dedup_indices(scan_ids, names).tolist() == [1, 2, 3]


def test_average_precision_at_k_by_hand():
    relevance = np.array([[True, False, True, False, True]])
    # hits at ranks 1, 3, 5 with 4 relevant in total: AP@5 = (1 + 2/3 + 3/5) / 4; AP@2 = 1 / min(2, 4)
    assert average_precision_at_k(relevance, np.array([4]), 5)[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    assert average_precision_at_k(relevance, np.array([4]), 2)[0] == pytest.approx(0.5)


def test_volume_map_by_hand():
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=float)  # volume 3 is normal: not in the pool
    image = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.1, 0.0], [1.0, 0.0, 0.0]])
    out = volume_map(image, labels, ks=(1, 2))
    # query 0 ranks [2, 1], its one relevant (1) is 2nd: AP@1 = 0, AP@2 = (1/2) / min(2, 1) = 0.5
    # query 1 ranks [2, 0] (sims 0.11 vs 0), its relevant (0) is 2nd: AP@1 = 0, AP@2 = 0.5; query 2 has no relevant
    assert out == {"N": 3, "MAP@1": 0.0, "MAP@2": 0.5, "queries_without_relevant": 1}


def test_volume_map_equals_sklearn_average_precision(monkeypatch):
    rng = np.random.default_rng(0)
    n = 30
    labels = (rng.random((n, 4)) < 0.3).astype(float)
    labels[:, 0] = 1.0  # everyone abnormal and relevant to everyone: AP over the full list
    labels[:5, 0] = 0.0
    labels[:5, 1] = 1.0
    image = rng.normal(size=(n, 8))
    abnormal = np.flatnonzero(labels.any(axis=1))
    emb = image[abnormal] / np.linalg.norm(image[abnormal], axis=1, keepdims=True)
    positive = labels[abnormal] == 1
    expected = []
    for q in range(len(abnormal)):
        others = np.delete(np.arange(len(abnormal)), q)
        relevant = (positive[others] & positive[q]).any(axis=1)
        if relevant.any():
            expected.append(average_precision_score(relevant, emb[others] @ emb[q]))
    full = len(abnormal) - 1
    out = volume_map(image, labels, ks=(full,))
    assert out[f"MAP@{full}"] == pytest.approx(np.mean(expected))
    monkeypatch.setattr(retrieval, "CHUNK", 7)  # chunked scoring gives the same answer
    assert volume_map(image, labels, ks=(full,)) == out


def test_ranks_independent_of_chunking(monkeypatch):
    rng = np.random.default_rng(1)
    image, text = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    full = target_ranks(text, image, np.arange(50))
    monkeypatch.setattr(retrieval, "CHUNK", 8)
    assert target_ranks(text, image, np.arange(50)).tolist() == full.tolist()
    sims = text @ image.T / np.linalg.norm(text, axis=1)[:, None] / np.linalg.norm(image, axis=1)[None, :]
    by_sort = [1 + int(np.flatnonzero(np.argsort(-row, kind="stable") == i)[0]) for i, row in enumerate(sims)]
    assert full.tolist() == by_sort
