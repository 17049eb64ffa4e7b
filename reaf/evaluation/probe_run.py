"""A checkpoint's linear probe and few-shot run: the two splits, their cached embeddings, zero-shot beside them on the
same evaluation embeddings, then results.json, probabilities.csv and plots. `python -m reaf.probe` is its CLI."""

from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reaf import atomic
from reaf.evaluation.evaluate import EvalSettings, read_labelled_split
from reaf.evaluation.probe import (
    CV_FOLDS,
    DEFAULT_DRAWS,
    DEFAULT_SHOTS,
    DEFINITIONS,
    few_shot,
    fit_linear_probe,
    label_free,  # fmt: skip
    score_probe,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSettings:
    """What reaf.probe's flags parse to: zero_shot.py's settings for the checkpoint and the evaluation split, plus
    the training split, where embeddings are kept, the few-shot plan and the CV folds."""

    evaluation: EvalSettings
    train_split: str | None = None  # a labels CSV or split folder; None: the train split found under data_root
    embeddings_dir: str | None = None  # embeddings.pt (eval) and embeddings_train.pt; None: evaluation.results_dir
    shots: tuple[int, ...] = DEFAULT_SHOTS
    draws: int = DEFAULT_DRAWS
    folds: int = CV_FOLDS


def read_train_split(settings: ProbeSettings) -> Any:
    """The labelled training split: settings.train_split, else the train split under data_root."""
    from reaf.data.readers import find_splits

    source = settings.train_split
    if source is None:
        if settings.evaluation.data_root is None:
            raise ValueError("give --train-data (a labelled split) or --data-root to find one under")
        source = find_splits(settings.evaluation.data_root)["train"]
        if source is None:
            raise ValueError(f"no train split found under --data-root {settings.evaluation.data_root}")
    return read_labelled_split(replace(settings.evaluation, split=source))


def _encode(model: Any, split: Any, spec: Any, where: Path, file_name: str, fingerprint: dict, ev: EvalSettings,
            texts: bool = True) -> tuple[dict, bool]:  # fmt: skip
    """The split's embeddings from where/file_name when checkpoint and data are unchanged, else encoded and kept
    there. texts=False (the training split): images only, which the key records."""
    from reaf.evaluation.embeddings import data_description, encoded_split

    data = data_description(split, spec) if texts else {**data_description(split, spec), "report_embeddings": False}
    return encoded_split(model, split, spec, results_dir=where, checkpoint=fingerprint, data=data,
                         file_name=file_name, batch_size=ev.batch_size, workers=ev.workers, device=ev.device,
                         seed=ev.seed, skip_bad=ev.skip_bad, texts=texts)  # fmt: skip


def run_probe(settings: ProbeSettings) -> dict[str, Any]:
    """Linear probe, few-shot and zero-shot of settings.evaluation.checkpoint (one process); writes results.json,
    probabilities.csv and plots to the results folder and returns the results dict."""
    from reaf.data.input_spec import input_spec_for
    from reaf.evaluation.embeddings import file_fingerprint
    from reaf.evaluation.prompt_sets import describe, prompt_set
    from reaf.evaluation.prompts import templates_for
    from reaf.evaluation.protocol import PROTOCOL_VERSION, classify, prompt_embeddings, zero_shot_probabilities
    from reaf.model.checkpoint import model_from_checkpoint

    ev = settings.evaluation
    if not settings.shots or min(settings.shots) < 1 or settings.draws < 1 or settings.folds < 2:
        raise ValueError(f"--shots must be >= 1, --draws >= 1 and folds >= 2; got {settings.shots}, "
                         f"{settings.draws}, {settings.folds}")
    template = templates_for(ev.template)[0]
    prompt_set(ev.prompts, template)  # a bad --prompts fails before anything is encoded
    torch.manual_seed(ev.seed)
    model = model_from_checkpoint(ev.checkpoint, model=ev.model, cxr_bert_path=ev.cxr_bert_path).to(ev.device).eval()
    spec = input_spec_for(ev.input_info, model)
    train_split, eval_split = read_train_split(settings), read_labelled_split(ev)
    results_dir = Path(ev.results_dir)
    where = Path(settings.embeddings_dir) if settings.embeddings_dir else results_dir
    fingerprint, start = file_fingerprint(ev.checkpoint), time.perf_counter()
    with torch.no_grad():
        evaluation, eval_reused = _encode(model, eval_split, spec, where, "embeddings.pt", fingerprint, ev)
        train, train_reused = _encode(model, train_split, spec, where, "embeddings_train.pt", fingerprint, ev,
                                      texts=False)
        text = prompt_embeddings(model, [template], batch_size=ev.batch_size, device=ev.device, prompts=ev.prompts)
    encode_s, start = time.perf_counter() - start, time.perf_counter()
    zero_shot = zero_shot_probabilities(evaluation["image"], text[template], evaluation["logit_scale"])
    probs, info = fit_linear_probe(train["image"], train["labels"], evaluation["image"], folds=settings.folds,
                                   seed=ev.seed)
    shots = few_shot(train["image"], train["labels"], evaluation["image"], evaluation["labels"],
                     shots=tuple(settings.shots), draws=settings.draws, seed=ev.seed)
    not_fitted = {name: entry["not_fitted"] for name, entry in info.items() if "not_fitted" in entry}
    counts = {"train": label_free(train["labels"]), "eval": label_free(evaluation["labels"])}
    if not_fitted or any(counts.values()):
        log.warning("linear probe: %d class(es) not fitted %s; volumes without any label: %s", len(not_fitted),
                    not_fitted, counts)
    results = {
        "protocol_version": PROTOCOL_VERSION, "kind": "linear_probe",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": fingerprint, "model_config": model.cfg.to_dict(),
        "data": {"train": _described(train_split, train, counts["train"]),
                 "eval": _described(eval_split, evaluation, counts["eval"])},
        "classification": score_probe(probs, evaluation["labels"], info, seed=ev.seed, n_boot=ev.n_boot),
        "probe": {"per_class": info, "not_fitted": not_fitted, "folds": settings.folds, "seed": ev.seed},
        "zero_shot": {"template": template, "prompt_set": describe({template: prompt_set(ev.prompts, template)}),
                      "classification": classify(zero_shot, evaluation["labels"], seed=ev.seed, n_boot=ev.n_boot)},
        "few_shot": shots,
        "definitions": DEFINITIONS,
        "timing": {"encode_s": encode_s, "fit_s": time.perf_counter() - start,
                   "embeddings_reused": {"train": train_reused, "eval": eval_reused}},
    }  # fmt: skip
    write_probe_outputs(results, evaluation, {"probe": probs, "zero_shot": zero_shot}, results_dir, plots=ev.plots,
                        embeddings={"eval": str(where / "embeddings.pt"), "train": str(where / "embeddings_train.pt")})
    return results


def _described(split: Any, encoded: dict, no_label: int) -> dict[str, Any]:
    return {"source": str(split.source), "root": str(split.root), "format": split.fmt, "N": len(encoded["names"]),
            "N_scans": len(set(encoded["scan_ids"])), "volumes_without_labels": no_label,
            "skipped": encoded.get("skipped", [])}  # fmt: skip


def write_probe_outputs(results: dict, evaluation: dict, probs: dict[str, np.ndarray], results_dir: Path, *,
                        plots: bool, embeddings: dict[str, str]) -> None:  # fmt: skip
    """results.json, probabilities.csv (columns probe:<class>, zero_shot:<class>, label:<class>; a class not fitted
    has an empty probe column) and the PNGs: probe ROC curves and AUC bars, the few-shot curve."""
    from reaf.evaluation.plots import plot_auc_bars, plot_few_shot, plot_roc_curves
    from reaf.evaluation.protocol import _jsonable, probabilities_table

    files: dict[str, Any] = {"results": "results.json", "probabilities": "probabilities.csv", "embeddings": embeddings}
    if plots:
        labels, blocks = evaluation["labels"], results["classification"]
        plot_roc_curves(labels, np.nan_to_num(probs["probe"], nan=0.5), blocks["18"]["per_class"],
                        results_dir / "plots" / "roc_probe.png", "linear probe ROC")
        for key in ("18", "16"):
            plot_auc_bars(blocks[key], results_dir / "plots" / f"auc_bars_probe_{key}.png", f"linear probe AUROC, "
                          f"{key} classes")  # fmt: skip
        zero_shot_auc = results["zero_shot"]["classification"]["18"]["mean"]["auc"]
        plot_few_shot(results["few_shot"], zero_shot_auc, results_dir / "plots" / "few_shot.png",
                      probe_auc=blocks["18"]["mean"]["auc"])
        files["plots"] = ["plots/roc_probe.png", "plots/auc_bars_probe_18.png", "plots/auc_bars_probe_16.png",
                          "plots/few_shot.png"]
    results["files"] = files
    atomic.write_text(results_dir / "probabilities.csv", probabilities_table(evaluation, probs).to_csv(index=False))
    atomic.write_text(results_dir / "results.json", json.dumps(_jsonable(results), indent=2, allow_nan=False))


def probe_table(results: dict) -> str:
    """The end-of-run table: probe per class (18 and 16), then mean AUC of zero-shot, probe and few-shot per k."""
    from reaf.evaluation.plots import classification_table

    lines = []
    for key in ("18", "16"):
        lines += [*classification_table(results["classification"][key], f"linear probe, {key} classes"), ""]
    zero, probe = results["zero_shot"]["classification"], results["classification"]
    lines.append(f"{'mean AUC':24s} {'18 classes':>12s} {'16 classes':>12s}")
    for name, blocks in (("zero-shot", zero), ("linear probe", probe)):
        lines.append(f"{name:24s} " + " ".join(f"{_fmt(blocks[key]['mean']['auc']):>12s}" for key in ("18", "16")))
    for k, entry in results["few_shot"]["by_k"].items():
        cells = [f"{_fmt(entry[key]['mean_auc'])} ± {_fmt(entry[key]['sd_auc'])}" for key in ("18", "16")]
        lines.append(f"{f'few-shot k={k}':24s} " + " ".join(f"{c:>12s}" for c in cells)
                     + (f"  ({len(entry['not_fitted'])} class(es) not fitted)" if entry["not_fitted"] else ""))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
