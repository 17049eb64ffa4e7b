"""Synthetic CT-RATE: layout and CSVs, label/report agreement, determinism, v1/v2 HU storage, visible findings."""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from reaf.data.csv_tables import CLASSES
from reaf.evaluation.prompts import class_prompts
from reaf.synthetic.dataset import generate, main, plan_split, scan_case, synth_volume, write_volume_nifti
from reaf.synthetic.metadata import METADATA_COLUMNS
from reaf.synthetic.phantom import LUNG
from reaf.synthetic.reports import GENERIC_NEGATIVE, KEYWORDS, NAMES, NEGATIVE, write_report

CSVS = {
    "metadata/train_metadata.csv": METADATA_COLUMNS,
    "metadata/validation_metadata.csv": METADATA_COLUMNS,
    "radiology_text_reports/train_reports.csv": [
        "VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
    "radiology_text_reports/validation_reports.csv": [
        "VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"],
    "multi_abnormality_labels/train_predicted_labels.csv": ["VolumeName", *CLASSES],
    "multi_abnormality_labels/valid_predicted_labels.csv": ["VolumeName", *CLASSES],
}  # fmt: skip
NEGATION = re.compile(r"\b(no|not|without|nor)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    return out / "dataset", generate(out, seed=0, num_train=8, num_valid=4, workers=1)


def _volume_path(root: Path, name: str) -> list[Path]:
    split, pid, scan, _ = name.removesuffix(".nii.gz").split("_")
    rel = Path(f"{split}_{pid}", f"{split}_{pid}_{scan}", name)
    return [root / folder / rel for folder in (split, f"{split}_fixed") if (root / folder / rel).exists()]


def test_layout_and_csv_columns(data):
    root, summary = data
    assert summary["volumes"] == {"train": 8, "valid": 4, "test": 4}  # test: --num-valid by default
    tables = {rel: pd.read_csv(root / rel) for rel in CSVS}
    for rel, columns in CSVS.items():
        assert list(tables[rel].columns) == columns, rel
    for split, prefix in (("train", "train"), ("valid", "validation")):
        names = list(tables[f"metadata/{prefix}_metadata.csv"]["VolumeName"])
        assert len(names) == summary["volumes"][split]
        assert names == list(tables[f"radiology_text_reports/{prefix}_reports.csv"]["VolumeName"])
        assert names == list(tables[f"multi_abnormality_labels/{split}_predicted_labels.csv"]["VolumeName"])
        for name in names:
            assert re.fullmatch(rf"{split}_\d+_[a-z]_\d+\.nii\.gz", name), name
            assert len(_volume_path(root, name)) == 1, f"{name} must exist in exactly one of the v1/v2 folders"
    meta = pd.concat([tables["metadata/train_metadata.csv"], tables["metadata/validation_metadata.csv"]])
    assert meta["XYSpacing"].str.fullmatch(r"\[\d+\.\d+, \d+\.\d+\]").all()
    assert (meta["RescaleIntercept"] == -1024).all() and (meta["RescaleSlope"] == 1).all()
    labels = tables["multi_abnormality_labels/train_predicted_labels.csv"][CLASSES]
    assert set(np.unique(labels.to_numpy())) <= {0, 1}
    assert summary["v1"] > 0 and summary["v2"] > 0
    assert summary["scans"] < 16 and summary["patients"] < summary["scans"]  # 2 recons of a scan, 2 scans of a patient
    assert not list(root.rglob("*.tmp")), "temporary files left behind"
    assert "synthetic" in (root / "README_SYNTHETIC.txt").read_text().lower()


def _affirmed(text: str, keys: tuple[str, ...]) -> bool:
    sentences = [s for s in re.split(r"(?<=\.)\s+", text) if not NEGATION.search(s)]
    return any(k in s.lower() for s in sentences for k in keys)


def _check_report(report: dict, present: set[str]) -> None:
    text = report["Findings_EN"] + " " + report["Impressions_EN"]
    for column in ("ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"):
        assert report[column].strip() and report[column].strip() != "None", column
    for cls in CLASSES:
        assert _affirmed(text, KEYWORDS[cls]) == (cls in present), (cls, text)


def test_labels_agree_with_report_text(data):
    root, _ = data
    labels = pd.read_csv(root / "multi_abnormality_labels/train_predicted_labels.csv")
    reports = pd.read_csv(root / "radiology_text_reports/train_reports.csv")
    for (_, lab), (_, rep) in zip(labels.iterrows(), reports.iterrows()):
        _check_report(rep.to_dict(), {c for c in CLASSES if lab[c] == 1})
    seen = set()
    for patient, scan, _ in plan_split(1, "train", 300):  # reports only (no rendering): every class many times
        _, findings = scan_case(1, patient, scan)
        present = {f.cls for f in findings}
        _check_report(write_report(findings, np.random.default_rng(len(seen)), 1.5), present)
        seen |= present
    assert seen == set(CLASSES)


def _negations(cls: str) -> set[str]:
    """Every sentence that states class `cls` absent."""
    noun, where = NAMES[cls]
    fields = {"name": noun, "Name": noun.capitalize(), "where": where}
    return set(NEGATIVE[cls]) | {t.format(**fields) for t in GENERIC_NEGATIVE}


def test_reports_negate_absent_classes_in_their_own_words_never_in_the_prompts_sentences():
    prompts = [s.lower() for t in ("volume", "organ") for pair in class_prompts(t).values() for s in pair]
    forms: dict[str, set[str]] = {c: set() for c in CLASSES}
    affirmed_names = {c: False for c in CLASSES}
    words = set()
    for patient, scan, _ in plan_split(2, "train", 300):
        _, findings = scan_case(2, patient, scan)
        present = {f.cls for f in findings}
        report = write_report(findings, np.random.default_rng(len(words)), 1.5)
        text = report["Findings_EN"] + " " + report["Impressions_EN"]
        sentences = set(re.split(r"(?<=\.)\s+", report["Findings_EN"]))
        for cls in CLASSES:
            said = sentences & _negations(cls)
            assert not (said and cls in present), (cls, said)  # a present class is never negated
            assert len(said) <= 1, said  # nor negated twice
            forms[cls] |= said
        assert not any(p in text.lower() for p in prompts), text  # the evaluation's sentences never appear
        words |= set(re.findall(r"[a-z]+", text.lower()))
        for cls in present:
            affirmed_names[cls] |= _affirmed(text, (NAMES[cls][0],))
    for cls in CLASSES:
        assert len(forms[cls]) >= 4, (cls, forms[cls])  # several forms per class ...
        assert any(NAMES[cls][0] in f.lower() for f in forms[cls]), cls  # ... some with the prompts' name
        assert any(re.search(r"\bnot\b", f) for f in forms[cls]) and any(f.startswith("No ") for f in forms[cls])
    assert {"shows", "volume", "pulmonary", "arterial", "atelectatic", "not"} <= words
    for cls in CLASSES:  # the prompts' name is affirmed too, not only negated (generator v4: "lung opacity")
        assert affirmed_names[cls], cls


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_any_workers(data, tmp_path):
    root, _ = data
    again = generate(tmp_path / "again", seed=0, num_train=8, num_valid=4, workers=2)
    assert _tree(root) == _tree(Path(again["root"]))
    other = Path(generate(tmp_path / "other", seed=1, num_train=8, num_valid=4)["root"])
    first, second = _tree(root), _tree(other)
    assert first["multi_abnormality_labels/train_predicted_labels.csv"] != second[
        "multi_abnormality_labels/train_predicted_labels.csv"]  # fmt: skip
    assert not np.array_equal(synth_volume(0, "train_1_a_1")[0], synth_volume(1, "train_1_a_1")[0])


def test_v1_needs_csv_intercept_v2_holds_hu(data):
    root, _ = data
    meta = pd.read_csv(root / "metadata/train_metadata.csv").set_index("VolumeName")
    versions = set()
    for name in meta.index:
        path = _volume_path(root, name)[0]
        img = nib.load(path)
        raw = np.asarray(img.dataobj)
        assert raw.dtype == np.int16 and img.dataobj.slope == 1 and img.dataobj.inter == 0  # no header scaling
        hu, _, geometry = synth_volume(0, name.removesuffix(".nii.gz"))
        row = meta.loc[name]
        xy = [float(v) for v in row["XYSpacing"].strip("[]").split(",")]
        np.testing.assert_allclose([*xy, row["ZSpacing"]], geometry.spacing)
        assert raw.shape == (row["Columns"], row["Rows"], row["NumberofSlices"])
        hu = hu[::-1, ::-1, :]  # stored in CT-RATE's (L, P, S) order
        lung = np.abs(hu - LUNG) < 40
        if path.parent.parent.parent.name.endswith("_fixed"):
            versions.add("v2")
            np.testing.assert_array_equal(raw, hu)
            np.testing.assert_allclose(img.header.get_zooms(), geometry.spacing, rtol=1e-6)
        else:
            versions.add("v1")
            np.testing.assert_array_equal(raw * row["RescaleSlope"] + row["RescaleIntercept"], hu)
            assert abs(np.median(raw[lung]) - (LUNG + 1024)) < 10  # lung HU + 1024: raw needs the intercept
            np.testing.assert_allclose(img.affine, np.eye(4))
    assert versions == {"v1", "v2"}


def test_pleural_effusion_fills_posterior_lung():
    with_it, findings, geometry = synth_volume(3, "train_7_a_1", classes={"Pleural effusion"})
    without, none, _ = synth_volume(3, "train_7_a_1", classes=set())
    assert [f.cls for f in findings] == ["Pleural effusion"] and none == []
    changed = with_it != without
    assert changed.sum() > 500
    assert np.all(without[changed] < -700), "the fluid replaces lung"
    assert abs(np.median(with_it[changed]) - 10) < 5, "fluid HU"
    j = np.nonzero(changed)[1]
    y_mm = (j - (geometry.shape[1] - 1) / 2) * geometry.spacing[1]
    assert np.percentile(y_mm, 95) < 0, "dependent (posterior) layer"


def _model_view(hu: np.ndarray) -> torch.Tensor:
    """Window [-1150, 350] and resize the whole volume to (x, y, z) = (96, 96, 32), as the tiny model sees it."""
    v = torch.from_numpy(np.clip((hu.astype(np.float32) + 1150) / 1500, 0, 1))[None, None]
    return torch.nn.functional.interpolate(v, size=(96, 96, 32), mode="trilinear", align_corners=False)[0, 0]


@pytest.mark.parametrize("cls", CLASSES)
def test_each_finding_is_visible_at_model_resolution(cls):
    name = f"train_{CLASSES.index(cls) + 1}_a_1"
    with_it, findings, _ = synth_volume(5, name, classes={cls})
    without, _, _ = synth_volume(5, name, classes=set())
    assert [f.cls for f in findings] == [cls]
    diff = (_model_view(with_it) - _model_view(without)).abs()
    assert int((diff > 0.1).sum()) >= 27, f"{cls}: fewer than 3x3x3 clearly changed voxels at 96x96x32"
    # and at token scale (16x16x8 voxels): some token's mean changes by >= 20 HU (1/75 of the window; generator v3
    # enlarged the findings that changed a token by less, the smallest here is medical material at 22 HU)
    token_change = torch.nn.functional.avg_pool3d(diff[None, None], (16, 16, 8)).max()
    assert token_change >= 1 / 75, f"{cls}: no token's mean changes by 20 HU ({float(token_change) * 1500:.1f} HU)"


def test_write_volume_nifti_round_trip(tmp_path):
    hu = np.arange(-1000, -1000 + 4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    v2 = nib.load(write_volume_nifti(tmp_path / "a.nii.gz", hu, (0.7, 0.8, 2.5)))
    # stored in CT-RATE's order (L, P, S): the phantom's right/anterior-running x and y reversed
    assert nib.aff2axcodes(v2.affine) == ("L", "P", "S")
    np.testing.assert_array_equal(np.asarray(v2.dataobj), hu[::-1, ::-1, :])
    np.testing.assert_allclose(v2.header.get_zooms(), (0.7, 0.8, 2.5), rtol=1e-6)
    # the same anatomy at the same world (RAS+) point: phantom voxel (i, j, k) is stored at (3 - i, 4 - j, k)
    i, j, k = 1, 2, 3
    phantom_mm = np.array([(i - 1.5) * 0.7, (j - 2.0) * 0.8, (k - 2.5) * 2.5])  # the phantom grid is centred on 0
    np.testing.assert_allclose((v2.affine @ [3 - i, 4 - j, k, 1.0])[:3], phantom_mm)
    assert np.asarray(v2.dataobj)[3 - i, 4 - j, k] == hu[i, j, k]
    v1 = nib.load(write_volume_nifti(tmp_path / "b.nii.gz", hu, (0.7, 0.8, 2.5), version="v1"))
    np.testing.assert_array_equal(np.asarray(v1.dataobj), hu[::-1, ::-1, :] + 1024)
    with pytest.raises(ValueError, match="c.nii.gz"):
        write_volume_nifti(tmp_path / "c.nii.gz", hu, (1, 1, 1), version="v3")


def test_cli_prints_summary(tmp_path, capsys):
    summary = main(["--out", str(tmp_path), "--num-train", "3", "--num-valid", "2", "--num-test", "1", "--seed", "4"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "6 volumes (3 train, 2 valid, 1 test;" in line and str(tmp_path) in line
    assert len(list((tmp_path / "dataset").rglob("*.nii.gz"))) == 6 == sum(summary["volumes"].values())
