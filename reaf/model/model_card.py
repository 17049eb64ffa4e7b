"""The model card (README.md) of a weights folder: architecture and sizes, training recipe, evaluation, use, limits."""

from __future__ import annotations

from typing import Any

from torch import nn

from reaf.data import transforms as T
from reaf.data.csv_tables import CLASSES
from reaf.data.input_spec import InputSpec

# the training flags a card shows, in this order, when the checkpoint recorded them
TRAIN_FLAGS = ("train_data", "data_root", "input_data_type", "input_info", "sample_unit", "text_sampling",
               "epochs", "batch_size", "accum_freq", "lr", "warmup", "warmup_epochs", "wd", "beta1", "beta2",
               "eps", "precision", "lock_text", "vision_init", "load_checkpoint", "cxr_bert_path", "fusion_method",
               "seed")


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per part: vision trunk and head, text BERT and projection, logit scale, total."""
    parts = {"visual.trunk": 0, "visual.head": 0, "text.transformer": 0, "text.proj": 0, "logit_scale": 0}
    for name, param in model.named_parameters():
        part = next(p for p in parts if name == p or name.startswith(p + "."))
        parts[part] += param.numel()
    return {**parts, "vision tower": parts["visual.trunk"] + parts["visual.head"],
            "text tower": parts["text.transformer"] + parts["text.proj"], "total": sum(parts.values())}


def _architecture(model: nn.Module, counts: dict[str, int]) -> list[str]:
    v, t = model.cfg.vision, model.text.transformer.config
    levels = ", ".join("scan" if i in v.scan_blocks else "slice" for i in range(v.depth))
    return [
        "## Architecture",
        "",
        f"- Vision: 3-D ViT, input {tuple(v.img_size)} (D, H, W) voxels, patch {tuple(v.patch_size)} -> grid "
        f"{tuple(v.grid)}, width {v.width}, {v.depth} blocks ({levels}), {v.num_heads} heads; layer fusion "
        f"`{v.fusion_method}`, regional saliency enhancer (regions {tuple(v.region_size)}, top {v.top_k}, "
        f"suppression {v.suppression}) {'on' if v.fusion_saliency else 'off'}; pooled by `{v.global_pool}`; "
        f"reference_compat {v.reference_compat}.",
        f"- Text: BERT, {t.num_hidden_layers} layers, hidden {t.hidden_size}, vocabulary {t.vocab_size}, "
        f"`{model.cfg.text.pooling}` pooling, projection `{model.cfg.text.proj}`; context {model.cfg.text.context_length}.",
        f"- Joint embedding: {model.cfg.embed_dim} dimensions, unit norm; logit scale "
        f"{float(model.logit_scale.detach().exp()):.3f}.",
        "",
        "| part | parameters |",
        "|---|---:|",
        *(f"| {name} | {n:,} |" for name, n in counts.items()),
        "",
    ]


def _training(source: dict[str, Any], train: dict[str, Any] | None) -> list[str]:
    lines = ["## Training", ""]
    run = source.get("run") or {}
    if train is None:
        lines.append(f"Unknown: the source checkpoint ({source.get('format', 'unknown format')}) records no training "
                     "flags. The REAF paper trains on CT-RATE's training split (47,149 volumes with reports).")
        if run:
            lines.append(f"It records: {', '.join(f'{k} {v}' for k, v in run.items())}.")
        return [*lines, ""]
    lines += [f"From the flags recorded in the source checkpoint{' (' + ', '.join(f'{k} {v}' for k, v in run.items()) + ')' if run else ''}:",
              "", "| flag | value |", "|---|---|"]
    lines += [f"| {k} | {train[k]} |" for k in TRAIN_FLAGS if k in train]
    return [*lines, ""]


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _evaluation(results: dict[str, Any] | None, source: dict[str, Any],
                thresholds: dict[str, Any] | None = None) -> list[str]:
    lines = ["## Evaluation", ""]
    block = (results or {}).get("classification")
    if block is None:
        return [*lines, "No evaluation was given to the export (`--results`).", ""]
    data = results.get("data", {})
    lines.append(f"Zero-shot classification, protocol v{results.get('protocol_version')}, template "
                 f"`{results.get('template')}`, on {data.get('source')} (N = {data.get('N')}); AUROC with bootstrap 95% CI.")
    evaluated = (results.get("checkpoint") or {}).get("sha256")
    if evaluated != source.get("sha256"):
        lines.append(f"Note: these results were computed for checkpoint sha256 {evaluated}, not this model's source "
                     f"({source.get('sha256')}).")
    lines += ["", "| class | AUC | 95% CI |", "|---|---:|---|"]
    for name in CLASSES:
        entry = block["18"]["per_class"].get(name) or {}
        ci = entry.get("auc_ci95")
        lines.append(f"| {name} | {_fmt(entry.get('auc'))} | {'n/a' if not ci else f'{ci[0]:.3f}-{ci[1]:.3f}'} |")
    for key in ("18", "16"):
        lines.append(f"| **macro, {key} classes** | {_fmt(block[key]['mean'].get('auc'))} | |")
    if thresholds is not None:
        lines += ["", f"Decision thresholds, {thresholds['rule']} on {thresholds['split']} (N = {thresholds['N']}), "
                  "are recorded in config.json: `reaf.predict` lists the findings over them. They are only as good as "
                  "that split: chosen on the split a paper reports, they are tuned on its test set."]
    return [*lines, ""]


def model_card(model: nn.Module, *, source: dict[str, Any], train: dict[str, Any] | None, input_spec: InputSpec,
               results: dict[str, Any] | None, thresholds: dict[str, Any] | None = None) -> str:
    """The README.md text of a weights folder."""
    counts = parameter_counts(model)
    lines = [
        "# REAF chest-CT vision-language model",
        "",
        "A CLIP-style model for chest CT: a 3-D ViT volume encoder (scan/slice hierarchy, layer fusion, regional "
        "saliency enhancer) and a BERT text tower in one embedding space. Zero-shot, it gives the probabilities of the "
        "18 CT-RATE findings; its embeddings serve report and volume retrieval.",
        "",
        f"Exported by `python -m reaf.export` from `{source.get('path')}` ({source.get('format')}, sha256 "
        f"{source.get('sha256')}). Load with `reaf.from_pretrained(folder)` (offline, no pickle), or pass the folder "
        "to `python -m reaf.predict --model`, `zero_shot.py --resume`, `main.py --load-checkpoint`.",
        "",
        *_architecture(model, counts),
        *_training(source, train),
        *_evaluation(results, source, thresholds),
        "## Input",
        "",
        f"A chest CT volume in HU (NIfTI or a DICOM series), resampled to {T.TARGET_SPACING} mm (z, y, x) "
        f"(trilinear), windowed to [{input_spec.hu_min:g}, {input_spec.hu_max:g}] HU -> [0, 1], brought to "
        f"{tuple(input_spec.size)} voxels by `{input_spec.mode}`, then normalised (x - {T.MEAN}) / {T.STD}. Voxel "
        "order: CT-RATE's, read from the header's affine. `reaf.predict` does all of this.",
        "",
        "## Intended use",
        "",
        "Research on chest-CT representation learning, zero-shot findings and retrieval. **Not for clinical use**: "
        "not a medical device, not validated for diagnosis or triage, and its probabilities are not calibrated.",
        "",
        "## Limits",
        "",
        "- Zero-shot probabilities come from prompt pairs (protocol v1); they rank volumes, they are not calibrated "
        "risks, and a threshold chosen on one set does not carry over.",
        "- Trained (as recorded above) on chest CT; other body regions, contrast phases, paediatric scans, or scanners "
        "far from the training data are out of distribution. CT-RATE comes from one hospital.",
        "- Labels of CT-RATE were extracted from reports by a model; so are its errors.",
        "- Crop mode discards what lies outside the input's field of view; the saliency map shows regions the "
        "enhancer kept, not a causal explanation.",
        "",
    ]
    return "\n".join(lines)
