"""Read a split of CT-RATE (layout A) or of the simple split-folder layout (layout B) into checked samples."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reaf.data.csv_tables import (
    CLASSES,
    Problems,
    ReaderError,
    find_files,
    labels_from_row,
    meta_from_row,
    natural_key,
    read_report_json,
    read_table,
    report_text,
    rows_by_name,
    split_name,
    strip_suffix,
)

__all__ = ["ReaderError", "Sample", "SplitData", "find_splits", "read_split"]

log = logging.getLogger(__name__)

_CT_RATE_SPLIT = re.compile(r"(train|valid|test)(_fixed)?")
_CSV_NAMES = {  # split -> (metadata, reports, labels) file names as CT-RATE publishes them
    "train": ("train_metadata.csv", "train_reports.csv", "train_predicted_labels.csv"),
    "valid": ("validation_metadata.csv", "validation_reports.csv", "valid_predicted_labels.csv"),
    # CT-RATE publishes no test split; a held-out one (the synthetic CT-RATE's) follows valid's pattern
    "test": ("test_metadata.csv", "test_reports.csv", "test_predicted_labels.csv"),
}


@dataclass
class Sample:
    """One volume: CT-RATE names it <split>_<patient>_<scan>_<reconstruction>."""

    name: str  # VolumeName without suffix, e.g. "valid_3_a_1"
    scan_id: str  # "valid_3_a"
    patient_id: str  # "valid_3"
    rel: str  # path relative to SplitData.root without suffix; reaf.data.formats.volume_file(root, rel, fmt) finds it
    report: str
    labels: np.ndarray | None  # (18,) float32 in CLASSES order, or None when the split has no labels
    meta: object  # reaf.data.formats.VolumeMeta


@dataclass
class SplitData:
    """The checked samples of one split; `skipped` lists (name, reason) dropped under skip_bad; `unlisted` counts
    the volume files found that the split's table (labels CSV, else metadata, else reports) does not list."""

    samples: list[Sample]
    root: Path
    fmt: str
    has_labels: bool
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unlisted: int = 0
    layout: str = "A"  # "A": CT-RATE as published, "B": split folders (NIfTI orientation: reaf.data.orientation)

    def __len__(self) -> int:
        return len(self.samples)

    def scan_groups(self) -> list[list[int]]:
        """Sample indices grouped by scan_id, groups in order of first appearance."""
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            groups.setdefault(s.scan_id, []).append(i)
        return list(groups.values())


@dataclass
class _Tables:
    """Everything one split's samples are built from; paths are kept for error messages."""

    names: list[str]  # the names that define the split (labels CSV, else metadata, else reports)
    names_path: Path
    files: dict[str, str]  # name -> rel (no suffix) of each volume file found
    volume_dirs: list[Path]
    root: Path
    suffix: str
    reports: dict[str, str | None]
    reports_path: Path
    labels: dict[str, dict] | None = None
    labels_path: Path | None = None
    metas: dict[str, dict] | None = None
    meta_path: Path | None = None
    unlisted: int = 0  # volume files found that the names table does not list (set by _build_samples)
    other_format: str | None = None  # set by _format_hint: what the volume dirs hold when no file has `suffix`


def read_split(source: str | Path, *, data_root: str | Path | None = None, fmt: str, report_root: str | None = None,
               skip_bad: bool = False, require_labels: bool = False) -> SplitData:
    """Read one split. source: a layout-B split folder (<root>/<split>/volumes/, reports/reports.json), a CT-RATE
    split folder (<root>/dataset/train[_fixed]) or a CT-RATE labels CSV; data_root overrides where the volume files
    live (a cache root mirroring the same relative paths); report_root (report JSON file or folder) overrides the
    reports. Bad input raises ReaderError naming the file and the cause, or with skip_bad is logged and listed in
    SplitData.skipped. Samples are in natural name order."""
    src, problems = Path(source), Problems(skip_bad)
    suffix = _suffix(fmt)
    if not src.exists():
        raise ReaderError(f"{src}: does not exist")
    if src.is_dir() and ((src / "volumes").is_dir() or (src / "reports").is_dir()):
        layout, tables = "B", _layout_b(src, data_root, suffix, report_root, problems)
    elif src.suffix == ".csv" or (src.is_dir() and _CT_RATE_SPLIT.fullmatch(src.name)):
        layout, tables = "A", _layout_a(src, data_root, suffix, report_root, problems)
    else:
        raise ReaderError(f"{src}: neither a split folder with volumes/ or reports/ (layout B) nor a CT-RATE labels "
                          "CSV or dataset/train|valid|test[_fixed] folder (layout A)")
    if require_labels and tables.labels is None:
        raise ReaderError(f"{src}: labels are required here but no labels CSV was found")
    samples = _build_samples(tables, problems)
    if not samples:
        raise ReaderError(f"{src}: no usable samples ({len(problems.skipped)} skipped)")
    level = logging.WARNING if problems.skipped else logging.INFO
    log.log(level, "%s: %d samples, %d skipped, %d volume file(s) not listed, volumes under %s", src, len(samples),
            len(problems.skipped), tables.unlisted, tables.root)
    return SplitData(samples, tables.root, fmt, tables.labels is not None, str(src), problems.skipped,
                     tables.unlisted, layout)


def find_splits(data_root: str | Path) -> dict[str, str | None]:
    """Split sources under a data root: layout B train/, val/, test/; layout A dataset/train[_fixed],
    dataset/valid[_fixed] and, where there is one, dataset/test[_fixed] (CT-RATE has none: valid then serves as both
    val and test). Missing splits are None."""
    root = Path(data_root)
    if any((root / s / "volumes").is_dir() for s in ("train", "val", "test")):
        return {s: str(root / s) if (root / s / "volumes").is_dir() else None for s in ("train", "val", "test")}
    base = _dataset_dir(root)
    found = {}
    for split in ("train", "valid", "test"):
        dirs = [base / f"{split}_fixed", base / split]
        found[split] = next((str(d) for d in dirs if d.is_dir()), None)
    if found["train"] is None and found["valid"] is None:
        raise ReaderError(
            f"{root}: no splits found (expected train/ val/ test/ with volumes/, or "
            "dataset/train[_fixed] and dataset/valid[_fixed])"
        )
    return {"train": found["train"], "val": found["valid"], "test": found["test"] or found["valid"]}


def _suffix(fmt: str) -> str:
    from reaf.data.formats import FORMATS

    if fmt not in FORMATS:
        raise ReaderError(f"unknown input data type {fmt!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def _dataset_dir(root: Path) -> Path:
    return root / "dataset" if (root / "dataset").is_dir() else root


def _first(dirs: list[Path], *parts: str) -> Path | None:
    return next((d.joinpath(*parts) for d in dirs if d.joinpath(*parts).is_file()), None)


def _split_and_home(src: Path) -> tuple[str, Path | None, object]:
    """(split, the CT-RATE dataset folder holding the CSVs or None, labels frame when src is a labels CSV)."""
    if src.suffix != ".csv":
        return _CT_RATE_SPLIT.fullmatch(src.name).group(1), src.parent, None
    labels_df = read_table(src, tuple(CLASSES))
    prefixes = {strip_suffix(n).split("_")[0] for n in labels_df["VolumeName"]}
    if len(prefixes) != 1 or not prefixes <= set(_CSV_NAMES):
        raise ReaderError(
            f"{src}: cannot tell the split: VolumeNames start with {sorted(prefixes)}, expected all train_, all valid_ "
            "or all test_"
        )
    home = src.parent.parent if src.parent.name == "multi_abnormality_labels" else None
    return prefixes.pop(), home, labels_df


def _layout_a(src: Path, data_root, suffix: str, report_root, problems: Problems) -> _Tables:
    """CT-RATE as published: CSVs under <dataset>/{metadata,radiology_text_reports,multi_abnormality_labels}. The
    volumes lie in <root>/[dataset/]<split>[_fixed]/, or (the reference's caches) in <root>/<split>_<patient>/
    directly; the metadata CSV is needed for NIfTI (`ori`) only, a preprocessed file has no use for it."""
    split, home, labels_df = _split_and_home(src)
    if home is None and data_root is None:
        raise ReaderError(f"{src}: not inside <root>/dataset/multi_abnormality_labels/; pass data_root")
    root = Path(data_root) if data_root else (home.parent if home.name == "dataset" else home)
    base = _dataset_dir(root)
    homes = list(dict.fromkeys(d for d in (home, base) if d is not None))
    meta_name, reports_name, labels_name = _CSV_NAMES[split]
    labels_path = src if labels_df is not None else _first(homes, "multi_abnormality_labels", labels_name)
    if labels_df is None and labels_path is not None:
        labels_df = read_table(labels_path, tuple(CLASSES))
    meta_path = _first(homes, "metadata", meta_name)
    if meta_path is None and suffix == _suffix("ori"):  # spacing and rescale matter only to a NIfTI
        raise ReaderError(f"metadata CSV {meta_name} not found under {[str(h / 'metadata') for h in homes]}")
    metas = rows_by_name(read_table(meta_path), meta_path, problems) if meta_path is not None else None
    reports, reports_path = _reports_a(homes, reports_name, report_root, problems)
    labels = rows_by_name(labels_df, labels_path, problems) if labels_df is not None else None
    volume_dirs = [d for d in (base / f"{split}_fixed", base / split) if d.is_dir()]
    if not volume_dirs and any(re.fullmatch(rf"{split}_\d+", d.name) for d in root.glob(f"{split}_*") if d.is_dir()):
        volume_dirs = [root]  # the reference's caches: <root>/valid_1/valid_1_a/valid_1_a_1.pt.gz, no split folder
    if not volume_dirs:
        raise ReaderError(f"{base}: no {split}_fixed/ or {split}/ volume folder, nor {split}_<patient>/ folders")
    if labels is None and metas is None:
        raise ReaderError(f"{src}: neither a labels CSV nor a metadata CSV lists the split's volumes")
    names, names_path = (list(labels), labels_path) if labels is not None else (list(metas), meta_path)
    files = find_files(volume_dirs, 2, suffix, root)
    return _Tables(names, names_path, files, volume_dirs, root, suffix, reports, reports_path, labels, labels_path,
                   metas, meta_path)


def _reports_a(homes: list[Path], name: str, report_root, problems: Problems) -> tuple[dict, Path]:
    if report_root:
        return read_report_json(report_root), Path(report_root)
    path = _first(homes, "radiology_text_reports", name)
    if path is None:
        raise ReaderError(f"reports CSV {name} not found under {[str(h / 'radiology_text_reports') for h in homes]}")
    rows = rows_by_name(read_table(path, ("Findings_EN", "Impressions_EN")), path, problems)
    return {k: report_text(row) for k, row in rows.items()}, path


def _layout_b(src: Path, data_root, suffix: str, report_root, problems: Problems) -> _Tables:
    """The README seed's layout: volumes/<id>.<suffix> (`ori`: or a DICOM series folder volumes/<id>/),
    reports/reports.json, optional labels.csv, metadata.csv."""
    root = Path(data_root) if data_root else src.parent
    volume_dir = root / src.name / "volumes"
    if not volume_dir.is_dir():
        raise ReaderError(f"{volume_dir}: volume folder does not exist")
    files = find_files([volume_dir], 0, suffix, root)
    if suffix == _suffix("ori"):  # a volume may also be a folder holding one DICOM series (reaf.data.dicom)
        from reaf.data.dicom import series_folders
        from reaf.data.formats import volume_file

        for name, folder in series_folders(volume_dir).items():
            if name in files:
                raise ReaderError(f"{volume_file(root, files[name], 'ori')} and {folder}: a NIfTI file and a DICOM "
                                  f"series folder named {name}; keep one")
            files[name] = folder.relative_to(root).as_posix()
    reports_path = Path(report_root) if report_root else src / "reports" / "reports.json"
    if not reports_path.exists():
        raise ReaderError(f"{reports_path}: report JSON does not exist")
    reports = read_report_json(reports_path)
    labels_path, meta_path = src / "labels.csv", src / "metadata.csv"
    labels = (
        rows_by_name(read_table(labels_path, tuple(CLASSES)), labels_path, problems) if labels_path.is_file() else None
    )
    metas = rows_by_name(read_table(meta_path), meta_path, problems) if meta_path.is_file() else None
    if labels is not None:
        names, names_path = list(labels), labels_path
    elif metas is not None:
        names, names_path = list(metas), meta_path
    elif not report_root:
        names, names_path = list(reports), reports_path
    else:
        names, names_path = list(files), volume_dir
    return _Tables(names, names_path, files, [volume_dir], root, suffix, reports, reports_path, labels,
                   labels_path if labels is not None else None, metas, meta_path if metas is not None else None)


def _build_samples(t: _Tables, problems: Problems) -> list[Sample]:
    """One Sample per listed name; every missing piece is a problem; volume files nobody lists are problems too."""
    samples = []
    for name in t.names:
        if name in problems.names:
            continue
        try:
            samples.append(_sample(name, t))
        except ReaderError as e:
            problems.bad(name, str(e))
    listed = set(t.names)
    unlisted = sorted((name for name in t.files if name not in listed), key=natural_key)
    if unlisted:  # the table defines the split (a cleaned subset CSV is a normal thing): count, do not refuse
        log.info("%s defines the split: %d volume file(s) under %s that it does not list are left out, e.g. %s",
                 t.names_path, len(unlisted), t.root, unlisted[:3])
    t.unlisted = len(unlisted)
    return sorted(samples, key=lambda s: natural_key(s.name))


def _format_hint(t: _Tables) -> str:
    """When the volume folders hold no file of the asked type at all: which other type they hold and the flag (or
    the preprocessing) that reads it, e.g. a raw CT-RATE download read with the default `cache` type."""
    from reaf.data.formats import FORMATS

    if t.files:
        return ""
    if t.other_format is None:
        dirs = [d for d in t.volume_dirs if d.is_dir()]
        found = [fmt for fmt, suffix in FORMATS.items()
                 if suffix != t.suffix and any(next(d.rglob(f"*{suffix}"), None) is not None for d in dirs)]
        t.other_format = found[0] if found else ""
    if not t.other_format:
        return ""
    fix = f"--input-data-type {t.other_format}"
    if t.other_format == "ori":
        fix += " (slow), or preprocess them once: python -m reaf.preprocess ... --format cache"
    return f"; they hold {FORMATS[t.other_format]} files instead: {fix}"


def _sample(name: str, t: _Tables) -> Sample:
    if name not in t.files:
        dirs = ", ".join(str(d) for d in t.volume_dirs)
        raise ReaderError(f"{t.names_path}: {name} is listed but no {t.suffix} file exists under {dirs}"
                          f"{_format_hint(t)}")
    if name not in t.reports:
        raise ReaderError(f"{t.reports_path}: no report for {name}")
    if t.reports[name] is None:
        raise ReaderError(f"{t.reports_path}: empty report for {name}")
    labels = None
    if t.labels is not None:
        if name not in t.labels:
            raise ReaderError(f"{t.labels_path}: no label row for {name}")
        labels = labels_from_row(t.labels[name], t.labels_path, name)
    if t.metas is not None and name not in t.metas:
        raise ReaderError(f"{t.meta_path}: no metadata row for {name}")
    meta = meta_from_row(t.metas[name] if t.metas is not None else None, t.meta_path, name)
    scan_id, patient_id = split_name(name)
    return Sample(name, scan_id, patient_id, t.files[name], t.reports[name], labels, meta)
