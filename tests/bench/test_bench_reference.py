"""bench/bench_reference.py without the reference's venv: `--tiny` runs ours alone through the serving protocol; the
summary's bests, medians and paired ratios; a child that dies is named with its stderr."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import bench_reference

REPO = Path(__file__).resolve().parents[2]


def test_tiny_mode_runs_ours_alone_and_records_each_call(tmp_path):
    out = tmp_path / "reference_cpu.json"
    argv = ["--tiny", "--pairs", "3", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "bench.bench_reference", *argv], cwd=REPO, env=env, check=True,
                   timeout=300, capture_output=True, text=True)  # fmt: skip
    result = json.loads(out.read_text())
    assert result["command"] == "python -m bench.bench_reference " + " ".join(argv)
    assert result["reference"] == {"status": "not run"} and "same_output" not in result
    assert result["settings"]["model"] == "tiny" and result["settings"]["reference_python"] is None
    assert len(result["pairs"]) == 3 and all(p["first"] == "ours" for p in result["pairs"])
    for pair in result["pairs"]:
        for what in ("inference", "train"):
            call = pair[what]["ours"]
            assert list(pair[what]) == ["ours"] and call["s"] > 0 and call["cpu_per_wall"] > 0
            assert call["page_faults"] >= 0
    closing = result["sides"]["ours"]
    assert closing["img_size"] == [32, 96, 96] and closing["threads"] == 1
    assert closing["peak_rss_mib"] >= closing["peak_rss_inference_mib"] >= closing["rss_before_build_mib"] > 0
    train = [p["train"]["ours"]["s"] for p in result["pairs"]]
    assert result["per_side"]["ours"]["train_s"] == min(train)
    assert result["per_side"]["ours"]["train_median_s"] == sorted(train)[1]
    assert result["ratio_median_of_pairs"] is None and result["ratio_per_pair"] is None


def _pair(first, ours_train, ref_train, ours_inf, ref_inf):
    return {"first": first,
            "inference": {"ours": {"s": ours_inf}, "reference": {"s": ref_inf}},
            "train": {"ours": {"s": ours_train}, "reference": {"s": ref_train}}}  # fmt: skip


def test_summary_takes_the_median_of_paired_ratios_and_each_side_s_best():
    pairs = [_pair("ours", 10.0, 12.0, 4.0, 5.0),   # a fast spell: ratios 0.833, 0.8
             _pair("reference", 15.0, 14.0, 6.0, 6.0),  # 1.071, 1.0
             _pair("ours", 20.0, 21.0, 8.0, 7.0)]  # a slow spell: 0.952, 1.143  # fmt: skip
    closing = {"ours": {"peak_rss_mib": 300.0}, "reference": {"peak_rss_mib": 400.0}}
    summary = bench_reference.summarise(pairs, closing)
    assert summary["per_side"]["ours"] == {"train_s": 10.0, "train_median_s": 15.0, "inference_s": 4.0,
                                           "inference_median_s": 6.0, "peak_rss_mib": 300.0}
    assert summary["per_side"]["reference"]["train_s"] == 12.0
    assert summary["ratio_per_pair"] == pytest.approx([
        {"train_s": 10 / 12, "inference_s": 0.8}, {"train_s": 15 / 14, "inference_s": 1.0},
        {"train_s": 20 / 21, "inference_s": 8 / 7}])  # fmt: skip
    # the median pair, not the ratio of medians (15/14) nor of bests (10/12)
    assert summary["ratio_median_of_pairs"] == pytest.approx({"train_s": 20 / 21, "inference_s": 1.0,
                                                              "peak_rss_mib": 0.75})
    assert summary["ratio_of_best_calls"] == pytest.approx({"train_s": 10 / 12, "inference_s": 0.8,
                                                            "peak_rss_mib": 0.75})


def test_a_child_that_dies_is_named_with_its_error_and_the_other_is_ended(tmp_path, monkeypatch):
    # a "reference" run by our interpreter (no open_clip, an empty checkout): its child fails to build, and ours,
    # started first and waiting on its pipe, must not be left running
    started = []

    class Recorded(bench_reference.Child):
        def __init__(self, *a):
            started.append(self)
            super().__init__(*a)

    monkeypatch.setattr(bench_reference, "Child", Recorded)
    args = SimpleNamespace(model="tiny", threads=1, reference_src=str(tmp_path), pairs=1)
    with pytest.raises(RuntimeError, match=r"the reference child ended \(exit 1\)(.|\n)*No module named"):
        bench_reference.run_pairs({"ours": sys.executable, "reference": sys.executable}, args)
    assert [c.side for c in started] == ["ours", "reference"]
    assert all(c.proc.wait(timeout=30) is not None for c in started)
