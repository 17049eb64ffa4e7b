"""What the benchmarks share: CT-RATE-sized synthetic NIfTIs, the machine record, result files, config variants,
call timing."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from reaf import atomic

SOURCE_SPACING = (1.5, 0.7, 0.7)  # (z, y, x) mm, typical of CT-RATE
REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"  # the benchmarks' results
RESEARCH_RESULTS = Path(__file__).resolve().parent / "demo_research" / "results"  # the demo research's results


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], coarse: int, amp: float) -> np.ndarray:
    """Low-frequency random field (trilinear upsampling of coarse noise), float32 of `shape`."""
    small = torch.from_numpy(rng.standard_normal((1, 1, coarse, coarse, coarse)).astype(np.float32))
    return F.interpolate(small, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy() * amp


def make_ct_like(shape_zyx: tuple[int, int, int] = (300, 512, 512), seed: int = 0) -> np.ndarray:
    """(z, y, x) float32 HU of a chest-like phantom: air, circular FOV padding, body, lungs, heart, spine, noise."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    hu = np.full(shape_zyx, -1000.0, dtype=np.float32)
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1.0
    hu[np.broadcast_to(body, shape_zyx)] = -100.0  # fat shell
    inner = (x / 0.74) ** 2 + (y / 0.54) ** 2 < 1.0
    hu = np.where(inner, 40.0, hu)
    taper = 1.0 - 0.5 * z**2
    for cx in (-0.35, 0.35):
        lung = ((x - cx) / (0.28 * taper)) ** 2 + ((y + 0.05) / (0.4 * taper)) ** 2 < 1.0
        hu = np.where(lung, -850.0, hu)
    heart = ((x + 0.08) / 0.22) ** 2 + ((y - 0.1) / 0.2) ** 2 + (z / 0.5) ** 2 < 1.0
    hu = np.where(heart, 45.0, hu)
    aorta = ((x - 0.05) / 0.05) ** 2 + ((y + 0.15) / 0.05) ** 2 < 1.0
    hu = np.where(aorta, 180.0, hu)
    spine = (x / 0.07) ** 2 + ((y - 0.45) / 0.07) ** 2 < 1.0
    hu = np.where(spine, 700.0, hu)
    hu += _smooth_field(rng, shape_zyx, 12, 30.0)
    hu += rng.standard_normal(shape_zyx, dtype=np.float32) * 20.0
    hu[np.broadcast_to(x**2 + y**2 > 1.0, shape_zyx)] = -3024.0  # outside the circular field of view
    return hu


def write_v1_nifti(path: Path, hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    """Write HU as CT-RATE v1 stores it: int16 raw = HU + 1024, no header scaling (slope 1, intercept -1024 in CSV)."""
    raw = np.clip(np.round(hu_zyx + 1024.0), -32768, 32767).astype(np.int16).transpose(2, 1, 0)
    affine = np.diag([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0])
    img = nib.Nifti1Image(raw, affine)
    img.header.set_zooms(spacing_zyx[::-1])
    img.to_filename(str(path))


def make_sources(workdir: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` CT-RATE-sized v1 NIfTIs (512 x 512 x 300 int16, 0.7 x 0.7 x 1.5 mm) in `workdir`, made once."""
    paths = []
    for i in range(count):
        path = Path(workdir) / f"ct_{seed + i}.nii.gz"
        if not path.exists():
            write_v1_nifti(path, make_ct_like(seed=seed + i), SOURCE_SPACING)
        paths.append(path)
    return paths


def demo_train_reports(demo_dir: str | Path, count: int) -> list[str]:
    """The first `count` training reports of a demo folder's synthetic CT-RATE (its CSV through pandas), as training
    reads them (findings, then impressions)."""
    import pandas as pd

    from reaf.data.csv_tables import report_text

    csv = Path(demo_dir) / "ct_rate" / "dataset" / "radiology_text_reports" / "train_reports.csv"
    return [report_text(row) for row in pd.read_csv(csv).head(count).to_dict("records")]


def machine_info() -> dict:
    """CPU model, cores, load, library versions, and the sharing caveat, for every benchmark JSON."""
    import platform

    import zstandard

    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    try:
        import isal

        gunzip = f"isal {isal.__version__}"
    except ImportError:
        gunzip = "stdlib gzip"
    return {
        "cpu_model": model, "cores": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
        "nibabel": nib.__version__, "zstandard": zstandard.__version__, "gunzip": gunzip,
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "note": "CPUs shared with other engineers' jobs while measuring; timings are single-threaded, interleaved "
        "across variants, medians of repeats; files are in the OS page cache (decode cost, not disk reads)",
    }  # fmt: skip


def write_result(name: str, result: dict, out: Path | None = None, folder: Path = RESULTS) -> Path:
    """<folder>/<name>.json (bench/results/ unless told), or `out`, atomically, with the load at the end."""
    out = Path(out) if out else Path(folder) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    atomic.write_json(result, out, indent=1)
    return out


def merge_config(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` laid over `base`: a dict under a dict is merged key by key, any other value replaces the base's."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def variant_config(path: str | Path) -> dict[str, Any]:
    """The full model config of a variant file `{"base": NAME, <the fields it changes>}`: configs/NAME.json with the
    changes laid over it (a file without "base" is already a full config and comes back as it is)."""
    changes = json.loads(Path(path).read_text())
    if "base" not in changes:
        return changes
    base = json.loads((REPO / "configs" / f"{changes.pop('base')}.json").read_text())
    return merge_config(base, changes)


def resolve_model_config(path: str | Path, folder: str | Path) -> Path:
    """A config variant written out whole as <folder>/<its name>.json, a path any `--model` flag takes; a file
    without "base" is returned unchanged."""
    if "base" not in json.loads(Path(path).read_text()):
        return Path(path)
    out = Path(folder) / Path(path).name
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(variant_config(path), out, indent=2)
    return out


def call_seconds(call: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall seconds of each of `repeats` calls of `call()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times
