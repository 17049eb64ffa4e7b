"""The embedded demo end to end at a tiny size, through the README's command (`bash train_ghs.sh`, no CT_RATE_ROOT)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
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
    """The default demo (REAF alone, scored on test), then a rerun with --ablation --valid that reuses the data and
    REAF's run, trains the plain hierarchy and scores both models on valid too; returns the folder, both processes
    and both summaries."""
    out = tmp_path_factory.mktemp("demo")
    proc = run_demo(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = json.loads((out / "demo_summary.json").read_text())
    checkpoint = out / "runs" / "reaf" / "checkpoints" / "latest.pt"
    before = checkpoint.stat().st_mtime_ns
    ablation = run_demo(out, "--ablation", "--valid")
    assert ablation.returncode == 0, ablation.stdout[-3000:] + ablation.stderr[-3000:]
    assert checkpoint.stat().st_mtime_ns == before
    return out, proc, ablation, first, json.loads((out / "demo_summary.json").read_text())


def test_train_ghs_without_data_runs_the_demo_with_reaf_alone_scored_on_test(demo):
    out, proc, _, first, _ = demo
    assert "CT_RATE_ROOT is not set, so running the embedded synthetic demo" in proc.stderr
    for title in ("1/4 synthetic CT-RATE", "2/4 preprocess", "3/4 train reaf",
                  "4/4 zero-shot classification and retrieval: reaf, test split", "demo summary"):  # fmt: skip
        assert title in proc.stdout
    assert "plain_hierarchy" not in proc.stdout and set(first) == {"reaf", "seconds"}
    assert "valid split" not in proc.stdout and "test" in first["reaf"] and "valid" not in first["reaf"]
    labels = out / "ct_rate" / "dataset" / "multi_abnormality_labels"
    assert (labels / "valid_predicted_labels.csv").is_file() and (labels / "test_predicted_labels.csv").is_file()
    assert list((out / "cache" / "dataset" / "test_fixed").rglob("*.vol.zst"))


def test_the_commands_it_prints_for_your_own_scans_run(demo):
    """The demo ends with the export and predict commands for one of its test scans; as printed, they run."""
    out, proc, _, _, _ = demo
    commands = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  python -m reaf.")]
    assert [c.split()[2] for c in commands] == ["reaf.export", "reaf.predict"]
    for command in commands:
        done = subprocess.run([sys.executable, *command.split()[1:]], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = pd.read_csv(out / "predictions" / "predictions.csv", keep_default_na=False)
    assert len(table) == 1 and table["error"][0] == "" and "test_fixed" in table["source"][0]
    assert (out / "predictions" / "saliency").is_dir()


def test_demo_reports_test_and_valid_with_their_chance_level(demo):
    out, proc, ablation, _, summary = demo
    assert set(summary) == {"reaf", "plain_hierarchy", "seconds"}
    for name in ("reaf", "plain_hierarchy"):
        for key, prefix in (("test", "test_"), ("valid", "valid_")):
            row = summary[name][key]
            assert row["N"] == 64 and row["R@5_chance"] == pytest.approx(5 / 64)
            results = json.loads((out / "results" / name / key / "results.json").read_text())
            assert all(n.startswith(prefix) for n in pd.read_csv(out / "results" / name / key / "probabilities.csv")
                       ["VolumeName"])  # fmt: skip
            check_against_outputs(out / "results" / name / key, results)  # recomputed from the written files
            assert results["classification"]["18"]["mean"]["auc"] == row["mean_auc_18"]
            assert results["retrieval"]["dup_all"]["report_to_volume"]["R@5"] == row["report_to_volume_R@5"]
            assert list((out / "results" / name / key / "plots").glob("*.png"))
            assert f"{name:16s} {key:5s} mean AUC (18) {row['mean_auc_18']:.3f}" in ablation.stdout


def test_both_models_learn_and_beat_chance(demo):
    """Seed 0 at this size (measured on valid before the test split existed): mean AUC 0.575 / 0.562, R@5 0.19 /
    0.14 (chance 0.078), mean report->volume rank 22.5 / 25.6 of 64 (chance 32.5, sd of a mean of 64 random ranks
    ~2.3), last loss 0.63 / 0.62 ln(B). A model on the ln(B) plateau scores 0.5, ranks at chance and keeps its loss
    at ln(B)."""
    out, _, _, _, summary = demo
    for name in ("reaf", "plain_hierarchy"):
        row = summary[name]["test"]
        ranks = json.loads((out / "results" / name / "test" / "results.json").read_text())["retrieval"]["dup_all"]
        mean_rank, chance_rank = ranks["report_to_volume"]["mean_rank"], (row["N"] + 1) / 2
        assert summary[name]["last_over_ln_B"] < 0.8, f"{name}: the training loss stayed near ln(B): {summary[name]}"
        assert row["mean_auc_18"] > 0.52, f"{name}: zero-shot at chance: {row}"
        assert row["report_to_volume_R@5"] > row["R@5_chance"], f"{name}: retrieval at chance: {row}"
        assert mean_rank < chance_rank - 3, f"{name}: mean rank {mean_rank} against chance {chance_rank}"


def test_the_plain_variant_has_fusion_and_saliency_off_and_reaf_has_them_on(demo):
    out, _, _, _, summary = demo
    configs = {
        name: torch.load(summary[name]["checkpoint"], weights_only=True, map_location="cpu")["config"]["model"]
        for name in ("reaf", "plain_hierarchy")
    }
    assert configs["reaf"]["vision"]["fusion_saliency"] is True
    assert configs["plain_hierarchy"]["vision"]["fusion_saliency"] is False
    assert list((out / "results" / "reaf" / "test" / "plots").glob("saliency_*.png"))


def test_a_rerun_reuses_every_finished_stage_and_keeps_reafs_numbers(demo):
    out, _, ablation, first, summary = demo
    assert f"found {out / 'ct_rate'}, reusing it" in ablation.stdout
    assert "3/4 train plain_hierarchy" in ablation.stdout
    # REAF's run and numbers do not depend on --ablation or --valid
    assert {k: v for k, v in summary["reaf"].items() if k != "valid"} == first["reaf"]


def test_a_rerun_with_other_data_sizes_stops_instead_of_reusing_the_old_data(demo):
    out = demo[0]
    proc = run_demo(out, "--num-train", "30")
    assert proc.returncode != 0
    assert f"{out / 'ct_rate'} holds a synthetic CT-RATE made with" in proc.stderr
    assert "'num_train': 192" in proc.stderr and "'num_train': 30" in proc.stderr
    assert "3/4 train" not in proc.stdout


def test_reaf_does_not_depend_on_the_ablation_and_the_probe_sits_beside_zero_shot(tmp_path):
    """Two fresh tiny demos on the same data, one with --ablation and --probe: REAF's weights are equal to the bit
    and so are its test numbers; the probe's zero-shot equals the demo's test zero-shot (same
    embeddings, reused, not encoded again)."""
    import shutil

    import reaf.demo

    tiny = ["--model", "tiny", "--num-train", "24", "--num-valid", "8", "--num-test", "8", "--epochs", "1",
            "--batch-size", "8", "--warmup", "1", "--workers", "1"]  # fmt: skip
    assert reaf.demo.main([*tiny, "--out", str(tmp_path / "alone")]) == 0
    (tmp_path / "both").mkdir()
    for folder in ("ct_rate", "cache"):  # the same data, not made again
        shutil.copytree(tmp_path / "alone" / folder, tmp_path / "both" / folder)
    assert reaf.demo.main([*tiny, "--out", str(tmp_path / "both"), "--ablation", "--probe", "--valid"]) == 0
    alone, both = (json.loads((tmp_path / d / "demo_summary.json").read_text()) for d in ("alone", "both"))
    states = [torch.load(tmp_path / d / "runs" / "reaf" / "checkpoints" / "latest.pt", weights_only=True,
                         map_location="cpu")["state_dict"] for d in ("alone", "both")]  # fmt: skip
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert alone["reaf"]["test"] == both["reaf"]["test"] and "valid" in both["reaf"] and "valid" not in alone["reaf"]
    assert "plain_hierarchy" in both and "probe" not in alone["reaf"]
    probe = both["reaf"]["probe"]
    assert probe["zero_shot_mean_auc_18"] == pytest.approx(both["reaf"]["test"]["mean_auc_18"], abs=1e-12)
    assert set(probe["few_shot_mean_auc_18"]) == {"1", "2", "4", "8", "16", "32"}
    results = json.loads((tmp_path / "both" / "results" / "reaf" / "probe" / "results.json").read_text())
    assert results["timing"]["embeddings_reused"]["eval"] is True and results["data"]["train"]["N"] == 24
    assert (tmp_path / "both" / "results" / "reaf" / "test" / "embeddings_train.pt").is_file()
