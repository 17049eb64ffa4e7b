"""Preprocessing: NIfTI (layout B: or DICOM series folder) -> stage1 / stage2 / cache files at the same relative paths,
in parallel, resumable, with a manifest. `python -m reaf.preprocess` is its CLI; the demo calls `preprocess_split`."""

from __future__ import annotations

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

import torch
from tqdm import tqdm

from reaf import atomic
from reaf.data import csv_tables as tables
from reaf.data import formats as V
from reaf.data import transforms as T
from reaf.data.dicom import dicom_orientation, series_folders
from reaf.data.input_spec import InputSpec
from reaf.data.orientation import file_orientation
from reaf.model.config import load_model_config

log = logging.getLogger("reaf.preprocess")
SIDE_SUFFIXES = (".csv", ".json", ".jsonl", ".txt")  # reports, labels, metadata: copied so OUT is a complete root
METADATA_CSV = {"train": "train_metadata.csv", "valid": "validation_metadata.csv", "test": "test_metadata.csv"}
DEFAULT_MODEL = "vit_base_singlescan_h2_token2744"


class PreprocessError(ValueError):
    """The split cannot be preprocessed as asked (no volumes, an unknown split); the message says why."""


@dataclass(frozen=True)
class PreprocessSettings:
    """One split to convert. Exactly one of ct_rate_root (layout A) and data_root (layout B) is set."""

    split: str
    out: str
    format: str  # stage1 | stage2 | cache
    ct_rate_root: str | None = None
    data_root: str | None = None
    model: str = DEFAULT_MODEL  # config name or JSON: gives the input size
    input_info: tuple[str, str, str] = ("-1150", "350", "crop")  # HU MIN MAX and crop|resize
    stage2_dtype: str = "float32"
    workers: int = 1
    limit: int | None = None
    skip_bad: bool = False
    log_level: str = "INFO"


@dataclass
class Job:
    """One volume to convert: source NIfTI (layout B: or DICOM series folder), output path, its metadata, a problem
    found before reading it, and the orientation policy of its layout (reaf.data.orientation: "ct-rate" for A,
    "header" for B)."""

    src: Path
    out: Path
    rel: str
    meta: V.VolumeMeta | None
    problem: str | None = None
    orientation: str = "ct-rate"
    redo: str | None = None  # why an existing output must be converted again whatever it holds (an older grid)


def read_metadata(path: Path) -> dict[str, V.VolumeMeta]:
    """CT-RATE metadata CSV -> {VolumeName without .nii.gz: VolumeMeta}, parsed as the dataset readers parse it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata CSV not found (layout A needs it for spacing and slope/intercept)")
    df = tables.read_table(path, required=("XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"))
    rows = tables.rows_by_name(df, path, tables.Problems(skip_bad=False))
    return {name: tables.meta_from_row(row, path, name) for name, row in rows.items()}


def _niftis(folder: Path) -> dict[str, Path]:
    """{name: NIfTI file} below `folder`; two files of one name (a.nii beside a.nii.gz) are refused, naming both."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        suffix = next((s for s in V.NIFTI_SUFFIXES if path.name.endswith(s)), None)
        if suffix and path.is_file():
            name = path.name[: -len(suffix)]
            if name in found:
                raise PreprocessError(f"{found[name]} and {path}: two volume files named {name}; keep one")
            found[name] = path
    return found


def layout_b_volumes(folder: Path) -> dict[str, Path]:
    """{name: NIfTI file or DICOM series folder} of a layout-B volumes/ folder; a name given twice is refused."""
    niftis, series = _niftis(folder), series_folders(folder)
    both = sorted(niftis.keys() & series.keys())
    if both:
        name = both[0]
        raise PreprocessError(f"{niftis[name]} and {series[name]}: a NIfTI file and a DICOM series folder named "
                              f"{name}; keep one")
    return {**series, **niftis}


def find_jobs(settings: PreprocessSettings) -> tuple[Path, list[Job]]:
    """(source root, jobs sorted by relative path); layout A prefers <split>_fixed copies and reads the metadata CSV."""
    out = Path(settings.out)
    given = settings.data_root or settings.ct_rate_root
    if not Path(given).is_dir():
        flag = "--data-root" if settings.data_root else "--ct-rate-root"
        raise FileNotFoundError(f"{flag} {given}: no such folder")
    if settings.data_root:
        root = Path(settings.data_root)
        volumes = root / settings.split / "volumes"
        found, metas, meta_csv = layout_b_volumes(volumes), None, None
        reports = root / settings.split / "reports" / "reports.json"
        if reports.is_file():  # checked here, so that a broken one stops this run rather than training
            tables.read_report_json(reports)
    else:
        root = Path(settings.ct_rate_root)
        if settings.split not in METADATA_CSV:
            raise PreprocessError(f"--split for layout A is train, valid or test, got {settings.split!r}")
        found = {**_niftis(root / "dataset" / settings.split), **_niftis(root / "dataset" / f"{settings.split}_fixed")}
        meta_csv = root / "dataset" / "metadata" / METADATA_CSV[settings.split]
        metas = read_metadata(meta_csv)
    if not found:
        dicom = " or DICOM series folders" if settings.data_root else ""
        raise PreprocessError(f"no .nii.gz/.nii volumes{dicom} found for split {settings.split!r} under {root}")
    jobs = []
    for name, src in found.items():
        rel = str(src.relative_to(root))
        rel = rel[: -len(next(s for s in V.NIFTI_SUFFIXES if rel.endswith(s)))] if src.is_file() else rel
        meta = None if metas is None else metas.get(name)
        problem = f"no row for {name} in metadata CSV {meta_csv}" if metas is not None and meta is None else None
        policy = "header" if settings.data_root else "ct-rate"
        jobs.append(Job(src, V.volume_file(out, rel, settings.format), rel, meta, problem, policy))
    jobs.sort(key=lambda j: j.rel)
    return root, jobs[: settings.limit] if settings.limit is not None else jobs


def verify(job: Job, fmt: str, spec: InputSpec) -> str | None:
    """None when the existing output is readable and has the right shape, else why it must be redone."""
    try:
        if fmt == "stage1":
            shape, want = tuple(V.read_stage1(job.out).shape), V.stage1_shape(job.src, job.meta, job.orientation)
            return None if shape == want else f"stage1 shape {shape}, expected {want}"
        V.load_volume(job.out, fmt, spec)
        return None
    except Exception as e:  # whatever makes an output unreadable means: redo it
        return V.describe_error(e)


def convert(job: Job, fmt: str, spec: InputSpec, stage2_dtype: str) -> dict:
    """Worker: verify or (re)write one output. Returns {"status": written|existing|bad|output_error, "reason",
    "decisions", "orientation", "reoriented"}: `bad` is the input's fault, `output_error` the output's."""
    result: dict = {"rel": job.rel, "src": str(job.src), "out": str(job.out), "status": "written"}
    if job.problem:
        return {**result, "status": "bad", "reason": job.problem}
    if job.out.exists():
        invalid = job.redo or verify(job, fmt, spec)
        if invalid is None:
            return {**result, "status": "existing"}
        result["redone"] = invalid
    before = Counter(V.DECISIONS)
    try:
        hu, _ = V.source_to_hu(job.src, job.meta, job.orientation)
        # what source_to_hu did, for the manifest
        found = dicom_orientation(job.src) if job.src.is_dir() else file_orientation(job.src, job.orientation)
        result.update(orientation=found.describe(), reoriented=found.transform is not None)
        V.save_volume(job.out, fmt, hu, spec, stage2_dtype)
    except atomic.OutputError as e:  # the output's fault (disk full, read-only): never skippable as a bad input
        return {**result, "status": "output_error", "reason": str(e), "errno": e.errno, "strerror": e.strerror}
    except Exception as e:  # a bad input is reported with its file and cause; the caller fails or skips
        reason = V.describe_error(e).removeprefix(f"{job.src}: ")  # DICOM errors name their folder, as src does
        return {**result, "status": "bad", "reason": reason}
    return {**result, "decisions": dict(Counter(V.DECISIONS) - before)}


def _init_worker(level: str) -> None:
    """Worker setup: one torch thread per process, logging, and die with the parent (Linux) so a kill -9 stops all."""
    torch.set_num_threads(1)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(1)


def run_jobs(jobs: list[Job], settings: PreprocessSettings, spec: InputSpec):
    """Yield one result per job, from a process pool (or this process when --workers <= 1)."""
    call = (settings.format, spec, settings.stage2_dtype)
    if settings.workers <= 1:
        torch.set_num_threads(1)
        yield from (convert(job, *call) for job in jobs)
        return
    # fork: workers start in milliseconds instead of re-importing torch/transformers (~20 s on a busy 2-core box);
    # safe because this process has run no torch op (no OpenMP pool to inherit) before the pool starts
    ctx = get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(settings.workers, mp_context=ctx, initializer=_init_worker, initargs=(settings.log_level,)) as ex:
        futures = [ex.submit(convert, job, *call) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def copy_side_files(root: Path, out: Path, settings: PreprocessSettings) -> int:
    """Copy reports/labels/metadata (csv/json/txt) at their relative paths, atomically; returns the count."""
    base = root / settings.split if settings.data_root else root / "dataset"
    count = 0
    for path in sorted(base.rglob("*")):
        if path.is_file() and path.name.endswith(SIDE_SUFFIXES):
            atomic.write_bytes(out / path.relative_to(root), path.read_bytes())
            count += 1
    return count


def remove_stale_temps(out: Path) -> int:
    """Delete temp files left by a killed run (one run per OUT at a time); returns the count."""
    stale = list(out.rglob(atomic.TEMP_GLOB)) if out.exists() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def build_manifest(settings: PreprocessSettings, spec: InputSpec, jobs: list[Job], results: list[dict],
                   **extra) -> dict:
    """Manifest: counts and per-file lists of written, verified-existing and skipped-bad (with reason) volumes."""
    by = {s: [r for r in results if r["status"] == s] for s in ("written", "existing", "bad")}
    redone = [{"file": r["out"], "reason": r["redone"]} for r in results if "redone" in r]
    decisions: Counter[str] = Counter()
    for r in results:
        decisions.update(r.get("decisions", {}))
    counts = {"volumes": len(jobs), "written": len(by["written"]), "redone_invalid": len(redone),
              "skipped_existing": len(by["existing"]), "skipped_bad": len(by["bad"]),
              "not_reached": len(jobs) - len(results)}  # fmt: skip
    reoriented = [{"file": r["src"], "orientation": r["orientation"]} for r in by["written"] if r.get("reoriented")]
    return {
        "format": settings.format, "split": settings.split, "source_root": settings.ct_rate_root or settings.data_root,
        "out": str(settings.out), "model": settings.model, "spec": spec.describe(), "stage2_dtype": settings.stage2_dtype,
        "workers": settings.workers, "resample_grid": T.RESAMPLE_GRID, "counts": counts, "decisions": dict(sorted(decisions.items())), **extra,
        "written": [r["rel"] for r in by["written"]], "skipped_existing": [r["rel"] for r in by["existing"]],
        "skipped_bad": [{"file": r["src"], "reason": r["reason"]} for r in by["bad"]], "redone_invalid": redone,
        "reoriented": reoriented,
    }  # fmt: skip


def mark_old_grid(jobs: list[Job], manifest_path: Path) -> None:
    """Existing outputs listed by a manifest of an older resampling grid (or of none: before the grid was recorded)
    are converted again: stage1/stage2 files carry no header to tell (a cache file's header does)."""
    if not manifest_path.is_file():
        return
    try:
        grid = json.loads(manifest_path.read_text()).get("resample_grid", "rounded voxel counts")
    except (OSError, ValueError, AttributeError):
        grid = "unreadable manifest"
    if grid != T.RESAMPLE_GRID:
        log.warning("%s records resampling grid %r, not %r: every existing output is converted again",
                    manifest_path, grid, T.RESAMPLE_GRID)
        for job in jobs:
            job.redo = f"written with resampling grid {grid!r} ({manifest_path}), not {T.RESAMPLE_GRID!r}"


def summary_line(m: dict) -> str:
    c, secs = m["counts"], m["seconds"]
    per = f", {secs * max(1, m['workers']) / c['written']:.2f} core-s per written volume" if c["written"] else ""
    hu = "; ".join(f"{k}: {v}" for k, v in m["decisions"].items()) or "no NIfTI converted"
    return (f"preprocess {m['split']} -> {m['out']} ({m['format']}): {c['volumes']} volumes, {c['written']} written "
            f"({c['redone_invalid']} redone), {c['skipped_existing']} verified existing, {c['skipped_bad']} skipped "
            f"bad, {c['not_reached']} not reached; {hu}; {secs:.1f} s{per}")  # fmt: skip


def preprocess_split(settings: PreprocessSettings) -> dict:
    """Convert one split and write its manifest; returns the manifest. Stops at the first bad volume unless
    skip_bad: then manifest["failure"] is "<file>: <cause>" (the CLI exits with it). An output that cannot be
    written (disk full, read-only, no permission) stops the run with or without skip_bad: OutputError naming it."""
    spec = InputSpec.from_args(list(settings.input_info), tuple(load_model_config(settings.model).vision.img_size))
    out = Path(settings.out)
    root, jobs = find_jobs(settings)
    stale = remove_stale_temps(out)
    manifest_path = out / f"manifest_{settings.split}_{settings.format}.json"
    mark_old_grid(jobs, manifest_path)
    side = copy_side_files(root, out, settings)
    start, results, failure = time.time(), [], None
    stream = run_jobs(jobs, settings, spec)
    bar = tqdm(stream, total=len(jobs), desc=f"{settings.format} {settings.split}", unit="vol", dynamic_ncols=True)
    output_error = None
    for res in bar:
        if res["status"] == "output_error":
            output_error = atomic.OutputError(res["errno"], res["strerror"], res["out"])
            failure = str(output_error)
            break
        results.append(res)
        if res["status"] == "bad":
            if not settings.skip_bad:
                failure = f"{res['src']}: {res['reason']}"
                break
            log.warning("skipped bad volume %s: %s", res["src"], res["reason"])
    stream.close()
    extra = {"seconds": round(time.time() - start, 3), "stale_temps_removed": stale, "side_files_copied": side}
    manifest = build_manifest(settings, spec, jobs, results, failure=failure, **extra)
    try:
        atomic.write_json(manifest, manifest_path, indent=1)
    except atomic.OutputError as err:
        if output_error is None:
            raise
        log.warning("no manifest written: %s", err)  # the same full or read-only disk: the first cause is raised
    if output_error is not None:
        raise output_error
    return {**manifest, "path": str(manifest_path)}
