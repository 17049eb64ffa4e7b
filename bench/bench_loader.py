"""Loader benchmark: volumes/s per core and bytes on disk per volume for ori, stage1, stage2 and the cache.

python -m bench.bench_loader [--volumes 2] [--repeats 5] [--workdir DIR]  -> bench/results/loader.json
Sources are CT-RATE-sized (512 x 512 x 300 int16, 0.7 x 0.7 x 1.5 mm) synthetic chests; the model input is the
paper's (112, 336, 336) with --input-info -1150 350 crop.
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine_info, make_sources, write_result
from reaf.data import transforms as T
from reaf.data.formats import VolumeMeta, load_volume, nifti_to_hu, save_cache, save_stage1, save_stage2
from reaf.data.input_spec import InputSpec

SPEC = InputSpec((112, 336, 336), -1150.0, 350.0, "crop")
META = VolumeMeta(xy_spacing=(0.7, 0.7), z_spacing=1.5, slope=1.0, intercept=-1024.0)


def reference_stage2(path: Path) -> torch.Tensor:
    """The reference's read: Python's gzip, then torch.load (decompressed in one call, its fastest form)."""
    return torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True).float()


def write_formats(src: Path, out: Path) -> dict[str, tuple[Path, object]]:
    """Write stage1, stage2 (fp32, fp16) and cache files for one NIfTI; returns {variant: (path, loader)}."""
    hu, _ = nifti_to_hu(src, META)
    x = T.model_input(hu, SPEC.size, SPEC.hu_min, SPEC.hu_max, SPEC.mode)
    stem = src.name.removesuffix(".nii.gz")
    paths = {k: out / f"{stem}{s}" for k, s in
             [("stage1", ".pt"), ("stage2", ".pt.gz"), ("stage2_fp16", ".f16.pt.gz"), ("cache", ".vol.zst")]}  # fmt: skip
    save_stage1(paths["stage1"], hu)
    save_stage2(paths["stage2"], x)
    save_stage2(paths["stage2_fp16"], x, torch.float16)
    save_cache(paths["cache"], T.fit(T.window(hu, SPEC.hu_min, SPEC.hu_max), SPEC.size, SPEC.mode), SPEC)
    return {
        "ori (NIfTI on the fly)": (src, lambda p: load_volume(p, "ori", SPEC, META)),
        "stage1 (.pt float32 HU)": (paths["stage1"], lambda p: load_volume(p, "stage1", SPEC)),
        "stage2 fp32, reference read (stdlib gzip)": (paths["stage2"], reference_stage2),
        "stage2 fp32, REAF read": (paths["stage2"], lambda p: load_volume(p, "stage2", SPEC)),
        "stage2 fp16, REAF read": (paths["stage2_fp16"], lambda p: load_volume(p, "stage2", SPEC)),
        "cache (REAF)": (paths["cache"], lambda p: load_volume(p, "cache", SPEC)),
    }


def measure(volumes: list[dict], repeats: int) -> dict:
    """Round-robin timings (so load from other jobs hits every variant alike); medians, sizes, max |diff| to ori."""
    names = list(volumes[0])
    times: dict[str, list[float]] = {n: [] for n in names}
    diffs = dict.fromkeys(names, 0.0)
    for r in range(repeats):
        for vol in volumes:
            ref = None
            for name in names:
                if name.startswith("ori") and r >= 2:
                    continue  # the slow on-the-fly path: two repeats are enough
                path, load = vol[name]
                start = time.perf_counter()
                x = load(path)
                times[name].append(time.perf_counter() - start)
                ref = x if ref is None else ref
                diffs[name] = max(diffs[name], float((x - ref).abs().max()))
    out = {}
    for name in names:
        med = statistics.median(times[name])
        size = statistics.mean(vol[name][0].stat().st_size for vol in volumes)
        out[name] = {"median_s": round(med, 4), "volumes_per_s_per_core": round(1 / med, 2),
                     "bytes_per_volume": int(size), "max_abs_diff_vs_ori": diffs[name],
                     "times_s": [round(t, 4) for t in times[name]]}  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--volumes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workdir", default=None, help="keeps the generated NIfTIs between runs")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        volumes = [write_formats(src, work) for src in make_sources(work, args.volumes)]
        results = measure(volumes, args.repeats)
    cache, ref = results["cache (REAF)"], results["stage2 fp32, reference read (stdlib gzip)"]
    ours = results["stage2 fp32, REAF read"]
    summary = {
        "cache_speedup_vs_stage2_fp32_reference_read": round(ref["median_s"] / cache["median_s"], 2),
        "cache_speedup_vs_stage2_fp32_reaf_read": round(ours["median_s"] / cache["median_s"], 2),
        "cache_size_vs_stage2_fp32": round(cache["bytes_per_volume"] / ref["bytes_per_volume"], 3),
    }
    summary["bar_cache_5x_faster_than_stage2"] = summary["cache_speedup_vs_stage2_fp32_reference_read"] >= 5
    summary["bar_cache_no_larger_than_stage2"] = summary["cache_size_vs_stage2_fp32"] <= 1
    result = {"benchmark": "loader", "input_size": list(SPEC.size), "source": "512x512x300 int16 v1 NIfTI",
              "volumes": args.volumes, "repeats": args.repeats, "summary": summary, "formats": results,
              "machine": info}  # fmt: skip
    print(f"wrote {write_result('loader', result)}")
    for name, r in results.items():
        print(f"{name:42s} {r['volumes_per_s_per_core']:7.2f} vol/s/core {r['bytes_per_volume'] / 1e6:7.1f} MB")
    print(summary)


if __name__ == "__main__":
    main()
