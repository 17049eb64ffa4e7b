"""DICOM CT series: ordering, HU, geometry against the NIfTI path, refusals, layout B and preprocessing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (  # noqa: E402
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

from reaf.data.dicom import dicom_stage1_shape, dicom_to_hu, is_dicom_series, read_dicom_series  # noqa: E402
from reaf.data.formats import load_volume, volume_file  # noqa: E402
from reaf.data.input_spec import InputSpec  # noqa: E402
from reaf.data.loader import VolumeDataset  # noqa: E402
from reaf.data.readers import read_split  # noqa: E402
from reaf.preprocess import main as preprocess_main  # noqa: E402
from tests.support.dicom import decimal_strings, planes, slice_dataset, write_series  # noqa: E402

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
SPEC = InputSpec((6, 16, 16), mode="resize")
SHAPE = (24, 20, 8)  # (i, j, k) = (columns, rows, slices)
# voxel (i, j, k) -> RAS mm of a volume stored in CT-RATE's order (L, P, S): what a scanner writes for head-first supine
LPS_STORED = np.array([[-0.9, 0, 0, 110.0], [0, -0.8, 0, 95.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])


def world_volume(seed: int = 0) -> np.ndarray:
    """(i, j, k) HU of a chest-like phantom in LPS_STORED's grid: air, an even-valued body, a bright block at the
    patient's left, posterior, superior corner (high i, j, k)."""
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE, -1000.0, np.float32)
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    body = ((i - 11.5) / 10) ** 2 + ((j - 9.5) / 8) ** 2 < 1
    hu[body] = 40 + 2 * rng.integers(-30, 30, size=(int(body.sum()), SHAPE[2]))
    hu[15:20, 12:17, 5:] = 1200
    return hu


def reorient(hu: np.ndarray, affine: np.ndarray, flips: tuple[bool, bool, bool]) -> tuple[np.ndarray, np.ndarray]:
    """The same world volume stored with the flipped voxel axes: (voxels, affine)."""
    out, new = hu, affine.copy()
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
            new[:3, 3] += affine[:3, axis] * (hu.shape[axis] - 1)
            new[:3, axis] = -affine[:3, axis]
    return np.ascontiguousarray(out), new


def rotation(degrees: float) -> np.ndarray:
    """A 4x4 rotation about the R-L axis (a gantry-tilt-like obliquity within the orientation limit)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    out = np.eye(4)
    out[1:3, 1:3] = [[c, -s], [s, c]]
    return out


def assert_same_world(series, hu: np.ndarray, affine: np.ndarray) -> None:
    """Every voxel of the series holds the written volume's value at the same RAS position."""
    ijk = np.indices(series.hu.shape).reshape(3, -1)
    where = (np.linalg.inv(affine) @ series.affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3]
    index = np.rint(where).astype(int)
    np.testing.assert_allclose(where, index, atol=1e-3)
    np.testing.assert_array_equal(series.hu[tuple(ijk)], hu[tuple(index)])


def error_of(folder: Path, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        read_dicom_series(folder, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{folder}: ") and "\n" not in message
    return message


def test_pydicom_real_series_ordered_by_position_not_instance_or_name(tmp_path):
    source = PYDICOM_FILES / "98892001" / "CT5N"
    files = sorted(source.iterdir())
    for n, path in enumerate(files):  # names that sort opposite to the slice positions
        shutil.copy(path, tmp_path / f"slice_{n:02d}")
    series = read_dicom_series(tmp_path)
    by_height = sorted(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))  # axial: z is up
    want = np.stack([pydicom.dcmread(p).pixel_array.T.astype(np.float32) - 1024 for p in by_height], axis=2)
    assert series.n_slices == 5 and series.skipped == {} and series.hu.dtype == np.float32
    np.testing.assert_array_equal(series.hu, want)
    np.testing.assert_allclose(series.spacing, (0.488281, 0.488281, 2.5), atol=1e-6)
    first = pydicom.dcmread(by_height[0]).ImagePositionPatient
    np.testing.assert_allclose(series.affine[:3, 3], [-first[0], -first[1], first[2]], atol=1e-6)
    np.testing.assert_allclose(np.diag(series.affine)[:3], [-0.488281, -0.488281, 2.5], atol=1e-6)
    assert series.orientation().transform is None  # already CT-RATE's L, P, S order
    # 5 x 2.5 mm and 16 x 0.488 mm: 12.5 mm -> 4, 7.8 mm -> 7 at 3 x 1 x 1 mm (counts truncated, the reference grid)
    assert dicom_to_hu(tmp_path)[0].shape == dicom_stage1_shape(tmp_path) == (4, 7, 7)


def test_pydicom_real_series_with_missing_slices_is_refused():
    folder = PYDICOM_FILES / "77654033" / "CT2"
    message = error_of(folder)
    assert "161 missing slice(s)" in message and "10 % of the median or 0.1 mm" in message


@pytest.mark.parametrize("flips", [(False, False, False), (True, True, False), (False, False, True),
                                   (True, False, True)], ids=["lps-head-first", "ras", "feet-first", "rps-feet-first"])
def test_any_storage_order_gives_the_same_voxels_in_the_world_and_the_same_hu_tensor(tmp_path, flips):
    hu, affine = world_volume(), LPS_STORED
    write_series(tmp_path / "lps", hu, affine)
    stored, stored_affine = reorient(hu, affine, flips)
    write_series(tmp_path / "other", stored, stored_affine, seed=1)
    series = read_dicom_series(tmp_path / "other")
    assert series.n_slices == SHAPE[2]
    assert_same_world(series, stored, stored_affine)
    assert series.orientation().transform is None or flips != (False, False, False)
    reference, decision = dicom_to_hu(tmp_path / "lps")
    assert torch.equal(dicom_to_hu(tmp_path / "other")[0], reference)
    assert decision.air == -1000 and "DICOM RescaleSlope" in decision.source
    # CT-RATE's order: slices from the feet up, anterior at the top, the patient's right on the left; the block sits
    # at the left, posterior, superior corner
    z, y, x = np.unravel_index(int(reference.argmax()), reference.shape)
    d, h, w = reference.shape
    assert z >= d // 2 and y >= h // 2 and x >= w // 2


@pytest.mark.parametrize("tilt", [0.0, 7.0])
@pytest.mark.parametrize("flips", [(False, False, False), (True, False, True)])
def test_nifti_and_dicom_series_of_the_same_volume_give_the_same_model_input(tmp_path, tilt, flips):
    hu, affine = reorient(world_volume(), LPS_STORED, flips)
    affine = rotation(tilt) @ affine
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "scan.nii.gz")
    write_series(tmp_path / "scan", hu, affine, rescale=lambda k: (0.5 if k % 2 else 2.0, -1000.0 - 24 * k))
    from_nifti = load_volume(tmp_path / "scan.nii.gz", "ori", SPEC, None, "header")
    from_dicom = load_volume(tmp_path / "scan", "ori", SPEC, None, "header")
    assert from_dicom.shape == (1, *SPEC.size)
    torch.testing.assert_close(from_dicom, from_nifti, atol=1e-5, rtol=0)
    series = read_dicom_series(tmp_path / "scan")
    np.testing.assert_allclose(series.affine, affine, atol=1e-5)
    series.to_nifti().to_filename(tmp_path / "again.nii.gz")  # the series as a NIfTI reads as the folder does
    torch.testing.assert_close(load_volume(tmp_path / "again.nii.gz", "ori", SPEC, None, "header"), from_dicom,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("tilt", [15.0, 35.0])
def test_gantry_tilt_spacing_along_the_normal_and_the_nifti_tilt_limit(tmp_path, tilt):
    hu, affine = world_volume(), LPS_STORED.copy()
    affine[1, 2] = 2.5 * np.tan(np.radians(tilt))  # each slice shifted along y: the slice axis is sheared
    write_series(tmp_path, hu, affine)
    series = read_dicom_series(tmp_path)
    assert_same_world(series, hu, affine)
    assert series.spacing[2] == pytest.approx(2.5)  # along the normal, not the 2.59 / 3.05 mm between positions
    if tilt < 30:
        assert "15.0 deg oblique" in series.orientation().describe()
        assert dicom_to_hu(tmp_path)[0].shape == dicom_stage1_shape(tmp_path)
    else:
        with pytest.raises(ValueError, match="^" + re.escape(f"{tmp_path}: cannot be made axial: ") + ".* 35.0 deg"):
            dicom_to_hu(tmp_path)


def test_rescale_differing_per_slice_gives_exact_hu(tmp_path):
    hu = world_volume()
    pairs = [(1.0, -1024.0), (0.5, -1000.0), (2.0, -2048.0), (0.25, -1100.0)]
    write_series(tmp_path, hu, LPS_STORED, rescale=lambda k: pairs[k % 4])
    series = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(series.hu, hu)
    assert set(series.rescale) == set(pairs)


def test_localizers_and_non_dicom_files_are_left_out_and_counted(tmp_path):
    hu = world_volume()
    uid = write_series(tmp_path, hu, LPS_STORED)
    plane = np.full((20, 24), -1000.0)
    flagged = slice_dataset(plane, [0, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1], uid, 99, image_type=("ORIGINAL", "LOCALIZER"))
    coronal = slice_dataset(plane, [0, 0, 0], [1, 0, 0, 0, 0, -1], [1, 1], uid, 98)  # another plane: a scout
    flagged.save_as(tmp_path / "scout1", enforce_file_format=True)
    coronal.save_as(tmp_path / "scout2", enforce_file_format=True)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 300)
    series = read_dicom_series(tmp_path)
    assert series.skipped == {"localizers": 2, "non-DICOM files": 2}
    assert series.n_slices == SHAPE[2]
    np.testing.assert_array_equal(series.hu, hu)


def test_two_series_in_one_folder_are_refused_naming_both_and_series_uid_picks_one(tmp_path):
    hu = world_volume()
    first = write_series(tmp_path, hu, LPS_STORED, description="LUNG")
    second = write_series(tmp_path, hu[:, :, :5], LPS_STORED, description="MEDIASTINUM", seed=2)
    message = error_of(tmp_path)
    assert "2 series in one folder" in message and "--series UID or one of its files" in message
    assert f"{first} (8 files, 'LUNG')" in message and f"{second} (5 files, 'MEDIASTINUM')" in message
    assert read_dicom_series(tmp_path, series_uid=second).n_slices == 5
    assert read_dicom_series(tmp_path, series_uid=first).series_uid == first
    assert "no series 1.2.3" in error_of(tmp_path, series_uid="1.2.3")


def test_missing_slice_and_uneven_spacing_are_refused(tmp_path):
    hu = world_volume()
    write_series(tmp_path / "gap", hu, LPS_STORED)
    middle = next(p for p in (tmp_path / "gap").iterdir() if abs(pydicom.dcmread(p).ImagePositionPatient[2] + 30) < 1e-3)
    middle.unlink()  # the slice at z = -30 mm: a 5 mm gap among 2.5 mm gaps
    assert "1 missing slice(s): gap of 5.00 mm after -32.50 mm" in error_of(tmp_path / "gap")
    folder = tmp_path / "uneven"
    folder.mkdir()
    p = planes(hu, LPS_STORED)
    for k, height in enumerate([0, 2.5, 5, 7.5, 10.4, 12.9, 15.4, 17.9]):  # one gap of 2.9 mm: 0.4 mm off
        ds = slice_dataset(p[k]["plane"], [0, 0, height], p[k]["cosines"], p[k]["pixel_spacing"], "1.2.9", k + 1)
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    message = error_of(folder)
    assert "uneven slice spacing: gap of 2.90 mm after 7.50 mm" in message and "by 0.25 mm" in message


@pytest.mark.parametrize("change, cause", [
    ({"Rows": 10}, "rows x"), ({"PixelSpacing": ["0.8", "0.95"]}, "PixelSpacing"),
    ({"ImageOrientationPatient": ["0.9998", "0.02", "0", "-0.02", "0.9998", "0"]}, "ImageOrientationPatient"),
    ({"Modality": "MR"}, "modality MR, not CT"),
], ids=["rows", "pixel-spacing", "orientation", "modality"])  # fmt: skip
def test_slices_that_disagree_or_a_non_ct_modality_are_refused(tmp_path, change, cause):
    write_series(tmp_path, world_volume(), LPS_STORED)
    path = sorted(tmp_path.iterdir())[3]
    ds = pydicom.dcmread(path)
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    assert cause in error_of(tmp_path)


def test_compressed_transfer_syntax_without_decoder_is_refused_naming_it_and_the_package(tmp_path):
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    write_series(tmp_path, world_volume(), LPS_STORED)
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\0" * 16])  # fake JPEG frames: never decoded
        ds.save_as(path, enforce_file_format=True)
    message = error_of(tmp_path)
    assert "JPEG Lossless" in message and str(JPEGLosslessSV1) in message
    assert "pylibjpeg-libjpeg" in message and "reaf[dicom-compressed]" in message


def test_enhanced_multiframe_ct_reads_as_the_same_series(tmp_path):
    hu, affine = reorient(world_volume(), LPS_STORED, (True, False, True))
    write_series(tmp_path / "classic", hu, affine)
    p = planes(hu, affine)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = EnhancedCTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, EnhancedCTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.NumberOfFrames = "CT", generate_uid(), len(p)
    ds.Rows, ds.Columns = p[0]["plane"].shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = decimal_strings(p[0]["cosines"])
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = decimal_strings(p[0]["pixel_spacing"])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    order = [3, 0, 7, 1, 6, 2, 5, 4]  # frames out of position order
    frames, stored = [], []
    for k in order:
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([Dataset()])
        frame.PlanePositionSequence[0].ImagePositionPatient = decimal_strings(p[k]["position"])
        frame.PixelValueTransformationSequence = Sequence([Dataset()])
        slope, intercept = (0.5, -1000.0) if k % 2 else (1.0, -1024.0)
        transform = frame.PixelValueTransformationSequence[0]
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = str(slope), str(intercept), "HU"
        frames.append(frame)
        stored.append(((p[k]["plane"] - intercept) / slope).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack(stored).tobytes()
    (tmp_path / "enhanced").mkdir()
    ds.save_as(tmp_path / "enhanced" / "volume.dcm", enforce_file_format=True)
    enhanced, classic = read_dicom_series(tmp_path / "enhanced"), read_dicom_series(tmp_path / "classic")
    assert enhanced.n_slices == classic.n_slices == len(p)
    np.testing.assert_array_equal(enhanced.hu, classic.hu)
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-6)


def test_is_dicom_series(tmp_path):
    write_series(tmp_path / "series", world_volume(), LPS_STORED)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x" * 200)
    assert is_dicom_series(tmp_path / "series")
    assert not is_dicom_series(tmp_path / "text") and not is_dicom_series(tmp_path)
    assert not is_dicom_series(next((tmp_path / "series").iterdir()))  # a file is not a series


def make_split(root: Path) -> Path:
    """Layout B with a DICOM series folder, a NIfTI of another volume and a bad (MR) series."""
    split = root / "valid"
    hu = world_volume()
    write_series(split / "volumes" / "case_1", hu, LPS_STORED)
    nib.save(nib.Nifti1Image(world_volume(seed=3), LPS_STORED), split / "volumes" / "case_2.nii.gz")
    write_series(split / "volumes" / "case_3", hu, LPS_STORED, modality="MR")
    (split / "reports").mkdir()
    reports = {f"case_{n}": f"Findings: case {n}. Impressions: none." for n in (1, 2, 3)}
    (split / "reports" / "reports.json").write_text(json.dumps(reports))
    return split


def test_layout_b_split_reads_a_dicom_series_folder_as_a_volume(tmp_path):
    split = read_split(make_split(tmp_path), fmt="ori")
    assert [s.name for s in split.samples] == ["case_1", "case_2", "case_3"]
    folder = volume_file(split.root, split.samples[0].rel, "ori")
    assert folder == tmp_path / "valid" / "volumes" / "case_1" and folder.is_dir()
    item = VolumeDataset(split, SPEC)[0]
    hu, _ = dicom_to_hu(folder)
    from reaf.data.transforms import model_input

    assert torch.equal(item["image"], model_input(hu, SPEC.size, SPEC.hu_min, SPEC.hu_max, SPEC.mode))
    skipped = VolumeDataset(split, SPEC, skip_bad=True)[2]["skipped"]
    assert skipped == f"{tmp_path / 'valid' / 'volumes' / 'case_3'}: modality MR, not CT"


def test_preprocess_converts_dicom_series_folders_and_verifies_them_on_rerun(tmp_path):
    make_split(tmp_path / "src")
    out = tmp_path / "out"
    args = ["--data-root", str(tmp_path / "src"), "--split", "valid", "--out", str(out), "--format", "stage1",
            "--model", "tiny", "--workers", "1", "--skip-bad"]  # fmt: skip
    assert preprocess_main(args) == 0
    manifest = json.loads((out / "manifest_valid_stage1.json").read_text())
    assert manifest["counts"]["written"] == 2 and manifest["written"] == ["valid/volumes/case_1", "valid/volumes/case_2"]
    bad = tmp_path / "src" / "valid" / "volumes" / "case_3"
    assert manifest["skipped_bad"] == [{"file": str(bad), "reason": "modality MR, not CT"}]
    assert manifest["decisions"]["HU from DICOM RescaleSlope/RescaleIntercept of each slice"] == 1
    stage1 = torch.load(out / "valid" / "volumes" / "case_1.pt", weights_only=True)
    assert torch.equal(stage1, dicom_to_hu(tmp_path / "src" / "valid" / "volumes" / "case_1")[0])
    assert preprocess_main(args) == 0
    again = json.loads((out / "manifest_valid_stage1.json").read_text())["counts"]
    assert again["skipped_existing"] == 2 and again["written"] == 0 and again["redone_invalid"] == 0
