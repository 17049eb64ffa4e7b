"""bench/bench_reference.py without the reference's venv: `--tiny` runs ours alone; the summary's bests and ratios."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import bench_reference

REPO = Path(__file__).resolve().parents[2]


def test_tiny_mode_runs_ours_alone_and_records_each_call(tmp_path):
    out = tmp_path / "reference_cpu.json"
    argv = ["--tiny", "--rounds", "2", "--steps", "2", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "bench.bench_reference", *argv], cwd=REPO, env=env, check=True,
                   timeout=300, capture_output=True, text=True)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["command"] == "python -m bench.bench_reference " + " ".join(argv)
    assert result["reference"] == {"status": "not run"} and "same_output" not in result
    assert result["settings"]["model"] == "tiny" and result["settings"]["reference_python"] is None
    assert len(result["rounds"]) == 2 and all(list(r) == ["ours"] for r in result["rounds"])
    calls = [r["ours"] for r in result["rounds"]]
    for call in calls:
        assert call["img_size"] == [32, 96, 96] and call["threads"] == 1
        assert len(call["train_s_all"]) == len(call["inference_s_all"]) == len(call["train_cpu_per_wall"]) == 2
        assert call["train_s"] == min(call["train_s_all"]) and call["inference_s"] == min(call["inference_s_all"])
        assert call["peak_rss_mib"] >= call["peak_rss_inference_mib"] >= call["rss_before_build_mib"] > 0
    assert result["best"]["ours"]["train_s"] == min(c["train_s"] for c in calls)
    assert result["ratio_ours_over_reference"] is None and result["ratio_per_round"] is None


def test_summary_takes_each_side_s_best_and_divides_ours_by_the_reference():
    rounds = [
        {"ours": {"train_s": 10.0, "inference_s": 4.0, "peak_rss_mib": 300.0},
         "reference": {"train_s": 12.0, "inference_s": 5.0, "peak_rss_mib": 400.0}},
        {"ours": {"train_s": 11.0, "inference_s": 3.0, "peak_rss_mib": 310.0},
         "reference": {"train_s": 8.0, "inference_s": 6.0, "peak_rss_mib": 390.0}},
    ]  # fmt: skip
    summary = bench_reference.summarise(rounds)
    assert summary["best"]["ours"] == {"train_s": 10.0, "inference_s": 3.0, "peak_rss_mib": 300.0}
    assert summary["best"]["reference"] == {"train_s": 8.0, "inference_s": 5.0, "peak_rss_mib": 390.0}
    assert summary["ratio_ours_over_reference"] == pytest.approx(
        {"train_s": 1.25, "inference_s": 0.6, "peak_rss_mib": 300 / 390})
    assert summary["ratio_per_round"] == pytest.approx([
        {"train_s": 10 / 12, "inference_s": 0.8, "peak_rss_mib": 0.75},
        {"train_s": 11 / 8, "inference_s": 0.5, "peak_rss_mib": 310 / 390},
    ])  # fmt: skip
