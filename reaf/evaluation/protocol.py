"""Evaluation protocol v1: encode each volume and prompt once, then zero-shot classification and retrieval."""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit

from reaf import atomic, dist
from reaf.data.csv_tables import CLASSES, CLASSES_16
from reaf.evaluation import metrics, retrieval
from reaf.evaluation.embeddings import REPORT_TEXT, data_description, encoded_split, file_fingerprint
from reaf.evaluation.plots import write_plots
from reaf.evaluation.prompt_sets import describe, prompt_set, prompt_set_embeddings
from reaf.evaluation.prompts import class_prompts, templates_for

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "1"

_BINARY = ["accuracy", "balanced_accuracy", "weighted_f1", "recall", "precision", "specificity"]
_CLASS_BLOCK = {
    "per_class": dict,
    "mean": {
        "auc": None,
        "auc_ci95": None,
        "auc_bootstrap_skipped": None,
        "argmax": _BINARY,
        "ctclip": ["threshold", *_BINARY],
    },
    "classes_in_mean": list,
    "bootstrap": ["resamples", "seed", "unit", "method"],
}
_RANKS = [*(f"R@{k}" for k in retrieval.RECALL_KS), "median_rank", "mean_rank", "N"]
_POOL = {"report_to_volume": _RANKS, "volume_to_report": _RANKS}
# The documented results.json keys (every value may be null where a metric is undefined, e.g. no positives).
RESULTS_SCHEMA = {
    "protocol_version": str,
    "created": str,
    "checkpoint": None,  # {"path", "size", "sha256", "sha256_scope"} or null (an in-memory model in training)
    "data": ["source", "root", "format", "input", "N", "N_scans", "has_labels", "report_text"],
    "logit_scale": float,
    "model_config": dict,
    "template": str,
    "prompts": dict,
    "prompt_set": ["name", "sha256", "combination"],
    "classification": {"18": _CLASS_BLOCK, "16": _CLASS_BLOCK},  # null when the split has no labels
    "classification_by_template": None,  # {"volume": {...}, "organ": {...}} with --zeroshot-template both
    "retrieval": {"dup_all": _POOL, "dedup": _POOL},  # + "volume_to_volume": {"MAP@5", ...} with labels
    "definitions": ["classification", "retrieval"],
    "timing": ["encode_s", "metrics_s", "embeddings_reused"],
    "files": ["results", "probabilities", "embeddings"],
}


def prompt_embeddings(
    model: torch.nn.Module, templates: list[str], *, batch_size: int, device: str | torch.device, prompts: str = "v1"
) -> dict[str, np.ndarray]:
    """{template: (18, 2, E)} [negative, positive] embeddings of prompt set `prompts` (v1: the ("Not X", "X")
    sentences), combined as reaf.evaluation.prompt_sets documents; each distinct sentence encoded once."""
    sets = {t: prompt_set(prompts, t) for t in templates}
    return prompt_set_embeddings(model, sets, batch_size=batch_size, device=device)


def zero_shot_probabilities(image: np.ndarray, prompts: np.ndarray, scale: float) -> np.ndarray:
    """p = softmax(scale * img . [t_neg, t_pos])[pos]: image (N, E), prompts (C, 2, E) -> (N, C) float64."""
    logits = scale * np.einsum("ne,cke->nck", image.astype(np.float64), prompts.astype(np.float64))
    return expit(logits[..., 1] - logits[..., 0])  # the two-way softmax, without overflow


def classify(probs: np.ndarray, labels: np.ndarray, *, seed: int, n_boot: int) -> dict[str, dict]:
    """{"18": metrics over CLASSES, "16": metrics over CLASSES_16} from probs/labels (N, 18), same resamples."""
    subsets = {"18": CLASSES, "16": CLASSES_16}
    return metrics.classification_subsets(labels, probs, CLASSES, subsets, n_boot=n_boot, seed=seed)


def run_evaluation(
    model: torch.nn.Module,
    split: Any,
    spec: Any,
    *,
    results_dir: str | Path,
    batch_size: int,
    workers: int,
    device: str | torch.device,
    template: str = "volume",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    n_boot: int = metrics.DEFAULT_BOOTSTRAP,
    plots: bool = True,
    skip_bad: bool = False,
    encoded: dict | None = None,
    prompts: str = "v1",
) -> dict[str, Any] | None:
    """Zero-shot classification (18 and 16 classes) + retrieval on `split`; writes every output to results_dir.

    Called by zero_shot.py and by training every --zeroshot-frequency epochs. Under torch.distributed every rank
    calls it and encodes its share of the split (reaf.evaluation.encoding); rank 0 scores, writes and returns the
    results, the other ranks return None. `encoded`: the split as encode_split gave it (training encodes a split
    once for validation and zero-shot); nothing is encoded then, and rank 0 alone may call it. `checkpoint` (a file
    path) is hashed into results.json and keys the reuse of results_dir/embeddings.pt; without it the embeddings
    are always recomputed. The model's train/eval mode is restored on return. skip_bad: unreadable volumes are left
    out and listed in results["data"]["skipped"]. `prompts`: the prompt set (reaf.evaluation.prompt_sets: "v1",
    "ensemble" or a JSON file). Returns the results.json dict.
    """
    inner, results_dir = dist.unwrap(model), Path(results_dir)
    prompt_set(prompts)  # a bad --prompts fails before the split is encoded
    was_training, given = inner.training, encoded is not None
    inner.eval()
    try:
        main = dist.is_main()
        fingerprint = file_fingerprint(checkpoint) if checkpoint is not None and main else None
        data = data_description(split, spec) if main else {}
        start = time.perf_counter()
        loader_args = {"batch_size": batch_size, "workers": workers, "device": device, "seed": seed,
                       "skip_bad": skip_bad}
        encoded, reused = encoded_split(inner, split, spec, results_dir=results_dir, checkpoint=fingerprint,
                                        data=data, encoded=encoded, **loader_args)
        if encoded is None:  # not rank 0
            return None
        timing = {"encode_s": None if given else time.perf_counter() - start, "embeddings_reused": reused}
        start = time.perf_counter()
        text = prompt_embeddings(inner, templates_for(template), batch_size=batch_size, device=device, prompts=prompts)
        probs = {t: zero_shot_probabilities(encoded["image"], p, encoded["logit_scale"]) for t, p in text.items()}
        results, ranks = assemble_results(encoded, probs, data=data, checkpoint=fingerprint, seed=seed, n_boot=n_boot,
                                          prompts=prompts)
        results.update(timing={**timing, "metrics_s": time.perf_counter() - start}, model_config=inner.cfg.to_dict())
        write_outputs(results, encoded, probs, ranks, results_dir, plots=plots)
    finally:
        inner.train(was_training)
    log.info("evaluation written to %s: %s", results_dir, summary_scalars(results))
    return results


def assemble_results(
    encoded: dict, probs: dict[str, np.ndarray], *, data: dict, checkpoint: dict | None, seed: int, n_boot: int,
    prompts: str = "v1",
) -> tuple[dict[str, Any], dict]:
    """The results.json dict (without timing/files) and the retrieval ranks; probs = {template: (N, 18)}."""
    labels, templates = encoded["labels"], list(probs)
    sets = {t: prompt_set(prompts, t) for t in templates}
    by_template = (
        {t: classify(probs[t], labels, seed=seed, n_boot=n_boot) for t in templates} if labels is not None else {}
    )
    retrieval_results, ranks = retrieval.retrieval_metrics(
        encoded["image"], encoded["text"], encoded["scan_ids"], encoded["names"], labels
    )
    described = {k: v for k, v in data.items() if k != "volumes"}
    results = {
        "protocol_version": PROTOCOL_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": checkpoint,
        "data": {
            **described,
            "N": len(encoded["names"]),
            "N_scans": len(set(encoded["scan_ids"])),
            "has_labels": labels is not None,
            "skipped": encoded.get("skipped", []),
            "report_text": REPORT_TEXT,
        },
        "logit_scale": encoded["logit_scale"],
        "template": templates[0],
        "prompts": {t: class_prompts(t, CLASSES) if prompts == "v1" else sets[t].phrasings for t in templates},
        "prompt_set": describe(sets),
        "classification": by_template.get(templates[0]),
        "classification_by_template": by_template if len(templates) > 1 else None,
        "retrieval": retrieval_results,
        "definitions": {"classification": metrics.DEFINITIONS, "retrieval": retrieval.DEFINITIONS},
    }
    return results, ranks


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN/inf become None so the file is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def probabilities_table(encoded: dict, probs: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per volume: name, scan_id, "{template}:{class}" probabilities, "label:{class}" labels."""
    table = {"VolumeName": encoded["names"], "scan_id": encoded["scan_ids"]}
    for template, p in probs.items():
        table.update({f"{template}:{name}": p[:, c] for c, name in enumerate(CLASSES)})
    if encoded["labels"] is not None:
        table.update({f"label:{name}": encoded["labels"][:, c] for c, name in enumerate(CLASSES)})
    return pd.DataFrame(table)


def write_outputs(
    results: dict, encoded: dict, probs: dict[str, np.ndarray], ranks: dict, results_dir: Path, *, plots: bool
) -> None:
    """results.json, probabilities.csv and the PNG plots in results_dir, each written atomically."""
    files = {"results": "results.json", "probabilities": "probabilities.csv", "embeddings": "embeddings.pt"}
    if plots:
        files["plots"] = write_plots(results, encoded, probs, ranks, results_dir)
    results["files"] = files
    atomic.write_text(results_dir / "probabilities.csv", probabilities_table(encoded, probs).to_csv(index=False))
    validate_results(results)
    atomic.write_text(results_dir / "results.json", json.dumps(_jsonable(results), indent=2, allow_nan=False))


def summary_scalars(results: dict) -> dict[str, float]:
    """Flat scalars for a training logger: macro AUCs and the retrieval R@K of both pools."""
    out = {}
    if results.get("classification") is not None:
        for key in ("18", "16"):
            out[f"zeroshot/auc_{key}"] = results["classification"][key]["mean"]["auc"]
    for pool, block in results["retrieval"].items():
        for direction in ("report_to_volume", "volume_to_report"):
            out.update({f"retrieval/{pool}/{direction}/R@{k}": block[direction][f"R@{k}"] for k in (1, 5, 10)})
    return {k: v for k, v in out.items() if v is not None}


def _check(value: Any, schema: Any, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ValueError(f"results{where} must be an object")
        for key, sub in schema.items():
            if key not in value:
                raise ValueError(f"results{where} lacks key {key!r}")
            if value[key] is not None:
                _check(value[key], sub, f"{where}[{key!r}]")
    elif isinstance(schema, list):
        missing = [key for key in schema if not isinstance(value, dict) or key not in value]
        if missing:
            raise ValueError(f"results{where} lacks keys {missing}")
    elif isinstance(schema, type) and not isinstance(value, schema):
        raise ValueError(f"results{where} must be a {schema.__name__}, got {type(value).__name__}")


def validate_results(results: dict) -> None:
    """Raise ValueError naming the first documented key (RESULTS_SCHEMA) that results.json lacks."""
    _check(results, RESULTS_SCHEMA, "")
    if results["protocol_version"] != PROTOCOL_VERSION:
        raise ValueError(f"results protocol_version {results['protocol_version']!r} != {PROTOCOL_VERSION!r}")
