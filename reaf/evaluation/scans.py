"""A user's own scans: NIfTI files, DICOM series folders, folders of them or a CSV listing them -> one source per scan,
each read to HU at 3x1x1 mm as a layout-B volume is (orientation from the header), with its voxel grid and affine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from reaf.data.formats import NIFTI_SUFFIXES, describe_error, nifti_to_hu
from reaf.data.orientation import Orientation, read_orientation

CSV_COLUMN = "path"


class ScanError(ValueError):
    """A scan that cannot be used; the message is '<path>: <cause>'."""


@dataclass(frozen=True)
class ScanSource:
    """One scan to predict: a NIfTI file or a DICOM series folder (`series`: the SeriesInstanceUID to pick)."""

    path: Path
    kind: str  # "nifti" | "dicom"
    series: str | None = None

    @property
    def label(self) -> str:
        """How outputs name it: the path as found (plus #UID when a series was asked for)."""
        return f"{self.path}#{self.series}" if self.series else str(self.path)

    @property
    def stem(self) -> str:
        name = self.path.name
        for suffix in NIFTI_SUFFIXES:
            name = name.removesuffix(suffix)
        return name


@dataclass
class Geometry:
    """The input scan's own voxel grid: stored shape (i, j, k), affine, and how reading reoriented it."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    orientation: Orientation
    header: nib.Nifti1Header | None = None

    @property
    def zyx_shape(self) -> tuple[int, int, int]:
        """The (z, y, x) shape of the voxels after reading (reoriented, transposed), before resampling."""
        return tuple(int(n) for n in self.orientation.permute(self.shape)[::-1])  # type: ignore[return-value]


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def is_dicom_folder(folder: Path) -> bool:
    """reaf.data.dicom.is_dicom_series when that module exists, else the same test (a file with the DICM preamble)."""
    try:
        from reaf.data.dicom import is_dicom_series
    except ImportError:
        return folder.is_dir() and any(_has_preamble(p) for p in folder.iterdir() if p.is_file())
    return is_dicom_series(folder)


def _has_preamble(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(132)[128:] == b"DICM"


def _from_folder(folder: Path, series: str | None) -> list[ScanSource]:
    """A DICOM series folder is one scan; any other folder: its NIfTI files, then its subfolders, recursively."""
    if is_dicom_folder(folder):
        return [ScanSource(folder, "dicom", series)]
    entries = sorted(folder.iterdir())
    found = [ScanSource(p, "nifti") for p in entries if p.is_file() and is_nifti(p)]
    for sub in entries:
        if sub.is_dir():
            found += _from_folder(sub, series)
    return found


def _from_csv(path: Path, series: str | None) -> list[ScanSource]:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises several types for a non-CSV file
        raise ScanError(f"{path}: not a readable CSV ({describe_error(err)})") from err
    if CSV_COLUMN not in table.columns:
        raise ScanError(f"{path}: no '{CSV_COLUMN}' column (columns: {list(table.columns)})")
    found = []
    for row, value in enumerate(table[CSV_COLUMN], start=2):
        if not value.strip():
            raise ScanError(f"{path}: line {row}: empty '{CSV_COLUMN}'")
        entry = Path(value.strip())
        found += _expand(entry if entry.is_absolute() else path.parent / entry, series, csv=False)
    return found


def _expand(path: Path, series: str | None, csv: bool = True) -> list[ScanSource]:
    if not path.exists():
        raise ScanError(f"{path}: no such file or folder")
    if path.is_dir():
        return _from_folder(path, series)
    if is_nifti(path):
        return [ScanSource(path, "nifti")]
    if csv and path.suffix.lower() == ".csv":
        return _from_csv(path, series)
    raise ScanError(f"{path}: not a NIfTI file (.nii, .nii.gz), a DICOM series folder, a folder of them or a CSV "
                    f"with a '{CSV_COLUMN}' column")


def find_scans(inputs: list[str | Path], series: str | None = None) -> list[ScanSource]:
    """Every scan the inputs name, in order, each once; ScanError for a missing path or when none is found."""
    found: dict[ScanSource, None] = {}
    for item in inputs:
        found.update(dict.fromkeys(_expand(Path(item), series)))
    if not found:
        raise ScanError(f"{', '.join(str(i) for i in inputs)}: no NIfTI file or DICOM series found")
    return list(found)


def _dicom():
    try:
        from reaf.data import dicom
    except ImportError as err:
        raise ImportError("reading DICOM needs reaf.data.dicom, which this installation lacks") from err
    return dicom


def read_hu(source: ScanSource) -> torch.Tensor:
    """(z, y, x) float32 HU at 3x1x1 mm in CT-RATE's voxel order; ScanError '<path>: <cause>' when unusable."""
    try:
        if source.kind == "dicom":
            return _dicom().dicom_to_hu(source.path, series_uid=source.series)[0]
        return nifti_to_hu(source.path, None, orientation="header")[0]
    except Exception as err:  # any failure to read a scan is that scan's: name it and the cause
        raise ScanError(f"{source.label}: {describe_error(err)}") from err


def read_geometry(source: ScanSource) -> Geometry:
    """The scan's voxel grid and affine (a NIfTI's header alone; a DICOM series is read through reaf.data.dicom)."""
    try:
        if source.kind == "dicom":
            series = _dicom().read_dicom_series(source.path, series_uid=source.series)
            return Geometry(tuple(series.hu.shape), np.asarray(series.affine), series.orientation())
        image = nib.load(source.path)
        return Geometry(tuple(image.shape[:3]), image.affine, read_orientation(image.header, "header"), image.header)
    except Exception as err:  # as read_hu
        raise ScanError(f"{source.label}: {describe_error(err)}") from err
