"""A user's own scans: NIfTI files, DICOM series folders, folders of them or a CSV listing them -> one source per scan,
each read to HU at 3x1x1 mm as a layout-B volume is (orientation from the header), with its voxel grid and affine.
A NIfTI named in a CT-RATE metadata CSV the user gives is read with that row (its slope/intercept and spacing), as
layout A reads it: CT-RATE v1 files store raw values and state neither in their headers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from reaf.data.formats import NIFTI_SUFFIXES, VolumeError, VolumeMeta, describe_error, nifti_to_hu
from reaf.data.orientation import Orientation, read_orientation
from reaf.data.transforms import HUError

log = logging.getLogger(__name__)

CSV_COLUMN = "path"
METADATA_HINT = ("; a CT-RATE v1 file stores raw values: give its metadata CSV (predict --metadata, "
                 "find_scans(metadata=...))")


class ScanError(ValueError):
    """A scan that cannot be used; the message is '<path>: <cause>'."""


@dataclass(frozen=True)
class ScanSource:
    """One scan to predict: a NIfTI file or a DICOM series folder (`series`: the SeriesInstanceUID to pick)."""

    path: Path
    kind: str  # "nifti" | "dicom"
    series: str | None = None
    meta: VolumeMeta | None = dataclasses.field(default=None, compare=False)  # a metadata CSV's row (NIfTI only)

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


def _holds_dicom_images(folder: Path) -> bool:
    """reaf.data.dicom.holds_dicom_images; True without pydicom, so that reading the folder names the package."""
    try:
        return _dicom().holds_dicom_images(folder)
    except (ImportError, VolumeError):
        return True


def _from_folder(folder: Path, series: str | None, named: bool = True) -> list[ScanSource]:
    """A folder of DICOM image files is one scan (a series folder); any other folder gives its NIfTI files, then its
    subfolders', recursively. A folder whose DICOM files hold no image beside subfolders (a DICOM export's root with
    its DICOMDIR over patient/study/series folders), or deep in the search (`named` False: a folder of reports), is
    searched through and logged, not taken as a scan; a folder the user named keeps its reader's error."""
    entries = sorted(folder.iterdir())
    subfolders = [p for p in entries if p.is_dir()]
    if is_dicom_folder(folder):
        if _holds_dicom_images(folder) or (named and not subfolders):
            found = [ScanSource(folder, "dicom", series)]
        else:
            log.info("%s: its DICOM files hold no image (a DICOMDIR, reports): not a scan", folder)
            found = []
        if not subfolders:
            return found
    else:
        found = [ScanSource(p, "nifti") for p in entries if p.is_file() and is_nifti(p)]
    for sub in subfolders:
        found += _from_folder(sub, series, named=False)
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


def _file_series(path: Path, series: str | None) -> ScanSource:
    """One DICOM file stands for its series: the folder holding it, that series picked by the file's
    SeriesInstanceUID (a viewer's 'open this image'); refused when --series asks for another."""
    try:
        uid = str(_dicom()._pydicom(path).dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    except Exception as err:  # no pydicom, an unreadable file, no SeriesInstanceUID
        raise ScanError(f"{path}: a DICOM file whose series cannot be named ({describe_error(err)}); give the "
                        "folder holding the series") from err
    if series is not None and series != uid:
        raise ScanError(f"{path}: belongs to series {uid}, not the --series {series} asked for")
    return ScanSource(path.parent, "dicom", uid)


def _expand(path: Path, series: str | None, csv: bool = True) -> list[ScanSource]:
    if not path.exists():
        raise ScanError(f"{path}: no such file or folder")
    if path.is_dir():
        return _from_folder(path, series)
    if is_nifti(path):
        return [ScanSource(path, "nifti")]
    if csv and path.suffix.lower() == ".csv":
        return _from_csv(path, series)
    if _has_preamble(path):
        return [_file_series(path, series)]
    raise ScanError(f"{path}: not a NIfTI file (.nii, .nii.gz), a DICOM file or series folder, a folder of them or "
                    f"a CSV with a '{CSV_COLUMN}' column")


def read_metadata_csvs(paths: Sequence[str | Path]) -> dict[str, VolumeMeta]:
    """CT-RATE metadata CSVs -> {VolumeName without .nii.gz: its row}, parsed as layout A's readers parse them; a
    name two files give different rows is refused, naming both files."""
    from reaf.data.preprocessing import read_metadata

    rows: dict[str, VolumeMeta] = {}
    origin: dict[str, Path] = {}
    for path in map(Path, paths):
        try:
            table = read_metadata(path)
        except Exception as err:  # a missing file, a missing column, a bad row: name the file
            raise ScanError(str(err) if str(path) in str(err) else f"{path}: {describe_error(err)}") from err
        for name, meta in table.items():
            if name in rows and rows[name] != meta:
                raise ScanError(f"{origin[name]} and {path}: two different metadata rows for {name}")
            rows[name], origin[name] = meta, path
    return rows


def find_scans(inputs: list[str | Path], series: str | None = None,
               metadata: Sequence[str | Path] | None = None) -> list[ScanSource]:
    """Every scan the inputs name, in order, each once; ScanError for a missing path or when none is found. With
    `metadata` (CT-RATE metadata CSVs), each NIfTI whose name has a row there carries it (ScanSource.meta)."""
    found: dict[ScanSource, None] = {}
    for item in inputs:
        found.update(dict.fromkeys(_expand(Path(item), series)))
    if not found:
        raise ScanError(f"{', '.join(str(i) for i in inputs)}: no NIfTI file or DICOM series found")
    if not metadata:
        return list(found)
    rows = read_metadata_csvs(metadata)
    sources = [dataclasses.replace(s, meta=rows.get(s.stem)) if s.kind == "nifti" else s for s in found]
    niftis = [s for s in sources if s.kind == "nifti"]
    unmatched = [s.label for s in niftis if s.meta is None]
    log.info("metadata CSV rows for %d of %d NIfTI scan(s)", len(niftis) - len(unmatched), len(niftis))
    if unmatched:
        log.warning("%d NIfTI scan(s) have no row in %s and are read from their headers alone: %s%s", len(unmatched),
                    ", ".join(map(str, metadata)), ", ".join(unmatched[:5]), " ..." if len(unmatched) > 5 else "")
    return sources


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
        hu = nifti_to_hu(source.path, source.meta, orientation="header")[0]
        if source.meta is None:
            _warn_if_unoriented(source.path)
        return hu
    except Exception as err:  # any failure to read a scan is that scan's: name it and the cause
        hint = METADATA_HINT if isinstance(err, HUError) and not err.metadata_known else ""
        raise ScanError(_named(source, f"{describe_error(err)}{hint}")) from err


def _warn_if_unoriented(path: Path) -> None:
    """Warn when a NIfTI read without a metadata row states no orientation (no sform/qform, or an identity affine):
    it was read as CT-RATE stores voxels, which is wrong for an array saved slices-first; its pixdim spacing may be a
    placeholder too. Which of the two a file is cannot be told from it, so it is said, not refused."""
    header = nib.load(path).header
    orientation = read_orientation(header, "header")
    if orientation.codes is not None:
        return
    shape = tuple(int(n) for n in header.get_data_shape()[:3])
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    slices_first = shape[1] == shape[2] != shape[0]  # square images on axes 1-2: likely a (z, y, x) array
    log.warning("%s: the header states no orientation (%s), so its voxel axes are taken as CT-RATE's (toward L, P, "
                "S: axial slices along the last axis), with pixdim spacing %s mm; shape %s%s", path,
                orientation.source, zooms, shape,
                ": axes 1-2 look like the slices, as in an array saved (z, y, x): the prediction is likely wrong; "
                "save it with its affine" if slices_first else "")


def read_geometry(source: ScanSource) -> Geometry:
    """The scan's voxel grid and affine (a NIfTI's header alone; a DICOM series is read through reaf.data.dicom)."""
    try:
        if source.kind == "dicom":
            series = _dicom().read_dicom_series(source.path, series_uid=source.series)
            return Geometry(tuple(series.hu.shape), np.asarray(series.affine), series.orientation())
        image = nib.load(source.path)
        return Geometry(tuple(image.shape[:3]), image.affine, read_orientation(image.header, "header"), image.header)
    except Exception as err:  # as read_hu
        raise ScanError(_named(source, describe_error(err))) from err


def _named(source: ScanSource, cause: str) -> str:
    """'<scan>: <cause>', the scan named once (the DICOM reader's messages already start with the folder)."""
    if source.series is None and cause.startswith(f"{source.path}: "):
        return cause
    return f"{source.label}: {cause}"
