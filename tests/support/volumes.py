"""Tiny NIfTI fixtures for the volume and preprocessing tests: phantoms, v1/v2/header-scaled files, layout A/B roots."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SPACING = (2.5, 1.0, 0.8)  # (z, y, x) mm: anisotropic on purpose
SHAPE = (24, 64, 72)  # (z, y, x): 60 x 64 x 57.6 mm -> (20, 64, 58) at 3x1x1 mm (57 if counts are floored)


def chest_like(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """(z, y, x) int-valued float HU: air at -1000, a body ellipse, two lungs and a bright spine, with noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.7) ** 2 < 1] = 40.0
    for cx in (-0.4, 0.4):
        hu[((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 + (z / 1.2) ** 2 < 1] = -850.0
    hu[(x / 0.1) ** 2 + ((y - 0.55) / 0.1) ** 2 < 1] = 700.0
    return np.round(hu + rng.normal(0, 15, shape)).clip(-1024, 3000)


def sphere(shape: tuple[int, int, int], spacing: tuple, center_mm: tuple, radius_mm: float) -> np.ndarray:
    """(z, y, x) HU: -1000 air with a 200 HU ball; voxel i's centre sits at (i + 0.5) * spacing mm."""
    axes = [(np.arange(n) + 0.5) * s - c for n, s, c in zip(shape, spacing, center_mm)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.where(z**2 + y**2 + x**2 <= radius_mm**2, 200.0, -1000.0)


def write_nifti(path: Path, stored_zyx: np.ndarray, spacing=SPACING, dtype=np.int16, scl=None) -> Path:
    """Write (z, y, x) values as nibabel data[i, j, k] = (x, y, z); `scl` = (scl_slope, scl_inter) in the header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(stored_zyx).transpose(2, 1, 0).astype(dtype), np.diag([*spacing[::-1], 1.0]))
    img.header.set_zooms(spacing[::-1])
    if scl is not None:
        img.header.set_slope_inter(*scl)
    nib.save(img, str(path))
    return path


def write_v1(path: Path, hu: np.ndarray, spacing=SPACING) -> Path:
    """CT-RATE v1: raw stored values (HU + 1024), no header scaling; the CSV has slope 1, intercept -1024."""
    return write_nifti(path, hu + 1024, spacing)


def write_v2(path: Path, hu: np.ndarray, spacing=SPACING) -> Path:
    """CT-RATE v2 ("_fixed"): HU stored directly."""
    return write_nifti(path, hu, spacing)


def write_header_scaled(path: Path, hu: np.ndarray, spacing=SPACING) -> Path:
    """Raw values with scl_slope 1 / scl_inter -1024 in the header (nibabel itself would rescale)."""
    return write_nifti(path, hu + 1024, spacing, scl=(1.0, -1024.0))


def metadata_row(name: str, spacing=SPACING, slope=1.0, intercept=-1024.0) -> dict:
    return {"VolumeName": f"{name}.nii.gz", "XYSpacing": f"[{spacing[2]}, {spacing[1]}]", "ZSpacing": spacing[0],
            "RescaleSlope": slope, "RescaleIntercept": intercept}  # fmt: skip


def make_layout_a(root: Path, names: list[str], split: str = "valid", fixed: tuple[str, ...] = ()) -> dict[str, Path]:
    """CT-RATE layout A under root/dataset: v1 files in <split>/, v2 copies in <split>_fixed/ for `fixed` names.

    Returns {name: the NIfTI preprocessing should read (the _fixed copy where there is one)}.
    """
    chosen, rows = {}, []
    for i, name in enumerate(names):
        pid, scan = name.rsplit("_", 2)[0], name.rsplit("_", 1)[0]
        hu = chest_like(seed=i)
        chosen[name] = write_v1(root / "dataset" / split / pid / scan / f"{name}.nii.gz", hu)
        if name in fixed:
            chosen[name] = write_v2(root / "dataset" / f"{split}_fixed" / pid / scan / f"{name}.nii.gz", hu)
        rows.append(metadata_row(name))
    csv_split = {"train": "train", "valid": "validation"}[split]
    (root / "dataset" / "metadata").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "dataset" / "metadata" / f"{csv_split}_metadata.csv", index=False)
    (root / "dataset" / "radiology_text_reports").mkdir(parents=True, exist_ok=True)
    reports = pd.DataFrame({"VolumeName": [f"{n}.nii.gz" for n in names], "Findings_EN": "No findings.",
                            "Impressions_EN": "Normal."})  # fmt: skip
    reports.to_csv(root / "dataset" / "radiology_text_reports" / f"{csv_split}_reports.csv", index=False)
    return chosen


def make_layout_b(root: Path, names: list[str], split: str = "val") -> dict[str, Path]:
    """Layout B: root/<split>/volumes/<name>.nii.gz (v2 HU, spacing in the header) + reports/reports.json."""
    out = {
        name: write_v2(root / split / "volumes" / f"{name}.nii.gz", chest_like(seed=i)) for i, name in enumerate(names)
    }
    (root / split / "reports").mkdir(parents=True, exist_ok=True)
    (root / split / "reports" / "reports.json").write_text('{"a": "No findings."}')
    return out


def synthetic_model_inputs(nifti: Path, meta: dict, size: tuple[int, int, int]) -> list:
    """The `resize` model input of one reaf.synthetic NIfTI, computed apart from reaf.data: voxels in stored order as
    (z, y, x); HU = raw + the metadata row's intercept (-1024) for v1 files (v2 "_fixed" files store HU); trilinear
    to 3 x 1 x 1 mm at the row's spacing (voxel centres kept); window [-1150, 350] HU to [0, 1]; trilinear to `size`;
    (v - 0.449) / 0.226 -> (1, *size) float32 tensors, one per rule for the voxel counts n * spacing / 3|1 (rounded,
    floored) where the two rules give different counts: reaf's rule may be either."""
    import math

    import torch
    import torch.nn.functional as F

    stored = np.asarray(nib.load(str(nifti)).dataobj).transpose(2, 1, 0).astype(np.float32)
    hu = stored if "_fixed" in Path(nifti).parent.parent.parent.name else stored + float(meta["RescaleIntercept"])
    sx, sy = (float(v) for v in str(meta["XYSpacing"]).strip("[]").split(","))
    extent = [n * s / t for n, s, t in zip(hu.shape, (float(meta["ZSpacing"]), sy, sx), (3.0, 1.0, 1.0))]
    out = []
    for counts in dict.fromkeys((tuple(round(e) for e in extent), tuple(math.floor(e) for e in extent))):
        x = F.interpolate(torch.from_numpy(hu)[None, None], size=counts, mode="trilinear", align_corners=False)
        x = F.interpolate(((x + 1150.0) / 1500.0).clamp(0, 1), size=size, mode="trilinear", align_corners=False)
        out.append((x[0] - 0.449) / 0.226)
    return out
