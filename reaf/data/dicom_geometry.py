"""DICOM headers of one folder -> the checked geometry of its CT series: planes ordered along the slice normal, the
RAS affine and spacing of voxels (i, j, k) = (column, row, slice); what is left out is counted, what cannot be a
volume is refused with a VolumeError naming the folder and the cause. reaf.data.dicom reads the pixels."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reaf.data.formats import VolumeError

log = logging.getLogger(__name__)

GAP_TOLERANCE = (0.10, 0.1)  # a slice gap may differ from the median gap by 10 % of it or 0.1 mm, whichever is larger
COSINE_TOLERANCE = 1e-3  # direction cosines of the series' slices must agree to this
PIXEL_SPACING_TOLERANCE = 1e-3  # mm
SCOUT_ANGLE_DEG = 45.0  # a slice in another plane than the series' majority (normals this far apart) is a scout
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient coordinates are LPS, NIfTI affines RAS
INSTALL_DECODERS = "pip install 'reaf[dicom-compressed]'"


@dataclass
class Slice:
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
class SeriesGeometry:
    """A checked series before its pixels are read: slices in order along the normal, affine and spacing (i, j, k)."""

    folder: Path
    series_uid: str
    description: str
    slices: list[Slice]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    skipped: dict[str, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        rows, cols = self.slices[0].shape
        return (cols, rows, len(self.slices))


def has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _read_headers(folder: Path, pydicom) -> tuple[dict[str, list], Counter]:
    """{SeriesInstanceUID: [(path, header dataset)]} of the DICOM image files, and counts of what was left out."""
    groups: dict[str, list] = {}
    skipped: Counter[str] = Counter()
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            skipped["subfolders"] += 1
        elif not has_preamble(path):
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
        raise VolumeError(f"{folder}: {len(groups)} series in one folder (one folder holds one series: reaf.predict "
                          "picks one with --series UID or one of its files, the API with series_uid; preprocessing "
                          f"needs the others moved out): {'; '.join(map(name, groups))}")
    return next(iter(groups))


def _floats(ds, keyword: str, n: int, where: str) -> np.ndarray:
    values = ds.get(keyword)
    if values is None or len(values) != n:
        raise VolumeError(f"{where}: no {keyword} ({n} values) given")
    return np.array([float(v) for v in values])


def _classic_slice(path: Path, ds, folder: Path) -> Slice:
    where = f"{folder}: {path.name}"
    return Slice(path, None, _floats(ds, "ImagePositionPatient", 3, where),
                 _floats(ds, "ImageOrientationPatient", 6, where), tuple(_floats(ds, "PixelSpacing", 2, where)),
                 (int(ds.Rows), int(ds.Columns)), (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))),
                 "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])])


def _group_item(sources: tuple, keyword: str):
    """First item of a functional group sequence, the frame's own before the shared one; None when neither has it."""
    for source in sources:
        if source is not None and keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    return None


def _frame_slices(path: Path, ds, folder: Path) -> list[Slice]:
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
        out.append(Slice(path, index, _floats(plane["PlanePosition"], "ImagePositionPatient", 3, where),
                         _floats(plane["PlaneOrientation"], "ImageOrientationPatient", 6, where),
                         tuple(_floats(plane["PixelMeasures"], "PixelSpacing", 2, where)),
                         (int(ds.Rows), int(ds.Columns)),
                         (float(rescale.get("RescaleSlope", 1)), float(rescale.get("RescaleIntercept", 0))),
                         "LOCALIZER" in [str(v).upper() for v in frame_type]))
    return out


def _drop_scouts(folder: Path, slices: list[Slice], skipped: Counter) -> list[Slice]:
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


def _check_consistent(folder: Path, slices: list[Slice]) -> None:
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


def _check_gaps(folder: Path, heights: np.ndarray) -> None:
    """Slice positions along the normal, ascending; VolumeError on missing slices or uneven gaps."""
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


def read_geometry(folder: Path, series_uid: str | None, pydicom) -> SeriesGeometry:
    """The checked geometry of the folder's series (see reaf.data.dicom.read_dicom_series); headers only."""
    if not folder.is_dir():
        raise VolumeError(f"{folder}: not a folder (a DICOM series is read from a folder holding its files)")
    groups, skipped = _read_headers(folder, pydicom)
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
    slices, affine, spacing = _order(folder, slices)
    skipped = {k: v for k, v in skipped.items() if v}
    if skipped:
        log.info("%s: series %s, %d slices; left out %s", folder, uid, len(slices), _describe(skipped))
    description = str(files[0][1].get("SeriesDescription", ""))
    return SeriesGeometry(folder, uid, description, slices, affine, spacing, skipped)


def _order(folder: Path, slices: list[Slice]) -> tuple[list[Slice], np.ndarray, tuple[float, float, float]]:
    """Slices sorted along the normal (row x column direction), the RAS affine of voxels (i, j, k) = (column, row,
    slice) as dcm2niix writes it, and the spacing (i, j, k) mm; VolumeError on gaps."""
    cosines = slices[0].cosines
    row_dir, col_dir = cosines[:3] / np.linalg.norm(cosines[:3]), cosines[3:] / np.linalg.norm(cosines[3:])
    heights = np.array([float(s.position @ np.cross(row_dir, col_dir)) for s in slices])
    order = np.argsort(heights, kind="stable")
    slices, heights = [slices[i] for i in order], heights[order]
    _check_gaps(folder, heights)
    row_spacing, col_spacing = slices[0].pixel_spacing  # PixelSpacing: between rows, then between columns
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row_dir * col_spacing, col_dir * row_spacing  # i runs along a row, j down a column
    lps[:3, 2] = (slices[-1].position - slices[0].position) / (len(slices) - 1)  # a gantry tilt shears this axis
    lps[:3, 3] = slices[0].position
    spacing = (float(col_spacing), float(row_spacing), float((heights[-1] - heights[0]) / (len(slices) - 1)))
    return slices, LPS_TO_RAS @ lps, spacing
