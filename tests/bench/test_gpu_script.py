"""bench/bench_gpu.py's whole path on a CPU (`--device cpu --model tiny`): every case, the sync check's bookkeeping,
FLOPs, the loader, the reference note, the deadline; what a GPU run would write, minus the GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import bench_gpu

REPO = Path(__file__).resolve().parents[2]
CASES = ["fp32", "fp32 + grad checkpointing", "bf16", "bf16 + grad checkpointing", "fp16",
         "fp16 + grad checkpointing"]


def test_cpu_mode_runs_every_part_and_records_each_case(tmp_path):
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--model", "tiny", "--loader-volumes", "8", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "REAF_REFERENCE_ROOT": ""}
    subprocess.run([sys.executable, "-m", "bench.bench_gpu", *argv], cwd=REPO, env=env, check=True, timeout=600,
                   capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.bench_gpu --device cpu --model tiny")
    assert result["machine"]["gpu"] is None and result["machine"]["torch"] == __import__("torch").__version__
    cases = {case["case"]: case for case in result["cases"]}
    assert list(cases) == CASES
    for name in CASES[2:]:
        assert cases[name]["status"] == "skipped: no CUDA"
    plain, checkpointed = cases["fp32"], cases["fp32 + grad checkpointing"]
    for case in (plain, checkpointed):
        assert case["status"] == "ok" and case["batch"] == 2
        assert case["samples_per_s"] > 0 and case["samples_per_s"] == case["batch"] / case["step_s"]
        assert case["peak_mem_gib"] > 0 and case["achieved_tflops"] > 0 and case["mfu"] is None
        assert case["sync_check"] == {"result": "not applicable on CPU", "steps": 2}
    # checkpointing recomputes the forward: more FLOPs run, the same model FLOPs
    assert checkpointed["flops_per_step"] > plain["flops_per_step"] == plain["model_flops_per_step"]
    assert checkpointed["model_flops_per_step"] == plain["model_flops_per_step"]
    loader = result["loader"]
    assert loader["status"] == "ok" and loader["volumes"] == 8 and loader["workers"] == 2
    assert loader["volumes_per_s_per_worker"] * 2 == loader["volumes_per_s"] > 0
    assert loader["step_samples_per_s"] == max(plain["samples_per_s"], checkpointed["samples_per_s"])
    assert loader["loader_keeps_up"] == (loader["volumes_per_s"] >= loader["step_samples_per_s"])
    assert result["reference"]["status"].startswith("skipped: ")
    assert result["budget"]["not_run"] == [] and 0 < result["budget"]["elapsed_s"] < 600


def test_the_deadline_records_what_was_not_run(tmp_path):
    out = tmp_path / "gpu.json"
    result = bench_gpu.main(["--device", "cpu", "--model", "tiny", "--budget-s", "0", "--out", str(out)])
    assert json.loads(out.read_text())["budget"] == result["budget"]
    assert result["budget"]["not_run"] == [*CASES[:2], "loader", "reference"]
    statuses = {case["case"]: case["status"] for case in result["cases"]}
    assert statuses == {**dict.fromkeys(CASES[:2], "not run: time budget"),
                        **dict.fromkeys(CASES[2:], "skipped: no CUDA")}
    assert result["loader"] == result["reference"] == {"status": "not run: time budget"}


def test_the_mfu_peak_is_the_datasheet_s_dense_figure_of_the_named_card():
    assert bench_gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_gpu.peak_tflops("NVIDIA H200") == 989.0 and bench_gpu.peak_tflops("NVIDIA H200 NVL") == 835.0
    assert bench_gpu.peak_tflops("Intel Xeon") is None
