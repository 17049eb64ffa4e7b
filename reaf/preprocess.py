"""CLI: NIfTI -> stage1 / stage2 / cache files at the same relative paths, in parallel, resumable, with a manifest."""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import torch
from tqdm import tqdm

from reaf import tables
from reaf import transforms as T
from reaf import volume as V
from reaf.config import load_model_config

log = logging.getLogger("reaf.preprocess")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SIDE_SUFFIXES = (".csv", ".json", ".jsonl", ".txt")  # reports, labels, metadata: copied so OUT is a complete root
METADATA_CSV = {"train": "train_metadata.csv", "valid": "validation_metadata.csv"}


@dataclass
class Job:
    """One volume to convert: source NIfTI, output path, its metadata, and a problem found before reading it."""

    src: Path
    out: Path
    rel: str
    meta: V.VolumeMeta | None
    problem: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reaf.preprocess", description=__doc__)
    root = p.add_mutually_exclusive_group(required=True)
    root.add_argument("--ct-rate-root", help="layout A: ROOT/dataset/<split>[_fixed]/... with dataset/metadata/")
    root.add_argument("--data-root", help="layout B: ROOT/<split>/volumes/*.nii.gz (spacing from the header)")
    p.add_argument("--split", required=True, help="layout A: train|valid; layout B: the split folder name")
    p.add_argument("--out", required=True, help="output root; files land at the same relative paths as the NIfTIs")
    p.add_argument("--format", required=True, choices=["stage1", "stage2", "cache"])
    p.add_argument("--model", default="vit_base_singlescan_h2_token2744", help="config name or JSON: input size")
    p.add_argument("--input-info", nargs=3, metavar=("MIN", "MAX", "MODE"), default=None)
    p.add_argument("--stage2-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes; <= 1 runs in this process")
    p.add_argument("--limit", type=int, default=None, help="only the first N volumes (sorted by path)")
    p.add_argument("--skip-bad", action="store_true", help="count, log and record bad volumes instead of failing")
    p.add_argument("--log-level", default="INFO", help="DEBUG shows the HU/spacing decision of each file")
    return p.parse_args(argv)


def read_metadata(path: Path) -> dict[str, V.VolumeMeta]:
    """CT-RATE metadata CSV -> {VolumeName without .nii.gz: VolumeMeta}, parsed as the dataset readers parse it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata CSV not found (layout A needs it for spacing and slope/intercept)")
    df = tables.read_table(path, required=("XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"))
    rows = tables.rows_by_name(df, path, tables.Problems(skip_bad=False))
    return {name: tables.meta_from_row(row, path, name) for name, row in rows.items()}


def _niftis(folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.rglob("*")):
        suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
        if suffix and path.is_file():
            found[path.name[: -len(suffix)]] = path
    return found


def find_jobs(args: argparse.Namespace) -> tuple[Path, list[Job]]:
    """(source root, jobs sorted by relative path); layout A prefers <split>_fixed copies and reads the metadata CSV."""
    out = Path(args.out)
    given = args.data_root or args.ct_rate_root
    if not Path(given).is_dir():
        flag = "--data-root" if args.data_root else "--ct-rate-root"
        raise FileNotFoundError(f"{flag} {given}: no such folder")
    if args.data_root:
        root = Path(args.data_root)
        found, metas, meta_csv = _niftis(root / args.split / "volumes"), None, None
    else:
        root = Path(args.ct_rate_root)
        if args.split not in METADATA_CSV:
            raise SystemExit(f"error: --split for layout A is train or valid, got {args.split!r}")
        found = {**_niftis(root / "dataset" / args.split), **_niftis(root / "dataset" / f"{args.split}_fixed")}
        meta_csv = root / "dataset" / "metadata" / METADATA_CSV[args.split]
        metas = read_metadata(meta_csv)
    if not found:
        raise SystemExit(f"error: no .nii.gz/.nii volumes found for split {args.split!r} under {root}")
    jobs = []
    for name, src in found.items():
        rel = str(src.relative_to(root))
        rel = rel[: -len(next(s for s in NIFTI_SUFFIXES if rel.endswith(s)))]
        meta = None if metas is None else metas.get(name)
        problem = f"no row for {name} in metadata CSV {meta_csv}" if metas is not None and meta is None else None
        jobs.append(Job(src, V.volume_file(out, rel, args.format), rel, meta, problem))
    jobs.sort(key=lambda j: j.rel)
    return root, jobs[: args.limit] if args.limit is not None else jobs


def expected_stage1_shape(job: Job) -> tuple[int, int, int]:
    """(z, y, x) of a stage1 tensor for this NIfTI, from its header shape and the spacing the conversion uses."""
    img = nib.load(job.src)
    zyx = tuple(int(n) for n in img.shape[:3][::-1])
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3][::-1])
    if job.meta is not None and job.meta.xy_spacing is not None and job.meta.z_spacing is not None:
        spacing = (job.meta.z_spacing, job.meta.xy_spacing[1], job.meta.xy_spacing[0])
    return T.resampled_shape(zyx, spacing)  # type: ignore[arg-type]


def verify(job: Job, fmt: str, spec: V.InputSpec) -> str | None:
    """None when the existing output is readable and has the right shape, else why it must be redone."""
    try:
        if fmt == "stage1":
            shape, want = tuple(V.read_stage1(job.out).shape), expected_stage1_shape(job)
            return None if shape == want else f"stage1 shape {shape}, expected {want}"
        V.load_volume(job.out, fmt, spec)
        return None
    except Exception as e:  # whatever makes an output unreadable means: redo it
        return V.describe_error(e)


def convert(job: Job, fmt: str, spec: V.InputSpec, stage2_dtype: str) -> dict:
    """Worker: verify or (re)write one output. Returns {"status": written|existing|bad, "reason", "decisions"}."""
    result: dict = {"rel": job.rel, "src": str(job.src), "out": str(job.out), "status": "written"}
    if job.problem:
        return {**result, "status": "bad", "reason": job.problem}
    if job.out.exists():
        invalid = verify(job, fmt, spec)
        if invalid is None:
            return {**result, "status": "existing"}
        result["redone"] = invalid
    before = Counter(V.DECISIONS)
    try:
        hu, _ = V.nifti_to_hu(job.src, job.meta)
        if fmt == "stage1":
            V.save_stage1(job.out, hu)
        else:
            fitted = T.fit(T.window(hu, spec.hu_min, spec.hu_max), spec.size, spec.mode)
            if fmt == "stage2":
                V.save_stage2(job.out, T.normalize(fitted).unsqueeze(0), getattr(torch, stage2_dtype))
            else:
                V.save_cache(job.out, fitted, spec)
    except Exception as e:  # a bad input is reported with its file and cause; the caller fails or skips
        return {**result, "status": "bad", "reason": V.describe_error(e)}
    return {**result, "decisions": dict(Counter(V.DECISIONS) - before)}


def _init_worker(level: str) -> None:
    """Worker setup: one torch thread per process, logging, and die with the parent (Linux) so a kill -9 stops all."""
    torch.set_num_threads(1)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


def run_jobs(jobs: list[Job], args: argparse.Namespace, spec: V.InputSpec):
    """Yield one result per job, from a process pool (or this process when --workers <= 1)."""
    call = (args.format, spec, args.stage2_dtype)
    if args.workers <= 1:
        torch.set_num_threads(1)
        yield from (convert(job, *call) for job in jobs)
        return
    # fork: workers start in milliseconds instead of re-importing torch/transformers (~20 s on a busy 2-core box);
    # safe because this process has run no torch op (no OpenMP pool to inherit) before the pool starts
    ctx = get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker, initargs=(args.log_level,)) as ex:
        futures = [ex.submit(convert, job, *call) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def copy_side_files(root: Path, out: Path, args: argparse.Namespace) -> int:
    """Copy reports/labels/metadata (csv/json/txt) at their relative paths, atomically; returns the count."""
    base = root / args.split if args.data_root else root / "dataset"
    count = 0
    for path in sorted(base.rglob("*")):
        if path.is_file() and path.name.endswith(SIDE_SUFFIXES):
            V.atomic_write(out / path.relative_to(root), path.read_bytes())
            count += 1
    return count


def remove_stale_temps(out: Path) -> int:
    """Delete temp files left by a killed run (one run per OUT at a time); returns the count."""
    stale = list(out.rglob("*.reaf-tmp")) if out.exists() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def build_manifest(args: argparse.Namespace, spec: V.InputSpec, jobs: list[Job], results: list[dict], **extra) -> dict:
    """Manifest: counts and per-file lists of written, verified-existing and skipped-bad (with reason) volumes."""
    by = {s: [r for r in results if r["status"] == s] for s in ("written", "existing", "bad")}
    redone = [{"file": r["out"], "reason": r["redone"]} for r in results if "redone" in r]
    decisions: Counter[str] = Counter()
    for r in results:
        decisions.update(r.get("decisions", {}))
    counts = {"volumes": len(jobs), "written": len(by["written"]), "redone_invalid": len(redone),
              "skipped_existing": len(by["existing"]), "skipped_bad": len(by["bad"]),
              "not_reached": len(jobs) - len(results)}  # fmt: skip
    return {
        "format": args.format, "split": args.split, "source_root": args.ct_rate_root or args.data_root,
        "out": str(args.out), "model": args.model, "spec": spec.describe(), "stage2_dtype": args.stage2_dtype,
        "workers": args.workers, "counts": counts, "decisions": dict(sorted(decisions.items())), **extra,
        "written": [r["rel"] for r in by["written"]], "skipped_existing": [r["rel"] for r in by["existing"]],
        "skipped_bad": [{"file": r["src"], "reason": r["reason"]} for r in by["bad"]], "redone_invalid": redone,
    }  # fmt: skip


def summary_line(m: dict) -> str:
    c, secs = m["counts"], m["seconds"]
    per = f", {secs * max(1, m['workers']) / c['written']:.2f} core-s per written volume" if c["written"] else ""
    hu = "; ".join(f"{k}: {v}" for k, v in m["decisions"].items()) or "no NIfTI converted"
    return (f"preprocess {m['split']} -> {m['out']} ({m['format']}): {c['volumes']} volumes, {c['written']} written "
            f"({c['redone_invalid']} redone), {c['skipped_existing']} verified existing, {c['skipped_bad']} skipped "
            f"bad, {c['not_reached']} not reached; {hu}; {secs:.1f} s{per}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Convert one split; exit 1 with 'error: <file>: <cause>' on the first bad volume unless --skip-bad."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    spec = V.InputSpec.from_args(args.input_info, tuple(load_model_config(args.model).vision.img_size))
    out = Path(args.out)
    root, jobs = find_jobs(args)
    stale = remove_stale_temps(out)
    side = copy_side_files(root, out, args)
    start, results, failure = time.time(), [], None
    stream = run_jobs(jobs, args, spec)
    for res in tqdm(stream, total=len(jobs), desc=f"{args.format} {args.split}", unit="vol", dynamic_ncols=True):
        results.append(res)
        if res["status"] == "bad":
            if not args.skip_bad:
                failure = f"{res['src']}: {res['reason']}"
                break
            log.warning("skipped bad volume %s: %s", res["src"], res["reason"])
    stream.close()
    extra = {"seconds": round(time.time() - start, 3), "stale_temps_removed": stale, "side_files_copied": side}
    manifest = build_manifest(args, spec, jobs, results, failure=failure, **extra)
    path = out / f"manifest_{args.split}_{args.format}.json"
    V.atomic_write(path, json.dumps(manifest, indent=1).encode())
    print(summary_line(manifest) + f"; manifest {path}", flush=True)
    if failure:
        raise SystemExit(f"error: {failure}")
    return 0


if __name__ == "__main__":
    from reaf.cli import run_cli

    sys.exit(run_cli("python -m reaf.preprocess", main))
