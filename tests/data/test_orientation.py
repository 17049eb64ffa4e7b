"""NIfTI orientation: layout-B volumes stored in any axis-aligned orientation (RAS, flipped, permuted, slightly
oblique) read as the same voxels at the same anatomical positions as CT-RATE's LPS; too oblique or degenerate
affines are refused naming file and cause; CT-RATE's files (and layout A whatever its header) come out bit for bit
as before; the orientation is logged and recorded in the preprocessing manifest."""

from __future__ import annotations

import json
import logging
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from reaf.data.formats import DECISIONS, load_volume, nifti_to_hu, read_nifti, volume_file
from reaf.data.input_spec import InputSpec
from reaf.data.loader import VolumeDataset
from reaf.data.orientation import MAX_OBLIQUITY_DEG, OrientationError, file_orientation
from reaf.data.readers import read_split
from reaf.preprocess import main as preprocess
from tests.support.volumes import chest_like

SPACING = (0.8, 0.9, 2.5)  # mm along CT-RATE's i (L), j (P), k (S)
SHAPE = (40, 36, 12)  # (i, j, k)
ORIGIN = np.array([160.0, 140.0, -300.0])
MARK = (3, 5, 7)  # a voxel of the reference given a value no other voxel has


def lps_affine() -> np.ndarray:
    """CT-RATE's orientation in nibabel's RAS+ world: i toward the patient's left (-x), j posterior (-y), k up."""
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = ORIGIN
    return affine


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """(i, j, k) int16 HU in CT-RATE's voxel order, with one marked voxel."""
    data = chest_like(SHAPE[::-1], seed=3).transpose(2, 1, 0).astype(np.int16)
    data[MARK] = 1234
    return data


def restored(reference: np.ndarray, perm: tuple[int, int, int], flips: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored another way: new axis n holds reference axis perm[n], reversed when n is in flips.

    Built without nibabel's orientation code: new voxel v sits at reference voxel u = P v + c, so its affine is
    lps_affine() @ [[P, c], [0, 1]]; the marked voxel is checked to keep its world position."""
    data = reference.transpose(perm)
    mapping = np.zeros((4, 4))
    mapping[3, 3] = 1.0
    for n, old in enumerate(perm):
        mapping[old, n] = -1.0 if n in flips else 1.0
        mapping[old, 3] = data.shape[n] - 1 if n in flips else 0
    for n in flips:
        data = np.flip(data, axis=n)
    affine = lps_affine() @ mapping
    new_mark = np.argwhere(data == 1234)[0]
    assert np.allclose(affine @ [*new_mark, 1], lps_affine() @ [*MARK, 1])  # same anatomical position
    return np.ascontiguousarray(data), affine


def write(path, data: np.ndarray, affine: np.ndarray, zooms=None):
    img = nib.Nifti1Image(data, affine)
    if zooms is not None:
        img.header.set_zooms(zooms)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [x for x in range(3) if x != axis]
    rot = np.eye(4)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


VARIANTS = {  # name: (perm, flips, axis codes nibabel reads from the affine)
    "LPS": ((0, 1, 2), (), "LPS"),
    "RAS": ((0, 1, 2), (0, 1), "RAS"),
    "LPI": ((0, 1, 2), (2,), "LPI"),
    "SLP": ((2, 0, 1), (), "SLP"),
    "ASL": ((1, 2, 0), (0,), "ASL"),
    "IRA": ((2, 0, 1), (0, 1, 2), "IRA"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_any_axis_aligned_orientation_reads_as_ct_rate_voxels_and_spacing(reference, tmp_path, name):
    perm, flips, codes = VARIANTS[name]
    data, affine = restored(reference, perm, flips)
    path = write(tmp_path / f"{name}.nii.gz", data, affine)
    found = file_orientation(path, "header")
    assert found.codes == codes and (found.transform is None) == (name == "LPS")
    stored, _, spacing = read_nifti(path, "header")
    assert np.array_equal(stored, reference.transpose(2, 1, 0)) and stored.dtype == np.int16  # (z, y, x)
    assert spacing == pytest.approx(SPACING[::-1])
    lps = write(tmp_path / "lps.nii.gz", reference, lps_affine())
    assert torch.equal(nifti_to_hu(path, None, "header")[0], nifti_to_hu(lps, None, "header")[0])


@pytest.mark.parametrize("degrees", [10.0, MAX_OBLIQUITY_DEG - 1])
def test_a_tilt_within_the_limit_maps_each_axis_to_its_nearest(reference, tmp_path, degrees):
    data, affine = restored(reference, *VARIANTS["RAS"][:2])
    path = write(tmp_path / "tilted.nii.gz", data, rotation(0, degrees) @ affine)  # a gantry tilt about R-L
    found = file_orientation(path, "header")
    assert found.codes == "RAS" and found.obliquity == pytest.approx(degrees)
    assert f"{degrees:.1f} deg oblique" in found.describe()
    assert np.array_equal(read_nifti(path, "header")[0], reference.transpose(2, 1, 0))


@pytest.mark.parametrize("axis,degrees,tilt", [(2, 45.0, 45.0), (0, MAX_OBLIQUITY_DEG + 1, MAX_OBLIQUITY_DEG + 1),
                                               (1, 50.0, 40.0)])  # 50 deg about A-P is 40 deg off the swapped axes
def test_too_oblique_is_refused_with_the_file_and_cause(reference, tmp_path, axis, degrees, tilt):
    path = write(tmp_path / "oblique.nii.gz", reference, rotation(axis, degrees) @ lps_affine())
    with pytest.raises(OrientationError, match=rf"cannot be made axial: .* by {tilt:.1f} deg"):
        read_nifti(path, "header")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: cannot be made axial"):
        load_volume(path, "ori", InputSpec((8, 32, 32)), orientation="header")
    assert file_orientation(path, "ct-rate").obliquity == pytest.approx(tilt)  # layout A: recorded, kept


def test_a_degenerate_affine_is_refused(reference, tmp_path):
    affine = lps_affine()
    affine[:3, 1] = affine[:3, 0]  # two voxel axes along one direction
    path = write(tmp_path / "flat.nii.gz", reference, affine, zooms=SPACING)
    with pytest.raises(OrientationError, match="degenerate"):
        read_nifti(path, "header")
    assert file_orientation(path, "ct-rate").source == "degenerate sform"


def test_ct_rate_files_and_layout_a_come_out_bit_for_bit_unchanged(reference, tmp_path):
    """CT-RATE's LPS (v2) and identity (v1, states nothing) headers are kept under both policies; layout A keeps
    any header's order. Kept means read_nifti returns the very view it returned before orientation was read."""
    data, ras = restored(reference, *VARIANTS["RAS"][:2])
    files = {"v2": write(tmp_path / "v2.nii.gz", reference, lps_affine()),
             "v1": write(tmp_path / "v1.nii.gz", reference, np.eye(4), zooms=SPACING),
             "ras": write(tmp_path / "ras.nii.gz", data, ras)}  # fmt: skip
    for name, path in files.items():
        raw = np.asanyarray(nib.load(path).dataobj.get_unscaled()).transpose(2, 1, 0)
        policies = ("ct-rate",) if name == "ras" else ("ct-rate", "header")
        for policy in policies:
            stored, _, _ = read_nifti(path, policy)
            assert np.array_equal(stored, raw) and stored.dtype == raw.dtype and stored.strides == raw.strides
            assert not stored.flags.owndata  # still the zero-copy view of the decompressed file
        if name != "ras":
            assert file_orientation(path, "header").transform is None
            assert torch.equal(nifti_to_hu(path, None, "header")[0], nifti_to_hu(path, None, "ct-rate")[0])
    assert file_orientation(files["v1"], "header").describe() == "orientation not stated (identity affine): kept"
    assert file_orientation(files["v2"], "header").describe() == "orientation LPS (sform): kept"


def test_the_orientation_is_logged_and_counted(reference, tmp_path, caplog):
    data, affine = restored(reference, *VARIANTS["SLP"][:2])
    path = write(tmp_path / "slp.nii.gz", data, affine)
    before = DECISIONS["orientation SLP (sform): reoriented to LPS"]
    with caplog.at_level(logging.DEBUG, logger="reaf.data.formats"):
        read_nifti(path, "header")
    assert f"{path}: orientation SLP (sform): reoriented to LPS" in caplog.text
    assert DECISIONS["orientation SLP (sform): reoriented to LPS"] == before + 1


def _layout_b(root, files: dict[str, tuple[np.ndarray, np.ndarray]]):
    for name, (data, affine) in files.items():
        write(root / "val" / "volumes" / f"{name}.nii.gz", data, affine)
    (root / "val" / "reports").mkdir(parents=True, exist_ok=True)
    (root / "val" / "reports" / "reports.json").write_text(json.dumps({n: "No findings." for n in files}))
    return root / "val"


def _preprocess(root, out, fmt="stage1", *extra):
    return preprocess(["--data-root", str(root), "--split", "val", "--out", str(out), "--format", fmt, "--model",
                       "tiny", "--workers", "1", *extra])  # fmt: skip


def test_layout_b_preprocessing_and_loading_reorient_and_record_it(reference, tmp_path):
    files = {name: restored(reference, *VARIANTS[name][:2]) for name in ("LPS", "RAS", "SLP")}
    split_dir = _layout_b(tmp_path / "src", files)
    out = tmp_path / "out"
    assert _preprocess(tmp_path / "src", out) == 0
    stage1 = {name: torch.load(out / "val" / "volumes" / f"{name}.pt", weights_only=True) for name in files}
    assert torch.equal(stage1["RAS"], stage1["LPS"]) and torch.equal(stage1["SLP"], stage1["LPS"])
    manifest = json.loads((out / "manifest_val_stage1.json").read_text())
    assert [entry["file"].rsplit("/", 1)[-1] for entry in manifest["reoriented"]] == ["RAS.nii.gz", "SLP.nii.gz"]
    assert manifest["decisions"]["orientation LPS (sform): kept"] == 1
    assert manifest["decisions"]["orientation SLP (sform): reoriented to LPS"] == 1
    assert _preprocess(tmp_path / "src", out) == 0  # a rerun verifies the outputs' (permuted) shapes: all kept
    assert json.loads((out / "manifest_val_stage1.json").read_text())["counts"]["skipped_existing"] == 3
    split = read_split(split_dir, fmt="ori")
    assert split.layout == "B"
    spec = InputSpec((8, 32, 32), -1150, 350, "resize")
    items = {s.name: VolumeDataset(split, spec)[i]["image"] for i, s in enumerate(split.samples)}
    assert torch.equal(items["RAS"], items["LPS"]) and torch.equal(items["SLP"], items["LPS"])
    ras = volume_file(split.root, split.samples[[s.name for s in split.samples].index("RAS")].rel, "ori")
    assert not torch.equal(load_volume(ras, "ori", spec), items["LPS"])  # read as stored, RAS differs


def test_layout_b_preprocessing_refuses_an_oblique_volume_in_one_line(reference, tmp_path):
    oblique = (reference, rotation(2, 45.0) @ lps_affine())
    _layout_b(tmp_path / "src", {"fine": (reference, lps_affine()), "oblique": oblique})
    bad = tmp_path / "src" / "val" / "volumes" / "oblique.nii.gz"
    with pytest.raises(ValueError) as err:  # the CLI prints it as `python -m reaf.preprocess: error: <message>`
        _preprocess(tmp_path / "src", tmp_path / "out")
    message = str(err.value)
    assert message.startswith(f"{bad}: cannot be made axial") and "\n" not in message
    assert _preprocess(tmp_path / "src", tmp_path / "lenient", "stage1", "--skip-bad") == 0
    manifest = json.loads((tmp_path / "lenient" / "manifest_val_stage1.json").read_text())
    assert [entry["file"] for entry in manifest["skipped_bad"]] == [str(bad)]
    assert "45.0 deg" in manifest["skipped_bad"][0]["reason"] and manifest["counts"]["written"] == 1
