"""The synthetic CT-RATE's test split: its own patients, found by find_splits, preprocessed like the others, and
train/valid byte-identical whether it is written or not."""

import hashlib
from pathlib import Path

import pytest

from reaf.data.readers import find_splits, read_split
from reaf.synthetic.dataset import generate


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    with_test, without = tmp_path_factory.mktemp("with_test"), tmp_path_factory.mktemp("without")
    summary = generate(with_test, seed=5, num_train=6, num_valid=4, num_test=4)
    generate(without, seed=5, num_train=6, num_valid=4, num_test=0)
    return with_test, without, summary


def test_train_and_valid_bytes_do_not_depend_on_the_test_split(data):
    with_test, without, summary = data
    a, b = _digests(with_test), _digests(without)
    test_files = {rel for rel in a if Path(rel).name.startswith("test_")}  # volumes test_<pid>_..., test_*.csv
    assert summary["volumes"] == {"train": 6, "valid": 4, "test": 4}
    assert len([rel for rel in test_files if rel.endswith(".nii.gz")]) == 4
    assert {rel for rel in a if rel.endswith("_metadata.csv")} >= {"dataset/metadata/test_metadata.csv"}
    shared = set(b) - {"dataset/README_SYNTHETIC.txt"}
    assert shared and shared == set(a) - test_files - {"dataset/README_SYNTHETIC.txt"}
    assert len([rel for rel in shared if rel.endswith(".nii.gz")]) == 10
    assert {rel: a[rel] for rel in shared} == {rel: b[rel] for rel in shared}


def test_the_test_split_is_found_and_has_its_own_patients(data):
    with_test, without, _ = data
    found = find_splits(with_test)
    assert Path(found["test"]).name in ("test", "test_fixed") and Path(found["val"]).name.startswith("valid")
    assert find_splits(without)["test"] == find_splits(without)["val"]  # no test split: valid serves (CT-RATE)
    splits = {key: read_split(found[key], fmt="ori", require_labels=True) for key in ("train", "val", "test")}
    assert len(splits["test"]) == 4 and all(s.name.startswith("test_") for s in splits["test"].samples)
    patients = {key: {s.patient_id for s in split.samples} for key, split in splits.items()}
    assert not patients["test"] & (patients["train"] | patients["val"])
    labels_csv = with_test / "dataset" / "multi_abnormality_labels" / "test_predicted_labels.csv"
    by_csv = read_split(labels_csv, fmt="ori", require_labels=True)
    assert [s.name for s in by_csv.samples] == [s.name for s in splits["test"].samples]


def test_preprocess_handles_the_test_split(data, tmp_path):
    import reaf.preprocess

    with_test, _, _ = data
    for split in ("train", "valid", "test"):
        argv = ["--ct-rate-root", str(with_test), "--split", split, "--out", str(tmp_path), "--format", "cache",
                "--model", "tiny", "--input-info", "-1150", "350", "resize", "--workers", "1"]
        assert reaf.preprocess.main(argv) == 0
    found = find_splits(tmp_path)
    test = read_split(found["test"], data_root=str(tmp_path), fmt="cache", require_labels=True)
    assert len(test) == 4 and (tmp_path / "manifest_test_cache.json").is_file()
    assert Path(found["test"]).parent == tmp_path / "dataset"
