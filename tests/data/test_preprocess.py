"""python -m reaf.preprocess: layouts A and B, equality with on-the-fly loading, kill -9 + resume, bad-input table."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from reaf.data.formats import FORMATS, VolumeMeta, load_volume, volume_file
from reaf.data.input_spec import InputSpec
from reaf.data.preprocessing import read_metadata
from reaf.exit_status import run_cli
from reaf.preprocess import main
from tests.support.volumes import (
    SPACING,
    chest_like,
    make_layout_a,
    make_layout_b,
    metadata_row,
    write_nifti,
    write_v1,
)

REPO = Path(__file__).resolve().parents[2]
PROG = "python -m reaf.preprocess"
TINY = InputSpec((32, 96, 96))  # configs/tiny.json, default --input-info -1150 350 crop
NAMES = ["valid_1_a_1", "valid_1_a_2", "valid_2_b_1"]


def _manifest(out: Path, fmt: str, split: str = "valid") -> dict:
    return json.loads((out / f"manifest_{split}_{fmt}.json").read_text())


def _args(root: Path, out: Path, fmt: str, *extra: str) -> list[str]:
    return ["--ct-rate-root", str(root), "--split", "valid", "--out", str(out), "--format", fmt, "--model", "tiny",
            "--workers", "1", *extra]  # fmt: skip


def test_layout_a_outputs_equal_on_the_fly_loading(tmp_path):
    root, out = tmp_path / "src", tmp_path / "out"
    chosen = make_layout_a(root, NAMES, fixed=("valid_1_a_2",))
    metas = read_metadata(root / "dataset" / "metadata" / "validation_metadata.csv")
    for fmt in ("stage1", "stage2", "cache"):
        assert main(_args(root, out, fmt)) == 0
        assert _manifest(out, fmt)["counts"] == {"volumes": 3, "written": 3, "redone_invalid": 0,
                                                 "skipped_existing": 0, "skipped_bad": 0, "not_reached": 0}  # fmt: skip
    for name, src in chosen.items():
        rel = str(src.relative_to(root))[: -len(".nii.gz")]
        assert ("_fixed" in rel) == (name == "valid_1_a_2")  # the v2 copy is preferred when both exist
        ori = load_volume(src, "ori", TINY, metas[name])
        assert torch.equal(load_volume(volume_file(out, rel, "stage1"), "stage1", TINY), ori)
        assert torch.equal(load_volume(volume_file(out, rel, "stage2"), "stage2", TINY), ori)
        cache = load_volume(volume_file(out, rel, "cache"), "cache", TINY)
        assert (cache - ori).abs().max() <= 0.5 / (4095 * 0.226) + 1e-5
    for side in ("metadata/validation_metadata.csv", "radiology_text_reports/validation_reports.csv"):
        assert (out / "dataset" / side).read_bytes() == (root / "dataset" / side).read_bytes()
    assert not list(out.rglob("*.nii.gz"))


def test_layout_b_with_header_spacing(tmp_path):
    root, out = tmp_path / "src", tmp_path / "out"
    vols = make_layout_b(root, ["a", "b"])
    argv = ["--data-root", str(root), "--split", "val", "--out", str(out), "--format", "cache", "--model", "tiny",
            "--input-info", "-1000", "400", "resize", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    spec = InputSpec((32, 96, 96), -1000, 400, "resize")
    for name, src in vols.items():  # the fixtures' RAS affines: layout B brings them to CT-RATE's LPS
        cache = load_volume(out / "val" / "volumes" / f"{name}.vol.zst", "cache", spec)
        assert (cache - load_volume(src, "ori", spec, orientation="header")).abs().max() <= 0.5 / (4095 * 0.226) + 1e-5
    assert (out / "val" / "reports" / "reports.json").is_file()
    assert main([*argv[:-2], "--workers", "1", "--limit", "1", "--format", "stage1"]) == 0
    assert _manifest(out, "stage1", "val")["written"] == ["val/volumes/a"]
    manifest = _manifest(out, "cache", "val")
    assert manifest["decisions"] == {"HU from stored values as HU": 2, "orientation RAS (sform): reoriented to LPS": 2,
                                     "spacing from NIfTI header pixdim (no CSV spacing)": 2}  # fmt: skip
    assert [(entry["file"], entry["orientation"]) for entry in manifest["reoriented"]] == [
        (str(vols[name]), "orientation RAS (sform): reoriented to LPS") for name in ("a", "b")]


def _valid_outputs(out: Path, fmt: str) -> list[Path]:
    found = sorted(out.rglob(f"*{FORMATS[fmt]}"))
    for path in found:  # every output present at any moment must be complete
        load_volume(path, fmt, TINY)
    return found


def test_killed_run_resumes_to_a_complete_valid_output(tmp_path):
    root, out = tmp_path / "src", tmp_path / "out"
    names = [f"valid_{i}_a_1" for i in range(8)]
    rows = []
    for i, name in enumerate(names):  # big enough that a run takes seconds, so the kill lands part-way
        write_v1(root / "dataset" / "valid" / f"valid_{i}" / f"valid_{i}_a" / f"{name}.nii.gz",
                 chest_like((64, 160, 160), seed=i))  # fmt: skip
        rows.append(metadata_row(name))
    (root / "dataset" / "metadata").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "dataset" / "metadata" / "validation_metadata.csv", index=False)
    argv = [sys.executable, "-m", "reaf.preprocess", *_args(root, out, "stage2")]
    argv[argv.index("--workers") + 1] = "2"
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.rglob("*.pt.gz"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # the workers die with their parent (PR_SET_PDEATHSIG)
    done = _valid_outputs(out, "stage2")
    assert 2 <= len(done) < len(names), "the kill must land part-way"
    assert not (out / "manifest_valid_stage2.json").exists()
    done[0].write_bytes(done[0].read_bytes()[:1000])  # an output damaged after the fact is verified and redone
    assert main(_args(root, out, "stage2")) == 0
    assert len(_valid_outputs(out, "stage2")) == len(names)
    assert not list(out.rglob("*.reaf-tmp")) and not list(out.rglob(".*"))
    counts = _manifest(out, "stage2")["counts"]
    assert counts["skipped_existing"] == len(done) - 1 and counts["redone_invalid"] == 1
    assert counts["written"] == len(names) - len(done) + 1 and counts["skipped_bad"] == 0


def _four_d(p: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 3, 2), np.int16), np.eye(4)), p)


def _truncated(p: Path) -> None:
    write_v1(p, chest_like())
    p.write_bytes(p.read_bytes()[:3000])


BAD = {
    "corrupt_gzip": (lambda p: p.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(500)), r"(?i)gzip|crc|decompress|header"),
    "truncated_gzip": (_truncated, r"(?i)ended before|eof|truncat|compressed file"),
    "not_nifti": (lambda p: p.write_bytes(gzip.compress(b"just some text\n" * 100)), r"(?i)nifti|header|size"),
    "four_d": (_four_d, r"expected a 3-D volume, got shape \(24, 24, 3, 2\)"),
    "nan_voxels": (
        lambda p: write_nifti(p, np.where(chest_like() > 500, np.nan, chest_like()), dtype=np.float32),
        r"\d+ NaN/inf voxels",
    ),  # fmt: skip
    "too_small_for_crop": (lambda p: write_v1(p, chest_like((4, 30, 30))), r"too small for the crop"),
    "missing_metadata_row": (lambda p: write_v1(p, chest_like()), r"no row for valid_9_a_1 in metadata CSV"),
    "raw_without_slope": (lambda p: write_v1(p, chest_like()), r"no HU interpretation.*no metadata slope/intercept"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("skip", [False, True], ids=["fail", "skip_bad"])
def test_bad_inputs_fail_or_are_counted(tmp_path, capsys, case, skip):
    root, out = tmp_path / "src", tmp_path / "out"
    make_layout_a(root, ["valid_1_a_1"])
    bad = root / "dataset" / "valid" / "valid_9" / "valid_9_a" / "valid_9_a_1.nii.gz"
    bad.parent.mkdir(parents=True)
    BAD[case][0](bad)
    csv = root / "dataset" / "metadata" / "validation_metadata.csv"
    if case != "missing_metadata_row":
        extra = metadata_row("valid_9_a_1") | (
            {"RescaleSlope": None, "RescaleIntercept": None} if "slope" in case else {}
        )
        pd.concat([pd.read_csv(csv), pd.DataFrame([extra])]).to_csv(csv, index=False)
    if not skip:
        assert run_cli(PROG, lambda: main(_args(root, out, "cache"))) == 1
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith(f"{PROG}: error: {bad}: ") and re.search(BAD[case][1], message), message
        return
    assert main(_args(root, out, "cache", "--skip-bad")) == 0
    manifest = _manifest(out, "cache")
    assert manifest["counts"]["skipped_bad"] == 1 and manifest["counts"]["written"] == 1
    (entry,) = manifest["skipped_bad"]
    assert entry["file"] == str(bad) and re.search(BAD[case][1], entry["reason"]), entry
    assert not volume_file(out, "dataset/valid/valid_9/valid_9_a/valid_9_a_1", "cache").exists()


def test_metadata_csv_parsing(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame([metadata_row("v_1_a_1"), metadata_row("v_1_a_2", slope=None)]).to_csv(path, index=False)
    metas = read_metadata(path)
    assert metas["v_1_a_1"] == VolumeMeta((SPACING[2], SPACING[1]), SPACING[0], 1.0, -1024.0)
    assert metas["v_1_a_2"].slope is None


def test_synthetic_ct_rate_through_every_format(tmp_path):
    from reaf.synthetic.dataset import generate

    generate(tmp_path / "syn", seed=1, num_train=0, num_valid=4)
    root, out = tmp_path / "syn", tmp_path / "out"
    metas = read_metadata(root / "dataset" / "metadata" / "validation_metadata.csv")
    spec = InputSpec((32, 96, 96), -1150, 350, "resize")
    for fmt in ("stage1", "stage2", "cache"):
        assert main(_args(root, out, fmt, "--input-info", "-1150", "350", "resize")) == 0
    manifest = _manifest(out, "cache")
    assert manifest["counts"]["written"] == len(metas) and manifest["counts"]["skipped_bad"] == 0
    sources = sorted((root / "dataset").glob("valid*/*/*/*.nii.gz"))
    assert {p.parent.parent.parent.name for p in sources} == {"valid", "valid_fixed"}  # v1 and v2 files both
    for rel in manifest["written"]:
        name = rel.rsplit("/", 1)[1]
        ori = load_volume(volume_file(root, rel, "ori"), "ori", spec, metas[name])
        assert torch.equal(load_volume(volume_file(out, rel, "stage1"), "stage1", spec), ori)
        assert torch.equal(load_volume(volume_file(out, rel, "stage2"), "stage2", spec), ori)
        assert (load_volume(volume_file(out, rel, "cache"), "cache", spec) - ori).abs().max() <= 6e-4


@pytest.mark.parametrize("skip", [False, True], ids=["fail", "skip_bad"])
def test_a_full_output_disk_stops_the_run_naming_the_output(tmp_path, monkeypatch, capsys, skip):
    """ENOSPC while writing (every output opened on /dev/full) is the output's fault: it stops the run naming the
    output file, with or without --skip-bad, and no input is counted as bad."""
    from reaf import atomic

    root, out = tmp_path / "src", tmp_path / "out"
    make_layout_a(root, NAMES)
    real_open = atomic._open  # the volume outputs' temp files go to a full disk, the manifest does not
    monkeypatch.setattr(atomic, "_open", lambda path, mode="wb": real_open(
        Path("/dev/full") if ".vol.zst." in Path(path).name else path, mode))
    argv = _args(root, out, "cache", *(["--skip-bad"] if skip else []))
    assert run_cli(PROG, lambda: main(argv)) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    first = out / "dataset" / "valid" / "valid_1" / "valid_1_a" / "valid_1_a_1.vol.zst"
    assert message == f"{PROG}: error: {first}: cannot write it: No space left on device (errno 28)", message
    assert not list(out.rglob("*.vol.zst")) and not list(out.rglob("*.tmp"))
    manifest = _manifest(out, "cache")  # written: only the volume outputs were on the full disk here
    assert manifest["counts"]["skipped_bad"] == 0 and manifest["failure"] == message.split("error: ", 1)[1]


def test_output_errors_name_the_output_path(tmp_path, monkeypatch):
    from reaf import atomic

    monkeypatch.setattr(atomic, "_open", lambda path, mode="wb": open("/dev/full", mode))
    with pytest.raises(atomic.OutputError, match=re.escape(f"{tmp_path / 'x.pt'}: cannot write it: No space left")):
        atomic.torch_save({"w": torch.zeros(1000)}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "ro").write_text("a file where a folder is needed")
    with pytest.raises(atomic.OutputError, match=re.escape(f"{tmp_path / 'ro' / 'y.json'}: cannot write it: ")):
        atomic.write_json({}, tmp_path / "ro" / "y.json")


def test_a_cache_or_manifest_of_the_old_grid_is_converted_again(tmp_path):
    root, out = tmp_path / "src", tmp_path / "out"
    make_layout_a(root, NAMES)
    for fmt in ("stage2", "cache"):
        assert main(_args(root, out, fmt)) == 0
        path = out / f"manifest_valid_{fmt}.json"
        assert _manifest(out, fmt)["resample_grid"] == "int(n*spacing/target)"
        old = {k: v for k, v in _manifest(out, fmt).items() if k != "resample_grid"}  # as written before the grid
        path.write_text(json.dumps(old))
        assert main(_args(root, out, fmt)) == 0
        manifest = _manifest(out, fmt)
        assert manifest["counts"]["redone_invalid"] == 3 and manifest["counts"]["skipped_existing"] == 0
        assert all("resampling grid 'rounded voxel counts'" in r["reason"] for r in manifest["redone_invalid"])
        assert main(_args(root, out, fmt)) == 0 and _manifest(out, fmt)["counts"]["skipped_existing"] == 3


def test_layout_b_reports_and_duplicate_names_are_checked_by_preprocess(tmp_path, capsys):
    root, out = tmp_path / "src", tmp_path / "out"
    vols = make_layout_b(root, ["a", "b"])
    argv = ["--data-root", str(root), "--split", "val", "--out", str(out), "--format", "cache", "--model", "tiny",
            "--input-info", "-1000", "400", "resize", "--workers", "1"]  # fmt: skip
    reports = root / "val" / "reports" / "reports.json"
    reports.parent.mkdir(parents=True, exist_ok=True)
    reports.write_text('{"a": "Findings: x.", "a": "Findings: y."}')
    assert run_cli(PROG, lambda: main(argv)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"{PROG}: error: {reports}: key 'a' given 2 times in one mapping", err
    reports.write_text('{"a": "Findings: x.", "b": "Findings: y."}')
    twin = vols["a"].with_name("a.nii")
    twin.write_bytes(b"")
    assert run_cli(PROG, lambda: main(argv)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"{PROG}: error: {twin} and {vols['a']}: two volume files named a; keep one", err
    assert not out.exists() or not list(out.rglob("*.vol.zst"))
