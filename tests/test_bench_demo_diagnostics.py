"""bench/demo_diagnostics.py at a tiny size: every learner runs on the demo's own data path and reports 18 AUCs."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_diagnostics_runs_every_learner(tmp_path):
    out = tmp_path / "diag.json"
    cmd = [sys.executable, str(REPO / "bench" / "demo_diagnostics.py"), "--num-train", "32", "--num-valid", "24",
           "--steps", "3", "--workdir", str(tmp_path / "data"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    learners = {"linear_probe", "vit_cls", "vit_tokens", "clip_label_text", "clip_label_image"}
    assert learners <= set(result["results"])
    for name in learners:
        row = result["results"][name]
        assert len(row["auc"]) == 18 and 0.0 <= row["mean_auc"] <= 1.0
    assert 0.0 <= result["results"]["clip_label_text"]["R@5"] <= 1.0
    assert result["settings"]["steps"] == 3 and "cpu_model" in result["machine"]
    assert not (REPO / "bench" / "results" / "demo_diagnostics.json").samefile(out)
