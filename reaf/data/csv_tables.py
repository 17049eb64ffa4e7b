"""The readers' parsing: CT-RATE CSVs (metadata, reports, labels), report JSON and volume listings; errors name files."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CLASSES: list[str] = [
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
]
CLASSES_16: list[str] = [c for c in CLASSES if c not in ("Medical material", "Lymphadenopathy")]

_MISSING = {"", "nan", "none", "null", "na", "n/a"}


class ReaderError(ValueError):
    """A data file cannot be used; the message names the file and the cause."""


class Problems:
    """Raise on the first bad item, or (skip_bad) record and log it; names recorded once."""

    def __init__(self, skip_bad: bool):
        self.skip_bad, self.skipped, self.names = skip_bad, [], set()

    def bad(self, name: str, reason: str) -> None:
        if not self.skip_bad:
            raise ReaderError(reason)
        if name not in self.names:
            self.names.add(name)
            self.skipped.append((name, reason))
            log.warning("skipping %s: %s", name, reason)


def strip_suffix(name: str) -> str:
    """'a/b/train_1_a_1.nii.gz' -> 'train_1_a_1'."""
    from reaf.data.formats import NAME_SUFFIXES  # here: the synthetic data tools import this file without torch

    base = str(name).strip().replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in NAME_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def split_name(name: str) -> tuple[str, str]:
    """VolumeName -> (scan_id, patient_id); names not in CT-RATE's pattern are their own scan and patient."""
    parts = name.split("_")
    if len(parts) >= 4 and parts[-1].isdigit() and parts[-3].isdigit():
        return "_".join(parts[:-1]), "_".join(parts[:-2])
    return name, name


def _clean(value) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return None if text.lower() in _MISSING else text


def read_table(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV as strings with a normalised 'VolumeName' column (also accepted as 'id'); errors name the file."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as e:
        raise ReaderError(f"{path}: empty CSV (no header)") from e
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ReaderError(f"{path}: cannot read CSV: {e}") from e
    key = next((c for c in ("VolumeName", "id") if c in df.columns), None)
    missing = [c for c in required if c not in df.columns] + ([] if key else ["VolumeName"])
    if missing:
        raise ReaderError(f"{path}: missing required column(s) {missing}")
    if df.empty:
        raise ReaderError(f"{path}: empty CSV (no rows)")
    return df.rename(columns={key: "VolumeName"})


def rows_by_name(df: pd.DataFrame, path: Path, problems: Problems) -> dict[str, dict]:
    """{VolumeName: row}; a duplicated or empty VolumeName is a problem (duplicates are never resolved silently)."""
    names = [strip_suffix(n) for n in df["VolumeName"].tolist()]
    counts = Counter(names)
    columns = list(df.columns)
    records = (dict(zip(columns, values)) for values in zip(*(df[c].tolist() for c in columns)))
    rows = {}
    for i, (name, row) in enumerate(zip(names, records)):
        if not name:
            problems.bad(f"{path.name}:row{i + 2}", f"{path}: row {i + 2} has an empty VolumeName")
        elif counts[name] > 1:
            problems.bad(name, f"{path}: duplicate VolumeName {name} ({counts[name]} rows)")
        else:
            rows[name] = row
    return rows


def _number(row: dict, column: str, path: Path, name: str) -> float | None:
    text = _clean(row.get(column))
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise ReaderError(f"{path}: {name}: {column}={text!r} is not a finite number")
    return value


def meta_from_row(row: dict | None, path: Path | None, name: str):
    """Metadata CSV row -> reaf.data.formats.VolumeMeta (all None without a row); bad values raise naming the file."""
    from reaf.data.formats import VolumeMeta

    if row is None:
        return VolumeMeta(xy_spacing=None, z_spacing=None, slope=None, intercept=None)
    xy_text, xy = _clean(row.get("XYSpacing")), None
    if xy_text is not None:
        numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", xy_text)
        if len(numbers) != 2 or min(float(n) for n in numbers) <= 0:
            raise ReaderError(f"{path}: {name}: XYSpacing={xy_text!r} is not '[x, y]' with positive spacings")
        xy = (float(numbers[0]), float(numbers[1]))
    z = _number(row, "ZSpacing", path, name)
    if z is not None and z <= 0:
        raise ReaderError(f"{path}: {name}: ZSpacing={z} is not positive")
    slope, intercept = _number(row, "RescaleSlope", path, name), _number(row, "RescaleIntercept", path, name)
    return VolumeMeta(xy_spacing=xy, z_spacing=z, slope=slope, intercept=intercept)


def labels_from_row(row: dict, path: Path, name: str) -> np.ndarray:
    """Labels CSV row -> (18,) float32 in CLASSES order; every value must be 0 or 1."""
    values = []
    for cls in CLASSES:
        text = _clean(row.get(cls))
        try:
            value = float(text) if text is not None else float("nan")
        except ValueError:
            value = float("nan")
        if value not in (0.0, 1.0):
            raise ReaderError(f"{path}: {name}: label {cls!r}={row.get(cls)!r} is not 0/1")
        values.append(value)
    return np.asarray(values, dtype=np.float32)


def report_text(row: dict) -> str | None:
    """Reports CSV row -> 'Findings: ... Impressions: ...' (either part alone when the other is empty), or None."""
    findings, impressions = _clean(row.get("Findings_EN")), _clean(row.get("Impressions_EN"))
    parts = [f"Findings: {findings}" if findings else "", f"Impressions: {impressions}" if impressions else ""]
    return " ".join(p for p in parts if p) or None


def read_report_json(path: str | Path) -> dict[str, str | None]:
    """Reports from a JSON file, or every *.json in a folder: {name: text} or the reference's list format
    [{"image": name, "conversations": [{"from": "gpt", "value": text}, ...]}]. As the reference does, the first
    gpt text of an image is its report: later gpt turns and repeated images (in a file or across files) are left
    out, and the repeats logged."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ReaderError(f"{path}: no report JSON file found")
    reports: dict[str, str | None] = {}
    repeats: list[str] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
        except _RepeatedKey as e:
            raise ReaderError(f"{file}: key {e.args[0]!r} given {e.args[1]} times in one mapping") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ReaderError(f"{file}: cannot read report JSON: {e}") from e
        for name, text in _report_items(data, file):
            if name in reports:
                repeats.append(name)
                continue
            reports[name] = _clean(text)
    if repeats:
        log.warning("%s: %d repeated image(s) in the report JSON, the first report of each kept (e.g. %s)",
                    path, len(repeats), ", ".join(sorted(set(repeats))[:5]))
    return reports


class _RepeatedKey(Exception):
    """A JSON object names one key twice (json keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    counts = Counter(key for key, _ in pairs)
    repeated = next((key for key, n in counts.items() if n > 1), None)
    if repeated is not None:
        raise _RepeatedKey(repeated, counts[repeated])
    return dict(pairs)


def _text(value, file: Path, name: str):
    """A report value as given (None: no report); anything but a string or null is refused naming it."""
    if value is None or isinstance(value, str):
        return value
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ReaderError(f"{file}: the report of {name} is a JSON {type(value).__name__} ({shown}), not a string")


def _report_items(data, file: Path) -> list[tuple[str, object]]:
    if isinstance(data, dict):
        names = Counter(strip_suffix(k) for k in data)
        twice = sorted(k for k in data if names[strip_suffix(k)] > 1)
        if twice:
            raise ReaderError(f"{file}: keys {twice} name one volume {strip_suffix(twice[0])} more than once")
        return [(strip_suffix(k), _text(v, file, k)) for k, v in data.items()]
    if not isinstance(data, list):
        raise ReaderError(f"{file}: report JSON must be a {{name: text}} mapping or a list of conversations")
    items = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "image" not in item or not isinstance(item.get("conversations"), list):
            raise ReaderError(f"{file}: item {i} lacks 'image' and a 'conversations' list")
        texts = [c.get("value") for c in item["conversations"] if isinstance(c, dict) and c.get("from") == "gpt"]
        items.append((strip_suffix(item["image"]), _text(texts[0], file, item["image"]) if texts else None))
    return items


def find_files(dirs: list[Path], depth: int, suffix: str, root: Path) -> dict[str, str]:
    """{name: rel without suffix} of the files `depth` folders below each dir ending in suffix (NIfTI: also plain
    .nii, as reaf.data.formats.volume_file finds them); earlier dirs win (the _fixed folder); two files of one name
    in one dir (a.nii beside a.nii.gz) are a ReaderError naming both."""
    from reaf.data.formats import NIFTI_SUFFIXES

    suffixes = NIFTI_SUFFIXES if suffix == NIFTI_SUFFIXES[0] else (suffix,)
    files: dict[str, str] = {}
    for directory in dirs:
        level, here = [directory], {}
        for _ in range(depth):
            level = [Path(e.path) for d in level for e in os.scandir(d) if e.is_dir()]
        for folder in sorted(level):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                ending = next((x for x in suffixes if entry.name.endswith(x)), None)
                if ending is None:
                    continue
                name = entry.name[: -len(ending)]
                if name in here:  # case_1.nii beside case_1.nii.gz: which one is meant cannot be guessed
                    raise ReaderError(f"{here[name]} and {entry.path}: two volume files named {name}; keep one")
                here[name] = entry.path
                rel = Path(entry.path).relative_to(root).as_posix()
                files.setdefault(name, rel[: -len(ending)])
    return files


def natural_key(name: str) -> list:
    """Natural order: train_10_a_1 sorts after train_2_a_1."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
