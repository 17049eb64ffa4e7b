"""Recompute an evaluation's headline numbers from its own output files, independently of reaf.evaluation.metrics/retrieval:
per-class AUC by scikit-learn from probabilities.csv, report->volume R@K by numpy from embeddings.pt."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from reaf.data.csv_tables import CLASSES


def check_against_outputs(out: Path, results: dict) -> None:
    """results.json's 18-class AUCs, their mean and dup_all report_to_volume R@1/R@5 equal the recomputed ones."""
    table = pd.read_csv(out / "probabilities.csv")
    template = results["template"]
    aucs = {}
    for name in CLASSES:
        labels, probs = table[f"label:{name}"].to_numpy(), table[f"{template}:{name}"].to_numpy()
        known = np.isfinite(labels)
        if len(set(labels[known])) == 2:
            aucs[name] = roc_auc_score(labels[known], probs[known])
    per_class = results["classification"]["18"]["per_class"]
    for name in CLASSES:
        assert per_class[name]["auc"] == (pytest.approx(aucs[name], abs=1e-9) if name in aucs else None), name
    assert results["classification"]["18"]["mean"]["auc"] == pytest.approx(np.mean(list(aucs.values())), abs=1e-9)
    store = torch.load(out / "embeddings.pt", weights_only=True)
    image, text = (torch.nn.functional.normalize(store[k].double(), dim=1).numpy() for k in ("image", "text"))
    sims = text @ image.T  # report i -> every volume; its own volume i is the hit
    ranks = 1 + (sims > np.diag(sims)[:, None]).sum(axis=1)
    r2v = results["retrieval"]["dup_all"]["report_to_volume"]
    for k in (1, 5):
        assert r2v[f"R@{k}"] == pytest.approx(float((ranks <= k).mean()), abs=1e-12), k
