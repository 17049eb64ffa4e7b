"""Readers and loader on the synthetic CT-RATE: the reader agrees with the CSVs and files the generator wrote."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from reaf import create_model
from reaf.data.csv_tables import CLASSES
from reaf.data.formats import volume_file
from reaf.data.input_spec import InputSpec
from reaf.data.loader import build_dataloader
from reaf.data.readers import find_splits, read_split
from reaf.synthetic.dataset import generate
from tests.support.volumes import synthetic_model_inputs


@pytest.fixture(scope="module")
def ct_rate(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=0, num_train=6, num_valid=4)
    return root


@pytest.mark.parametrize("key,csv_split", [("train", "train"), ("val", "valid")])
def test_reader_matches_the_csvs(ct_rate, key, csv_split):
    split = read_split(find_splits(ct_rate)[key], fmt="ori", require_labels=True)
    dataset = ct_rate / "dataset"
    labels = pd.read_csv(dataset / f"multi_abnormality_labels/{csv_split}_predicted_labels.csv")
    reports_name = "train_reports.csv" if csv_split == "train" else "validation_reports.csv"
    reports = pd.read_csv(dataset / "radiology_text_reports" / reports_name).set_index("VolumeName")
    assert sorted(s.name + ".nii.gz" for s in split.samples) == sorted(labels["VolumeName"]) and not split.skipped
    rows = labels.set_index("VolumeName")
    for s in split.samples:
        np.testing.assert_array_equal(s.labels, rows.loc[s.name + ".nii.gz", CLASSES].to_numpy(np.float32))
        row = reports.loc[s.name + ".nii.gz"]
        assert s.report == f"Findings: {row['Findings_EN'].strip()} Impressions: {row['Impressions_EN'].strip()}"
        path = volume_file(split.root, s.rel, "ori")
        assert path.is_file() and s.rel.startswith(f"dataset/{csv_split}")
        fixed = dataset / f"{csv_split}_fixed" / s.patient_id / s.scan_id / f"{s.name}.nii.gz"
        assert ("_fixed/" in s.rel) == fixed.exists(), "the _fixed copy is preferred when it exists"
        assert s.meta.xy_spacing is not None and s.meta.z_spacing is not None


def test_layout_b_copy_of_synthetic_reads_the_same(ct_rate, tmp_path):
    a = read_split(find_splits(ct_rate)["val"], fmt="ori")
    folder = tmp_path / "val"
    (folder / "volumes").mkdir(parents=True)
    (folder / "reports").mkdir()
    for s in a.samples:
        shutil.copy(volume_file(a.root, s.rel, "ori"), folder / "volumes" / f"{s.name}.nii.gz")
    items = [{"image": f"{s.name}.nii.gz", "conversations": [{"from": "gpt", "value": s.report}]} for s in a.samples]
    (folder / "reports/reports.json").write_text(json.dumps(items))
    dataset = ct_rate / "dataset"
    shutil.copy(dataset / "multi_abnormality_labels/valid_predicted_labels.csv", folder / "labels.csv")
    shutil.copy(dataset / "metadata/validation_metadata.csv", folder / "metadata.csv")
    b = read_split(folder, fmt="ori")
    assert [(s.name, s.scan_id, s.patient_id, s.report, s.meta) for s in a.samples] == [
        (s.name, s.scan_id, s.patient_id, s.report, s.meta) for s in b.samples
    ]
    assert all(np.array_equal(x.labels, y.labels) for x, y in zip(a.samples, b.samples))


def test_loader_on_synthetic_at_the_tiny_model_input(ct_rate):
    model = create_model("tiny")
    spec = InputSpec.from_args(["-1150", "350", "resize"], model.cfg.vision.img_size)
    split = read_split(find_splits(ct_rate)["train"], fmt="ori")
    loader = build_dataloader(split, spec, model.tokenize, batch_size=3, workers=0, seed=0, train=True)
    batches = list(loader)
    assert len(batches) == 2 and sorted(n for b in batches for n in b["name"]) == sorted(s.name for s in split.samples)
    dataset = ct_rate / "dataset"
    meta = pd.read_csv(dataset / "metadata/train_metadata.csv").set_index("VolumeName")
    reports = pd.read_csv(dataset / "radiology_text_reports/train_reports.csv").set_index("VolumeName")
    labels = pd.read_csv(dataset / "multi_abnormality_labels/train_predicted_labels.csv").set_index("VolumeName")
    rel = {s.name: s.rel for s in split.samples}
    for batch in batches:
        assert batch["image"].shape == (3, 1, *model.cfg.vision.img_size)
        ids, mask = model.tokenize(batch["report"])
        assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["attention_mask"], mask)
        for i, name in enumerate(batch["name"]):
            row = name + ".nii.gz"
            assert batch["report"][i] == (f"Findings: {reports.loc[row, 'Findings_EN'].strip()} "
                                          f"Impressions: {reports.loc[row, 'Impressions_EN'].strip()}")
            assert torch.equal(batch["labels"][i], torch.from_numpy(labels.loc[row, CLASSES].to_numpy(np.float32)))
            nifti = volume_file(split.root, rel[name], "ori")
            error = min((batch["image"][i] - x).abs().max().item()
                        for x in synthetic_model_inputs(nifti, meta.loc[row], spec.size))
            assert error <= 1e-4, (name, error)


def test_preprocessed_cache_root_reads_the_same_samples(ct_rate, tmp_path):
    """A cache written by reaf.preprocess is a layout-A root: found by find_splits, or serving an original labels
    CSV via data_root; the loader's images match on-the-fly NIfTI loading within the cache's precision."""
    from reaf.preprocess import main as preprocess

    out = tmp_path / "cache"
    args = ["--ct-rate-root", str(ct_rate), "--split", "valid", "--out", str(out), "--format", "cache"]
    assert preprocess([*args, "--model", "tiny", "--input-info", "-1150", "350", "resize", "--workers", "1"]) == 0
    ori = read_split(find_splits(ct_rate)["val"], fmt="ori")
    labels_csv = ct_rate / "dataset/multi_abnormality_labels/valid_predicted_labels.csv"
    for cache in (read_split(find_splits(out)["val"], fmt="cache"), read_split(labels_csv, data_root=out, fmt="cache")):
        assert cache.root == out and cache.fmt == "cache"
        assert [(s.name, s.rel, s.report, s.meta) for s in cache.samples] == [
            (s.name, s.rel, s.report, s.meta) for s in ori.samples
        ]
    model = create_model("tiny")
    spec = InputSpec.from_args(["-1150", "350", "resize"], model.cfg.vision.img_size)
    batches = [
        next(iter(build_dataloader(split, spec, model.tokenize, batch_size=4, workers=0, seed=0, train=False)))
        for split in (ori, cache)
    ]
    assert batches[0]["name"] == batches[1]["name"] and torch.equal(batches[0]["input_ids"], batches[1]["input_ids"])
    torch.testing.assert_close(batches[1]["image"], batches[0]["image"], atol=1e-3, rtol=0)
