"""Synthetic CT-RATE: a small layout-A dataset of chest phantoms with the 18 findings planted and reports to match.

    python -m reaf.synthetic --out DIR [--seed S] [--num-train N] [--num-valid M] [--num-test T] [--workers K]

writes DIR/dataset/{train,valid,test}[_fixed]/<split>_<pid>/<split>_<pid>_<scan>/<split>_<pid>_<scan>_<recon>.nii.gz
plus CT-RATE's metadata, report and label CSVs. CT-RATE publishes no test split; this one (where the demo reports,
valid being where its choices are made) follows valid's pattern: dataset/test[_fixed]/, metadata/test_metadata.csv,
radiology_text_reports/test_reports.csv, multi_abnormality_labels/test_predicted_labels.csv, its own patients
(test_<pid>) and random streams. Adding it changes no byte of train or valid. v1 volumes (train/, valid/, test/)
store raw = HU + 1024 with a unit affine (the CSV's RescaleIntercept -1024 is needed to get HU); v2 volumes
(<split>_fixed/) store HU with the true spacing in the affine. As in CT-RATE, every metadata row says RescaleIntercept -1024, RescaleSlope 1.
Everything is deterministic from the seed; each volume's randomness comes from (seed, VolumeName) streams, so the
worker count never changes a byte. Re-running into the same folder replaces files at the same paths only.

Helpers other tests may reuse: ``write_volume_nifti(path, hu, spacing, version="v1"|"v2")`` writes one NIfTI
exactly as the dataset does; ``synth_volume(seed, name, classes=None)`` renders one phantom (optionally with a
forced finding set) without writing anything. The phantom lives in reaf/synthetic/{phantom,anatomy,findings,lung}.py, reports in
reaf/synthetic/reports.py, metadata rows in reaf/synthetic/metadata.py.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from reaf import atomic
from reaf.arg_types import non_negative_int
from reaf.data.csv_tables import CLASSES
from reaf.synthetic.anatomy import Anatomy, render, sample_anatomy
from reaf.synthetic.findings import finding_shapes, sample_findings, stream
from reaf.synthetic.metadata import METADATA_COLUMNS, metadata_row
from reaf.synthetic.phantom import Finding, Geometry, Shape
from reaf.synthetic.reports import write_report

# ISA-L (requirements.txt): 2.1 against 8.6 ms a demo volume at level 1, 0.4 % larger (bench/results/step_parts.json)
try:
    from isal.igzip import compress as gzip_compress
except ImportError:
    from gzip import compress as gzip_compress

INTERCEPT, SLOPE = -1024.0, 1.0
SPLIT_FILES = {"train": ("train", "train"), "valid": ("validation", "valid"), "test": ("test", "test")}  # CSV prefixes:
# metadata/reports, labels
REPORT_COLUMNS = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]


@dataclass(frozen=True)
class VolumeJob:
    """Everything a worker needs to render and write one reconstruction."""

    name: str  # VolumeName without .nii.gz, e.g. "train_3_b_2"
    path: Path
    version: str  # "v1" (raw + CSV rescale, unit affine) or "v2" (HU, true affine)
    geometry: Geometry
    anatomy: Anatomy
    shapes: tuple[Shape, ...]
    noise_sd: float
    seed: int


# Bumped whenever the same seed would draw different volumes or text (the demo refuses a folder made otherwise).
# docs/demo.md records what each version changed; version 5 was measured and not kept, so the next change takes 6.
GENERATOR_VERSION = 4


def write_volume_nifti(path: str | Path, hu: np.ndarray, spacing: tuple[float, float, float], *,
                       version: str = "v2", intercept: float = INTERCEPT, slope: float = SLOPE) -> Path:  # fmt: skip
    """Write an HU volume ``hu`` (x, y, z), its axes running to the patient's right, anterior and superior (the
    phantom's RAS+ grid), as one .nii.gz in CT-RATE's voxel order (L, P, S: x and y reversed; docs/orientation.md),
    atomically and byte-deterministically (gzip mtime 0; the bytes are ISA-L's when isal is installed, else zlib's).

    version "v2": int16 HU, an LPS affine diag(-sx, -sy, sz) centred on 0 (CT-RATE "_fixed"). version "v1": int16
    raw = (HU - intercept) / slope in the same voxel order with an identity affine (wrong unit spacing) and no
    header scaling, as CT-RATE v1; the caller must record intercept/slope and the true spacing in the metadata CSV.
    """
    if hu.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D (x, y, z) HU array, got shape {hu.shape}")
    lps = np.asarray(hu)[::-1, ::-1, :]
    if version == "v2":
        data = np.ascontiguousarray(lps, dtype=np.int16)
        affine = np.diag([-float(spacing[0]), -float(spacing[1]), float(spacing[2]), 1.0])
        affine[:3, 3] = [(hu.shape[0] - 1) / 2 * spacing[0], (hu.shape[1] - 1) / 2 * spacing[1],
                         -(hu.shape[2] - 1) / 2 * spacing[2]]  # fmt: skip
    elif version == "v1":
        data = np.rint((lps.astype(np.float32) - intercept) / slope).astype(np.int16)
        affine = np.eye(4)
    else:
        raise ValueError(f"{path}: version must be 'v1' or 'v2', got {version!r}")
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(np.int16)
    path = Path(path)
    atomic.write_bytes(path, gzip_compress(img.to_bytes(), compresslevel=1, mtime=0))
    return path


def scan_case(seed: int, patient_id: str, scan_id: str, classes: set[str] | None = None):
    """The anatomy (from the patient) and findings (from the scan) of one scan: -> (Anatomy, list[Finding])."""
    return sample_findings(seed, scan_id, sample_anatomy(stream(seed, patient_id, 0)), classes)


def volume_geometry(seed: int, name: str) -> tuple[Geometry, float, str]:
    """Per-reconstruction grid, noise level (HU) and file version, from the (seed, VolumeName) stream."""
    rng = stream(seed, name, 0)
    rows = int(rng.choice([112, 120, 128, 136, 144]))
    fov = float(np.round(rng.uniform(184, 200) * 2) / 2)
    z_sp = float(rng.choice([1.5, 2.0, 2.5, 3.0, 3.75, 5.0], p=[0.1, 0.2, 0.2, 0.25, 0.15, 0.1]))
    slices = int(round(rng.uniform(90, 104) / z_sp))
    version = "v1" if rng.random() < 1 / 3 else "v2"
    return Geometry((rows, rows, slices), (fov / rows, fov / rows, z_sp)), float(rng.uniform(6, 14)), version


def synth_volume(seed: int, name: str, classes: set[str] | None = None) -> tuple[np.ndarray, list[Finding], Geometry]:
    """Render one volume as in the dataset: -> (int16 HU (x, y, z), findings, geometry).

    ``classes`` forces the finding set (others stay identical), e.g. to compare a volume with and without a class.
    """
    patient_id, scan_id = name.rsplit("_", 2)[0], name.rsplit("_", 1)[0]
    anatomy, findings = scan_case(seed, patient_id, scan_id, classes)
    geometry, noise_sd, _ = volume_geometry(seed, name)
    hu = render(anatomy, finding_shapes(findings), geometry, noise_sd, stream(seed, name, 1))
    return hu, findings, geometry


def plan_split(seed: int, split: str, count: int) -> list[tuple[str, str, str]]:
    """(patient_id, scan_id, VolumeName) for ``count`` volumes: some patients have 2 scans, some scans 2 recons."""
    rng = stream(seed, f"plan/{split}", 0)
    names: list[tuple[str, str, str]] = []
    pid = 0
    while len(names) < count:
        pid += 1
        patient = f"{split}_{pid}"
        for scan in "ab"[: 1 + int(rng.random() < 0.25)]:
            for recon in range(1, 2 + int(rng.random() < 0.35)):
                names.append((patient, f"{patient}_{scan}", f"{patient}_{scan}_{recon}"))
    return names[:count]


def _render_job(job: VolumeJob) -> int:
    hu = render(job.anatomy, list(job.shapes), job.geometry, job.noise_sd, stream(job.seed, job.name, 1))
    write_volume_nifti(job.path, hu, job.geometry.spacing, version=job.version)
    return job.path.stat().st_size


def plan_split_tables(seed: int, split: str, count: int, dataset: Path):
    """Jobs and the three CSV tables (metadata, reports, labels) of one split; nothing is rendered or written."""
    jobs, meta, reports, labels = [], [], [], []
    cases: dict[str, tuple] = {}
    for patient, scan, name in plan_split(seed, split, count):
        geometry, noise_sd, version = volume_geometry(seed, name)
        if scan not in cases:
            anatomy, findings = scan_case(seed, patient, scan)
            report = write_report(findings, stream(seed, scan, 50), geometry.spacing[2])
            cases[scan] = anatomy, findings, report
        anatomy, findings, report = cases[scan]
        folder = split if version == "v1" else f"{split}_fixed"
        path = dataset / folder / patient / scan / f"{name}.nii.gz"
        jobs.append(VolumeJob(name, path, version, geometry, anatomy, tuple(finding_shapes(findings)), noise_sd, seed))
        file_name = f"{name}.nii.gz"
        meta.append(metadata_row(seed, file_name, patient, scan, geometry, INTERCEPT, SLOPE))
        reports.append({"VolumeName": file_name, **report})
        present = {f.cls for f in findings}
        labels.append({"VolumeName": file_name, **{c: int(c in present) for c in CLASSES}})
    tables = (pd.DataFrame(meta, columns=METADATA_COLUMNS), pd.DataFrame(reports, columns=REPORT_COLUMNS),
              pd.DataFrame(labels, columns=["VolumeName", *CLASSES]))  # fmt: skip
    return jobs, tables


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic.write_bytes(path, df.to_csv(index=False).encode())


def _run_jobs(jobs: list[VolumeJob], workers: int) -> int:
    bar = tqdm(total=len(jobs), desc="synthetic volumes", unit="vol", disable=None)
    total = 0
    if workers <= 1:
        for job in jobs:
            total += _render_job(job)
            bar.update()
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for size in pool.map(_render_job, jobs, chunksize=4):
                total += size
                bar.update()
    bar.close()
    return total


README_TEXT = """SYNTHETIC DATA - not real patients, not CT-RATE.

Generated by `python -m reaf.synthetic` (seed {seed}) in CT-RATE's published layout so that REAF's whole pipeline
(readers, preprocessing, training, zero-shot evaluation, retrieval) can run without real data. Chest phantoms in
HU with the 18 CT-RATE abnormality classes planted as visible structures; reports are written from the planted
findings, and the label CSVs match them exactly. train/, valid/ and test/ hold v1-style files (raw = HU + 1024, unit
affine; use RescaleIntercept/RescaleSlope and XYSpacing/ZSpacing from the metadata CSV); train_fixed/, valid_fixed/
and test_fixed/ hold v2-style files (HU, true spacing in the affine). CT-RATE has no test split: test/ and its
test_*.csv files are this dataset's own held-out split, with its own patients. Every metadata row says RescaleIntercept -1024
and RescaleSlope 1, as in CT-RATE, so a reader must tell v1 from v2 itself.
"""


def generate(out_dir: str | Path, seed: int = 0, num_train: int = 240, num_valid: int = 60, workers: int = 1,
             num_test: int | None = None) -> dict:  # fmt: skip
    """Write a synthetic CT-RATE under ``out_dir``/dataset and return a summary dict. ``num_test`` volumes (default
    ``num_valid``; 0: no test split) form a third split with its own patients; train and valid do not depend on it.

    Summary keys: root, seed, volumes {split: n}, patients, scans, v1, v2, prevalence {class: fraction of volumes},
    bytes (volume files), seconds.
    """
    num_test = num_valid if num_test is None else num_test
    if min(num_train, num_valid, num_test) < 0:
        raise ValueError(f"--num-train/--num-valid/--num-test must be >= 0, got {num_train}/{num_valid}/{num_test}")
    start = time.perf_counter()
    dataset = Path(out_dir) / "dataset"
    jobs, label_tables, counts = [], [], {}
    for split, count in (("train", num_train), ("valid", num_valid), ("test", num_test)):
        if split == "test" and count == 0:
            continue
        split_jobs, (meta, reports, labels) = plan_split_tables(seed, split, count, dataset)
        prefix, label_prefix = SPLIT_FILES[split]
        _write_csv(meta, dataset / "metadata" / f"{prefix}_metadata.csv")
        _write_csv(reports, dataset / "radiology_text_reports" / f"{prefix}_reports.csv")
        _write_csv(labels, dataset / "multi_abnormality_labels" / f"{label_prefix}_predicted_labels.csv")
        jobs += split_jobs
        label_tables.append(labels)
        counts[split] = count
    atomic.write_bytes(dataset / "README_SYNTHETIC.txt", README_TEXT.format(seed=seed).encode())
    size = _run_jobs(jobs, workers)
    labels = pd.concat(label_tables, ignore_index=True)
    names = labels["VolumeName"].str.removesuffix(".nii.gz")
    return {
        "root": str(dataset), "seed": seed, "volumes": counts,
        "patients": int(names.str.rsplit("_", n=2).str[0].nunique()),
        "scans": int(names.str.rsplit("_", n=1).str[0].nunique()),
        "v1": sum(j.version == "v1" for j in jobs), "v2": sum(j.version == "v2" for j in jobs),
        "prevalence": {c: round(float(labels[c].mean()), 3) if len(labels) else 0.0 for c in CLASSES},
        "bytes": size, "seconds": round(time.perf_counter() - start, 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point: parse ``argv``, generate, print one summary line, return the summary dict."""
    parser = argparse.ArgumentParser(prog="python -m reaf.synthetic", description="Write a small synthetic CT-RATE (layout A) under OUT/dataset.")
    parser.add_argument("--out", required=True, help="output folder; the dataset goes to OUT/dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=non_negative_int, default=240, help="number of train volumes (reconstructions)")
    parser.add_argument("--num-valid", type=non_negative_int, default=60, help="number of valid volumes (reconstructions)")
    parser.add_argument("--num-test", type=non_negative_int, help="number of test volumes (default: --num-valid; 0: none)")
    parser.add_argument("--workers", type=non_negative_int, default=1, help="worker processes for rendering and writing")
    args = parser.parse_args(argv)
    s = generate(args.out, args.seed, args.num_train, args.num_valid, args.workers, num_test=args.num_test)
    print(f"synthetic CT-RATE: {sum(s['volumes'].values())} volumes ({s['volumes']['train']} train, "
          f"{s['volumes']['valid']} valid, {s['volumes'].get('test', 0)} test; {s['v1']} v1, {s['v2']} v2) from {s['patients']} patients / {s['scans']} "
          f"scans, {s['bytes'] / 1e6:.1f} MB, {s['seconds']:.1f} s, seed {s['seed']} -> {s['root']}")  # fmt: skip
    return s

