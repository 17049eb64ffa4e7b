"""Evaluation sharded over 2 gloo ranks (torchrun) equals one process: the same embeddings in the same order and the
same metrics, each rank reading only its share of the volumes (7 volumes: 4 and 3), with --skip-bad skips; a volume
that fails on one rank stops both ranks instead of leaving the other waiting."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reaf import create_model
from reaf.data.formats import volume_file
from reaf.data.readers import read_split
from reaf.evaluation.encoding import encode_split
from reaf.evaluation.protocol import run_evaluation
from reaf.training.epoch_eval import flatten
from tests.support.evaluation import NAMES, write_split
from tests.support.sharded_eval_worker import ARGS, EVAL, SPEC

REPO = Path(__file__).resolve().parents[2]
VICTIM = 3  # rank 1's share is volumes 1, 3, 5
CASES = {"clean": ("clean", False), "skip_bad": ("damaged", True), "failing": ("damaged", False)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny model, its weights file, and the split folders: "clean" (7 labelled volumes) and "damaged" (a copy
    whose volume VICTIM is an empty file)."""
    root = tmp_path_factory.mktemp("sharded")
    clean = write_split(root / "clean")
    damaged = root / "damaged" / "test"
    shutil.copytree(clean, damaged)
    split = read_split(damaged, fmt="stage2", require_labels=True)
    volume_file(split.root, split.samples[VICTIM].rel, "stage2").write_bytes(b"")
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    torch.save(model.state_dict(), root / "weights.pt")
    return model, root, {"clean": clean, "damaged": damaged}


@pytest.fixture(scope="module")
def ranks(setup):
    """Every case run once by torchrun on 2 fresh processes: {case: [rank 0's record, rank 1's]}."""
    _, root, folders = setup
    job = {"weights": str(root / "weights.pt"), "out": str(root),
           "cases": [[case, str(folders[folder]), skip] for case, (folder, skip) in CASES.items()]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--",
           str(REPO / "tests" / "support" / "sharded_eval_worker.py"), json.dumps(job)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {case: [torch.load(root / f"{case}_rank{r}.pt", weights_only=False) for r in range(2)] for case in CASES}


def _same_encoding(got: dict, want: dict) -> None:
    assert got["names"] == want["names"] and got["scan_ids"] == want["scan_ids"] and got["reports"] == want["reports"]
    np.testing.assert_allclose(got["image"], want["image"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["text"], want["text"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got["labels"], want["labels"])
    assert got["logit_scale"] == want["logit_scale"] and got["skipped"] == want["skipped"]


@pytest.mark.parametrize("case", ["clean", "skip_bad"])
def test_two_ranks_give_one_process_embeddings_and_metrics_reading_only_their_share(setup, ranks, tmp_path, case):
    model, root, folders = setup
    folder, skip_bad = CASES[case]
    split = read_split(folders[folder], fmt="stage2", require_labels=True, skip_bad=skip_bad)
    single = encode_split(model, split, SPEC, skip_bad=skip_bad, **ARGS)
    results = run_evaluation(model, split, SPEC, results_dir=tmp_path, skip_bad=skip_bad, **EVAL)
    assert [r.get("error") for r in ranks[case]] == [None, None]
    for rank in ranks[case]:  # every rank holds the whole split, in the split's order
        _same_encoding(rank["encoded"], single)
    assert [rank["read_by_encode"] for rank in ranks[case]] == [NAMES[0::2], NAMES[1::2]]  # 4 and 3, each once
    kept = [n for i, n in enumerate(NAMES) if not (skip_bad and i == VICTIM)]
    assert single["names"] == kept
    assert [s["name"] for s in single["skipped"]] == ([NAMES[VICTIM]] if skip_bad else [])
    assert ranks[case][1]["results"] is None  # rank 0 scores and writes
    got = ranks[case][0]["results"]
    assert got["data"]["N"] == results["data"]["N"] == len(kept) and got["data"]["skipped"] == results["data"]["skipped"]
    for block in ("classification", "retrieval"):
        assert flatten(got[block]) == pytest.approx(flatten(results[block]), abs=1e-6)
    on_disk = json.loads((root / case / "results.json").read_text())
    assert on_disk["retrieval"]["dup_all"]["report_to_volume"]["N"] == len(kept)


def test_a_volume_failing_on_one_rank_stops_both(ranks):
    victim = NAMES[VICTIM]
    errors = [rank["error"] for rank in ranks["failing"]]
    assert errors[1].startswith("VolumeError: ") and victim in errors[1]
    assert errors[0].startswith("RuntimeError: evaluation stopped on rank 1: VolumeError: ") and victim in errors[0]
    assert "encoded" not in ranks["failing"][0]
