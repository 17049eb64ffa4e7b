"""Readers: layout A (CT-RATE) and layout B (split folders) give the same checked samples from real files."""

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from reaf.data.csv_tables import CLASSES, CLASSES_16
from reaf.data.formats import volume_file
from reaf.data.readers import ReaderError, find_splits, read_split
from tests.support.layouts import (
    TRAIN,
    VALID,
    check_samples,
    truth_for,
    write_layout_a,
    write_layout_b,
    write_nifti,
)


def test_classes():
    assert len(CLASSES) == 18 and len(set(CLASSES)) == 18
    assert CLASSES[0] == "Medical material" and CLASSES[-1] == "Interlobular septal thickening"
    assert CLASSES_16 == [c for c in CLASSES if c not in ("Medical material", "Lymphadenopathy")]


def test_layout_a_from_labels_csv_prefers_fixed(tmp_path):
    truth = truth_for(TRAIN)
    labels_csv = write_layout_a(tmp_path, "train", truth, fixed={"train_1_a_1", "train_2_b_2"})
    # an outdated v1 copy of a volume that also exists in train_fixed: the _fixed file must win
    stale = dict(truth["train_1_a_1"], voxels=np.zeros((10, 9, 4), np.int16))
    write_nifti(tmp_path / "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz", stale)
    split = read_split(str(labels_csv), fmt="ori")
    check_samples(split, truth)
    assert split.root == tmp_path and split.has_labels and split.skipped == [] and split.fmt == "ori"
    by_name = {s.name: s for s in split.samples}
    assert by_name["train_1_a_1"].rel == "dataset/train_fixed/train_1/train_1_a/train_1_a_1"
    assert by_name["train_1_a_2"].rel == "dataset/train/train_1/train_1_a/train_1_a_2"
    assert (by_name["train_2_b_2"].scan_id, by_name["train_2_b_2"].patient_id) == ("train_2_b", "train_2")
    assert [len(g) for g in split.scan_groups()] == [2, 1, 2, 1]


def test_layout_a_from_split_folder_and_find_splits(tmp_path):
    write_layout_a(tmp_path, "train", truth_for(TRAIN))
    valid = truth_for(VALID, seed=1)
    write_layout_a(tmp_path, "valid", valid, fixed=set())
    splits = find_splits(tmp_path)
    assert splits == {
        "train": str(tmp_path / "dataset/train_fixed"),
        "val": str(tmp_path / "dataset/valid"),
        "test": str(tmp_path / "dataset/valid"),
    }
    check_samples(read_split(splits["val"], fmt="ori", require_labels=True), valid)


def test_layout_a_data_root_override(tmp_path):
    """A cache root mirroring the relative paths (holding its own volume files) serves the volumes."""
    truth = truth_for(VALID)
    labels_csv = write_layout_a(tmp_path / "src", "valid", truth)
    cache = tmp_path / "cache"
    shutil.copytree(tmp_path / "src/dataset/valid_fixed", cache / "dataset/valid_fixed")
    split = read_split(labels_csv, data_root=cache, fmt="ori")
    assert split.root == cache
    check_samples(split, truth)


def test_layout_a_equals_layout_b(tmp_path):
    truth = truth_for(TRAIN)
    a = read_split(write_layout_a(tmp_path / "a", "train", truth, fixed={"train_2_a_1"}), fmt="ori")
    for list_format in (False, True):
        b = read_split(write_layout_b(tmp_path / f"b{list_format}", "train", truth, list_format), fmt="ori")
        check_samples(b, truth)
        assert b.samples[0].rel == "train/volumes/train_1_a_1"
        assert len(a.samples) == len(b.samples)
        for sa, sb in zip(a.samples, b.samples):
            assert (sa.name, sa.scan_id, sa.patient_id, sa.report, sa.meta) == (
                sb.name,
                sb.scan_id,
                sb.patient_id,
                sb.report,
                sb.meta,
            )
            np.testing.assert_array_equal(sa.labels, sb.labels)


def test_layout_b_find_splits_and_unlabelled(tmp_path):
    truth = truth_for(VALID)
    for split in ("train", "val"):
        write_layout_b(tmp_path, split, truth)
    assert find_splits(tmp_path) == {"train": str(tmp_path / "train"), "val": str(tmp_path / "val"), "test": None}
    (tmp_path / "val/labels.csv").unlink()
    split = read_split(tmp_path / "val", fmt="ori")
    assert not split.has_labels and all(s.labels is None for s in split.samples)
    with pytest.raises(ReaderError, match="labels are required"):
        read_split(tmp_path / "val", fmt="ori", require_labels=True)


def test_report_root_reference_json_overrides(tmp_path):
    truth = truth_for(VALID)
    labels_csv = write_layout_a(tmp_path, "valid", truth)
    items = [
        {"image": f"valid/{n}.nii.gz", "conversations": [{"from": "gpt", "value": f"Alt report {n}."}]} for n in truth
    ]
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/valid.json").write_text(json.dumps(items))
    for report_root in (tmp_path / "reports", tmp_path / "reports/valid.json"):
        split = read_split(labels_csv, fmt="ori", report_root=str(report_root))
        assert [s.report for s in split.samples] == [f"Alt report {n}." for n in truth]


@pytest.mark.parametrize(
    "findings,impressions,expected",
    [
        ("Lungs clear.", "Normal.", "Findings: Lungs clear. Impressions: Normal."),
        ("Lungs clear.", "", "Findings: Lungs clear."),
        ("  ", "Normal.", "Impressions: Normal."),
    ],
)
def test_report_text_parts(tmp_path, findings, impressions, expected):
    truth = truth_for(VALID[:1])
    labels_csv = write_layout_a(tmp_path, "valid", truth)
    path = tmp_path / "dataset/radiology_text_reports/validation_reports.csv"
    df = pd.read_csv(path)
    df["Findings_EN"], df["Impressions_EN"] = findings, impressions
    df.to_csv(path, index=False)
    assert read_split(labels_csv, fmt="ori").samples[0].report == expected


def test_uncompressed_nifti_is_found(tmp_path):
    """ori also finds plain .nii files, at the rel that reaf.data.formats.volume_file resolves."""
    truth = truth_for(VALID)
    folder = write_layout_b(tmp_path, "valid", truth)
    gz = folder / "volumes/valid_3_a_1.nii.gz"
    nib.save(nib.load(str(gz)), str(gz.with_name("valid_3_a_1.nii")))
    gz.unlink()
    sample = read_split(folder, fmt="ori").samples[2]
    path = volume_file(tmp_path, sample.rel, "ori")
    assert sample.rel == "valid/volumes/valid_3_a_1" and path.name == "valid_3_a_1.nii"
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), truth["valid_3_a_1"]["voxels"])


def test_format_selects_the_files(tmp_path):
    """With fmt=stage1 only .pt files count: NIfTIs beside them are neither samples nor orphans."""
    truth = truth_for(VALID)
    folder = write_layout_b(tmp_path, "valid", truth)
    for name in VALID[:3]:
        (folder / "volumes" / f"{name}.pt").write_bytes(b"")
    with pytest.raises(ReaderError, match=f"{VALID[3]} is listed but no .pt file exists") as info:
        read_split(folder, fmt="stage1")
    assert "they hold" not in str(info.value)  # some .pt files exist: one is missing, the type is right
    split = read_split(folder, fmt="stage1", skip_bad=True)
    assert [s.name for s in split.samples] == VALID[:3] and [n for n, _ in split.skipped] == [VALID[3]]
    assert all(volume_file(tmp_path, s.rel, "stage1").is_file() for s in split.samples)


def test_a_split_of_another_file_type_is_named_with_the_flag_that_reads_it(tmp_path):
    """A raw download read with the default cache type (or a cache read as stage2): the error says what the folders
    hold and how to read it."""
    folder = write_layout_b(tmp_path, "valid", truth_for(VALID))
    with pytest.raises(ReaderError, match=r"no \.vol\.zst file exists under .*; they hold \.nii\.gz files instead: "
                                          r"--input-data-type ori \(slow\), or preprocess them once: python -m "
                                          r"reaf\.preprocess \.\.\. --format cache$"):
        read_split(folder, fmt="cache")
    for name in VALID:
        (folder / "volumes" / f"{name}.nii.gz").rename(folder / "volumes" / f"{name}.vol.zst")
    with pytest.raises(ReaderError, match=r"no \.pt\.gz file exists under .*; they hold \.vol\.zst files instead: "
                                          r"--input-data-type cache$"):
        read_split(folder, fmt="stage2")
    for name in VALID:
        (folder / "volumes" / f"{name}.vol.zst").unlink()
    with pytest.raises(ReaderError, match=r"no \.pt\.gz file exists under [^;]*$"):
        read_split(folder, fmt="stage2")
