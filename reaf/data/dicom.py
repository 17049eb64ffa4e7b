"""DICOM CT series (one folder, one series) -> HU voxels with a RAS affine, read as a layout-B NIfTI of them is.

The series is turned into what dcm2niix would write: voxels (i, j, k) = (column, row, slice) and the affine taking
them to RAS mm (DICOM patient coordinates are LPS: x and y negated). From there the NIfTI path takes over
(reaf.data.orientation policy "header", reaf.data.formats.to_ct_rate_order, reaf.data.transforms.resample), so a
volume stored as a NIfTI and as a DICOM series reaches the model as the same tensor. pydicom is an optional
dependency (`pip install 'reaf[dicom]'`), imported when a series is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from reaf.data import transforms as T
from reaf.data.dicom_geometry import SeriesGeometry, has_preamble, read_geometry
from reaf.data.formats import DECISIONS, VolumeError, to_ct_rate_order
from reaf.data.orientation import Orientation, OrientationError, read_orientation

log = logging.getLogger(__name__)

INSTALL = "pip install 'reaf[dicom]'"


@dataclass
class DicomSeries:
    """One CT series: HU voxels, their RAS affine and what was left out of the folder."""

    hu: np.ndarray  # (i, j, k) = (column, row, slice) float32 HU, nibabel's data layout (Fortran order)
    affine: np.ndarray  # (4, 4) voxel (i, j, k) -> RAS mm, NIfTI's convention (dcm2niix's affine)
    spacing: tuple[float, float, float]  # (i, j, k) mm: column spacing, row spacing, slice distance on the normal
    series_uid: str
    n_slices: int
    folder: Path
    description: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # e.g. {"localizers": 1, "non-DICOM files": 2}
    rescale: tuple[tuple[float, float], ...] = ()  # the distinct (RescaleSlope, RescaleIntercept) pairs applied

    def to_nifti(self) -> nib.Nifti1Image:
        """float32 HU data with the series' affine (sform and qform, code scanner) and spacing."""
        return nib.Nifti1Image(self.hu, self.affine, _nifti_header(self.hu.shape, self.affine, self.spacing))

    def orientation(self) -> Orientation:
        """reaf.data.orientation policy "header" on the series' affine; VolumeError naming the folder if refused."""
        return _orientation(self.folder, _nifti_header(self.hu.shape, self.affine, self.spacing))


def _pydicom(folder: Path):
    try:
        import pydicom
    except ImportError:
        raise VolumeError(f"{folder}: reading a DICOM series needs pydicom ({INSTALL})") from None
    return pydicom


def _geometry(folder: Path, series_uid: str | None) -> SeriesGeometry:
    return read_geometry(Path(folder), series_uid, _pydicom(Path(folder)))


def is_dicom_series(path: Path) -> bool:
    """True for a folder holding at least one DICOM file (a 128-byte preamble then "DICM"); no pydicom needed."""
    path = Path(path)
    return path.is_dir() and any(p.is_file() and has_preamble(p) for p in path.iterdir())


def holds_dicom_images(folder: Path) -> bool:
    """Whether any DICOM file directly in `folder` is an image (has Rows, the reader's test): a DICOM export's root
    holds only its DICOMDIR, a dose-report folder only structured reports. Headers only, stopping at the first
    image; True when a header cannot be read, so that reading the folder names the file."""
    pydicom = _pydicom(Path(folder))
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and has_preamble(path):
            try:
                if "Rows" in pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows"]):
                    return True
            except Exception:  # a damaged header: the reader names the file
                return True
    return False


def series_folders(folder: Path) -> dict[str, Path]:
    """{name: path} of the subfolders of `folder` that hold a DICOM series (layout B's volumes/<id>/)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if is_dicom_series(p)}


def _nifti_header(shape: tuple[int, ...], affine: np.ndarray, spacing: tuple[float, ...]) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)  # the qform cannot hold a gantry tilt's shear; the sform (read first) does
    header.set_zooms(spacing)
    return header


def _orientation(folder: Path, header: nib.Nifti1Header) -> Orientation:
    try:
        return read_orientation(header, "header")
    except OrientationError as e:
        raise VolumeError(f"{folder}: {e}") from None


def _read_pixels(geometry: SeriesGeometry, pydicom) -> np.ndarray:
    """(i, j, k) float32 HU, each plane rescaled by its own slope and intercept."""
    rows, cols = geometry.slices[0].shape
    volume = np.empty((len(geometry.slices), rows, cols), np.float32)  # (k, row, column): C order
    frames: dict[Path, np.ndarray] = {}
    for k, s in enumerate(geometry.slices):
        try:
            if s.path not in frames:
                frames = {s.path: pydicom.dcmread(s.path).pixel_array}  # a multi-frame file is decoded once
            plane = frames[s.path] if s.frame is None else frames[s.path][s.frame]
        except Exception as e:  # decoders raise many types for damaged pixel data
            raise VolumeError(f"{geometry.folder}: {s.path.name}: cannot decode pixel data "
                              f"({type(e).__name__}: {e})") from e
        if plane.shape != (rows, cols):
            raise VolumeError(f"{geometry.folder}: {s.path.name}: pixel data of shape {plane.shape}, expected "
                              f"({rows}, {cols})")
        slope, intercept = s.rescale
        np.multiply(plane, slope, out=volume[k], casting="unsafe")
        volume[k] += intercept
    return volume.transpose(2, 1, 0)  # (column, row, slice): Fortran order, as nibabel lays out NIfTI data


def read_dicom_series(folder: Path, series_uid: str | None = None) -> DicomSeries:
    """A folder holding one CT series -> DicomSeries; VolumeError (a ValueError) naming the folder and the cause.

    Slices are ordered by ImagePositionPatient along the slice normal (row cosines x column cosines), never by file
    name or InstanceNumber; HU from each slice's own RescaleSlope/RescaleIntercept; spacing from PixelSpacing
    (between rows, between columns) and the slice positions' mean distance along the normal (not SliceThickness).
    Enhanced (multi-frame) CT is read from its functional groups. Left out and counted in `skipped`: non-DICOM
    files (no DICM preamble), non-image DICOM files, subfolders, localizers (ImageType LOCALIZER, or a plane more
    than dicom_geometry.SCOUT_ANGLE_DEG from the majority's). Refused: several series (name them; `series_uid` picks one), a
    modality other than CT, a transfer syntax with no installed decoder, rows/columns/orientation/pixel spacing
    differing between slices, fewer than 2 slices, slices at the same position, and gaps differing from the median
    gap by more than 10 % of it or 0.1 mm, whichever is larger (reported as missing slices when they are multiples).
    """
    geometry = _geometry(folder, series_uid)
    hu = _read_pixels(geometry, _pydicom(geometry.folder))
    rescale = tuple(dict.fromkeys(s.rescale for s in geometry.slices))
    return DicomSeries(hu, geometry.affine, geometry.spacing, geometry.series_uid, len(geometry.slices),
                       geometry.folder, geometry.description, geometry.skipped, rescale)


def dicom_orientation(folder: Path, series_uid: str | None = None) -> Orientation:
    """What reading does with the series' voxel order (reaf.data.orientation, policy "header"); headers only."""
    g = _geometry(folder, series_uid)
    return _orientation(g.folder, _nifti_header(g.shape, g.affine, g.spacing))


def dicom_stage1_shape(folder: Path, series_uid: str | None = None) -> tuple[int, int, int]:
    """(z, y, x) of the tensor `dicom_to_hu` makes of the series, from its headers alone (no pixels decoded)."""
    g = _geometry(folder, series_uid)
    found = _orientation(g.folder, _nifti_header(g.shape, g.affine, g.spacing))
    return T.resampled_shape(found.permute(g.shape)[::-1], found.permute(g.spacing)[::-1])


def dicom_to_hu(folder: Path, series_uid: str | None = None) -> tuple[torch.Tensor, T.HUDecision]:
    """DICOM series folder -> ((z', y', x') float32 HU at 3x1x1 mm in CT-RATE's voxel order, the HU decision), as
    reaf.data.formats.nifti_to_hu(path, orientation="header") gives for a NIfTI of the same voxels and affine.

    HU come from the DICOM rescale tags, which the standard defines as HU for CT, so no interpretation is chosen
    (nifti_to_hu's air-level test decides between candidates a NIfTI header leaves open); the air level is recorded.
    """
    series = read_dicom_series(folder, series_uid)
    found = series.orientation()
    zyx, spacing = to_ct_rate_order(series.hu, series.spacing, found)
    log.debug("%s: %s", series.folder, found.describe())
    values = torch.from_numpy(np.ascontiguousarray(zyx))
    slope, intercept = series.rescale[0]
    pairs = f", {len(series.rescale)} distinct pairs" if len(series.rescale) > 1 else ""
    decision = T.HUDecision(f"DICOM RescaleSlope/RescaleIntercept of each slice{pairs}", slope, intercept,
                            T.air_level(values))
    DECISIONS["HU from DICOM RescaleSlope/RescaleIntercept of each slice"] += 1
    return T.resample(values, spacing), decision
