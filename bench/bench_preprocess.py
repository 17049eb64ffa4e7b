"""Preprocessing benchmark: seconds per 512x512x300 int16 NIfTI per core, REAF vs a CT-CLIP-style float64 pipeline.

python -m bench.bench_preprocess [--volumes 2] [--repeats 2] [--workdir DIR] [--no-scipy]
  -> bench/results/preprocess.json
Both pipelines go NIfTI -> HU -> 3x1x1 mm -> window -> crop to (112, 336, 336) -> normalise, single-threaded.
End to end, each writes its output: REAF its cache (reaf.data.preprocessing.convert, the CLI's worker), CT-CLIP-style the
reference's stage2 (.pt.gz float32, gzip level 6). Compute-only times leave the write out of both.
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import scipy.ndimage
import torch
import torch.nn.functional as F

from bench.common import machine_info, make_sources, write_result
from reaf.atomic import write_bytes
from reaf.data import transforms as T
from reaf.data.formats import VolumeMeta, nifti_to_hu
from reaf.data.input_spec import InputSpec
from reaf.data.preprocessing import Job, convert

SPEC = InputSpec((112, 336, 336), -1150.0, 350.0, "crop")
META = VolumeMeta(xy_spacing=(0.7, 0.7), z_spacing=1.5, slope=1.0, intercept=-1024.0)


def ctclip_style(src: Path, resampler: str = "torch") -> torch.Tensor:
    """CT-CLIP's recipe: get_fdata (float64), slope/intercept, float64 resample (torch trilinear or scipy zoom)."""
    data = nib.load(src).get_fdata()  # (x, y, z) float64
    data = META.slope * data + META.intercept
    data = data.transpose(2, 1, 0)  # (z, y, x)
    spacing = (META.z_spacing, META.xy_spacing[1], META.xy_spacing[0])
    size = T.resampled_shape(data.shape, spacing)
    if resampler == "scipy":
        zoom = [n / m for n, m in zip(size, data.shape)]
        hu = torch.from_numpy(scipy.ndimage.zoom(data, zoom, order=1))
    else:
        hu = F.interpolate(torch.tensor(data)[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]
    windowed = ((hu - SPEC.hu_min) / (SPEC.hu_max - SPEC.hu_min)).clamp(0, 1)
    return T.normalize(T.pad_crop(windowed, SPEC.size)).unsqueeze(0).float()


def ctclip_end_to_end(src: Path, out: Path) -> None:
    buf = io.BytesIO()
    torch.save(ctclip_style(src), buf)
    write_bytes(out, gzip.compress(buf.getvalue(), compresslevel=6))


def reaf_compute(src: Path) -> torch.Tensor:
    hu, _ = nifti_to_hu(src, META)
    return T.model_input(hu, SPEC.size, SPEC.hu_min, SPEC.hu_max, SPEC.mode)


def reaf_end_to_end(src: Path, out: Path) -> None:
    out.unlink(missing_ok=True)
    result = convert(Job(src, out, src.name, META), "cache", SPEC, "float32")
    assert result["status"] == "written", result


def measure(sources: list[Path], work: Path, repeats: int, scipy_too: bool) -> dict:
    """Round-robin timings of every variant on every volume; medians per volume."""
    variants = {
        "reaf_end_to_end (cache written)": lambda s: reaf_end_to_end(s, work / f"{s.name}.vol.zst"),
        "ctclip_end_to_end (stage2 .pt.gz written)": lambda s: ctclip_end_to_end(s, work / f"{s.name}.pt.gz"),
        "reaf_compute": reaf_compute,
        "ctclip_compute (torch float64)": ctclip_style,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for src in sources:
            for name, run in variants.items():
                start = time.perf_counter()
                run(src)
                times[name].append(time.perf_counter() - start)
    if scipy_too:  # slow: one volume, once
        start = time.perf_counter()
        ctclip_style(sources[0], "scipy")
        times["ctclip_compute (scipy.ndimage.zoom order 1, float64)"] = [time.perf_counter() - start]
    diff = float((reaf_compute(sources[0]) - ctclip_style(sources[0])).abs().max())
    out = {k: {"median_s_per_volume_per_core": round(statistics.median(v), 3), "times_s": [round(t, 3) for t in v]}
           for k, v in times.items()}  # fmt: skip
    return {"variants": out, "max_abs_diff_reaf_vs_ctclip_model_input": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--volumes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keeps the generated NIfTIs between runs")
    p.add_argument("--no-scipy", action="store_true", help="skip the (slow) scipy.ndimage.zoom variant")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = measure(make_sources(work, args.volumes), work, args.repeats, not args.no_scipy)
    v = {k: r["median_s_per_volume_per_core"] for k, r in res["variants"].items()}
    summary = {
        "reaf_s_per_volume_per_core": v["reaf_end_to_end (cache written)"],
        "ctclip_s_per_volume_per_core": v["ctclip_end_to_end (stage2 .pt.gz written)"],
        "speedup_end_to_end": round(v["ctclip_end_to_end (stage2 .pt.gz written)"] / v["reaf_end_to_end (cache written)"], 2),
        "speedup_compute_only": round(v["ctclip_compute (torch float64)"] / v["reaf_compute"], 2),
    }  # fmt: skip
    summary["bar_3x_end_to_end"] = summary["speedup_end_to_end"] >= 3
    summary["bar_3x_compute_only"] = summary["speedup_compute_only"] >= 3
    result = {"benchmark": "preprocess", "source": "512x512x300 int16 v1 NIfTI, 0.7x0.7x1.5 mm",
              "input_size": list(SPEC.size), "volumes": args.volumes, "repeats": args.repeats,
              "summary": summary, **res, "machine": info}  # fmt: skip
    print(f"wrote {write_result('preprocess', result)}")
    for name, s in v.items():
        print(f"{name:55s} {s:7.2f} s/volume/core")
    print(summary)


if __name__ == "__main__":
    main()
