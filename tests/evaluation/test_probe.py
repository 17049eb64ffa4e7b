"""Linear probe and few-shot: a probe beats a random text side on separable embeddings, few-shot grows with k,
classes and volumes without enough labels are said and never crash, and `python -m reaf.probe` end to end (cached
embeddings reused, results.json, CSV and plots consistent with scikit-learn)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from reaf import create_model
from reaf.data.csv_tables import CLASSES
from reaf.evaluation.probe import few_shot, fit_linear_probe, label_free, score_probe
from reaf.evaluation.protocol import classify, zero_shot_probabilities


def _separable(n: int, rng: np.random.Generator, directions: np.ndarray, noise: float) -> tuple:
    """Unit-norm embeddings (n, E) whose labels (n, 18) are linearly separable up to `noise`."""
    labels = (rng.random((n, len(CLASSES))) < 0.3).astype(np.float32)
    x = (2 * labels - 1) @ directions + noise * rng.standard_normal((n, directions.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((len(CLASSES), 32))
    return _separable(400, rng, directions, 3.0), _separable(200, rng, directions, 3.0), rng


def test_probe_beats_a_random_text_side_and_few_shot_grows_with_k(embeddings):
    (train_x, train_y), (eval_x, eval_y), rng = embeddings
    probs, info = fit_linear_probe(train_x, train_y, eval_x, folds=5, seed=0)
    probe = score_probe(probs, eval_y, info, seed=0, n_boot=50)
    prompts = rng.standard_normal((len(CLASSES), 2, 32))
    prompts /= np.linalg.norm(prompts, axis=2, keepdims=True)
    zero = classify(zero_shot_probabilities(eval_x, prompts.astype(np.float32), 30.0), eval_y, seed=0, n_boot=50)
    assert not any("not_fitted" in entry for entry in info.values())
    assert probe["18"]["mean"]["auc"] > 0.85 and probe["18"]["mean"]["auc"] > zero["18"]["mean"]["auc"] + 0.2
    c = CLASSES.index("Cardiomegaly")  # the table's AUC is scikit-learn's
    assert probe["18"]["per_class"]["Cardiomegaly"]["auc"] == pytest.approx(roc_auc_score(eval_y[:, c], probs[:, c]))
    assert info["Cardiomegaly"]["C"] in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    assert info["Cardiomegaly"]["n_pos"] > 5
    shots = few_shot(train_x, train_y, eval_x, eval_y, shots=(1, 4, 16, 32), draws=3, seed=0)
    means = [shots["by_k"][str(k)]["18"]["mean_auc"] for k in (1, 4, 16, 32)]
    assert np.mean(np.diff(means)) > 0 and means[-1] > means[0] + 0.1, means
    assert all(shots["by_k"][str(k)]["18"]["sd_auc"] > 0 for k in (1, 32))
    assert means[-1] <= probe["18"]["mean"]["auc"] + 0.02  # 32 + 32 volumes do not beat the whole split by much
    assert few_shot(train_x, train_y, eval_x, eval_y, shots=(4,), draws=3, seed=0)["by_k"]["4"] == shots["by_k"]["4"]


def test_classes_and_volumes_without_enough_labels_are_said_not_crashed(embeddings):
    (train_x, train_y), (eval_x, eval_y), _ = embeddings
    train_y = train_y.copy()
    train_y[:, CLASSES.index("Emphysema")] = np.nan  # no known label at all
    hernia = CLASSES.index("Hiatal hernia")
    train_y[:, hernia] = 0
    train_y[:3, hernia] = 1  # three positives: fewer than 5 folds, and than k = 4
    train_y[:10] = np.nan  # ten label-free volumes
    probs, info = fit_linear_probe(train_x, train_y, eval_x, folds=5, seed=0)
    assert "CV folds" in info["Emphysema"]["not_fitted"] and info["Hiatal hernia"]["n_pos"] == 0  # rows 0-2 now NaN
    assert np.isnan(probs[:, hernia]).all() and np.isfinite(probs[:, CLASSES.index("Cardiomegaly")]).all()
    blocks = score_probe(probs, eval_y, info, seed=0, n_boot=20)
    assert "Emphysema" not in blocks["18"]["classes_in_mean"] and "not_fitted" in blocks["18"]["per_class"]["Emphysema"]
    assert len(blocks["18"]["classes_in_mean"]) == 16 and blocks["18"]["mean"]["auc"] is not None
    assert label_free(train_y) == 10
    train_y[10:13, hernia] = 1
    shots = few_shot(train_x, train_y, eval_x, eval_y, shots=(2, 4), draws=2, seed=0)
    assert "Hiatal hernia" not in shots["by_k"]["2"]["not_fitted"]
    assert "k=4" in shots["by_k"]["4"]["not_fitted"]["Hiatal hernia"]
    assert "Hiatal hernia" not in shots["by_k"]["4"]["18"]["classes_in_mean"]
    assert shots["by_k"]["4"]["per_class"]["Hiatal hernia"] is None


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small synthetic CT-RATE read as NIfTI, and a tiny random checkpoint."""
    from reaf.synthetic.dataset import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, num_train=30, num_valid=2, num_test=16)
    torch.manual_seed(0)
    model = create_model("tiny")
    ckpt = root / "tiny.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    return root, ckpt


def _argv(root, ckpt, out, *extra):
    return ["--resume", str(ckpt), "--data-root", str(root), "--input-data-type", "ori", "--input-info", "-1150",
            "350", "resize", "--results-dir", str(out), "--batch-size", "8", "--workers", "0", "--device", "cpu",
            "--bootstrap", "50", "--shots", "1", "2", "4", "--draws", "3", "--folds", "2", *extra]


def test_probe_cli_end_to_end_on_crafted_embeddings(synthetic, tmp_path, capsys):
    """First run: encodes both splits (test split under --data-root is the evaluation split) and writes them beside
    each other. Then the image embeddings are replaced by ones the labels separate (same cache key): the rerun
    reuses them, and the probe must beat the tiny model's random text side."""
    import reaf.probe
    from reaf.evaluation.embeddings import load_embeddings, save_embeddings

    root, ckpt = synthetic
    out = tmp_path / "probe"
    assert reaf.probe.main(_argv(root, ckpt, out)) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["data"]["train"]["N"] == 30 and first["data"]["eval"]["N"] == 16
    assert "test_predicted_labels" in first["data"]["eval"]["source"] or "test" in first["data"]["eval"]["source"]
    assert first["timing"]["embeddings_reused"] == {"train": False, "eval": False}
    rng = np.random.default_rng(1)
    directions = rng.standard_normal((len(CLASSES), 64))
    for name in ("embeddings.pt", "embeddings_train.pt"):
        store = load_embeddings(out / name)
        x = (2 * np.nan_to_num(store["labels"]) - 1) @ directions + 0.5 * rng.standard_normal((len(store["names"]), 64))
        store["image"] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        key, meta = store.pop("key"), store.pop("meta")
        store.pop("version")
        save_embeddings(out / name, store, key=key, meta=meta)
    assert reaf.probe.main(_argv(root, ckpt, out)) == 0
    printed = capsys.readouterr().out
    assert "linear probe, 18 classes" in printed and "few-shot k=4" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["timing"]["embeddings_reused"] == {"train": True, "eval": True}
    probe, zero = results["classification"]["18"]["mean"]["auc"], results["zero_shot"]["classification"]["18"]
    assert probe is not None and probe >= zero["mean"]["auc"], (probe, zero["mean"]["auc"])
    assert results["zero_shot"]["prompt_set"]["name"] == "v1"
    for name, entry in results["probe"]["per_class"].items():  # said, and left out of the mean
        if "not_fitted" in entry:
            assert name not in results["classification"]["18"]["classes_in_mean"]
            assert results["probe"]["not_fitted"][name] == entry["not_fitted"]
    table = pd.read_csv(out / "probabilities.csv")
    for name in results["classification"]["18"]["classes_in_mean"]:
        labels, probs = table[f"label:{name}"].to_numpy(), table[f"probe:{name}"].to_numpy()
        assert results["classification"]["18"]["per_class"][name]["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert set(results["few_shot"]["by_k"]) == {"1", "2", "4"}
    for png in results["files"]["plots"]:
        assert (out / png).stat().st_size > 5000, png
