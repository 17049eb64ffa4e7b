"""--skip-bad in training and evaluation: a damaged volume is dropped from its batch, counted, logged and listed in
the run folder; without the flag the run stops naming the file; ranks cut their batches to the smallest one."""

import json
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

import main as cli
from reaf.data.formats import volume_file
from reaf.data.readers import find_splits, read_split
from reaf.training import skips
from tests.support.training import NUM_TRAIN, make_dataset, step_losses, train_argv


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """The tiny synthetic cache with one training volume cut to half its bytes; (data root, its name, its path)."""
    root = make_dataset(tmp_path_factory.mktemp("data"))
    split = read_split(find_splits(root)["train"], data_root=str(root), fmt="cache")
    victim = split.samples[3]
    path = volume_file(split.root, victim.rel, "cache")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return root, victim.name, path


def test_without_the_flag_the_first_bad_volume_stops_the_run(damaged, tmp_path, capsys):
    root, _, path = damaged
    assert cli.main(train_argv(root, tmp_path, "strict", "--epochs", "1", "--batch-size", "2")) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("main.py: error: ") and str(path) in last and "did not decompress full frame" in last, last
    assert "Traceback" not in err  # it is in the run's log file
    assert "Traceback" in (tmp_path / "strict" / "train.log").read_text()


def test_skip_bad_trains_on_and_lists_the_volume(damaged, tmp_path, caplog):
    """Batch size 1: the bad volume's batch is empty, so the epoch takes NUM_TRAIN - 1 steps, not NUM_TRAIN."""
    root, name, path = damaged
    argv = train_argv(root, tmp_path, "lenient", "--epochs", "1", "--batch-size", "1", "--skip-bad",
                      "--val-frequency", "1")  # fmt: skip
    assert cli.main(argv) == 0
    run = tmp_path / "lenient"
    assert sorted(step_losses(run)) == list(range(1, NUM_TRAIN))
    listed = [json.loads(line) for line in (run / skips.SKIPPED_FILE).read_text().splitlines()]
    assert [(row["phase"], row["epoch"], row["name"]) for row in listed] == [("train", 0, name)]
    assert str(path) in listed[0]["cause"]
    assert "--skip-bad: 1 volume(s) skipped" in (run / "train.log").read_text()


def _equalize_worker(rank: int, init: str, folder: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    # rank 0 sees batches of 3, 3; rank 1 of 1, 3 (two of its volumes skipped in the first batch)
    sizes = [3, 3] if rank == 0 else [1, 3]
    batches = []
    for step, n in enumerate(sizes):
        skipped = [(f"r{rank}s{step}v{i}", "bad") for i in range(3 - n)]
        batches.append({"name": [f"r{rank}b{step}v{i}" for i in range(n)], "image": torch.zeros(n, 2),
                        "skipped": skipped})
    log = skips.SkipLog(os.path.join(folder, skips.SKIPPED_FILE))
    out = [len(b["name"]) for b in skips.equalize(batches, log, epoch=0)]
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump({"sizes": out, "count": log.count}, f)
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_cut_to_the_smallest_batch(tmp_path):
    init = f"file://{tempfile.mkdtemp(dir=tmp_path)}/rendezvous"
    # fork: the children need no fresh imports (spawn re-imports this module and torch, ~30 s here)
    mp.start_processes(_equalize_worker, args=(init, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["sizes"] == results[1]["sizes"] == [1, 3]
    assert results[0]["count"] == results[1]["count"] == 2  # both ranks count every rank's skips
    listed = [json.loads(line)["name"] for line in (tmp_path / skips.SKIPPED_FILE).read_text().splitlines()]
    assert listed == ["r1s0v0", "r1s0v1"]  # written once, by rank 0


def test_truncate_keeps_the_batch_contract():
    batch = {"name": ["a", "b"], "image": torch.arange(2), "labels": torch.zeros(2, 18), "skipped": [("c", "x")]}
    cut = skips.truncate(batch, 1)
    assert cut["name"] == ["a"] and cut["image"].tolist() == [0] and cut["labels"].shape == (1, 18)
    assert cut["skipped"] == [("c", "x")] and skips.truncate(batch, 2) is batch


def test_evaluation_leaves_the_bad_volume_out_and_lists_it(damaged, tmp_path):
    import shutil

    from reaf import create_model
    from reaf.data.input_spec import InputSpec
    from reaf.evaluation.protocol import run_evaluation

    root = tmp_path / "data"
    shutil.copytree(damaged[0], root)
    split = read_split(find_splits(root)["test"], data_root=str(root), fmt="cache", require_labels=True)
    victim = split.samples[1]
    path = volume_file(split.root, victim.rel, "cache")
    path.write_bytes(b"")
    torch.manual_seed(0)
    model = create_model("tiny")
    spec = InputSpec.from_args(["-1150", "350", "resize"], model.cfg.vision.img_size)
    args = {"batch_size": 2, "workers": 0, "device": "cpu", "n_boot": 10, "plots": False}
    with pytest.raises(ValueError, match=f"{path}: not a REAF cache file"):
        run_evaluation(model, split, spec, results_dir=tmp_path / "strict", **args)
    results = run_evaluation(model, split, spec, results_dir=tmp_path / "lenient", skip_bad=True, **args)
    assert results["data"]["N"] == len(split) - 1
    assert [s["name"] for s in results["data"]["skipped"]] == [victim.name]
    assert str(path) in results["data"]["skipped"][0]["cause"]
    table = json.loads((tmp_path / "lenient" / "results.json").read_text())
    assert table["data"]["skipped"] == results["data"]["skipped"]
