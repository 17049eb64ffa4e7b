"""DICOM CT series (one folder, one series) -> HU voxels with a RAS affine, read as a layout-B NIfTI of them is.

The series is turned into what dcm2niix would write: voxels (i, j, k) = (column, row, slice) and the affine taking
them to RAS mm (DICOM patient coordinates are LPS: x and y negated). From there the NIfTI path takes over
(reaf.data.orientation policy "header", reaf.data.formats.to_ct_rate_order, reaf.data.transforms.resample), so a
volume stored as a NIfTI and as a DICOM series reaches the model as the same tensor. pydicom is an optional
dependency (`pip install 'reaf[dicom]'`), imported when a series is read.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from reaf.data import transforms as T
from reaf.data.formats import DECISIONS, VolumeError, to_ct_rate_order
from reaf.data.orientation import Orientation, OrientationError, read_orientation

log = logging.getLogger(__name__)

GAP_TOLERANCE = (0.10, 0.1)  # a slice gap may differ from the median gap by 10 % of it or 0.1 mm, whichever is larger
COSINE_TOLERANCE = 1e-3  # direction cosines of the series' slices must agree to this
PIXEL_SPACING_TOLERANCE = 1e-3  # mm
SCOUT_ANGLE_DEG = 45.0  # a slice in another plane than the series' majority (normals this far apart) is a scout
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
INSTALL = "pip install 'reaf[dicom]'"
INSTALL_DECODERS = "pip install 'reaf[dicom-compressed]'"


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


@dataclass
class _Slice:
    """One image plane: a file, or a frame of a multi-frame (enhanced) file."""

    path: Path
    frame: int | None
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    cosines: np.ndarray  # (6,) ImageOrientationPatient: row direction (along a row), column direction
    pixel_spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns) mm
    shape: tuple[int, int]  # (Rows, Columns)
    rescale: tuple[float, float]  # (RescaleSlope, RescaleIntercept)
    localizer: bool = False

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.cosines[:3], self.cosines[3:])


@dataclass
class _Geometry:
    """A checked series before its pixels are read: slices in order along the normal, affine and spacing (i, j, k)."""

    folder: Path
    series_uid: str
    description: str
    slices: list[_Slice]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    skipped: dict[str, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        rows, cols = self.slices[0].shape
        return (cols, rows, len(self.slices))


def _pydicom(folder: Path):
    try:
        import pydicom
    except ImportError:
        raise VolumeError(f"{folder}: reading a DICOM series needs pydicom ({INSTALL})") from None
    return pydicom


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_dicom_series(path: Path) -> bool:
    """True for a folder holding at least one DICOM file (a 128-byte preamble then "DICM"); no pydicom needed."""
    path = Path(path)
    return path.is_dir() and any(p.is_file() and _has_preamble(p) for p in path.iterdir())


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


def _read_headers(folder: Path, pydicom) -> tuple[dict[str, list], Counter]:
    """{SeriesInstanceUID: [(path, header dataset)]} of the DICOM image files, and counts of what was left out."""
    groups: dict[str, list] = {}
    skipped: Counter[str] = Counter()
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skipped["subfolders"] += 1
        elif not _has_preamble(path):
            skipped["non-DICOM files"] += 1
        else:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as e:  # pydicom raises many types for a damaged header
                raise VolumeError(f"{folder}: {path.name}: unreadable DICOM header ({type(e).__name__}: {e})") from e
            if "Rows" not in ds:  # DICOMDIR, structured reports, presentation states: no image
                skipped["non-image DICOM files"] += 1
            else:
                groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    return groups, skipped


def _describe(skipped: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(skipped.items()) if v)


def _pick_series(folder: Path, groups: dict[str, list], series_uid: str | None, left_out: str) -> str:
    def name(uid: str) -> str:
        ds = groups[uid][0][1]
        return f"{uid or '(no SeriesInstanceUID)'} ({len(groups[uid])} files, '{ds.get('SeriesDescription', '')}')"

    if series_uid is not None:
        if series_uid not in groups:
            raise VolumeError(f"{folder}: no series {series_uid}; it holds {'; '.join(map(name, groups))}")
        return series_uid
    if not groups:
        raise VolumeError(f"{folder}: no DICOM image files ({left_out or 'empty folder'})")
    if len(groups) > 1:
        raise VolumeError(f"{folder}: {len(groups)} series in one folder (one folder must hold one series; pass "
                          f"series_uid to pick one): {'; '.join(map(name, groups))}")
    return next(iter(groups))


def _floats(ds, keyword: str, n: int, where: str) -> np.ndarray:
    values = ds.get(keyword)
    if values is None or len(values) != n:
        raise VolumeError(f"{where}: no {keyword} ({n} values) given")
    return np.array([float(v) for v in values])


def _classic_slice(path: Path, ds, folder: Path) -> _Slice:
    where = f"{folder}: {path.name}"
    return _Slice(path, None, _floats(ds, "ImagePositionPatient", 3, where),
                  _floats(ds, "ImageOrientationPatient", 6, where), tuple(_floats(ds, "PixelSpacing", 2, where)),
                  (int(ds.Rows), int(ds.Columns)), (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))),
                  "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])])


def _group_item(sources: tuple, keyword: str):
    """First item of a functional group sequence, the frame's own before the shared one; None when neither has it."""
    for source in sources:
        if source is not None and keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    return None


def _frame_slices(path: Path, ds, folder: Path) -> list[_Slice]:
    """The frames of an enhanced (multi-frame) CT file, from its per-frame and shared functional groups."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(frames) != int(ds.NumberOfFrames):
        raise VolumeError(f"{folder}: {path.name}: {ds.NumberOfFrames} frames but {len(frames)} per-frame groups")
    out = []
    for index, group in enumerate(frames):
        where = f"{folder}: {path.name} frame {index + 1}"
        plane = {k: _group_item((group, shared), f"{k}Sequence") for k in ("PlanePosition", "PlaneOrientation",
                                                                         "PixelMeasures")}
        missing = [f"{k}Sequence" for k, v in plane.items() if v is None]
        if missing:
            raise VolumeError(f"{where}: no {', '.join(missing)} in its per-frame or shared functional groups")
        rescale = _group_item((group, shared), "PixelValueTransformationSequence") or {}
        frame_type = (_group_item((group, shared), "CTImageFrameTypeSequence") or {}).get("FrameType", [])
        out.append(_Slice(path, index, _floats(plane["PlanePosition"], "ImagePositionPatient", 3, where),
                          _floats(plane["PlaneOrientation"], "ImageOrientationPatient", 6, where),
                          tuple(_floats(plane["PixelMeasures"], "PixelSpacing", 2, where)),
                          (int(ds.Rows), int(ds.Columns)),
                          (float(rescale.get("RescaleSlope", 1)), float(rescale.get("RescaleIntercept", 0))),
                          "LOCALIZER" in [str(v).upper() for v in frame_type]))
    return out


def _drop_scouts(folder: Path, slices: list[_Slice], skipped: Counter) -> list[_Slice]:
    """Leave out localizers: ImageType/FrameType LOCALIZER, or a plane other than the majority's (a scout)."""
    kept = [s for s in slices if not s.localizer]
    skipped["localizers"] += len(slices) - len(kept)
    if not kept:
        raise VolumeError(f"{folder}: only localizer images ({len(slices)})")
    planes = Counter(tuple(np.round(s.cosines, 3)) for s in kept)
    majority = np.cross(*np.reshape(planes.most_common(1)[0][0], (2, 3)))
    cos_limit = np.cos(np.radians(SCOUT_ANGLE_DEG))
    axial = [s for s in kept if abs(float(s.normal @ majority)) / np.linalg.norm(s.normal) >= cos_limit]
    skipped["localizers"] += len(kept) - len(axial)
    return axial


def _check_consistent(folder: Path, slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        where = f"{folder}: {s.path.name}" + ("" if s.frame is None else f" frame {s.frame + 1}")
        if s.shape != first.shape:
            raise VolumeError(f"{where}: {s.shape[0]} rows x {s.shape[1]} columns, {first.path.name} has "
                              f"{first.shape[0]} x {first.shape[1]}: slices of one series must agree")
        if np.abs(s.cosines - first.cosines).max() > COSINE_TOLERANCE:
            raise VolumeError(f"{where}: ImageOrientationPatient {s.cosines.round(4).tolist()} differs from "
                              f"{first.path.name}'s {first.cosines.round(4).tolist()} (by more than {COSINE_TOLERANCE})")
        if np.abs(np.subtract(s.pixel_spacing, first.pixel_spacing)).max() > PIXEL_SPACING_TOLERANCE:
            raise VolumeError(f"{where}: PixelSpacing {list(s.pixel_spacing)} differs from {first.path.name}'s "
                              f"{list(first.pixel_spacing)} mm")


def _check_gaps(folder: Path, heights: np.ndarray) -> float:
    """Slice positions along the normal, ascending -> the median gap; VolumeError on missing slices or uneven gaps."""
    if len(heights) < 2:
        raise VolumeError(f"{folder}: {len(heights)} slice: a volume needs at least 2 (slice spacing comes from "
                          "the distance between slice positions)")
    gaps = np.diff(heights)
    median = float(np.median(gaps))
    if gaps.min() < 1e-3:
        raise VolumeError(f"{folder}: {int((gaps < 1e-3).sum())} slice(s) at the same position as another "
                          f"(along the slice normal, e.g. at {heights[1:][gaps < 1e-3][0]:.2f} mm)")
    tolerance = max(GAP_TOLERANCE[0] * median, GAP_TOLERANCE[1])
    bad = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if len(bad):
        where = ", ".join(f"{gaps[i]:.2f} mm after {heights[i]:.2f} mm" for i in bad[:3])
        rule = (f"gaps may differ from the median {median:.3g} mm by {tolerance:.3g} mm: 10 % of the median or "
                "0.1 mm, whichever is larger")
        multiples = gaps[bad] / median
        if (multiples > 1.5).all() and (np.abs(multiples - multiples.round()) * median <= tolerance).all():
            missing = int((multiples.round() - 1).sum())
            raise VolumeError(f"{folder}: {missing} missing slice(s): gap of {where} ({rule})")
        raise VolumeError(f"{folder}: uneven slice spacing: gap of {where} ({rule})")
    return median


def _check_decoders(folder: Path, files: list) -> None:
    """VolumeError naming the transfer syntax and the packages to install when pydicom cannot decode its pixels."""
    from pydicom.pixels import get_decoder

    for uid in sorted({str(ds.file_meta.get("TransferSyntaxUID", "")) for _, ds in files}):
        ds = next(d for _, d in files if str(d.file_meta.get("TransferSyntaxUID", "")) == uid)
        name = f"{ds.file_meta.TransferSyntaxUID.name} ({uid})" if uid else "(no TransferSyntaxUID)"
        try:
            decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        except (NotImplementedError, ValueError, AttributeError):
            raise VolumeError(f"{folder}: transfer syntax {name} has no pydicom pixel decoder") from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies)
            raise VolumeError(f"{folder}: transfer syntax {name} cannot be decoded: no decoder installed (pydicom "
                              f"needs one of: {needs}; {INSTALL_DECODERS}, or python-gdcm)")


def _geometry(folder: Path, series_uid: str | None) -> _Geometry:
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"{folder}: not a folder (a DICOM series is read from a folder holding its files)")
    groups, skipped = _read_headers(folder, _pydicom(folder))
    uid = _pick_series(folder, groups, series_uid, _describe(skipped))
    files = groups[uid]
    other = sorted({str(ds.get("Modality", "")) for _, ds in files} - {"CT"})
    if other:
        raise VolumeError(f"{folder}: modality {', '.join(m or '(none)' for m in other)}, not CT")
    _check_decoders(folder, files)
    slices = [s for path, ds in files for s in (_frame_slices(path, ds, folder) if int(ds.get("NumberOfFrames", 1)) > 1
                                                else [_classic_slice(path, ds, folder)])]
    slices = _drop_scouts(folder, slices, skipped)
    _check_consistent(folder, slices)
    cosines = slices[0].cosines
    row_dir, col_dir = cosines[:3] / np.linalg.norm(cosines[:3]), cosines[3:] / np.linalg.norm(cosines[3:])
    normal = np.cross(row_dir, col_dir)
    heights = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(heights, kind="stable")
    slices, heights = [slices[i] for i in order], heights[order]
    _check_gaps(folder, heights)
    row_spacing, col_spacing = slices[0].pixel_spacing
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row_dir * col_spacing, col_dir * row_spacing  # i runs along a row, j down a column
    lps[:3, 2] = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    lps[:3, 3] = slices[0].position
    spacing = (float(col_spacing), float(row_spacing), float((heights[-1] - heights[0]) / (len(slices) - 1)))
    skipped = {k: v for k, v in skipped.items() if v}
    if skipped:
        log.info("%s: series %s, %d slices; left out %s", folder, uid, len(slices), _describe(skipped))
    return _Geometry(folder, uid, str(files[0][1].get("SeriesDescription", "")), slices, LPS_TO_RAS @ lps, spacing,
                     skipped)


def _read_pixels(geometry: _Geometry, pydicom) -> np.ndarray:
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
    than SCOUT_ANGLE_DEG from the majority's). Refused: several series (name them; `series_uid` picks one), a
    modality other than CT, a transfer syntax with no installed decoder, rows/columns/orientation/pixel spacing
    differing between slices, fewer than 2 slices, slices at the same position, and gaps differing from the median
    gap by more than 10 % of it or 0.1 mm, whichever is larger (reported as missing slices when they are multiples).
    """
    geometry = _geometry(Path(folder), series_uid)
    hu = _read_pixels(geometry, _pydicom(geometry.folder))
    rescale = tuple(dict.fromkeys(s.rescale for s in geometry.slices))
    return DicomSeries(hu, geometry.affine, geometry.spacing, geometry.series_uid, len(geometry.slices),
                       geometry.folder, geometry.description, geometry.skipped, rescale)


def dicom_orientation(folder: Path, series_uid: str | None = None) -> Orientation:
    """What reading does with the series' voxel order (reaf.data.orientation, policy "header"); headers only."""
    g = _geometry(Path(folder), series_uid)
    return _orientation(g.folder, _nifti_header(g.shape, g.affine, g.spacing))


def dicom_stage1_shape(folder: Path, series_uid: str | None = None) -> tuple[int, int, int]:
    """(z, y, x) of the tensor `dicom_to_hu` makes of the series, from its headers alone (no pixels decoded)."""
    g = _geometry(Path(folder), series_uid)
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
