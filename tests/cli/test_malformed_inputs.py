"""Malformed input table across the loaders and CLIs: each bad input gives a clear error naming the file and the
cause, or (where --skip-bad applies) a counted skip. Reader-table cases live in test_readers_bad.py."""

import gzip
import importlib
import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from reaf import create_model
from reaf.data.formats import FORMATS, VolumeError, VolumeMeta, load_volume, save_cache
from reaf.data.input_spec import InputSpec
from reaf.data.loader import TokenizingCollate, VolumeDataset
from reaf.data.readers import ReaderError, Sample, SplitData, read_split
from reaf.evaluation.embeddings import save_embeddings
from reaf.exit_status import one_line, run_cli
from reaf.model.config import config_from_dict, load_model_config
from tests.support.bad_inputs import (
    LABELS,
    META,
    REPORTS,
    VICTIM,
    add_orphan,
    check_bad_input,
    drop_row,
    edit_csv,
    edit_json,
    set_cell,
    write_text,
)
from tests.support.layouts import VALID, truth_for, write_layout_a

REPO = Path(__file__).resolve().parents[2]


def test_subset_labels_csv_defines_the_split(tmp_path, caplog):
    """A labels CSV listing a subset of the files (the reference's *_clean.csv) is a split, not an error."""
    source = write_layout_a(tmp_path, "valid", truth_for(VALID))
    edit_csv(LABELS, drop_row)(tmp_path)
    add_orphan(tmp_path)
    with caplog.at_level(logging.INFO, logger="reaf.data.readers"):
        split = read_split(source, fmt="ori")
    assert [s.name for s in split.samples] == [n for n in VALID if n != VICTIM]
    assert split.unlisted == 2 and split.skipped == []
    notes = [r for r in caplog.records if "does not list" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "valid_predicted_labels.csv" in notes[0].getMessage() and "2 volume file(s)" in notes[0].getMessage()


def test_listed_row_without_file_stays_an_error(tmp_path):
    source = write_layout_a(tmp_path, "valid", truth_for(VALID))
    df = pd.read_csv(source)
    pd.concat([df, df.iloc[[0]].assign(VolumeName="valid_7_a_1.nii.gz")]).to_csv(source, index=False)
    with pytest.raises(ReaderError, match=r"valid_predicted_labels.csv: valid_7_a_1 is listed but no .nii.gz file"):
        read_split(source, fmt="ori")
    split = read_split(source, fmt="ori", skip_bad=True)
    assert [name for name, _ in split.skipped] == ["valid_7_a_1"] and len(split) == len(VALID)


# ---------------------------------------------------------------------------------------------------------------
# Volume files: every format, through load_volume (the error) and VolumeDataset with skip_bad (the counted skip).

SPEC = InputSpec(size=(8, 16, 16), hu_min=-1150.0, hu_max=350.0, mode="resize")
VOXELS = np.random.default_rng(0).integers(-1000, 500, (20, 20, 10)).astype(np.int16)  # nibabel (x, y, z)


def nifti(arr: np.ndarray, zooms=(0.8, 0.8, 2.0), name: str = "v.nii.gz"):
    def write(folder: Path) -> Path:
        path = folder / name
        image = nib.Nifti1Image(arr, np.diag([*(z or 1.0 for z in zooms), 1.0]))
        image.header.set_zooms(zooms[: arr.ndim] + (1.0,) * (arr.ndim - 3))  # a zero stays zero in pixdim
        nib.save(image, str(path))
        return path

    return write


def with_nan(value: float, dtype=np.float32) -> np.ndarray:
    arr = VOXELS.astype(dtype)
    arr[3, 4, 5] = value
    return arr


def cut(write, keep: float = 0.5, name: str | None = None):
    """The file `write` makes, cut to `keep` of its bytes (0: an empty file)."""

    def write_cut(folder: Path) -> Path:
        path = write(folder)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)] if keep else b"")
        return path

    return write_cut


def torch_file(obj, name: str, gz: bool = False):
    def write(folder: Path) -> Path:
        path = folder / name
        buf = io.BytesIO()
        torch.save(obj, buf)
        path.write_bytes(gzip.compress(buf.getvalue()) if gz else buf.getvalue())
        return path

    return write


def stage2_with(value: float):
    x = torch.zeros(1, *SPEC.size)
    x[0, 1, 2, 3] = value
    return torch_file(x, "v.pt.gz", gz=True)


def stage1_with(value: float):
    x = torch.zeros(20, 20, 10)
    x[1, 2, 3] = value
    return torch_file(x, "v.pt")


def cache_for(spec: InputSpec):
    def write(folder: Path) -> Path:
        save_cache(folder / "v.vol.zst", torch.rand(spec.size), spec)
        return folder / "v.vol.zst"

    return write


# (id, format, writer(folder) -> path, cause in the message)
VOLUME_CASES = [
    ("nifti-truncated-gzip", "ori", cut(nifti(VOXELS)), "not a readable gzip file"),
    ("nifti-zero-bytes", "ori", cut(nifti(VOXELS), 0), "not a NIfTI file"),
    ("nifti-truncated-data", "ori", cut(nifti(VOXELS, name="v.nii"), 0.9), "truncated NIfTI"),
    ("nifti-2d", "ori", nifti(VOXELS[:, :, 0]), "expected a 3-D volume, got shape (20, 20)"),
    ("nifti-4d", "ori", nifti(np.stack([VOXELS, VOXELS], -1)), "expected a 3-D volume, got shape (20, 20, 10, 2)"),
    ("nifti-nan-voxel", "ori", nifti(with_nan(np.nan)), "1 NaN/inf voxels"),
    ("nifti-inf-voxel-float64", "ori", nifti(with_nan(-np.inf, np.float64)), "1 NaN/inf voxels"),
    ("nifti-zero-spacing", "ori", nifti(VOXELS, zooms=(0.8, 0.8, 0.0)), "not all positive"),
    ("nifti-1000mm-spacing", "ori", nifti(VOXELS, zooms=(0.8, 0.8, 1000.0)),
     "(1000, 0.8, 0.8) mm is outside the plausible (0.05, 20] mm"),
    ("stage1-nan", "stage1", stage1_with(float("nan")), "1 NaN/inf voxels"),
    ("stage1-inf", "stage1", stage1_with(float("inf")), "1 NaN/inf voxels"),
    ("stage1-2d", "stage1", torch_file(torch.zeros(20, 20), "v.pt"), "3-D float HU tensor"),
    ("stage1-not-a-tensor", "stage1", torch_file({"hu": 1}, "v.pt"), "got dict"),
    ("stage1-zero-bytes", "stage1", cut(torch_file(torch.zeros(4, 4, 4), "v.pt"), 0), "0 bytes: empty or truncated"),
    ("stage2-nan", "stage2", stage2_with(float("nan")), "1 NaN/inf voxels"),
    ("stage2-inf", "stage2", stage2_with(float("-inf")), "1 NaN/inf voxels"),
    ("stage2-wrong-shape", "stage2", torch_file(torch.zeros(1, 8, 16, 8), "v.pt.gz", gz=True), "differs from"),
    ("stage2-int-tensor", "stage2", torch_file(torch.zeros(1, 8, 16, 16, dtype=torch.int32), "v.pt.gz", gz=True),
     "must hold a float32/float16 tensor"),  # fmt: skip
    ("stage2-truncated", "stage2", cut(stage2_with(0.0)), "Compressed file ended"),
    ("cache-zero-bytes", "cache", cut(cache_for(SPEC), 0), "not a REAF cache file"),
    ("cache-truncated", "cache", cut(cache_for(SPEC), 0.6), "did not decompress full frame"),
    ("cache-other-window", "cache", cache_for(InputSpec(SPEC.size, -1000.0, 400.0, "resize")), "cache was written"),
    ("cache-other-size", "cache", cache_for(InputSpec((8, 16, 8), mode="resize")), "differs from the model input"),
]


@pytest.mark.parametrize("case", VOLUME_CASES, ids=[c[0] for c in VOLUME_CASES])
def test_bad_volume_file(tmp_path, case):
    _, fmt, write, cause = case
    path = write(tmp_path)
    with pytest.raises(VolumeError) as err:
        load_volume(path, fmt, SPEC)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and cause in message, message
    # the same file under skip_bad: dropped from its batch, listed with the same message, nothing substituted
    rel = path.name.removesuffix(FORMATS[fmt]).removesuffix(".nii")
    sample = Sample("valid_1_a_1", "valid_1_a", "valid_1", rel, "Findings: x.", None, None)
    split = SplitData([sample], tmp_path, fmt, False, "table")
    batch = TokenizingCollate(lambda texts: (torch.zeros(len(texts), 4), torch.ones(len(texts), 4)))(
        [VolumeDataset(split, SPEC, skip_bad=True)[0]]
    )
    assert batch["name"] == [] and batch["image"].numel() == 0 and batch["skipped"] == [("valid_1_a_1", message)]
    with pytest.raises(VolumeError, match=re.escape(cause)):
        VolumeDataset(split, SPEC)[0]


def test_zero_header_spacing_is_fine_when_the_metadata_csv_gives_it(tmp_path):
    path = nifti(VOXELS, zooms=(0.8, 0.8, 0.0))(tmp_path)
    meta = VolumeMeta(xy_spacing=(0.8, 0.8), z_spacing=2.0, slope=1.0, intercept=0.0)
    assert load_volume(path, "ori", SPEC, meta).shape == (1, *SPEC.size)


# ---------------------------------------------------------------------------------------------------------------
# Tables and reports beyond test_readers_bad.py's table, checked by its own test (error, then counted skip).

def write_bytes(rel: str, data: bytes):
    return lambda root: (root / rel).write_bytes(data)


def set_json_report(value):
    return edit_json(lambda d: {**d, VICTIM: value})


def repeat_json_key(root: Path) -> None:
    """reports.json naming VICTIM twice (json.loads would keep the second silently)."""
    path = root / "valid/reports/reports.json"
    path.write_text(path.read_text().rstrip()[:-1] + f', "{VICTIM}": "Findings: another report."}}')


def twin_volume(suffix: str):
    """A second volume of VICTIM's name beside its .nii.gz: a plain .nii copy or a DICOM series folder."""

    def mutate(root: Path) -> None:
        volumes = root / "valid" / "volumes"
        if suffix == "/":
            (volumes / VICTIM).mkdir()
            (volumes / VICTIM / "1.dcm").write_bytes(b"\0" * 128 + b"DICM")
        else:
            (volumes / f"{VICTIM}{suffix}").write_bytes((volumes / f"{VICTIM}.nii.gz").read_bytes())

    return mutate


READER_CASES = [
    ("reports-csv-not-utf8", "A", write_bytes(REPORTS, b"VolumeName,Findings_EN\n\xff\xfe\xfa,x\n"),
     "validation_reports.csv", "cannot read CSV", None),
    ("report-json-not-utf8", "B", write_bytes("valid/reports/reports.json", b'{"a": "\xff\xfe"}'), "reports.json",
     "cannot read report JSON", None),
    ("report-json-a-number", "B", write_text("valid/reports/reports.json", "42"), "reports.json",
     "must be a {name: text} mapping", None),
    ("report-json-null", "B", set_json_report(None), "reports.json", "empty report", [VICTIM]),
    ("report-json-None-string", "B", set_json_report("None"), "reports.json", "empty report", [VICTIM]),
    ("report-json-repeated-key", "B", repeat_json_key, "reports.json", f"key '{VICTIM}' given 2 times", None),
    ("report-json-key-with-and-without-suffix", "B", edit_json(
        lambda d: {**d, f"{VICTIM}.nii.gz": "Findings: x."}), "reports.json", f"name one volume {VICTIM}", None),
    ("report-json-a-dict-report", "B", set_json_report({"text": 1}), "reports.json",
     f"the report of {VICTIM} is a JSON dict ({{\"text\": 1}}), not a string", None),
    ("report-json-a-number-report", "B", set_json_report(7), "reports.json", "is a JSON int (7), not a string", None),
    ("volume-nii-beside-nii-gz", "B", twin_volume(".nii"), f"{VICTIM}.nii and ",
     f"two volume files named {VICTIM}; keep one", None),
    ("volume-dicom-folder-beside-nifti", "B", twin_volume("/"), f"{VICTIM}.nii.gz and ",
     f"a NIfTI file and a DICOM series folder named {VICTIM}", None),
    ("label-minus-one", "A", edit_csv(LABELS, set_cell("Cardiomegaly", "-1")), "valid_predicted_labels.csv",
     "'Cardiomegaly'='-1' is not 0/1", [VICTIM]),
    ("label-one-half", "A", edit_csv(LABELS, set_cell("Emphysema", "0.5")), "valid_predicted_labels.csv",
     "is not 0/1", [VICTIM]),
    ("z-spacing-zero", "A", edit_csv(META, set_cell("ZSpacing", "0")), "validation_metadata.csv",
     "ZSpacing=0.0 is not positive", [VICTIM]),
    ("z-spacing-negative", "A", edit_csv(META, set_cell("ZSpacing", "-2.5")), "validation_metadata.csv",
     "ZSpacing=-2.5 is not positive", [VICTIM]),
    ("xy-spacing-zero", "A", edit_csv(META, set_cell("XYSpacing", "[0.0, 0.7]")), "validation_metadata.csv",
     "positive spacings", [VICTIM]),
    ("duplicate-report-row", "A", edit_csv(REPORTS, lambda df: pd.concat([df, df[df.VolumeName == f"{VICTIM}.nii.gz"]])),
     "validation_reports.csv", "duplicate VolumeName", [VICTIM]),
]  # fmt: skip


@pytest.mark.parametrize("case", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_bad_table_or_report(tmp_path, case):
    check_bad_input(tmp_path, case)


# ---------------------------------------------------------------------------------------------------------------
# The CLIs: one line '<tool>: error: <file> ... <cause>', exit status 1, no traceback.

def tiny_checkpoint(folder: Path, **cfg_change) -> Path:
    """A reference-format checkpoint (bare state dict) of the tiny model, optionally of a changed config."""
    torch.manual_seed(0)
    cfg = load_model_config("tiny").to_dict()
    cfg["vision"].update(cfg_change)
    model = create_model(config_from_dict(cfg, where="test"))
    torch.save({"state_dict": model.state_dict()}, folder / "ckpt.pt")
    return folder / "ckpt.pt"


def cut_checkpoint(folder: Path) -> Path:
    path = tiny_checkpoint(folder)
    path.write_bytes(path.read_bytes()[:5000])
    return path


def text_file(folder: Path) -> Path:
    (folder / "notes.pt").write_text("not a checkpoint\n")
    return folder / "notes.pt"


def good_embeddings(folder: Path, image: np.ndarray | None = None) -> Path:
    image = np.eye(3, dtype=np.float32) if image is None else image
    store = {"names": ["v1", "v2", "v3"], "scan_ids": ["s1", "s2", "s3"], "reports": ["a", "b", "c"],
             "image": image, "text": np.eye(3, dtype=np.float32), "labels": None, "logit_scale": 10.0}
    save_embeddings(folder / "e.pt", store, key=None, meta={"checkpoint": None, "model_config": {}})
    return folder / "e.pt"


def nan_embeddings(folder: Path) -> Path:
    image = np.eye(3, dtype=np.float32)
    image[1, 1] = np.nan
    return good_embeddings(folder, image)


def zero_shot_argv(path: Path, *extra: str) -> list[str]:
    return ["--resume", str(path), "--zeroshot-ct-rate", "unused.csv", "--device", "cpu", *extra]


# (id, prog, module, writer(folder) -> file, argv(file, folder), cause)
CLI_CASES = [
    ("zero-shot-text-file", "zero_shot.py", "zero_shot", text_file, lambda f, d: zero_shot_argv(f),
     "is not a readable PyTorch checkpoint"),
    ("zero-shot-truncated-checkpoint", "zero_shot.py", "zero_shot", cut_checkpoint,
     lambda f, d: zero_shot_argv(f, "--model", "tiny"), "is not a readable PyTorch checkpoint"),
    ("zero-shot-missing-checkpoint", "zero_shot.py", "zero_shot", lambda d: d / "gone.pt",
     lambda f, d: zero_shot_argv(f), "does not exist"),
    ("zero-shot-checkpoint-of-another-config", "zero_shot.py", "zero_shot",
     lambda d: tiny_checkpoint(d, patch_size=[8, 16, 8]), lambda f, d: zero_shot_argv(f, "--model", "tiny"),
     "does not match the model"),
    ("main-corrupt-resume", "main.py", "main", text_file,
     lambda f, d: ["--model", "tiny", "--data-root", str(d), "--resume", str(f), "--logs", str(d / "logs")],
     "is not a readable PyTorch checkpoint"),
    ("preprocess-missing-ct-rate-root", "python -m reaf.preprocess", "reaf.preprocess", lambda d: d / "no_root",
     lambda f, d: ["--ct-rate-root", str(f), "--split", "valid", "--out", str(d / "o"), "--format", "cache"],
     "--ct-rate-root"),
    ("preprocess-missing-data-root", "python -m reaf.preprocess", "reaf.preprocess", lambda d: d / "no_root",
     lambda f, d: ["--data-root", str(f), "--split", "valid", "--out", str(d / "o"), "--format", "cache"],
     "no such folder"),
    ("search-not-embeddings", "python -m reaf.search", "reaf.search", text_file,
     lambda f, d: ["--embeddings", str(f), "--volume", "v1"], "not a readable REAF embeddings file"),
    ("search-nan-embeddings", "python -m reaf.search", "reaf.search", nan_embeddings,
     lambda f, d: ["--embeddings", str(f), "--volume", "v1"], "image embeddings: 1 non-finite value(s) (NaN/inf) in 1 row(s), e.g. ['v2']"),
    ("search-unknown-volume", "python -m reaf.search", "reaf.search", good_embeddings,
     lambda f, d: ["--embeddings", str(f), "--volume", "v9"], "volume 'v9' is not in it"),
    ("synthetic-out-is-a-file", "python -m reaf.synthetic", "reaf.synthetic.dataset", text_file,
     lambda f, d: ["--out", str(f), "--num-train", "2", "--num-valid", "2"], "Not a directory"),
    ("demo-out-is-a-file", "python -m reaf.demo", "reaf.demo", text_file,
     lambda f, d: ["--out", str(f)], "File exists"),
]  # fmt: skip


# Counts are refused when the flags are parsed (argparse: exit status 2, '<tool>: error: argument <flag>: ...'),
# never used as Python slices. (id, module, prog, argv, message)
COUNT_CASES = [
    ("preprocess-limit-negative", "reaf.preprocess", "python -m reaf.preprocess",
     ["--data-root", "d", "--split", "s", "--out", "o", "--format", "cache", "--limit", "-1"],
     "argument --limit: must be >= 1, got -1"),
    ("preprocess-limit-zero", "reaf.preprocess", "python -m reaf.preprocess",
     ["--data-root", "d", "--split", "s", "--out", "o", "--format", "cache", "--limit", "0"],
     "argument --limit: must be >= 1, got 0"),
    ("preprocess-workers-negative", "reaf.preprocess", "python -m reaf.preprocess",
     ["--data-root", "d", "--split", "s", "--out", "o", "--format", "cache", "--workers", "-1"],
     "argument --workers: must be >= 0, got -1"),
    ("search-k-negative", "reaf.search", "python -m reaf.search", ["--embeddings", "e.pt", "--query", "x", "-k", "-2"],
     "argument -k: must be >= 1, got -2"),
    ("search-k-zero", "reaf.search", "python -m reaf.search", ["--embeddings", "e.pt", "--volume", "v1", "-k", "0"],
     "argument -k: must be >= 1, got 0"),
    ("search-empty-query", "reaf.search", "python -m reaf.search", ["--embeddings", "e.pt", "--query", " "],
     "argument --query: must not be empty"),
    ("zero-shot-batch-size-zero", "zero_shot", "zero_shot.py", zero_shot_argv(Path("c.pt"), "--batch-size", "0"),
     "argument --batch-size: must be >= 1, got 0"),
    ("zero-shot-bootstrap-negative", "zero_shot", "zero_shot.py", zero_shot_argv(Path("c.pt"), "--bootstrap", "-1"),
     "argument --bootstrap: must be >= 0, got -1"),
    ("zero-shot-workers-negative", "zero_shot", "zero_shot.py", zero_shot_argv(Path("c.pt"), "--workers", "-1"),
     "argument --workers: must be >= 0, got -1"),
    ("main-batch-size-zero", "main", "main.py", ["--data-root", "d", "--batch-size", "0"],
     "argument --batch-size: must be >= 1, got 0"),
    ("main-epochs-negative", "main", "main.py", ["--data-root", "d", "--epochs", "-3"],
     "argument --epochs: must be >= 1, got -3"),
    ("main-lr-negative", "main", "main.py", ["--data-root", "d", "--lr", "-0.1"], "--lr must be > 0, got -0.1"),
    ("synthetic-workers-negative", "reaf.synthetic.dataset", "python -m reaf.synthetic",
     ["--out", "o", "--workers", "-1"], "argument --workers: must be >= 0, got -1"),
]  # fmt: skip


@pytest.mark.parametrize("case", COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_bad_counts_are_refused_when_parsed(capsys, case):
    _, module, prog, argv, message = case
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"{prog}: error: {message}"


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_error_is_one_line(tmp_path, capsys, case):
    _, prog, module, write, argv, cause = case
    path = write(tmp_path)
    main = importlib.import_module(module).main
    status = run_cli(prog, lambda: main(argv(path, tmp_path)))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert status == 1 and last.startswith(f"{prog}: error: "), err
    assert (str(path) in last or path.name in last) and cause in last, last
    assert "Traceback" not in err


def test_debug_flag_shows_the_traceback(tmp_path, monkeypatch):
    import zero_shot

    monkeypatch.setenv("REAF_DEBUG", "1")
    with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
        run_cli("zero_shot.py", lambda: zero_shot.main(zero_shot_argv(text_file(tmp_path))))


def test_worker_errors_keep_their_last_line():
    err = RuntimeError("Caught VolumeError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                       "last):\n  File x\nreaf.volume.VolumeError: /d/v.nii.gz: 1 NaN/inf voxels\n")
    assert one_line(err) == "reaf.volume.VolumeError: /d/v.nii.gz: 1 NaN/inf voxels"
    assert one_line(KeyError("v9")) == "v9"


def test_zero_shot_script_prints_one_line(tmp_path):
    """The issue's case, through the real script: a file that is no checkpoint ends in one line, exit 1."""
    proc = subprocess.run([sys.executable, str(REPO / "zero_shot.py"), *zero_shot_argv(text_file(tmp_path))],
                          capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"zero_shot.py: error: checkpoint {tmp_path / 'notes.pt'} is not a readable PyTorch "
                               "checkpoint (damaged, truncated or another kind of file; 17 bytes; torch.load: ")
    assert "Unsupported operand" in lines[0] and "weights_only" not in lines[0], lines[0]
