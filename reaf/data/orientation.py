"""NIfTI voxel orientation: read from each file's affine, recorded, and for layout B brought to CT-RATE's order.

CT-RATE stores voxel axes (i, j, k) running toward the patient's Left, Posterior and Superior: nibabel axis codes
L, P, S (DICOM's LPS, slices from the feet up). Its v2 headers read so with nibabel, and HLIP's CT-RATE conversion
(Zch0414/hlip data/ct_rate/process.py) keeps that stored order; docs/orientation.md gives the sources.
formats.read_nifti transposes (i, j, k) to (z, y, x), so a volume in CT-RATE's order gives axial slices from the
feet up, anterior at the top and the patient's right on the left. Policy "ct-rate" (layout A, CT-RATE's own files)
keeps the stored order whatever the header says: v1 headers state no orientation. Policy "header" (layout B) flips
and permutes an axis-aligned volume into CT-RATE's order, so that the same anatomy lands at the same array
position, and refuses a volume whose axes are too oblique for that; a header stating no orientation is taken as
CT-RATE's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

CT_RATE_CODES = ("L", "P", "S")
MAX_OBLIQUITY_DEG = 30.0  # CT gantry tilts stay within it; beyond it no voxel axis is clearly one anatomical axis
POLICIES = ("ct-rate", "header")
LAYOUT_POLICY = {"A": "ct-rate", "B": "header"}  # reaf.data.readers.SplitData.layout -> policy
_KEEP = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])  # nibabel's "no change" orientation transform


class OrientationError(ValueError):
    """A NIfTI whose affine cannot be brought to CT-RATE's axial order; the message gives the cause."""


@dataclass(frozen=True)
class Orientation:
    """What a header states about its voxel axes and what reading does with them."""

    codes: str | None  # nibabel axis codes of the stated affine, e.g. "RAS"; None: the header states none
    source: str  # "sform" | "qform" | "no sform/qform" | "identity affine" | "degenerate <form>"
    obliquity: float  # degrees between the most tilted voxel axis and its nearest anatomical axis
    transform: np.ndarray | None = None  # nibabel orientation (3, 2): stored order -> CT-RATE's; None: kept

    def describe(self) -> str:
        """One line for logs and manifests, e.g. 'orientation RAS (sform): reoriented to LPS'."""
        tilt = f", {self.obliquity:.1f} deg oblique" if self.obliquity >= 0.05 else ""
        stated = f"{self.codes} ({self.source}{tilt})" if self.codes else f"not stated ({self.source})"
        action = "kept" if self.transform is None else f"reoriented to {''.join(CT_RATE_CODES)}"
        return f"orientation {stated}: {action}"

    def permute(self, values: tuple) -> tuple:
        """Per-axis values of the stored order (shape, spacing) in the order reading gives them."""
        if self.transform is None:
            return tuple(values)
        out = list(values)
        for axis, (target, _) in enumerate(self.transform):
            out[int(target)] = values[axis]
        return tuple(out)

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Stored voxels (i, j, k) in CT-RATE's order: a view (flips and a transpose), or `stored` itself."""
        return stored if self.transform is None else orientations.apply_orientation(stored, self.transform)


def stated_affine(header) -> tuple[np.ndarray | None, str]:
    """(affine, its source) the header states, sform before qform as nibabel reads them; (None, why) when it states
    no orientation: no sform/qform code, or an identity affine (CT-RATE v1's, and what array-to-NIfTI converters
    write when they know nothing about the patient)."""
    if int(header["sform_code"]) > 0:
        affine, source = header.get_sform(), "sform"
    elif int(header["qform_code"]) > 0:
        affine, source = header.get_qform(), "qform"
    else:
        return None, "no sform/qform"
    return (None, "identity affine") if np.array_equal(affine, np.eye(4)) else (affine, source)


def _axes(affine: np.ndarray) -> tuple[np.ndarray, float, int] | None:
    """(nibabel io orientation (3, 2), obliquity in degrees, the most oblique voxel axis), None if degenerate."""
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(columns, axis=0)
    if not np.isfinite(columns).all() or (norms <= 0).any() or abs(np.linalg.det(columns)) <= 1e-12 * norms.prod():
        return None
    io = orientations.io_orientation(affine)
    if np.isnan(io).any():
        return None
    cosines = np.abs(columns[io[:, 0].astype(int), np.arange(3)]) / norms
    angles = np.degrees(np.arccos(np.clip(cosines, 0.0, 1.0)))
    return io, float(angles.max()), int(angles.argmax())


def read_orientation(header, policy: str) -> Orientation:
    """The header's orientation and what reading does with it (see the module docstring for the policies).

    Policy "header" raises OrientationError when the stated affine is degenerate or tilted more than
    MAX_OBLIQUITY_DEG from every anatomical axis: flipping and permuting axes cannot make such a volume axial."""
    if policy not in POLICIES:
        raise ValueError(f"orientation policy must be one of {POLICIES}, got {policy!r}")
    affine, source = stated_affine(header)
    if affine is None:
        return Orientation(None, source, 0.0)
    axes = _axes(affine)
    if axes is None:
        if policy == "header":
            raise OrientationError(f"its {source} affine is degenerate (a voxel axis of zero length, not finite or "
                                   "parallel to another), so no anatomical direction can be read from it")
        return Orientation(None, f"degenerate {source}", 0.0)
    io, obliquity, axis = axes
    codes = "".join(orientations.ornt2axcodes(io))
    if policy == "ct-rate":
        return Orientation(codes, source, obliquity)
    if obliquity > MAX_OBLIQUITY_DEG:
        raise OrientationError(
            f"cannot be made axial: its {source} affine tilts voxel axis {axis} by {obliquity:.1f} deg from the "
            f"nearest anatomical axis (more than {MAX_OBLIQUITY_DEG:g} deg), so no flip or permutation of its axes "
            "gives axial slices; resample it to an axis-aligned grid first")
    transform = orientations.ornt_transform(io, orientations.axcodes2ornt(CT_RATE_CODES))
    return Orientation(codes, source, obliquity, None if np.array_equal(transform, _KEEP) else transform)


def file_orientation(path: str | Path, policy: str) -> Orientation:
    """read_orientation of a NIfTI file's header (nothing else is read); OrientationError when it is refused."""
    return read_orientation(nib.load(path).header, policy)
