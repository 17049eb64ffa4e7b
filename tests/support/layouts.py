"""Tiny CT-RATE splits written as real files: layout A (CSVs + NIfTI tree) and layout B (split folders)."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from reaf.data.csv_tables import CLASSES
from reaf.data.input_spec import InputSpec

TRAIN = ["train_1_a_1", "train_1_a_2", "train_2_a_1", "train_2_b_1", "train_2_b_2", "train_10_a_1"]
VALID = ["valid_1_a_1", "valid_1_a_2", "valid_3_a_1", "valid_4_a_1"]
CSV_NAMES = {
    "train": ("train_metadata.csv", "train_reports.csv", "train_predicted_labels.csv"),
    "valid": ("validation_metadata.csv", "validation_reports.csv", "valid_predicted_labels.csv"),
}


def truth_for(names: list[str], seed: int = 0, shape: tuple[int, int, int] = (10, 9, 4)) -> dict[str, dict]:
    """Per-volume ground truth: labels, report parts, metadata, voxels."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i, name in enumerate(names):
        labels = rng.integers(0, 2, len(CLASSES)).astype(np.float32)
        findings = f"Finding {i} for {name}: " + ", ".join(c for c, v in zip(CLASSES, labels) if v) + "."
        truth[name] = {
            "labels": labels,
            "findings": findings,
            "impressions": f"Impression {i}.",
            "xy": (0.7 + 0.01 * i, 0.7 + 0.01 * i),
            "z": 1.5 + 0.5 * (i % 2),
            "slope": 1.0,
            "intercept": -1024.0 if i % 2 else 0.0,
            "voxels": rng.integers(-1024, 1500, shape).astype(np.int16),
        }
    return truth


def report_of(t: dict) -> str:
    return f"Findings: {t['findings']} Impressions: {t['impressions']}"


def write_nifti(path: Path, t: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([t["xy"][0], t["xy"][1], t["z"], 1.0])
    nib.save(nib.Nifti1Image(t["voxels"], affine), str(path))


def tables_for(truth: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(metadata, reports, labels) frames with CT-RATE's columns; VolumeNames carry .nii.gz."""
    vols = [f"{n}.nii.gz" for n in truth]
    meta = pd.DataFrame(
        {
            "VolumeName": vols,
            "Manufacturer": "SIEMENS",
            "XYSpacing": [f"[{t['xy'][0]}, {t['xy'][1]}]" for t in truth.values()],
            "ZSpacing": [t["z"] for t in truth.values()],
            "RescaleSlope": [t["slope"] for t in truth.values()],
            "RescaleIntercept": [t["intercept"] for t in truth.values()],
        }
    )
    reports = pd.DataFrame(
        {
            "VolumeName": vols,
            "ClinicalInformation_EN": "Not given.",
            "Technique_EN": "Non-contrast chest CT.",
            "Findings_EN": [t["findings"] for t in truth.values()],
            "Impressions_EN": [t["impressions"] for t in truth.values()],
        }
    )
    labels = pd.DataFrame(np.stack([t["labels"] for t in truth.values()]).astype(int), columns=CLASSES)
    labels.insert(0, "VolumeName", vols)
    return meta, reports, labels


def write_layout_a(root: Path, split: str, truth: dict, fixed: set[str] | None = None) -> Path:
    """CT-RATE layout under root/dataset; names in `fixed` go to <split>_fixed/, others to <split>/.
    Returns the labels CSV path."""
    fixed = set(truth) if fixed is None else fixed
    for name, t in truth.items():
        pid, scan = name.rsplit("_", 2)[0], name.rsplit("_", 1)[0]
        folder = f"{split}_fixed" if name in fixed else split
        write_nifti(root / "dataset" / folder / pid / scan / f"{name}.nii.gz", t)
    meta, reports, labels = tables_for(truth)
    meta_name, reports_name, labels_name = CSV_NAMES[split]
    for sub, name, df in [
        ("metadata", meta_name, meta),
        ("radiology_text_reports", reports_name, reports),
        ("multi_abnormality_labels", labels_name, labels),
    ]:
        (root / "dataset" / sub).mkdir(parents=True, exist_ok=True)
        df.to_csv(root / "dataset" / sub / name, index=False)
    return root / "dataset" / "multi_abnormality_labels" / labels_name


def write_layout_b(root: Path, split: str, truth: dict, list_format: bool = False) -> Path:
    """Layout B: <root>/<split>/volumes/<id>.nii.gz, reports/reports.json, labels.csv, metadata.csv."""
    folder = root / split
    for name, t in truth.items():
        write_nifti(folder / "volumes" / f"{name}.nii.gz", t)
    (folder / "reports").mkdir(parents=True, exist_ok=True)
    if list_format:
        reports = [
            {
                "image": f"{n}.nii.gz",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": report_of(t)}],
            }
            for n, t in truth.items()
        ]
    else:
        reports = {n: report_of(t) for n, t in truth.items()}
    (folder / "reports" / "reports.json").write_text(json.dumps(reports))
    meta, _, labels = tables_for(truth)
    meta.to_csv(folder / "metadata.csv", index=False)
    labels.rename(columns={"VolumeName": "id"}).to_csv(folder / "labels.csv", index=False)
    return folder


def check_samples(split, truth: dict) -> None:
    assert [s.name for s in split.samples] == list(truth), "natural name order"
    for s in split.samples:
        t = truth[s.name]
        assert s.report == report_of(t)
        np.testing.assert_array_equal(s.labels, t["labels"])
        assert s.meta.xy_spacing == pytest.approx(t["xy"]) and s.meta.z_spacing == pytest.approx(t["z"])
        assert (s.meta.slope, s.meta.intercept) == (t["slope"], t["intercept"])
        path = split.root / (s.rel + ".nii.gz")
        np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), t["voxels"])


# the loader tests' model input: small, resized whole
SPEC = InputSpec(size=(8, 16, 16), hu_min=-1150.0, hu_max=350.0, mode="resize")
