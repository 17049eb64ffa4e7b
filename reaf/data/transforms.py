"""Voxel transforms: HU conversion without double rescaling, resampling to 3x1x1 mm, windowing, crop/resize, normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

TARGET_SPACING = (3.0, 1.0, 1.0)  # (z, y, x) mm, the reference's stage-1 grid
# The voxel-count rule of `resampled_shape`, recorded in every cache header and preprocessing manifest: files made
# before it (rounded counts, "round") differ from the reference's inputs and are refused or re-converted.
RESAMPLE_GRID = "int(n*spacing/target)"
SPACING_RANGE = (0.05, 20.0)  # mm: a voxel spacing outside (low, high] is no CT's (e.g. a pixdim in micrometres)
MAX_RESAMPLED_VOXELS = 2**30  # a whole-body scan at 3x1x1 mm holds ~2e8
MEAN, STD = 0.449, 0.226
AIR_HU = (-1250.0, -750.0)  # where the air level (see `air_level`) of a chest CT in HU must fall
PADDING_SPIKE = (0.005, 0.3)  # a minimum value held by 0.5%..30% of voxels is field-of-view padding (a circle in a
# square image pads 21.5%); held by more, it is the air itself (e.g. air clipped at -1024 or a noise-free phantom)
MIN_CROP_FILL = 0.5  # crop mode: each resampled axis must cover at least half of the model input


class HUError(ValueError):
    """No affine, or more than one, puts a file's air at chest-CT HU; `metadata_known`: whether a metadata CSV's
    slope/intercept was among the candidates (a CT-RATE v1 file read without it fails here)."""

    def __init__(self, message: str, metadata_known: bool) -> None:
        super().__init__(message)
        self.metadata_known = metadata_known


@dataclass
class HUDecision:
    """Which affine (hu = slope * stored + intercept) was applied to a file's stored values, and why."""

    source: str
    slope: float
    intercept: float
    air: float
    rejected: list[str] = field(default_factory=list)

    def describe(self) -> str:
        why = f"; rejected {', '.join(self.rejected)}" if self.rejected else ""
        return (
            f"HU from {self.source} (slope {self.slope:g}, intercept {self.intercept:g}; air at {self.air:.0f} HU){why}"
        )


def air_level(stored: torch.Tensor) -> float:
    """1st percentile of a voxel subsample, ignoring a padding spike at the minimum: the air level of a chest CT.

    stored: (z, y, x) any real dtype. Air is the lowest tissue in a chest CT: about -1000 in HU, about 0 in raw
    stored values with intercept -1024, about -2000 when HU are rescaled twice.
    """
    step = max(1, round((stored.numel() / 1e6) ** (1 / 3)))
    sample = stored[::step, ::step, ::step].reshape(-1).float()
    low = sample.min()
    is_pad = sample == low
    if PADDING_SPIKE[0] <= is_pad.float().mean() <= PADDING_SPIKE[1]:
        sample = sample[~is_pad]
    k = max(1, int(0.01 * sample.numel()))
    return float(sample.kthvalue(k).values)


def _candidates(header: tuple[float, float], csv: tuple[float, float] | None) -> list[tuple[str, float, float]]:
    hs, hi = header
    scaled = (hs, hi) != (1.0, 0.0)
    out = [("header scl_slope/scl_inter" if scaled else "stored values as HU", hs, hi)]
    if csv is not None:
        ms, mi = csv
        out.append(("metadata CSV RescaleSlope/Intercept on stored values", ms, mi))
        if scaled:
            out.append(("metadata CSV on top of header scaling", hs * ms, hi * ms + mi))
    unique: dict[tuple[float, float], tuple[str, float, float]] = {}
    for name, a, b in out:
        unique.setdefault((round(a, 9), round(b, 6)), (name, a, b))
    return list(unique.values())


def decide_hu(air_stored: float, header: tuple[float, float], csv: tuple[float, float] | None) -> HUDecision:
    """Choose the one affine that puts air at chest-CT HU (AIR_HU); HUError (a ValueError) when none or several do.

    header: nibabel's (slope, inter) from scl_slope/scl_inter ((1, 0) when unset); csv: the metadata row's
    (RescaleSlope, RescaleIntercept) or None. Candidates: header scaling alone (v2 "_fixed" files, or HU with
    header scaling), CSV scaling on the stored values (v1 raw files), CSV on top of the header (a v1 file whose
    header carries a different scaling). Applying the CSV to a v2 file would put air near -2000, so it is rejected.
    """
    good, rejected = [], []
    for name, a, b in _candidates(header, csv):
        air = a * air_stored + b
        if a > 0 and AIR_HU[0] <= air <= AIR_HU[1]:
            good.append(HUDecision(name, a, b, air))
        else:
            rejected.append(f"{name} (slope {a:g}, intercept {b:g} -> air at {air:.0f})")
    if len(good) != 1:
        what = "no" if not good else "more than one"
        tried = "; ".join(rejected + [g.describe() for g in good])
        hint = "" if csv is not None else " (no metadata slope/intercept known)"
        raise HUError(f"{what} HU interpretation puts air in {AIR_HU} HU{hint}: {tried}",
                      metadata_known=csv is not None)
    good[0].rejected = rejected
    return good[0]


def to_hu(values: torch.Tensor, decision: HUDecision) -> torch.Tensor:
    """float32 stored values (any shape) -> HU = slope * values + intercept, in place."""
    if decision.slope != 1.0:
        values.mul_(decision.slope)
    if decision.intercept != 0.0:
        values.add_(decision.intercept)
    return values


def resampled_shape(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """(z, y, x) voxel counts at `spacing` mm -> voxel counts at TARGET_SPACING: `max(1, int(n * s / t))` per axis.

    The grid of HLIP's offline preprocessing and of the reference's own `ori` loader, which the released weights
    were trained on: the count is truncated, not rounded (512 voxels at 0.65 mm -> 332 at 1 mm, not 333; 175 slices
    at 2 mm -> 116 at 3 mm, not 117), so the last partial voxel of the extent is left out. RESAMPLE_GRID names it.
    """
    return tuple(max(1, int(n * s / t)) for n, s, t in zip(shape, spacing, TARGET_SPACING))  # type: ignore[return-value]


def checked_resampled_shape(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """`resampled_shape`, after refusing (ValueError) a voxel spacing outside SPACING_RANGE mm (a header in metres or
    a typo) and a resampled volume of more than MAX_RESAMPLED_VOXELS voxels, before anything is allocated."""
    low, high = SPACING_RANGE
    if not all(low < s <= high for s in spacing):
        shown = ", ".join(f"{float(s):.4g}" for s in spacing)
        raise ValueError(f"voxel spacing (z, y, x) ({shown}) mm is outside the plausible ({low:g}, {high:g}] mm of a CT")
    size = resampled_shape(shape, spacing)
    voxels = size[0] * size[1] * size[2]
    if voxels > MAX_RESAMPLED_VOXELS:
        raise ValueError(f"{tuple(shape)} voxels at {tuple(spacing)} mm resample to {size} at 3x1x1 mm: {voxels} "
                         f"voxels, more than the budget of {MAX_RESAMPLED_VOXELS} (4 GiB of float32)")
    return size


def resample(hu: torch.Tensor, spacing: tuple[float, float, float]) -> torch.Tensor:
    """(z, y, x) float HU at `spacing` (z, y, x) mm -> (z', y', x') float32 at 3x1x1 mm, trilinear.

    Voxel centres keep their physical positions (align_corners=False: voxel i spans [i, i+1) * spacing).
    """
    size = checked_resampled_shape(tuple(hu.shape), spacing)  # type: ignore[arg-type]
    if size == tuple(hu.shape):
        return hu.to(torch.float32)
    return F.interpolate(hu.to(torch.float32)[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]


def window(hu: torch.Tensor, hu_min: float, hu_max: float) -> torch.Tensor:
    """clip((HU - min) / (max - min), 0, 1), any shape, float32."""
    return ((hu.to(torch.float32) - hu_min) / (hu_max - hu_min)).clamp_(0.0, 1.0)


def pad_crop(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """(z, y, x) -> (D, H, W): pad symmetrically with 0 where smaller, centre-crop where larger."""
    pads: list[int] = []
    for n, s in zip(reversed(x.shape), reversed(size)):
        total = max(s - n, 0)
        pads += [total // 2, total - total // 2]
    if any(pads):
        x = F.pad(x, pads, value=0.0)
    starts = [(n - s) // 2 for n, s in zip(x.shape, size)]
    return x[tuple(slice(a, a + s) for a, s in zip(starts, size))]


def resize(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """(z, y, x) -> (D, H, W), trilinear."""
    if tuple(x.shape) == tuple(size):
        return x
    return F.interpolate(x[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]


def check_crop_fill(shape: tuple[int, ...], size: tuple[int, int, int]) -> None:
    """ValueError when crop mode would fill less than MIN_CROP_FILL of an axis of the model input with data."""
    short = [(n, s) for n, s in zip(shape, size) if n < MIN_CROP_FILL * s]
    if short:
        raise ValueError(
            f"volume too small for the crop: resampled (z, y, x) {tuple(shape)} at 3x1x1 mm covers less than "
            f"{MIN_CROP_FILL:.0%} of the model input {tuple(size)} on some axis"
        )


def fit(windowed: torch.Tensor, size: tuple[int, int, int], mode: str) -> torch.Tensor:
    """(z, y, x) windowed values -> (D, H, W) by `crop` (pad + centre crop) or `resize`."""
    if mode == "crop":
        check_crop_fill(tuple(windowed.shape), size)
        return pad_crop(windowed, size)
    if mode == "resize":
        return resize(windowed, size)
    raise ValueError(f"unknown input mode {mode!r} (crop|resize)")


def normalize(x: torch.Tensor | np.ndarray, divisor: int = 1) -> torch.Tensor | np.ndarray:
    """(x / divisor - 0.449) / 0.226, any shape: the one normalisation. A numpy array (the cache decoder's integer
    levels, divisor = the level count) comes back float32 in two fused passes, about twice torch's speed there."""
    if isinstance(x, np.ndarray):
        out = np.multiply(x, np.float32(1.0 / (divisor * STD)), dtype=np.float32)
        np.subtract(out, np.float32(MEAN / STD), out=out)
        return out
    return (x - MEAN) / STD if divisor == 1 else (x / divisor - MEAN) / STD


def window_fit(hu: torch.Tensor, size: tuple[int, int, int], hu_min: float, hu_max: float, mode: str) -> torch.Tensor:
    """(z, y, x) HU at 3x1x1 mm -> (D, H, W) windowed to [0, 1] and brought to `size` by crop|resize."""
    return fit(window(hu, hu_min, hu_max), size, mode)


def model_input(hu: torch.Tensor, size: tuple[int, int, int], hu_min: float, hu_max: float, mode: str) -> torch.Tensor:
    """(z, y, x) HU at 3x1x1 mm -> (1, D, H, W) float32: window, crop|resize, normalise."""
    return normalize(window_fit(hu, size, hu_min, hu_max, mode)).unsqueeze(0).contiguous()
