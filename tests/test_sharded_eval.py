"""Evaluation sharded over 2 gloo ranks equals one process: the same embeddings in the same order and the same
metrics, each rank reading only its share of the volumes (7 volumes: 4 and 3), with --skip-bad skips; a volume that
fails on one rank stops both ranks instead of leaving the other waiting."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_evaluate import NAMES, write_split

import reaf.data.loader as loader_module
from reaf import create_model
from reaf.data.formats import InputSpec, volume_file
from reaf.data.readers import read_split
from reaf.evaluation.encoding import encode_split
from reaf.evaluation.protocol import run_evaluation
from reaf.training.epoch_eval import flatten

SPEC = InputSpec(size=(32, 96, 96))
ARGS = {"batch_size": 2, "workers": 0, "device": "cpu"}
EVAL = {**ARGS, "n_boot": 20, "plots": False}
VICTIM = 3  # rank 1's share is volumes 1, 3, 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny").eval()


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """{"clean": the 7-volume labelled split, "damaged": a copy whose volume VICTIM is an empty file}."""
    clean = write_split(tmp_path_factory.mktemp("clean"))
    damaged = tmp_path_factory.mktemp("damaged") / "test"
    shutil.copytree(clean, damaged)
    split = read_split(damaged, fmt="stage2", require_labels=True)
    volume_file(split.root, split.samples[VICTIM].rel, "stage2").write_bytes(b"")
    return {"clean": clean, "damaged": damaged}


def _counting_loads(read: list[str]) -> None:
    """Make this process's loader record the name of every volume file it reads."""
    real = loader_module.load_volume

    def load_volume(path, *args, **kwargs):
        read.append(Path(path).name.split(".")[0])
        return real(path, *args, **kwargs)

    loader_module.load_volume = load_volume


def _worker(rank: int, init: str, folder: str, model, source: str, skip_bad: bool) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    out: dict = {"read": []}
    _counting_loads(out["read"])
    try:
        split = read_split(source, fmt="stage2", require_labels=True, skip_bad=skip_bad)
        out["encoded"] = encode_split(model, split, SPEC, skip_bad=skip_bad, **ARGS)
        out["read_by_encode"] = list(out["read"])
        out["results"] = run_evaluation(model, split, SPEC, results_dir=Path(folder) / "eval", skip_bad=skip_bad,
                                        **EVAL)
    except Exception as err:  # recorded: the test checks that both ranks stop, and how
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        torch.distributed.destroy_process_group()
    torch.save(out, Path(folder) / f"rank{rank}.pt")


def _two_ranks(tmp_path: Path, model, source: Path, skip_bad: bool) -> list[dict]:
    init = f"file://{tempfile.mkdtemp(dir=tmp_path)}/rendezvous"
    # fork: the children need no fresh imports (spawn re-imports this module and torch, ~30 s here)
    mp.start_processes(_worker, args=(init, str(tmp_path), model, str(source), skip_bad), nprocs=2, join=True,
                       start_method="fork")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _single(tmp_path: Path, model, source: Path, skip_bad: bool) -> dict:
    split = read_split(source, fmt="stage2", require_labels=True, skip_bad=skip_bad)
    return {"encoded": encode_split(model, split, SPEC, skip_bad=skip_bad, **ARGS),
            "results": run_evaluation(model, split, SPEC, results_dir=tmp_path / "single", skip_bad=skip_bad, **EVAL)}


def _same_encoding(got: dict, want: dict) -> None:
    assert got["names"] == want["names"] and got["scan_ids"] == want["scan_ids"] and got["reports"] == want["reports"]
    np.testing.assert_allclose(got["image"], want["image"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["text"], want["text"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got["labels"], want["labels"])
    assert got["logit_scale"] == want["logit_scale"] and got["skipped"] == want["skipped"]


@pytest.mark.parametrize("case", ["clean", "skip_bad"])
def test_two_ranks_give_one_process_embeddings_and_metrics_reading_only_their_share(model, splits, tmp_path, case):
    source, skip_bad = (splits["clean"], False) if case == "clean" else (splits["damaged"], True)
    ranks = _two_ranks(tmp_path, model, source, skip_bad)
    single = _single(tmp_path, model, source, skip_bad)
    assert [r.get("error") for r in ranks] == [None, None]
    for rank in ranks:  # every rank holds the whole split, in the split's order
        _same_encoding(rank["encoded"], single["encoded"])
    assert [rank["read_by_encode"] for rank in ranks] == [NAMES[0::2], NAMES[1::2]]  # 4 and 3 volumes, each once
    kept = [n for i, n in enumerate(NAMES) if not (skip_bad and i == VICTIM)]
    assert single["encoded"]["names"] == kept
    if skip_bad:
        assert [s["name"] for s in single["encoded"]["skipped"]] == [NAMES[VICTIM]]
    assert ranks[1]["results"] is None  # rank 0 scores and writes
    got, want = ranks[0]["results"], single["results"]
    assert got["data"]["N"] == want["data"]["N"] == len(kept) and got["data"]["skipped"] == want["data"]["skipped"]
    for block in ("classification", "retrieval"):
        assert flatten(got[block]) == pytest.approx(flatten(want[block]), abs=1e-6)
    on_disk = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert on_disk["retrieval"]["dup_all"]["report_to_volume"]["N"] == len(kept)


def test_a_volume_failing_on_one_rank_stops_both(model, splits, tmp_path):
    ranks = _two_ranks(tmp_path, model, splits["damaged"], skip_bad=False)
    victim = NAMES[VICTIM]
    assert ranks[1]["error"].startswith("VolumeError: ") and victim in ranks[1]["error"]
    assert ranks[0]["error"].startswith("RuntimeError: evaluation stopped on rank 1: VolumeError: ")
    assert victim in ranks[0]["error"] and "encoded" not in ranks[0]
