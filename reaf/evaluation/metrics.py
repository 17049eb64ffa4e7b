"""Zero-shot classification metrics: AUROC with a seeded bootstrap CI, argmax metrics, the CT-CLIP/fVLM threshold."""

from __future__ import annotations

import numpy as np

from reaf.finite import require_finite

DEFAULT_BOOTSTRAP = 1000
CTCLIP_GRID = np.linspace(0.0, 1.0, 100)  # fVLM/CT-CLIP `find_threshold`: 100 candidate cut points, positive if p > t

DEFINITIONS = {
    "auc": "ROC AUC (ties count one half), equal to sklearn.metrics.roc_auc_score",
    "auc_ci95": "2.5/97.5 percentiles of the AUC over bootstrap resamples of volumes (with replacement); resamples "
    "without a positive or a negative are skipped and counted in auc_bootstrap_skipped",
    "argmax": "prediction = argmax(p_not, p_finding), i.e. positive iff p > 0.5 (a tie goes to 'not')",
    "balanced_accuracy": "(sensitivity + specificity) / 2",
    "weighted_f1": "F1 of each of the two classes weighted by its support (sklearn average='weighted')",
    "recall": "sensitivity of the positive class",
    "precision": "precision of the positive class (0 when nothing is predicted positive)",
    "ctclip_threshold": "CT-CLIP/fVLM convention: the threshold among linspace(0, 1, 100) whose (FPR, TPR) is nearest "
    "the ROC corner (0, 1), ties to the larger threshold, positive iff p > threshold; CHOSEN ON THE EVALUATED SET "
    "(optimistic). 'accuracy' there is plain accuracy, not balanced",
    "mean": "unweighted mean over the classes with both positives and negatives (classes_in_mean)",
}


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Resampled volume indices (n_boot, n) drawn with replacement by numpy's PCG64 seeded with `seed`."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each volume appears in each resample of `bootstrap_indices`: (n_boot, n) int."""
    idx = bootstrap_indices(n, n_boot, seed)
    flat = idx + n * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n)


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """AUROC of binary `labels` (N,) vs `scores` (N,) under per-row sample weights (B, N) -> (B,); NaN if degenerate.

    With integer weights this is the AUC of the data set in which volume j appears weights[b, j] times, so
    bootstrap counts give the resampled AUC exactly; ties in score count one half. Non-finite scores raise
    NonFiniteError (NaN would otherwise sort as its own top group and move the AUC).
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    require_finite(scores, "AUROC scores")
    w = np.ones((1, len(scores))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = w[:, order]
    y = labels[order]
    pos = np.add.reduceat(w * y, starts, axis=1)  # (B, G) positive weight per tied score group
    neg = np.add.reduceat(w * ~y, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def _confusion(labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fp, tn, fn of boolean `predictions` (..., N) against boolean `labels` (N,), summed over the last axis."""
    tp = (predictions & labels).sum(-1)
    fp = (predictions & ~labels).sum(-1)
    tn = (~predictions & ~labels).sum(-1)
    fn = (~predictions & labels).sum(-1)
    return tp, fp, tn, fn


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def binary_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, weighted F1, recall, precision, specificity of boolean predictions (N,)."""
    labels = np.asarray(labels).astype(bool)
    tp, fp, tn, fn = (int(v) for v in _confusion(labels, np.asarray(predictions).astype(bool)))
    n_pos, n_neg = tp + fn, tn + fp
    recall, specificity = _safe_div(tp, n_pos), _safe_div(tn, n_neg)
    f1_pos = _safe_div(2 * tp, 2 * tp + fp + fn)
    f1_neg = _safe_div(2 * tn, 2 * tn + fn + fp)
    return {
        "accuracy": _safe_div(tp + tn, n_pos + n_neg),
        "balanced_accuracy": (recall + specificity) / 2,
        "weighted_f1": _safe_div(n_pos * f1_pos + n_neg * f1_neg, n_pos + n_neg),
        "recall": recall,
        "precision": _safe_div(tp, tp + fp),
        "specificity": specificity,
    }


def ctclip_threshold(labels: np.ndarray, scores: np.ndarray, grid: np.ndarray = CTCLIP_GRID) -> float:
    """The grid threshold nearest the ROC corner (0, 1) for `scores` (N,), ties to the larger threshold."""
    labels = np.asarray(labels).astype(bool)
    predictions = np.asarray(scores)[None, :] > grid[:, None]  # (T, N)
    tp, fp, tn, fn = _confusion(labels, predictions)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.sqrt((1 - tp / (tp + fn)) ** 2 + (fp / (fp + tn)) ** 2)
    best = np.flatnonzero(distance == np.nanmin(distance))[-1]
    return float(grid[best])


def percentile_ci(values: np.ndarray) -> list[float] | None:
    """The 95% percentile interval of the finite entries of `values`, or None if there are none."""
    finite = values[np.isfinite(values)]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if finite.size else None


def class_metrics(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> dict:
    """All metrics of one class: `labels` (N,) in {0, 1, NaN}, `probs` (N,), bootstrap `counts` (B, N).

    Volumes whose label is NaN (unknown) are left out of this class. AUC-undefined classes get None metrics.
    """
    known = np.isfinite(labels)
    y, p = labels[known].astype(bool), probs[known]
    out: dict = {"n": int(known.sum()), "n_pos": int(y.sum()), "n_neg": int((~y).sum())}
    if out["n_pos"] == 0 or out["n_neg"] == 0:
        return {**out, "auc": None, "auc_ci95": None, "auc_bootstrap_skipped": None, "argmax": None, "ctclip": None}
    resampled = weighted_auroc(labels == 1, probs, counts * known[None, :])
    threshold = ctclip_threshold(y, p)
    return {
        **out,
        "auc": float(weighted_auroc(y, p)[0]),
        "auc_ci95": percentile_ci(resampled),
        "auc_bootstrap_skipped": int(np.isnan(resampled).sum()),
        "argmax": binary_metrics(y, p > 0.5),
        "ctclip": {"threshold": threshold, **binary_metrics(y, p > threshold)},
        "_resampled_auc": resampled,
    }


def _mean_of(entries: list[dict], section: str) -> dict[str, float]:
    keys = entries[0][section].keys()
    return {key: float(np.mean([entry[section][key] for entry in entries])) for key in keys}


def macro_block(per_class: dict[str, dict], resampled: dict[str, np.ndarray], *, n_boot: int, seed: int) -> dict:
    """The results block of a class set: its per-class entries, the macro mean with its bootstrap CI, and what
    was left out. `resampled` holds each class's AUC per resample (same resamples for every class)."""
    valid = [name for name, entry in per_class.items() if entry["auc"] is not None]
    macro = np.stack([resampled[name] for name in valid]).mean(axis=0) if valid else np.full(n_boot, np.nan)
    mean: dict = {"auc": None, "auc_ci95": None, "auc_bootstrap_skipped": n_boot, "argmax": None, "ctclip": None}
    if valid:
        entries = [per_class[name] for name in valid]
        mean = {
            "auc": float(np.mean([entry["auc"] for entry in entries])),
            "auc_ci95": percentile_ci(macro),
            "auc_bootstrap_skipped": int(np.isnan(macro).sum()),
            "argmax": _mean_of(entries, "argmax"),
            "ctclip": _mean_of(entries, "ctclip"),
        }
    return {
        "per_class": per_class,
        "mean": mean,
        "classes_in_mean": valid,
        "classes_without_both_labels": [name for name in per_class if name not in valid],
        "bootstrap": {"resamples": n_boot, "seed": seed, "unit": "volume", "method": "percentile"},
    }


def classification_subsets(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    subsets: dict[str, list[str]],
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, dict]:
    """{key: macro_block} for each named class subset of `classes`, every class computed once.

    labels/probs (N, C) in `classes` order; a resample is skipped for a subset's macro CI when any class in that
    subset's mean is degenerate in it.
    """
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.shape[1] != len(classes):
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be (N, {len(classes)})")
    require_finite(probs, "zero-shot probabilities")
    counts = bootstrap_counts(len(labels), n_boot, seed)
    per_class = {name: class_metrics(labels[:, c], probs[:, c], counts) for c, name in enumerate(classes)}
    resampled = {name: entry.pop("_resampled_auc", None) for name, entry in per_class.items()}
    return {
        key: macro_block({name: per_class[name] for name in names}, resampled, n_boot=n_boot, seed=seed)
        for key, names in subsets.items()
    }


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, classes: list[str], *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> dict:
    """Per-class and macro metrics for `labels`/`probs` (N, C) over `classes` (C names).

    Returns {"per_class": {name: {...}}, "mean": {"auc", "auc_ci95", "auc_bootstrap_skipped", "argmax": {...},
    "ctclip": {...}}, "classes_in_mean", "classes_without_both_labels", "bootstrap": {...}}. The macro CI is taken
    over the same volume resamples as the per-class CIs; a resample is skipped when any class in the mean is
    degenerate in it.
    """
    return classification_subsets(labels, probs, classes, {"all": classes}, n_boot=n_boot, seed=seed)["all"]
