"""Retrieval metrics: report<->volume recall@K and ranks in the dup_all/dedup pools, volume->volume MAP@K."""

from __future__ import annotations

import numpy as np

from reaf.finite import require_finite

RECALL_KS = (1, 5, 10, 50, 100)
MAP_KS = (5, 10, 50)
CHUNK = 1024  # queries scored at a time, so memory stays (CHUNK, G) for any pool size

DEFINITIONS = {
    "rank": "1-based position of the target in the gallery sorted by cosine similarity, descending; ties are broken "
    "by gallery order (a stable sort): rank = 1 + #{s > s_target} + #{s == s_target and index < target}",
    "R@K": "fraction of queries whose target has rank <= K",
    "dup_all": "every volume is a query and a gallery item; the hit is the volume's own report (reconstructions of "
    "one scan share a report, so an identical sibling report ranked first counts as a miss: the CT-CLIP convention)",
    "dedup": "one volume per scan (the first reconstruction in name order); the hit is the scan's report",
    "MAP@K": "mean over abnormal query volumes of AP@K = sum_k P@k * rel_k / min(K, R), R = relevant volumes in the "
    "pool; gallery = the pool's abnormal volumes minus the query itself; relevant = shares >= 1 positive label; "
    "queries with R = 0 are skipped and counted. In dup_all sibling reconstructions of the query's scan are in the "
    "gallery; dedup has none",
}


def normalize(x: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """Rows of `x` (N, E) scaled to unit L2 norm (float32); NonFiniteError when `x` holds NaN/inf (a NaN
    similarity would otherwise never be "greater" than the target's and give its query rank 1)."""
    x = np.asarray(x, dtype=np.float32)
    require_finite(x, what)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def target_ranks(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of gallery item `targets[q]` for each query: queries (Q, E), gallery (G, E) -> (Q,) int64."""
    queries, gallery = normalize(queries, "retrieval queries"), normalize(gallery, "retrieval gallery")
    targets = np.asarray(targets, dtype=np.int64)
    positions = np.arange(len(gallery))
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), CHUNK):
        sims = queries[start : start + CHUNK] @ gallery.T  # (q, G)
        tgt = targets[start : start + CHUNK]
        own = sims[np.arange(len(tgt)), tgt][:, None]
        ahead = (sims > own) | ((sims == own) & (positions[None, :] < tgt[:, None]))
        ranks[start : start + CHUNK] = 1 + ahead.sum(axis=1)
    return ranks


def rank_summary(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict:
    """R@K for each K, median and mean rank, and N (the number of queries = the pool size)."""
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float((ranks <= k).mean()) for k in ks}
    out.update({"median_rank": float(np.median(ranks)), "mean_rank": float(ranks.mean()), "N": int(len(ranks))})
    return out


def recall_curve(ranks: np.ndarray, max_k: int = 100) -> np.ndarray:
    """R@K for K = 1..max_k: (max_k,) float."""
    ranks = np.asarray(ranks)
    return (ranks[None, :] <= np.arange(1, max_k + 1)[:, None]).mean(axis=1)


def dedup_indices(scan_ids: list[str], names: list[str]) -> np.ndarray:
    """Index of one volume per scan (the first name in sorted order), in order of first appearance: (S,) int64."""
    best: dict[str, int] = {}
    for i, (scan, name) in enumerate(zip(scan_ids, names)):
        if scan not in best or name < names[best[scan]]:
            best[scan] = i
    return np.array(sorted(best.values()), dtype=np.int64)


def pool_indices(scan_ids: list[str], names: list[str]) -> dict[str, np.ndarray]:
    """The two evaluation pools: {"dup_all": every volume, "dedup": one volume per scan}, as index arrays."""
    return {"dup_all": np.arange(len(names), dtype=np.int64), "dedup": dedup_indices(scan_ids, names)}


def report_volume_ranks(image: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
    """Ranks for both directions with pairs (image[i], text[i]) as hits: image/text (N, E) -> {direction: (N,)}."""
    targets = np.arange(len(image))
    return {
        "report_to_volume": target_ranks(text, image, targets),
        "volume_to_report": target_ranks(image, text, targets),
    }


def average_precision_at_k(relevance: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@K of ranked relevance rows (Q, >=K) bool with n_relevant (Q,) relevant items in total -> (Q,)."""
    rel = relevance[:, :k].astype(np.float64)
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    return (precision * rel).sum(axis=1) / np.minimum(k, n_relevant)


def _ranked_relevance(emb: np.ndarray, positive: np.ndarray, start: int, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Relevance of the top `k_max` gallery items (self excluded) for query rows start..start+CHUNK, and R per query."""
    rows = np.arange(start, min(start + CHUNK, len(emb)))
    sims = emb[rows] @ emb.T  # (q, N)
    sims[np.arange(len(rows)), rows] = -np.inf  # self excluded: sorts last, then dropped
    relevant = (positive[rows] @ positive.T) > 0
    relevant[np.arange(len(rows)), rows] = False
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k_max]
    return np.take_along_axis(relevant, order, axis=1), relevant.sum(axis=1)


def volume_map(image: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = MAP_KS) -> dict:
    """Volume->volume MAP@K over the abnormal volumes of `image` (N, E) with `labels` (N, C); see DEFINITIONS."""
    positive = np.nan_to_num(np.asarray(labels, dtype=np.float64)) == 1
    abnormal = np.flatnonzero(positive.any(axis=1))
    out: dict = {"N": int(len(abnormal))}
    if len(abnormal) < 2:
        return {**out, **{f"MAP@{k}": None for k in ks}, "queries_without_relevant": int(len(abnormal))}
    emb, positive = normalize(image[abnormal]), positive[abnormal].astype(np.float32)
    k_max = min(max(ks), len(abnormal) - 1)
    sums, n_with = dict.fromkeys(ks, 0.0), 0
    for start in range(0, len(abnormal), CHUNK):
        ranked, n_relevant = _ranked_relevance(emb, positive, start, k_max)
        has = n_relevant > 0
        n_with += int(has.sum())
        for k in ks:
            sums[k] += float(average_precision_at_k(ranked[has], n_relevant[has], k).sum())
    for k in ks:
        out[f"MAP@{k}"] = sums[k] / n_with if n_with else None
    out["queries_without_relevant"] = int(len(abnormal) - n_with)
    return out


def retrieval_metrics(
    image: np.ndarray, text: np.ndarray, scan_ids: list[str], names: list[str], labels: np.ndarray | None
) -> tuple[dict, dict]:
    """Metrics for both pools and directions, and the ranks behind them.

    image/text (N, E) paired by row; labels (N, C) or None (MAP is then skipped). Returns (metrics, ranks) with
    metrics[pool][direction] = rank_summary(...) and metrics[pool]["volume_to_volume"] = volume_map(...).
    """
    require_finite(image, "image embeddings", names)
    require_finite(text, "text embeddings", names)
    metrics: dict = {}
    ranks: dict = {}
    for pool, idx in pool_indices(scan_ids, names).items():
        ranks[pool] = report_volume_ranks(image[idx], text[idx])
        metrics[pool] = {direction: rank_summary(r) for direction, r in ranks[pool].items()}
        if labels is not None:
            metrics[pool]["volume_to_volume"] = volume_map(image[idx], labels[idx])
    return metrics, ranks
