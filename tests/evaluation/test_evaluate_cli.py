"""zero_shot.py end to end on synthetic CT-RATE: a reference-format checkpoint, and a checkpoint trained by main.py
evaluated by zero_shot.py under torchrun on 2 ranks (each encodes its share; rank 0 writes and prints)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
import torch

from reaf import create_model
from reaf.data.readers import read_split
from reaf.evaluation.embeddings import load_embeddings
from reaf.evaluation.protocol import validate_results
from tests.support.results import check_against_outputs

REPO = Path(__file__).resolve().parents[2]
PLOTS = ["roc_volume.png", "auc_bars_volume_18.png", "auc_bars_volume_16.png", "retrieval_recall.png"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small synthetic CT-RATE (layout A, real NIfTI) and the names of its validation volumes."""
    from reaf.synthetic.dataset import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, num_train=4, num_valid=4)
    labels_csv = root / "dataset" / "multi_abnormality_labels" / "valid_predicted_labels.csv"
    names = [s.name for s in read_split(labels_csv, data_root=None, fmt="ori", require_labels=True).samples]
    return root, labels_csv, names


def zero_shot_args(labels_csv: Path, ckpt: Path, out: Path, explain: str) -> list[str]:
    return [
        "--resume", str(ckpt), "--zeroshot-ct-rate", str(labels_csv), "--input-data-type", "ori",
        "--input-info", "-1150", "350", "resize", "--results-dir", str(out), "--batch-size", "4",
        "--workers", "0", "--device", "cpu", "--bootstrap", "100", "--explain", explain,
    ]  # fmt: skip


def check_outputs(out: Path, names: list[str], explain: str) -> dict:
    """Every output file exists and is what it says: JSON with the documented keys, CSV, embeddings, real PNGs."""
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    assert results["data"]["N"] == len(names) and results["classification"]["18"]["mean"]["auc"] is not None
    check_against_outputs(out, results)  # AUCs by scikit-learn, R@K by numpy, from the written files
    table = pd.read_csv(out / "probabilities.csv")
    assert table["VolumeName"].tolist() == names and table.filter(like="volume:").shape[1] == 18
    store = load_embeddings(out / "embeddings.pt")
    assert store["names"] == names and store["image"].shape == store["text"].shape == (len(names), 64)
    for png in [*PLOTS, f"saliency_{explain}.png"]:
        image = matplotlib.image.imread(out / "plots" / png)
        assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 150, png
        assert image[..., :3].std() > 0.01, f"{png} is blank"
    return results


def test_reference_format_checkpoint_end_to_end(synthetic, tmp_path, capsys):
    import zero_shot

    root, labels_csv, names = synthetic
    torch.manual_seed(1)
    model = create_model("tiny")
    ckpt = tmp_path / "reaf_reference.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    out = tmp_path / "out"
    assert zero_shot.main(["--model", "tiny", *zero_shot_args(labels_csv, ckpt, out, names[0])]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot, 18 classes" in printed and "dedup report_to_volume" in printed
    results = check_outputs(out, names, names[0])
    assert results["model_config"]["vision"]["reference_compat"] is True  # switched by the reference format
    assert load_embeddings(out / "embeddings.pt")["meta"]["checkpoint"]["sha256"] == results["checkpoint"]["sha256"]


def test_zero_shot_reads_the_checkpoint_once_on_its_way_to_the_model(synthetic, tmp_path, monkeypatch):
    import zero_shot

    root, labels_csv, names = synthetic
    torch.manual_seed(2)
    model = create_model("tiny")
    ckpt = tmp_path / "ours.pt"  # our format: the model is built from the checkpoint's own config
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(str(f)) or real_load(f, *a, **k))
    args = zero_shot_args(labels_csv, ckpt, tmp_path / "out", names[0])
    assert zero_shot.main([*args[:-2], "--no-plots"]) == 0
    assert loads.count(str(ckpt)) == 1, loads


def test_main_py_checkpoint_then_zero_shot_cli(synthetic, tmp_path):
    import main

    root, labels_csv, names = synthetic
    train_csv = root / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv"
    train_args = [
        "--model", "tiny", "--train-data", str(train_csv), "--input-data-type", "ori",
        "--input-info", "-1150", "350", "resize", "--epochs", "1", "--batch-size", "2", "--workers", "0",
        "--precision", "fp32", "--device", "cpu", "--logs", str(tmp_path / "logs"), "--name", "run",
        "--val-frequency", "0", "--zeroshot-frequency", "0", "--lr", "1e-4", "--warmup", "1",
    ]  # fmt: skip
    assert main.main(train_args) == 0
    ckpt = tmp_path / "logs" / "run" / "checkpoints" / "latest.pt"
    out = tmp_path / "zs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--"]
    proc = subprocess.run(
        [*torchrun, "zero_shot.py", *zero_shot_args(labels_csv, ckpt, out, names[-1])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "zero-shot, 16 classes" in proc.stdout and "volume_to_volume" in proc.stdout
    assert proc.stdout.count("results: ") == 1  # printed by rank 0 alone
    results = check_outputs(out, names, names[-1])
    assert results["checkpoint"]["path"] == str(ckpt.resolve())
    assert results["model_config"]["vision"]["reference_compat"] is False


def write_reference_stage2_cache(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The reference's stage2 cache as it lies, <root>/valid_1/valid_1_a/valid_1_a_1.pt.gz (no dataset/, no split
    folder, no metadata CSV), CT-RATE's labels and reports CSVs elsewhere, and a reference-format tiny checkpoint.
    Returns (root, labels CSV, checkpoint)."""
    from reaf.data.formats import save_stage2
    from tests.support.layouts import tables_for, truth_for

    names = ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1", "valid_3_a_1"]
    _, reports, labels = tables_for(truth_for(names))
    dataset = tmp_path / "ct_rate" / "dataset"
    for folder, name, table in (("multi_abnormality_labels", "valid_predicted_labels.csv", labels),
                                ("radiology_text_reports", "validation_reports.csv", reports)):
        (dataset / folder).mkdir(parents=True)
        table.to_csv(dataset / folder / name, index=False)
    root, g = tmp_path / "stage2", torch.Generator().manual_seed(0)
    for name in names:
        patient, scan = name.rsplit("_", 2)[0], name.rsplit("_", 1)[0]
        save_stage2(root / patient / scan / f"{name}.pt.gz", torch.randn((1, 32, 96, 96), generator=g))
    torch.manual_seed(0)
    ckpt = tmp_path / "reaf.pt"
    torch.save({"state_dict": create_model("tiny").state_dict()}, ckpt)
    return root, dataset / "multi_abnormality_labels" / "valid_predicted_labels.csv", ckpt


def test_the_reference_stage2_cache_is_evaluated_as_it_lies(tmp_path, monkeypatch):
    """The README's evaluation command on the reference's own stage2 tree: no metadata CSV is asked for, the data
    root holds valid_N/ directly. A second evaluation into the same folder first removes the first one's results,
    so a failure part-way never leaves them beside the new embeddings."""
    import zero_shot
    from reaf.evaluation import protocol

    root, labels_csv, ckpt = write_reference_stage2_cache(tmp_path)
    out = tmp_path / "res"
    argv = ["--resume", str(ckpt), "--zeroshot-ct-rate", str(labels_csv), "--data-root", str(root),
            "--input-data-type", "stage2", "--model", "tiny", "--results-dir", str(out), "--workers", "0",
            "--device", "cpu", "--bootstrap", "10"]  # fmt: skip
    assert zero_shot.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["N"] == 4 and results["data"]["root"] == str(root) and (out / "plots").is_dir()

    def fail(*args, **kwargs):
        raise RuntimeError("metrics failed")

    monkeypatch.setattr(protocol, "assemble_results", fail)
    with pytest.raises(RuntimeError, match="metrics failed"):
        zero_shot.main([*argv, "--seed", "1"])
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.pt", "plots"] and not list(out.glob("plots/*"))


def test_flags_and_the_results_folder_are_checked_before_anything_is_loaded(tmp_path, capsys):
    import zero_shot
    from reaf.evaluation.evaluate import EvalSettings
    from reaf.exit_status import run_cli

    blocked = tmp_path / "a_file"
    blocked.write_text("in the way")
    argv = ["--resume", str(tmp_path / "not_read.pt"), "--zeroshot-ct-rate", "x.csv", "--device", "cpu",
            "--results-dir", str(blocked / "res")]  # fmt: skip
    assert run_cli("zero_shot.py", lambda: zero_shot.main(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"zero_shot.py: error: {blocked / 'res'}: cannot write it: Not a directory (errno 20)", err
    with pytest.raises(SystemExit):
        zero_shot.main([*argv[:-2], "--bootstrap", "-1"])
    assert "zero_shot.py: error: argument --bootstrap: must be >= 0, got -1" in capsys.readouterr().err
    for field, value, flag in (("batch_size", 0, "--batch-size"), ("n_boot", -1, "--bootstrap"),
                               ("workers", -2, "--workers")):
        with pytest.raises(ValueError, match=f"{flag} must be an integer >= "):
            EvalSettings(checkpoint="c.pt", **{field: value})
