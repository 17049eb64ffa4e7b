"""Linear probe and few-shot on frozen image embeddings, scored with protocol v1's metrics beside zero-shot.

Per class a logistic regression (scikit-learn, L2) on the unit-norm image embeddings of a training split: the
regularisation C is chosen by stratified k-fold cross-validation (ROC AUC) on the training split alone, then the
model is refitted on all of it and scored on the evaluation split with the zero-shot table's metrics (AUC with the
seeded bootstrap CI, macro over 18 and 16 classes). Few-shot: k positive and k negative training volumes per class,
drawn `draws` times with seeds, a fixed C; the mean and spread over the draws of the macro AUC. Zero-shot on the
same evaluation embeddings is computed with the same protocol for comparison. Volumes whose label is unknown (NaN)
are left out of that class; a class with too few positives or negatives is not fitted and the results say why.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from reaf.data.csv_tables import CLASSES, CLASSES_16
from reaf.evaluation import metrics
from reaf.evaluation.protocol import classify

log = logging.getLogger(__name__)

DEFAULT_SHOTS = (1, 2, 4, 8, 16, 32)
DEFAULT_DRAWS = 5
CV_FOLDS = 5
C_GRID = tuple(float(c) for c in np.logspace(-2, 4, 7))  # unit-norm features need large C to separate sharply
FEW_SHOT_C = 1.0  # no cross-validation with k = 1; strong regularisation pulls w towards the class-mean difference
DEFINITIONS = {
    "linear_probe": f"per class, sklearn LogisticRegression (L2, lbfgs) on the image embeddings; C from {C_GRID[0]:g} "
    f"to {C_GRID[-1]:g} ({len(C_GRID)} log-spaced) chosen by LogisticRegressionCV (StratifiedKFold, shuffled with "
    "the run's seed, scoring roc_auc) on the training split only, then refitted on the whole training split; probabilities on the "
    "evaluation split scored like zero-shot (AUC, bootstrap CI, macro means)",
    "few_shot": f"per class, k positive and k negative training volumes drawn without replacement (numpy PCG64 seeded "
    f"with [seed, k, draw, class index]); LogisticRegression with C = {FEW_SHOT_C:g}; AUC on the evaluation split; "
    "per k the mean and sample standard deviation over draws of the macro AUC (over the classes fitted for that k)",
    "not_fitted": "a class with fewer positives or negatives of known label than the CV folds (probe) or than k "
    "(few-shot) is not fitted; it is left out of the means and listed with the cause",
}


def _known(labels: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a known label for class c, and those labels as bool."""
    rows = np.flatnonzero(np.isfinite(labels[:, c]))
    return rows, labels[rows, c].astype(bool)


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, *, folds: int = CV_FOLDS,
                     seed: int = 0) -> tuple[np.ndarray, dict[str, dict]]:
    """Per-class probe: train_x (N, E), train_y (N, 18) in {0, 1, NaN}, eval_x (M, E) -> (probs (M, 18) with NaN
    for classes not fitted, {class: {"C", "n_pos", "n_neg"} or {"not_fitted", "n_pos", "n_neg"}})."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    probs, info = np.full((len(eval_x), len(CLASSES)), np.nan), {}
    for c, name in enumerate(CLASSES):
        rows, y = _known(train_y, c)
        counts = {"n_pos": int(y.sum()), "n_neg": int((~y).sum())}
        if min(counts.values()) < folds:
            info[name] = {"not_fitted": f"fewer than {folds} (the CV folds) positives or negatives", **counts}
            continue
        # the regularisation path with warm starts per fold (5-10x faster than a grid search of separate fits)
        model = LogisticRegressionCV(Cs=list(C_GRID), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                     scoring="roc_auc", max_iter=5000)
        # one BLAS thread: these small problems ran 6x slower with a thread pool on 2 busy cores (measured)
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")  # ConvergenceWarning at the largest C; scikit-learn's API FutureWarnings
            model.fit(train_x[rows], y)
        probs[:, c] = model.predict_proba(eval_x)[:, 1]
        info[name] = {"C": float(np.ravel(model.C_)[0]), **counts}  # C_: an array before scikit-learn 1.8
    return probs, info


def score_probe(probs: np.ndarray, labels: np.ndarray, info: dict[str, dict], *, seed: int, n_boot: int) -> dict:
    """classify()'s {"18", "16"} blocks for probe probabilities (M, 18): classes not fitted are left out of every
    mean (their labels count as unknown there) and their per-class entry says why."""
    fitted = np.array([name not in info or "not_fitted" not in info[name] for name in CLASSES])
    blocks = classify(np.where(fitted, probs, 0.5), np.where(fitted, labels, np.nan), seed=seed, n_boot=n_boot)
    for block in blocks.values():
        for name, entry in block["per_class"].items():
            if not fitted[CLASSES.index(name)]:
                entry["not_fitted"] = info[name]["not_fitted"]
    return blocks


def few_shot(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, *,
             shots: tuple[int, ...] = DEFAULT_SHOTS, draws: int = DEFAULT_DRAWS, seed: int = 0) -> dict[str, Any]:
    """{"shots", "draws", "C", "by_k": {str(k): {"18": {"mean_auc", "sd_auc", "per_draw", "classes_in_mean"}, "16":
    ..., "per_class": {class: mean AUC over draws or None}, "not_fitted": {class: cause}}}}."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    by_k = {}
    for k in shots:
        aucs, not_fitted = np.full((draws, len(CLASSES)), np.nan), {}
        for c, name in enumerate(CLASSES):
            rows, y = _known(train_y, c)
            eval_rows, eval_labels = _known(eval_y, c)
            if min(y.sum(), (~y).sum()) < k:
                not_fitted[name] = f"fewer than k={k} training positives or negatives ({int(y.sum())}/{int((~y).sum())})"
                continue
            if eval_labels.all() or not eval_labels.any():
                not_fitted[name] = "no positive or no negative in the evaluation split"
                continue
            for d in range(draws):
                rng = np.random.default_rng([seed, k, d, c])
                picked = np.concatenate([rng.choice(rows[y], k, replace=False), rng.choice(rows[~y], k, replace=False)])
                with threadpool_limits(1):
                    model = LogisticRegression(C=FEW_SHOT_C, max_iter=5000).fit(train_x[picked], train_y[picked, c] > 0.5)
                scores = model.decision_function(eval_x[eval_rows])
                aucs[d, c] = metrics.weighted_auroc(eval_labels, scores)[0]
        entry = {"per_class": {n: _mean_or_none(aucs[:, c]) for c, n in enumerate(CLASSES)}, "not_fitted": not_fitted}
        for key, names in (("18", CLASSES), ("16", CLASSES_16)):
            cols = [CLASSES.index(n) for n in names if n not in not_fitted]
            per_draw = aucs[:, cols].mean(axis=1) if cols else np.full(draws, np.nan)
            entry[key] = {"mean_auc": _mean_or_none(per_draw), "sd_auc": float(np.std(per_draw, ddof=1))
                          if cols and draws > 1 else None, "per_draw": [float(a) for a in per_draw] if cols else [],
                          "classes_in_mean": [CLASSES[c] for c in cols]}  # fmt: skip
        by_k[str(k)] = entry
        if not_fitted:
            log.info("few-shot k=%d: %d class(es) not fitted: %s", k, len(not_fitted), not_fitted)
    return {"shots": list(shots), "draws": draws, "C": FEW_SHOT_C, "seed": seed, "by_k": by_k}


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) and np.isfinite(values).all() else None


def label_free(labels: np.ndarray) -> int:
    """How many volumes (rows of (N, 18) labels) have no known label at all."""
    return int((~np.isfinite(labels)).all(axis=1).sum())
