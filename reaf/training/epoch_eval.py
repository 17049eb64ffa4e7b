"""The evaluation at an epoch's end: each due split encoded once by all ranks together (reaf.evaluation.encoding),
then validation (contrastive loss + retrieval) and zero-shot classification scored on rank 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from reaf.data.csv_tables import CLASSES
from reaf.evaluation.encoding import encode_split
from reaf.model.loss import local_contrastive_loss
from reaf.training import state as train_state

VAL_KEYS = ("R@1", "R@5", "R@10", "median_rank", "MAP@10", "N")  # the retrieval numbers logged per epoch


def due_splits(data: Any, args: Any, epoch: int) -> list[tuple[Any, list[str]]]:
    """[(split, phases)] to evaluate after `epoch`: "val" every --val-frequency and "zeroshot" every
    --zeroshot-frequency epochs; a split that serves both (one SplitData, see run.build_data) is listed once."""
    due: list[tuple[Any, list[str]]] = []
    if data.val is not None and args.val_frequency and epoch % args.val_frequency == 0:
        due.append((data.val, ["val"]))
    if data.zeroshot is not None and args.zeroshot_frequency and epoch % args.zeroshot_frequency == 0:
        if due and due[0][0] is data.zeroshot:
            due[0][1].append("zeroshot")
        else:
            due.append((data.zeroshot, ["zeroshot"]))
    return due


def validation_metrics(encoded: dict[str, Any], split: Any, batch_size: int) -> dict[str, float]:
    """val/loss: the contrastive loss of each evaluation batch (batch_size volumes in the split's order, less those
    --skip-bad left out), weighted by its size; val/<pool>/<direction>/<VAL_KEYS>: retrieval over the whole split.
    `encoded` is encode_split's result for `split`."""
    from reaf.evaluation.retrieval import retrieval_metrics

    position = {sample.name: i for i, sample in enumerate(split.samples)}
    batch = np.array([position[name] // batch_size for name in encoded["names"]])
    img, txt = torch.from_numpy(encoded["image"]), torch.from_numpy(encoded["text"])
    scale, total = torch.tensor(encoded["logit_scale"]), 0.0
    for b in np.unique(batch):
        rows = torch.from_numpy(np.flatnonzero(batch == b))
        total += local_contrastive_loss(img[rows], txt[rows], scale).item() * len(rows)
    labels = encoded["labels"]
    if labels is None:  # unknown labels: MAP has no abnormal volume to score, as with NaN labels
        labels = np.full((len(encoded["names"]), len(CLASSES)), np.nan, np.float32)
    scores, _ = retrieval_metrics(encoded["image"], encoded["text"], encoded["scan_ids"], encoded["names"], labels)
    kept = {k: v for k, v in flatten(scores, "val/").items() if k.rsplit("/", 1)[-1] in VAL_KEYS}
    return {"val/loss": total / len(encoded["names"]), **kept}


def zero_shot_metrics(run: Any, split: Any, encoded: dict[str, Any], epoch: int) -> dict[str, float]:
    """reaf.evaluation.protocol.run_evaluation on the encoded split; its outputs go to <run>/zeroshot/epoch_<K>/."""
    from reaf.evaluation.protocol import run_evaluation, summary_scalars

    args = run.args
    results = run_evaluation(run.model, split, run.data.spec, encoded=encoded, batch_size=args.batch_size,
                             results_dir=Path(run.settings.run_dir) / "zeroshot" / f"epoch_{epoch}",
                             workers=args.workers, device=run.env.device, template=args.zeroshot_template,
                             seed=args.seed, skip_bad=args.skip_bad)
    return {k if k.startswith("zeroshot/") else f"zeroshot/{k}": v for k, v in summary_scalars(results).items()}


def evaluate_epoch(run: Any, epoch: int) -> dict[str, float]:
    """Validation and zero-shot due after `epoch` for a TrainingRun: every rank encodes its share of each due split
    once; rank 0 returns the metrics (the others {}). The model's mode and the training RNG streams are left as
    they were."""
    due = due_splits(run.data, run.args, epoch)
    if not due:
        return {}
    state, was_training = train_state.capture_rng(run.env.device), run.model.training
    metrics: dict[str, float] = {}
    run.model.eval()
    try:
        for split, phases in due:
            encoded = encode_split(run.model, split, run.data.spec, batch_size=run.args.batch_size,
                                   workers=run.args.workers, device=run.env.device, seed=run.args.seed,
                                   skip_bad=run.args.skip_bad, loader=run.data.eval_loader(split))
            if not run.env.is_main:
                continue
            for phase in phases:
                run.skips.record([(s["name"], s["cause"]) for s in encoded["skipped"]], phase=phase, epoch=epoch)
                scores = validation_metrics(encoded, split, run.args.batch_size) if phase == "val" else \
                    zero_shot_metrics(run, split, encoded, epoch)
                metrics.update(scores)
    finally:
        run.model.train(was_training)
        train_state.restore_rng(state, run.env.device)
    return metrics


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as {'<prefix>a/b/c': value}; None, strings and lists are left out."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
