"""The bad-input table of split reading: each case mutates a written split and names the file and cause."""

import json
from pathlib import Path

import pandas as pd
import pytest

from reaf.data.readers import ReaderError, read_split
from tests.support.layouts import VALID, truth_for, write_layout_a, write_layout_b, write_nifti

DS = "dataset"
META = f"{DS}/metadata/validation_metadata.csv"
REPORTS = f"{DS}/radiology_text_reports/validation_reports.csv"
LABELS = f"{DS}/multi_abnormality_labels/valid_predicted_labels.csv"
VICTIM = "valid_1_a_2"


def edit_csv(rel: str, change):
    def mutate(root: Path) -> None:
        df = pd.read_csv(root / rel, dtype=str, keep_default_na=False)
        change(df).to_csv(root / rel, index=False)

    return mutate


def drop_row(df):
    return df[df["VolumeName"] != f"{VICTIM}.nii.gz"]


def set_cell(column, value):
    def change(df):
        df.loc[df["VolumeName"] == f"{VICTIM}.nii.gz", column] = value
        return df

    return change


def write_text(rel: str, text: str):
    return lambda root: (root / rel).write_text(text)


def edit_json(change):
    def mutate(root: Path) -> None:
        path = root / "valid/reports/reports.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return mutate


def remove_volume(root: Path) -> None:
    (root / f"{DS}/valid_fixed/valid_1/valid_1_a/{VICTIM}.nii.gz").unlink()


def add_orphan(root: Path) -> None:  # a volume file the labels CSV does not list: see test_malformed_inputs
    write_nifti(
        root / f"{DS}/valid_fixed/valid_9/valid_9_a/valid_9_a_1.nii.gz", truth_for(["valid_9_a_1"])["valid_9_a_1"]
    )


# (id, layout, mutation, file named in the message, cause in the message, names skipped under skip_bad or None=fatal)
CASES = [
    ("empty-csv-no-header", "A", write_text(LABELS, ""), "valid_predicted_labels.csv", "empty CSV", None),
    (
        "empty-csv-header-only",
        "A",
        write_text(META, "VolumeName,XYSpacing\n"),
        "validation_metadata.csv",
        "empty CSV",
        None,
    ),
    (
        "missing-column",
        "A",
        edit_csv(REPORTS, lambda df: df.drop(columns=["Findings_EN"])),
        "validation_reports.csv",
        "missing required column",
        None,
    ),
    (
        "missing-label-column",
        "A",
        edit_csv(LABELS, lambda df: df.drop(columns=["Emphysema"])),
        "valid_predicted_labels.csv",
        "Emphysema",
        None,
    ),
    ("no-metadata-csv", "A", lambda root: (root / META).unlink(), "validation_metadata.csv", "not found", None),
    (
        "duplicate-name",
        "A",
        edit_csv(LABELS, lambda df: pd.concat([df, df[df["VolumeName"] == f"{VICTIM}.nii.gz"]])),
        "valid_predicted_labels.csv",
        "duplicate VolumeName",
        [VICTIM],
    ),
    ("missing-metadata-row", "A", edit_csv(META, drop_row), "validation_metadata.csv", "no metadata row", [VICTIM]),
    ("missing-report-row", "A", edit_csv(REPORTS, drop_row), "validation_reports.csv", "no report", [VICTIM]),
    (
        "label-not-binary",
        "A",
        edit_csv(LABELS, set_cell("Cardiomegaly", "2")),
        "valid_predicted_labels.csv",
        "is not 0/1",
        [VICTIM],
    ),
    (
        "label-empty",
        "A",
        edit_csv(LABELS, set_cell("Cardiomegaly", "")),
        "valid_predicted_labels.csv",
        "is not 0/1",
        [VICTIM],
    ),
    (
        "bad-xy-spacing",
        "A",
        edit_csv(META, set_cell("XYSpacing", "[0.7]")),
        "validation_metadata.csv",
        "XYSpacing",
        [VICTIM],
    ),
    (
        "bad-z-spacing",
        "A",
        edit_csv(META, set_cell("ZSpacing", "abc")),
        "validation_metadata.csv",
        "ZSpacing",
        [VICTIM],
    ),
    ("volume-file-missing", "A", remove_volume, "valid_predicted_labels.csv", "no .nii.gz file exists", [VICTIM]),
    (
        "report-empty",
        "A",
        edit_csv(REPORTS, lambda df: set_cell("Impressions_EN", " ")(set_cell("Findings_EN", "")(df))),
        "validation_reports.csv",
        "empty report for valid_1_a_2",
        [VICTIM],
    ),
    (
        "report-nan-none",
        "A",
        edit_csv(REPORTS, lambda df: set_cell("Impressions_EN", "None")(set_cell("Findings_EN", "nan")(df))),
        "validation_reports.csv",
        "empty report for valid_1_a_2",
        [VICTIM],
    ),
    (
        "json-not-json",
        "B",
        write_text("valid/reports/reports.json", "{not json"),
        "reports.json",
        "cannot read report JSON",
        None,
    ),
    (
        "json-bad-item",
        "B",
        write_text("valid/reports/reports.json", '[{"image": "x"}]'),
        "reports.json",
        "conversations",
        None,
    ),
    ("json-empty-report", "B", edit_json(lambda d: {**d, VICTIM: "   "}), "reports.json", "empty report", [VICTIM]),
    (
        "json-missing-report",
        "B",
        edit_json(lambda d: {k: v for k, v in d.items() if k != VICTIM}),
        "reports.json",
        "no report",
        [VICTIM],
    ),
    (
        "b-volume-missing",
        "B",
        lambda root: (root / f"valid/volumes/{VICTIM}.nii.gz").unlink(),
        "labels.csv",
        "no .nii.gz file",
        [VICTIM],
    ),
]


def make_split(tmp_path: Path, layout: str) -> Path:
    truth = truth_for(VALID)
    if layout == "A":
        write_layout_a(tmp_path, "valid", truth)
        return tmp_path / LABELS
    return write_layout_b(tmp_path, "valid", truth)


def check_bad_input(tmp_path, case):
    """Case (id, layout, mutate, file, cause, skipped): read_split names file and cause; skip_bad skips or refuses."""
    _, layout, mutate, file_name, cause, skipped = case
    source = make_split(tmp_path, layout)
    mutate(tmp_path)
    with pytest.raises(ReaderError) as err:
        read_split(source, fmt="ori")
    assert file_name in str(err.value) and cause in str(err.value), str(err.value)
    if skipped is None:
        with pytest.raises(ReaderError, match=cause.split()[0]):
            read_split(source, fmt="ori", skip_bad=True)
        return
    split = read_split(source, fmt="ori", skip_bad=True)
    assert [name for name, _ in split.skipped] == skipped
    assert file_name in split.skipped[0][1] and cause in split.skipped[0][1]
    kept = [s.name for s in split.samples]
    assert kept == [n for n in VALID if n not in skipped]
    assert all(s.report.strip() and "None" not in s.report and "nan" not in s.report for s in split.samples)
