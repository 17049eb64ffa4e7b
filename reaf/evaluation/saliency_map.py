"""The enhancer's kept regions mapped from the model's token grid back to the input scan's own voxels and affine.

Reading a scan reorients it to CT-RATE's order and transposes it to (z, y, x) (reaf.data.formats.read_nifti),
resamples it to 3x1x1 mm (trilinear, align_corners=False) and fits it to the model input by crop (symmetric pad /
centre crop) or resize (reaf.data.transforms). Each of these is separable per axis, so each original voxel's token
is found axis by axis: voxel centre -> resampled coordinate -> model-input coordinate -> token (nearest).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from reaf import atomic
from reaf.data.input_spec import InputSpec
from reaf.evaluation.scans import Geometry

LEVEL_BITS = {"scan": 1, "slice": 2}  # the label map: 1 = kept at scan level, 2 = slice level, 3 = both


def axis_tokens(n: int, resampled: int, size: int, patch: int, mode: str) -> np.ndarray:
    """Token index (or -1 outside the model input) of each of an axis's `n` voxels, read at `resampled` voxels and
    fitted to `size` by `mode` (crop|resize); tokens are `patch` voxels of the model input."""
    coord = (np.arange(n) + 0.5) * resampled / n - 0.5  # the voxel centre in resampled voxels (align_corners=False)
    if mode == "resize":
        coord = (coord + 0.5) * size / resampled - 0.5
    elif resampled < size:  # pad_crop: symmetric zero padding before ...
        coord = coord + (size - resampled) // 2
    else:  # ... or a centre crop
        coord = coord - (resampled - size) // 2
    position = np.floor(coord + 0.5)  # the model-input voxel holding it
    inside = (position >= 0) & (position < size)
    return np.where(inside, position // patch, -1).astype(np.int64)


def invert_orientation(transform: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform that undoes `transform` (axis i -> transform[i, 0], flipped if -1)."""
    inverse = np.zeros_like(transform)
    for axis, (target, flip) in enumerate(transform):
        inverse[int(target)] = (axis, flip)
    return inverse


def grid_to_voxels(grid: np.ndarray, geometry: Geometry, resampled: tuple[int, int, int], spec: InputSpec,
                   patch: tuple[int, int, int]) -> np.ndarray:
    """A token-grid map (d, h, w) -> the input scan's voxels (i, j, k) in its stored order; 0 outside the model
    input. `resampled` is the (z, y, x) shape the scan had at 3x1x1 mm."""
    index = [axis_tokens(n, r, s, p, spec.mode)
             for n, r, s, p in zip(geometry.zyx_shape, resampled, spec.size, patch)]  # fmt: skip
    padded = np.concatenate([grid, np.zeros((1, *grid.shape[1:]), grid.dtype)], axis=0)  # index -1 -> a zero row
    padded = np.concatenate([padded, np.zeros((padded.shape[0], 1, grid.shape[2]), grid.dtype)], axis=1)
    padded = np.concatenate([padded, np.zeros((*padded.shape[:2], 1), grid.dtype)], axis=2)
    zyx = padded[np.ix_(*index)]  # -1 picks the appended zero plane of each axis
    oriented = zyx.transpose(2, 1, 0)
    transform = geometry.orientation.transform
    if transform is None:
        return np.ascontiguousarray(oriented)
    return np.ascontiguousarray(nib.orientations.apply_orientation(oriented, invert_orientation(transform)))


def kept_label_map(masks: dict[str, np.ndarray]) -> np.ndarray:
    """{"scan", "slice"} -> (d, h, w) bool kept regions -> one uint8 token map (LEVEL_BITS summed)."""
    out = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for level, mask in masks.items():
        out |= np.asarray(mask, bool).astype(np.uint8) * LEVEL_BITS[level]
    return out


def saliency_image(label: np.ndarray, geometry: Geometry) -> nib.Nifti1Image:
    """The (i, j, k) label map as a NIfTI with the input's affine (and its sform/qform codes when it is a NIfTI)."""
    image = nib.Nifti1Image(label.astype(np.uint8), geometry.affine)
    if geometry.header is not None:
        for form in ("sform", "qform"):
            code = int(geometry.header[f"{form}_code"])
            getattr(image, f"set_{form}")(geometry.affine if code else None, code=code)
    image.header["descrip"] = b"REAF kept regions: 1 scan, 2 slice, 3 both"
    return image


def save_saliency(image: nib.Nifti1Image, path: Path) -> None:
    """Write a NIfTI atomically (gzip-compressed when the name ends in .gz)."""
    data = image.to_bytes()
    atomic.write_bytes(path, gzip.compress(data, compresslevel=6) if path.name.endswith(".gz") else data)
