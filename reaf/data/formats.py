"""Volume files: NIfTI, stage1 (.pt HU), stage2 (.pt.gz final tensor) and the fast cache, loaded to the model input."""

from __future__ import annotations

import gzip
import io
import json
import logging
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import zstandard

from reaf import atomic
from reaf.data import transforms as T
from reaf.data.input_spec import InputSpec
from reaf.data.orientation import Orientation, OrientationError, read_orientation
from reaf.finite import require_finite_voxels

try:
    from isal.igzip import decompress as gunzip
except ImportError:  # ISA-L is optional: the standard library is ~2.5x slower at inflating NIfTIs and stage2 files
    from gzip import decompress as gunzip

log = logging.getLogger(__name__)

FORMATS = {"ori": ".nii.gz", "stage1": ".pt", "stage2": ".pt.gz", "cache": ".vol.zst"}
NIFTI_SUFFIXES = (FORMATS["ori"], ".nii")  # `ori` also finds plain .nii files
NAME_SUFFIXES = (FORMATS["ori"], FORMATS["stage2"], ".nii", FORMATS["stage1"])  # stripped from VolumeName values
DECISIONS: Counter[str] = Counter()  # per-process counts of HU and spacing decisions, see `decision_summary`
CACHE_MAGIC = b"REAFVOL1"
CACHE_LEVELS = 4095  # windowed [0, 1] stored as round(v * 4095): step 2.4e-4 (0.37 HU in a 1500 HU window)
CACHE_ZSTD_LEVEL = 1  # measured: levels 1-9 give the same size after byte shuffling; 1 decodes fastest


class VolumeError(ValueError):
    """A volume file that cannot be used; the message names the file and the cause."""


@dataclass
class VolumeMeta:
    """Per-volume metadata from a CT-RATE metadata CSV row (None where unknown)."""

    xy_spacing: tuple[float, float] | None = None  # (x, y) mm
    z_spacing: float | None = None
    slope: float | None = None
    intercept: float | None = None


def volume_file(root: Path, rel: str, fmt: str) -> Path:
    """Path of volume `rel` (relative to the data root, without suffix) in format `fmt`; `ori` also finds `.nii` and
    a DICOM series folder `rel/`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown volume format {fmt!r} (one of {sorted(FORMATS)})")
    path = Path(root) / f"{rel}{FORMATS[fmt]}"
    if fmt == "ori" and not path.exists() and (Path(root) / f"{rel}{NIFTI_SUFFIXES[1]}").exists():
        return Path(root) / f"{rel}{NIFTI_SUFFIXES[1]}"
    if fmt == "ori" and not path.exists() and (Path(root) / rel).is_dir():  # a DICOM series folder
        return Path(root) / rel
    return path


def decision_summary() -> str:
    """Counts of this process's HU/spacing decisions, e.g. 'HU from header ...: 3, spacing from CSV: 3'."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(DECISIONS.items())) or "no NIfTI read"


def describe_error(e: BaseException) -> str:
    """The cause of a failure as shown to users: the message, prefixed by the type unless it is a ValueError."""
    return str(e) if type(e) in (ValueError, VolumeError, OrientationError, T.HUError) else f"{type(e).__name__}: {e}"


def _nifti_header(raw: bytes) -> nib.Nifti1Header:
    size = {struct.unpack(e + "i", raw[:4])[0] for e in "<>"} if len(raw) >= 4 else set()
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        if klass.sizeof_hdr in size:
            return klass.from_fileobj(io.BytesIO(raw))
    raise ValueError("not a NIfTI file (no NIfTI-1/2 header size at its start)")


def read_nifti(path: Path, orientation: str = "ct-rate") -> tuple[np.ndarray, tuple[float, float], tuple[float, ...]]:
    """NIfTI -> (stored values (z, y, x) read-only view, header (scl_slope, scl_inter), header spacing (z, y, x) mm).

    Decompressed in one call (ISA-L when installed: ~2.5x zlib), header parsed by nibabel, voxels viewed in place:
    nibabel's data[i, j, k] = (x, y, z) in Fortran order, so the (z, y, x) transpose is C-contiguous. Values are
    unscaled so the HU decision sees the header scaling apart. orientation: "ct-rate" keeps the stored voxel order,
    "header" first brings it to CT-RATE's from the header's affine (reaf.data.orientation); logged and counted.
    """
    try:
        raw = path.read_bytes()
        raw = gunzip(raw) if raw[:2] == b"\x1f\x8b" else raw
    except Exception as e:  # gzip/zlib/ISA-L raise many types for a damaged file
        raise ValueError(f"not a readable gzip file ({describe_error(e)})") from e
    hdr = _nifti_header(raw)
    found = read_orientation(hdr, orientation)
    shape, dtype, offset = hdr.get_data_shape(), hdr.get_data_dtype(), int(hdr.get_data_offset())
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"expected a 3-D volume, got shape {tuple(hdr.get_data_shape())}")
    if dtype.kind not in "iuf":
        raise ValueError(f"unsupported voxel type {dtype}")
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if len(raw) < need:
        raise ValueError(f"truncated NIfTI: {len(raw)} bytes, the header needs {need}")
    stored = np.ndarray(shape, dtype, buffer=raw, offset=offset, order="F")
    slope, inter = hdr.get_slope_inter()
    scale = (1.0 if slope is None else float(slope), 0.0 if inter is None else float(inter))
    # pixdim as stored: nibabel's header check quietly turns a zero spacing into 1 mm (abs() is its fix for < 0)
    stored_pixdim = type(hdr).from_fileobj(io.BytesIO(raw), check=False)["pixdim"][1:4]
    log.debug("%s: %s", path, found.describe())
    zyx, zooms = to_ct_rate_order(stored, tuple(abs(float(z)) for z in stored_pixdim), found)
    return zyx, scale, zooms


def to_ct_rate_order(stored: np.ndarray, spacing: tuple[float, ...],
                     found: Orientation) -> tuple[np.ndarray, tuple[float, ...]]:
    """Voxels (i, j, k) in nibabel's layout with their spacing (i, j, k) mm -> ((z, y, x) view in the order `found`
    gives, spacing (z, y, x) mm); the orientation decision is counted. Shared by NIfTI files and DICOM series."""
    DECISIONS[found.describe()] += 1
    return found.apply(stored).transpose(2, 1, 0), found.permute(spacing)[::-1]


def _csv_spacing(meta: VolumeMeta | None) -> tuple[float, float, float] | None:
    if meta is not None and meta.xy_spacing is not None and meta.z_spacing is not None:
        return (float(meta.z_spacing), float(meta.xy_spacing[1]), float(meta.xy_spacing[0]))
    return None


def stage1_shape(path: Path, meta: VolumeMeta | None = None, orientation: str = "ct-rate") -> tuple[int, int, int]:
    """(z, y, x) of the stage1 tensor `source_to_hu` makes of this NIfTI or DICOM series, from headers alone."""
    if Path(path).is_dir():
        from reaf.data.dicom import dicom_stage1_shape

        return dicom_stage1_shape(path)
    img = nib.load(path)
    found = read_orientation(img.header, orientation)
    zyx = tuple(int(n) for n in found.permute(img.shape[:3])[::-1])
    spacing = _csv_spacing(meta) or tuple(float(z) for z in found.permute(img.header.get_zooms()[:3])[::-1])
    return T.resampled_shape(zyx, spacing)  # type: ignore[arg-type]


def _spacing(meta: VolumeMeta | None, header_zyx: tuple[float, float, float], path: Path) -> tuple[float, ...]:
    csv = _csv_spacing(meta)
    if csv is not None:
        DECISIONS["spacing from metadata CSV"] += 1
        return csv
    if min(header_zyx) <= 0 or not np.isfinite(header_zyx).all():
        raise ValueError(f"NIfTI header pixdim gives voxel spacing {header_zyx} mm (z, y, x), not all positive, and "
                         "no metadata CSV spacing is given")
    DECISIONS["spacing from NIfTI header pixdim (no CSV spacing)"] += 1
    log.debug("%s: no metadata spacing, using header pixdim (z, y, x) %s mm", path, header_zyx)
    return header_zyx


def nifti_to_hu(path: Path, meta: VolumeMeta | None = None,
                orientation: str = "ct-rate") -> tuple[torch.Tensor, T.HUDecision]:
    """NIfTI -> ((z', y', x') float32 HU at 3x1x1 mm, the HU decision); ValueError on unusable content. orientation:
    "ct-rate" (layout A) or "header" (layout B), see read_nifti.

    The affine HU = slope * stored + intercept is applied after resampling: trilinear weights sum to one, so the
    result is the same and the full-resolution volume is touched once (int -> float32) instead of three times.
    """
    stored, header_scale, header_spacing = read_nifti(path, orientation)
    csv = None
    if meta is not None and meta.slope is not None and meta.intercept is not None:
        csv = (float(meta.slope), float(meta.intercept))
    spacing = _spacing(meta, header_spacing, path)
    T.checked_resampled_shape(stored.shape, spacing)  # an implausible spacing is refused before any allocation
    values = torch.from_numpy(stored.astype(np.float32))
    if stored.dtype.kind == "f":
        require_finite_voxels(values)
    decision = T.decide_hu(T.air_level(values), header_scale, csv)
    DECISIONS[f"HU from {decision.source}"] += 1
    log.debug("%s: %s", path, decision.describe())
    resampled = T.resample(values, spacing)
    del values, stored
    return T.to_hu(resampled, decision), decision


def source_to_hu(path: Path, meta: VolumeMeta | None = None,
                 orientation: str = "ct-rate") -> tuple[torch.Tensor, T.HUDecision]:
    """An `ori` volume -> ((z', y', x') float32 HU at 3x1x1 mm, the HU decision): a NIfTI file (nifti_to_hu) or a DICOM
    series folder (reaf.data.dicom.dicom_to_hu: HU, spacing and orientation from its own tags; meta is not used)."""
    if Path(path).is_dir():
        from reaf.data.dicom import dicom_to_hu

        return dicom_to_hu(path)
    return nifti_to_hu(path, meta, orientation)


def _load_ori(path: Path, spec: InputSpec, meta: VolumeMeta | None, orientation: str = "ct-rate") -> torch.Tensor:
    hu, _ = source_to_hu(path, meta, orientation)
    return T.model_input(hu, spec.size, spec.hu_min, spec.hu_max, spec.mode)


def read_stage1(path: Path) -> torch.Tensor:
    """.pt -> (z, y, x) float32 HU at 3x1x1 mm; ValueError if it is not a finite 3-D float tensor."""
    hu = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(hu, torch.Tensor) or hu.ndim != 3 or not hu.dtype.is_floating_point:
        what = f"{hu.dtype} tensor of shape {tuple(hu.shape)}" if isinstance(hu, torch.Tensor) else type(hu).__name__
        raise ValueError(f"stage1 file must hold a 3-D float HU tensor (z, y, x), got {what}")
    require_finite_voxels(hu)
    return hu.to(torch.float32)


def _load_stage1(path: Path, spec: InputSpec, meta: VolumeMeta | None) -> torch.Tensor:
    return T.model_input(read_stage1(path), spec.size, spec.hu_min, spec.hu_max, spec.mode)


def _check_shape(path: Path, shape: tuple[int, ...], spec: InputSpec) -> None:
    want = (1, *spec.size)
    if tuple(shape) != want:
        raise VolumeError(f"{path}: stored tensor shape {tuple(shape)} differs from the model input {want}")


def _load_stage2(path: Path, spec: InputSpec, meta: VolumeMeta | None) -> torch.Tensor:
    x = torch.load(io.BytesIO(gunzip(path.read_bytes())), map_location="cpu", weights_only=True)
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"stage2 file must hold a float32/float16 tensor, got {getattr(x, 'dtype', type(x))}")
    _check_shape(path, tuple(x.shape), spec)
    require_finite_voxels(x)
    return x.to(torch.float32)


def save_stage1(path: Path, hu: torch.Tensor) -> None:
    """(z, y, x) float HU at 3x1x1 mm -> .pt (float32), atomically."""
    buf = io.BytesIO()
    torch.save(hu.to(torch.float32).contiguous().clone(), buf)
    atomic.write_bytes(path, buf.getvalue())


def save_stage2(path: Path, x: torch.Tensor, dtype: torch.dtype = torch.float32, level: int = 6) -> None:
    """(1, D, H, W) normalised model input -> gzip(torch.save) .pt.gz as the reference stores it, atomically."""
    buf = io.BytesIO()
    torch.save(x.to(dtype).contiguous().clone(), buf)
    atomic.write_bytes(path, gzip.compress(buf.getvalue(), compresslevel=level))


def save_cache(path: Path, fitted: torch.Tensor, spec: InputSpec) -> None:
    """(D, H, W) windowed values in [0, 1] -> cache file: magic, header JSON (spec, resampling grid), zstd(byte-shuffled
    int16 levels).

    Byte shuffling (all low bytes, then all high bytes) makes the 12-bit levels compress ~25% smaller.
    """
    if tuple(fitted.shape) != spec.size:
        raise ValueError(f"cache tensor {tuple(fitted.shape)} is not the input size {spec.size}")
    q = torch.round(fitted.to(torch.float32).clamp(0, 1) * CACHE_LEVELS).to(torch.int16).numpy().astype("<i2")
    planes = np.ascontiguousarray(q.reshape(-1).view(np.uint8).reshape(-1, 2).T)
    header = json.dumps({**spec.describe(), "levels": CACHE_LEVELS, "dtype": "<i2", "codec": "zstd+shuffle",
                         "grid": T.RESAMPLE_GRID}).encode()
    payload = zstandard.ZstdCompressor(level=CACHE_ZSTD_LEVEL, write_checksum=True).compress(planes.tobytes())
    atomic.write_bytes(path, CACHE_MAGIC + struct.pack("<I", len(header)) + header + payload)


def save_volume(path: Path, fmt: str, hu: torch.Tensor, spec: InputSpec, stage2_dtype: str = "float32") -> None:
    """(z, y, x) HU at 3x1x1 mm -> the file of format `fmt` that `load_volume` decodes (preprocessing's encoder)."""
    if fmt == "stage1":
        return save_stage1(path, hu)
    fitted = T.window_fit(hu, spec.size, spec.hu_min, spec.hu_max, spec.mode)
    if fmt == "stage2":
        return save_stage2(path, T.normalize(fitted).unsqueeze(0), getattr(torch, stage2_dtype))
    if fmt == "cache":
        return save_cache(path, fitted, spec)
    raise ValueError(f"cannot write volume format {fmt!r} (stage1, stage2 or cache)")


def read_cache_header(data: bytes | memoryview, path: Path) -> tuple[dict, int]:
    """(header dict, payload offset) of a cache file's bytes."""
    if bytes(data[:8]) != CACHE_MAGIC:
        raise ValueError("not a REAF cache file (bad magic)")
    (n,) = struct.unpack("<I", data[8:12])
    return json.loads(bytes(data[12 : 12 + n])), 12 + n


def _load_cache(path: Path, spec: InputSpec, meta: VolumeMeta | None) -> torch.Tensor:
    data = path.read_bytes()
    header, offset = read_cache_header(data, path)
    if header.get("grid") != T.RESAMPLE_GRID:  # written before the reference's grid (rounded voxel counts)
        raise VolumeError(f"{path}: cache written with another resampling grid ({header.get('grid', 'rounded voxel counts')}"
                          f", not the reference's {T.RESAMPLE_GRID}); run python -m reaf.preprocess again on its "
                          "source: it re-converts such files")
    _check_shape(path, (1, *header["size"]), spec)
    stored = {k: header[k] for k in ("hu_min", "hu_max", "mode")}
    wanted = {k: spec.describe()[k] for k in stored}
    if stored != wanted:
        raise VolumeError(f"{path}: cache was written for --input-info {stored}, the run asks for {wanted}")
    planes = np.frombuffer(zstandard.ZstdDecompressor().decompress(memoryview(data)[offset:]), np.uint8)
    n = int(np.prod(spec.size))
    if planes.size != 2 * n:
        raise ValueError(f"cache payload holds {planes.size} bytes, expected {2 * n}")
    q = np.empty(n, dtype="<i2")
    pairs = q.view(np.uint8).reshape(n, 2)
    pairs[:, 0], pairs[:, 1] = planes[:n], planes[n:]
    return torch.from_numpy(T.normalize(q, divisor=header["levels"])).reshape(1, *spec.size)


_LOADERS = {"ori": _load_ori, "stage1": _load_stage1, "stage2": _load_stage2, "cache": _load_cache}


def load_volume(path: Path, fmt: str, spec: InputSpec, meta: VolumeMeta | None = None,
                orientation: str = "ct-rate") -> torch.Tensor:
    """Volume file in format `fmt` -> (1, D, H, W) float32 normalised model input; VolumeError naming the file.

    ori: NIfTI -> HU (decided per file, see reaf.data.transforms.decide_hu) -> 3x1x1 mm -> window -> crop|resize -> norm,
    or a DICOM series folder (reaf.data.dicom, read as a layout-B NIfTI of the same voxels and affine);
    stage1: .pt HU at 3x1x1 mm -> window -> crop|resize -> norm; stage2: .pt.gz final tensor as stored;
    cache: windowed tensor quantised to 4095 levels (error <= 1.2e-4 of the window) -> norm. `meta` and `orientation`
    ("ct-rate" for layout A, "header" for layout B: reaf.data.orientation) are used by `ori` only.
    """
    if fmt not in _LOADERS:
        raise ValueError(f"unknown --input-data-type {fmt!r} (one of {sorted(_LOADERS)})")
    path = Path(path)
    if not (path.is_file() or (fmt == "ori" and path.is_dir())):
        raise VolumeError(f"{path}: volume file not found")
    try:
        if fmt == "ori":
            return _load_ori(path, spec, meta, orientation)
        return _LOADERS[fmt](path, spec, meta)
    except VolumeError:
        raise
    except Exception as e:  # any failure to read or interpret a file is that file's fault: name it and the cause
        cause = describe_error(e)
        if not str(e).strip():  # e.g. torch.load's bare EOFError on an empty or cut file
            cause += f"file ended early ({path.stat().st_size} bytes: empty or truncated)"
        raise VolumeError(f"{path}: {cause}") from e
