"""DICOM CT series written from scratch with pydicom: one file per slice, geometry from a NIfTI (RAS) affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def decimal_strings(values: list[float]) -> list[str]:
    return [f"{v:.10g}"[:16] for v in values]


def slice_dataset(plane: np.ndarray, position, cosines, pixel_spacing, series_uid: str, instance: int, *,
                  rescale: tuple[float, float] = (1.0, -1024.0), modality: str = "CT",
                  image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"), description: str = "CHEST") -> Dataset:
    """A CT image file written from scratch: plane (rows, columns) HU stored as int16 with the given rescale."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = modality, series_uid, description
    ds.StudyInstanceUID, ds.InstanceNumber, ds.ImageType = "1.2.3.4", instance, list(image_type)
    ds.ImagePositionPatient, ds.ImageOrientationPatient = decimal_strings(position), decimal_strings(cosines)
    ds.PixelSpacing, ds.SliceThickness = decimal_strings(pixel_spacing), "7.0"  # SliceThickness is deliberately wrong
    ds.RescaleSlope, ds.RescaleIntercept = decimal_strings([rescale[0]])[0], decimal_strings([rescale[1]])[0]
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    stored = (plane.astype(np.float64) - rescale[1]) / rescale[0]
    assert np.array_equal(stored, np.round(stored)), "the test's HU must be representable with this rescale"
    ds.PixelData = stored.astype(np.int16).tobytes()
    return ds


def planes(hu: np.ndarray, affine: np.ndarray) -> list[dict]:
    """Per slice k: the plane (rows, columns) and its DICOM geometry (LPS) for voxels `hu` (i, j, k) at `affine`."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    cosines = [*(col_step / np.linalg.norm(col_step)), *(row_step / np.linalg.norm(row_step))]
    spacing = [np.linalg.norm(row_step), np.linalg.norm(col_step)]  # (between rows, between columns)
    return [{"plane": hu[:, :, k].T, "position": lps[:3, 3] + k * lps[:3, 2], "cosines": cosines,
             "pixel_spacing": spacing} for k in range(hu.shape[2])]  # fmt: skip


def write_series(folder: Path, hu: np.ndarray, affine: np.ndarray, *, series_uid: str | None = None, seed: int = 0,
                 rescale=lambda k: (1.0, -1024.0), **extra) -> str:
    """Write a series as one file per slice under shuffled names with shuffled, meaningless InstanceNumbers."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    instances = rng.permutation(hu.shape[2]) + 1
    for k, p in enumerate(planes(hu, affine)):
        ds = slice_dataset(p["plane"], p["position"], p["cosines"], p["pixel_spacing"], uid, int(instances[k]),
                           rescale=rescale(k), **extra)
        ds.save_as(folder / f"IM{rng.integers(1e9):09d}_{uid[-4:]}", enforce_file_format=True)
    return uid
