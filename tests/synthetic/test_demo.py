"""The embedded demo end to end at a tiny size, through the README's command (`bash train_ghs.sh`, no CT_RATE_ROOT)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.results import check_against_outputs

REPO = Path(__file__).resolve().parents[2]
# big enough to learn in ~1.5 min on 2 cores (240 steps of batch 16): the models must beat chance, not only run
SMALL = ["--num-train", "192", "--num-valid", "64", "--epochs", "20", "--batch-size", "16", "--warmup", "5",
         "--workers", "1"]  # fmt: skip


def run_demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CT_RATE_ROOT"}
    env["PYTHON"] = sys.executable
    return subprocess.run(["bash", str(REPO / "train_ghs.sh"), "--out", str(out), *SMALL, *extra], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = run_demo(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_train_ghs_without_data_runs_the_demo(demo):
    out, proc = demo
    assert "CT_RATE_ROOT is not set, so running the embedded synthetic demo" in proc.stderr
    for title in ("1/4 synthetic CT-RATE", "2/4 preprocess", "3/4 train reaf", "3/4 train plain_hierarchy",
                  "4/4 zero-shot classification and retrieval: reaf", "demo summary"):  # fmt: skip
        assert title in proc.stdout
    assert (out / "ct_rate" / "dataset" / "multi_abnormality_labels" / "valid_predicted_labels.csv").is_file()
    assert list((out / "cache").rglob("*.vol.zst"))


def test_demo_reports_both_variants_with_their_chance_level(demo):
    out, proc = demo
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary) == {"reaf", "plain_hierarchy", "seconds"}
    for name in ("reaf", "plain_hierarchy"):
        row = summary[name]
        assert row["N"] == 64 and row["R@5_chance"] == pytest.approx(5 / 64)
        results = json.loads((out / "results" / name / "results.json").read_text())
        check_against_outputs(out / "results" / name, results)  # recomputed from probabilities.csv, embeddings.pt
        assert results["classification"]["18"]["mean"]["auc"] == row["mean_auc_18"]
        assert results["retrieval"]["dup_all"]["report_to_volume"]["R@5"] == row["report_to_volume_R@5"]
        assert list((out / "results" / name / "plots").glob("*.png"))
        assert f"{name:16s} mean AUC (18) {row['mean_auc_18']:.3f}" in proc.stdout


def test_both_models_learn_and_beat_chance(demo):
    """Seed 0 at this size (measured): mean AUC 0.575 / 0.562, R@5 0.19 / 0.14 (chance 0.078), mean report->volume
    rank 22.5 / 25.6 of 64 (chance 32.5, sd of a mean of 64 random ranks ~2.3), last loss 0.63 / 0.62 ln(B). A model
    on the ln(B) plateau scores 0.5, ranks at chance and keeps its loss at ln(B)."""
    out, _ = demo
    summary = json.loads((out / "demo_summary.json").read_text())
    for name in ("reaf", "plain_hierarchy"):
        row = summary[name]
        ranks = json.loads((out / "results" / name / "results.json").read_text())["retrieval"]["dup_all"]
        mean_rank, chance_rank = ranks["report_to_volume"]["mean_rank"], (row["N"] + 1) / 2
        assert row["last_over_ln_B"] < 0.8, f"{name}: the training loss stayed near ln(B): {row}"
        assert row["mean_auc_18"] > 0.52, f"{name}: zero-shot at chance: {row}"
        assert row["report_to_volume_R@5"] > row["R@5_chance"], f"{name}: retrieval at chance: {row}"
        assert mean_rank < chance_rank - 3, f"{name}: mean rank {mean_rank} against chance {chance_rank}"


def test_the_plain_variant_has_fusion_and_saliency_off_and_reaf_has_them_on(demo):
    out, _ = demo
    summary = json.loads((out / "demo_summary.json").read_text())
    configs = {
        name: torch.load(summary[name]["checkpoint"], weights_only=True, map_location="cpu")["config"]["model"]
        for name in ("reaf", "plain_hierarchy")
    }
    assert configs["reaf"]["vision"]["fusion_saliency"] is True
    assert configs["plain_hierarchy"]["vision"]["fusion_saliency"] is False
    assert list((out / "results" / "reaf" / "plots").glob("saliency_*.png"))


def test_a_rerun_reuses_every_finished_stage(demo):
    out, _ = demo
    before = (out / "runs" / "reaf" / "checkpoints" / "latest.pt").stat().st_mtime_ns
    proc = run_demo(out, "--no-ablation")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"found {out / 'ct_rate'}, reusing it" in proc.stdout
    assert "3/4 train plain_hierarchy" not in proc.stdout
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary) == {"reaf", "seconds"}
    assert (out / "runs" / "reaf" / "checkpoints" / "latest.pt").stat().st_mtime_ns == before


def test_a_rerun_with_other_data_sizes_stops_instead_of_reusing_the_old_data(demo):
    out, _ = demo
    proc = run_demo(out, "--num-train", "30")
    assert proc.returncode != 0
    assert f"{out / 'ct_rate'} holds a synthetic CT-RATE made with" in proc.stderr
    assert "'num_train': 192" in proc.stderr and "'num_train': 30" in proc.stderr
    assert "3/4 train" not in proc.stdout
