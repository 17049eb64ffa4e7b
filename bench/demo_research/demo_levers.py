"""What each lever does to the demo's joint training (REAF `demo` config, frozen MiniLM text), measured in memory.

The vision tower is the `demo` config's at width 48 with 2 heads, as it was when most variants were recorded (the
`demo` config is width 72 since), unless a variant sets its width.

On the demo's own data (a finished demo folder: its fast cache, held in memory) each variant trains both towers
together as the demo does (AdamW with main.py's betas, eps and weight decay 0.2, but on every parameter: main.py
leaves biases, norms and the logit scale undecayed, the main_groups variant too; 50 warm-up steps, cosine decay to 0
over the variant's steps, batch 32, peak lr 2e-3, the demo's text sampling drawn by reaf.data.text_sampling, MiniLM
features computed once per distinct text) for 600 steps and records the training loss against ln(B) (the last 10
steps of epoch 0, steps 140-149, the last 10), then the protocol's zero-shot AUC (18 classes, "volume" prompt pairs)
and report->volume R@5 on the validation split. Variants change one thing against the demo: the readout (CLS, mean),
the logit scale's start, the learning rate, the text sampling, a BatchNorm (no affine) before the text projection,
the batch size (same samples), the width, the number of training volumes, the plain hierarchy instead of REAF; and
the previous demo's settings (CLS readout, logit scale 1/0.07, lr 1e-3).

The e0_* variants run the demo's schedule as it was then (2250 steps: warm-up, cosine over 30 epochs of 75; 20
epochs since) and change one thing: the warm-up length, a BatchNorm on the image features, the peak lr, the logit
scale's start, whole reports throughout or in the first epoch(s) only (main.py's --report-epochs); with --steps 150
only the start of that schedule runs (a quick look at epoch 0). The r0w10_* variants start from the demo's settings
since (whole reports in epoch 0, 10 warm-up steps) and change one thing: 40 epochs, lr 1e-3, single sentences after
epoch 0, weight decay 0.05, a joint embedding of 128 or 32 dimensions instead of 64; and (r0w10_matched*,
r0w10_text_mlp, m_mlp_*) main.py's --positives shared ("matched": a text is also a positive of every volume of the
batch whose report holds all its sentences), the text config's two-layer "mlp" head instead of the linear
projection, and on top of both: the plain hierarchy, 40 epochs, an MLP image head, a wider (1536) or deeper
(3-layer) text head, lr 1e-3, a 128-d joint embedding, or 3/4 single sentences instead of 1/2 after epoch 0
(main.py's --sentence-share), or batch 64 for half the steps (the same samples), dropout 0.3 on the frozen text
features before the head, the evaluation of an exponential moving average of the trained parameters (decay 0.99 or
0.998) instead of the last ones, or the same settings with another seed (initialisation, sample order and text
draws: the bench's own noise), a wider image tower (72 or 96) or other patches (8x12x12, 4x16x16, 16x12x12; at
8x12x12 also the plain hierarchy, another seed, and main.py's optimiser groups instead of decaying every parameter;
8x8x8 at 15 epochs, against 8x16x16 at 15, also the plain hierarchy and the enhancer's region scaled to 2x6x6
tokens; at width 72 REAF, the plain hierarchy, regions of 1x3x3 tokens, saliency temperature 1, the top 4 regions),
or each report's text feature taken as the mean of its sentences' features; and a BatchNorm before the linear text
head. Every variant names its text head (linear, or "mlp" and its width), so the variants recorded before the demo
config took the "mlp" head rerun as they ran. Every variant also records its per-class AUCs, the logit scale it
ended at and, as a diagnostic, the mean AUC when each class's prompt pair is replaced by the training reports' most
common sentence stating it absent and present ("report_style"): how much of the gap is the prompts' wording.

    python -m bench.demo_research.demo_levers --demo-dir demo_runs/seed_0 [--only reaf plain ...] [--steps N]

Writes bench/demo_research/results/demo_levers.json (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import RESEARCH_RESULTS, machine_info, write_result
from bench.demo_research.demo_diagnostics import aucs, load_split, recall_at_5
from reaf import create_model
from reaf.data.input_spec import InputSpec
from reaf.data.readers import find_splits
from reaf.data.text_sampling import sample_text, split_sentences
from reaf.demo import INPUT_INFO
from reaf.evaluation.prompts import class_prompts
from reaf.model.config import load_model_config
from reaf.model.loss import local_contrastive_loss, shared_positives
from reaf.training.optim import CosineSchedule, param_groups

BATCH = 32
STEPS = 600
LR = 2e-3  # the demo's peak learning rate
CLS_READOUT = {"global_pool": "token"}
# name -> settings; every key not given keeps the demo's value (the `demo` config: max readout, logit scale 5)
VARIANTS = {
    "reaf": {},
    "plain": {"overrides": {"fusion_saliency": False}},
    "reaf_previous_demo": {"lr": 1e-3, "logit_scale": 1 / 0.07, "overrides": CLS_READOUT},
    "plain_previous_demo": {"lr": 1e-3, "logit_scale": 1 / 0.07,
                            "overrides": {**CLS_READOUT, "fusion_saliency": False}},
    "reaf_cls_readout": {"overrides": CLS_READOUT},
    "reaf_avg_readout": {"overrides": {"global_pool": "avg"}},
    "reaf_logit_scale_14.3": {"logit_scale": 1 / 0.07},
    "reaf_lr_1e-3": {"lr": 1e-3},
    "reaf_text_report": {"sampling": "report"},
    "reaf_text_sentence": {"sampling": "sentence"},
    "reaf_batchnorm_text": {"text_bn": True},
    "reaf_batch_16": {"batch": 16, "steps": 2 * STEPS},
    "reaf_width_96": {"overrides": {"width": 96, "num_heads": 4}},
    "reaf_1200_volumes": {"train_volumes": 1200},
}
# the `demo` vision tower's width when the variants were recorded (configs/demo.json took width 72 since): kept as the
# base, so every variant reruns as it ran; the width_72 variants say their width
RECORDED_VISION = {"width": 48, "num_heads": 2}
DEMO_SCHEDULE = {"steps": 2250}  # the demo's schedule when measured: 30 epochs of 75 steps (--steps for epoch 0)
EPOCH_0 = {
    "e0_demo": {},
    "e0_warmup_10": {"warmup": 10},
    "e0_image_bn": {"image_bn": True},
    "e0_lr_4e-3": {"lr": 4e-3},
    "e0_logit_scale_20": {"logit_scale": 20.0},
    "e0_report": {"sampling": "report"},
    "e0_plain": {"overrides": {"fusion_saliency": False}},
    "e0_report_epoch_0": {"report_epochs": 1},
    "e0_report_epoch_0_warmup_10": {"report_epochs": 1, "warmup": 10},
    "e0_report_epoch_0_warmup_20": {"report_epochs": 1, "warmup": 20},
    "e0_report_epoch_0_lr_3e-3": {"report_epochs": 1, "lr": 3e-3},
}
NEW_DEMO = {"report_epochs": 1, "warmup": 10}  # the demo since: whole reports in epoch 0, 10 warm-up steps
AFTER = {
    "r0w10_40_epochs": {"steps": 3000},
    "r0w10_lr_1e-3": {"lr": 1e-3},
    "r0w10_sentence": {"sampling": "sentence"},
    "r0w10_wd_0.05": {"wd": 0.05},
    "r0w10_embed_128": {"overrides": {"embed_dim": 128}},
    "r0w10_embed_32": {"overrides": {"embed_dim": 32}},
    "r0w10_matched": {"matched": True},
    "r0w10_matched_sentence": {"matched": True, "sampling": "sentence"},
    "r0w10_matched_text_bn": {"matched": True, "text_bn": True},
    "r0w10_matched_text_mlp": {"matched": True, "text_mlp": True},
    "r0w10_text_mlp": {"text_mlp": True},
    "r0w10_matched_text_mlp_plain": {"matched": True, "text_mlp": True, "overrides": {"fusion_saliency": False}},
    "r0w10_matched_text_mlp_40_epochs": {"matched": True, "text_mlp": True, "steps": 3000},
    "m_mlp_image_mlp": {"matched": True, "text_mlp": True, "image_mlp": True},
    "m_mlp_hidden_1536": {"matched": True, "text_mlp": True, "text_mlp_hidden": 1536},
    "m_mlp_lr_1e-3": {"matched": True, "text_mlp": True, "lr": 1e-3},
    "m_mlp_3_layers": {"matched": True, "text_mlp": True, "text_mlp_layers": 3},
    "m_mlp_sentence_share_0.75": {"matched": True, "text_mlp": True, "sentence_share": 0.75},
    "m_mlp_embed_128": {"matched": True, "text_mlp": True, "overrides": {"embed_dim": 128}},
    "m_mlp_hidden_1536_share_0.75": {"matched": True, "text_mlp": True, "text_mlp_hidden": 1536,
                                     "sentence_share": 0.75},
    "m_mlp_hidden_1536_share_0.75_embed_128": {"matched": True, "text_mlp": True, "text_mlp_hidden": 1536,
                                               "sentence_share": 0.75, "overrides": {"embed_dim": 128}},
    "m_mlp_batch_64": {"matched": True, "text_mlp": True, "batch": 64, "steps": 1125},
    "m_mlp_seed_1": {"matched": True, "text_mlp": True, "seed": 1},
    "m_mlp_seed_2": {"matched": True, "text_mlp": True, "seed": 2},
    "m_mlp_text_dropout_0.3": {"matched": True, "text_mlp": True, "text_dropout": 0.3},
    "m_mlp_ema_0.99": {"matched": True, "text_mlp": True, "ema": 0.99},
    "m_mlp_ema_0.998": {"matched": True, "text_mlp": True, "ema": 0.998},
    # the image tower's capacity: wider tokens, smaller patches (more tokens per volume)
    "m_mlp_width_96": {"matched": True, "text_mlp": True, "overrides": {"width": 96, "num_heads": 4}},
    "m_mlp_width_72": {"matched": True, "text_mlp": True, "overrides": {"width": 72, "num_heads": 3}},
    "m_mlp_patch_8x12x12": {"matched": True, "text_mlp": True, "overrides": {"patch_size": (8, 12, 12)}},
    "m_mlp_patch_4x16x16": {"matched": True, "text_mlp": True, "overrides": {"patch_size": (4, 16, 16)}},
    "m_mlp_patch_16x12x12": {"matched": True, "text_mlp": True, "overrides": {"patch_size": (16, 12, 12)}},
    "m_mlp_patch_8x12x12_seed_1": {"matched": True, "text_mlp": True, "seed": 1,
                                   "overrides": {"patch_size": (8, 12, 12)}},
    "m_mlp_patch_8x12x12_main_groups": {"matched": True, "text_mlp": True, "main_groups": True,
                                        "overrides": {"patch_size": (8, 12, 12)}},
    "m_mlp_patch_8x12x12_plain": {"matched": True, "text_mlp": True,
                                  "overrides": {"patch_size": (8, 12, 12), "fusion_saliency": False}},
    # a report's text feature as the mean of its sentences' MiniLM features (each sentence encoded alone, as MiniLM
    # was trained) instead of MiniLM's features of the whole report
    "m_mlp_sentence_mean": {"matched": True, "text_mlp": True, "sentence_mean": True},
    # 8x8x8 patches (4x12x12 tokens, ~3.8x the step of 8x16x16) fit the demo's budget only at half its steps: 15
    # epochs of 75 steps, against the 8x16x16 demo at the same 15 epochs
    "m_mlp_15_epochs": {"matched": True, "text_mlp": True, "steps": 1125},
    "m_mlp_patch_8x8x8_15_epochs": {"matched": True, "text_mlp": True, "steps": 1125,
                                    "overrides": {"patch_size": (8, 8, 8)}},
    "m_mlp_patch_8x8x8_15_epochs_plain": {"matched": True, "text_mlp": True, "steps": 1125,
                                          "overrides": {"patch_size": (8, 8, 8), "fusion_saliency": False}},
    # the enhancer's region scaled with the grid: 2x6x6 tokens of 8 px cover what 2x3x3 tokens of 16 px do
    "m_mlp_patch_8x8x8_15_epochs_region_2x6x6": {"matched": True, "text_mlp": True, "steps": 1125,
                                                 "overrides": {"patch_size": (8, 8, 8), "region_size": (2, 6, 6)}},
    # REAF's enhancer at the 4x12x12 grid, width 72 (the demo's since; these first ran reading it from configs/demo.json):
    # as configured, softer saliency weights, more regions kept, smaller regions; and the plain hierarchy
    **{f"m_mlp_width_72_patch_8x8x8_15_epochs{name}": {
        "matched": True, "text_mlp": True, "steps": 1125,
        "overrides": {"width": 72, "num_heads": 3, "patch_size": (8, 8, 8), **change}}
       for name, change in {"": {}, "_temperature_1": {"temperature": 1.0}, "_top_4": {"top_k": 4},
                            "_region_1x3x3": {"region_size": (1, 3, 3)}, "_plain": {"fusion_saliency": False}}.items()},
}
VARIANTS.update({name: {**DEMO_SCHEDULE, **v} for name, v in EPOCH_0.items()})
VARIANTS.update({name: {**DEMO_SCHEDULE, **NEW_DEMO, **v} for name, v in AFTER.items()})


def text_features(data: dict, prompts: dict) -> dict[str, torch.Tensor]:
    """MiniLM features (the demo text tower's, before its projection) of every text any variant can draw."""
    texts = set(data["train"]["reports"]) | set(data["valid"]["reports"])
    for report in data["train"]["reports"] + data["valid"]["reports"]:
        texts.update(split_sentences(report))
    for pair in prompts.values():
        texts.update(pair)
    model = create_model("demo").eval()
    ordered, feats = sorted(texts, key=len), {}
    with torch.no_grad():
        for i in range(0, len(ordered), 64):
            chunk = ordered[i : i + 64]
            for text, feature in zip(chunk, model.text.features(*model.tokenize(chunk))):
                feats[text] = feature.clone()
    return feats


@functools.cache
def sentence_set(text: str) -> frozenset:
    return frozenset(split_sentences(text))


def report_style_pairs(reports: list[str]) -> dict[str, tuple[str, str]]:
    """Per class, the training reports' most common sentence stating it absent and stating it present."""
    from collections import Counter

    from reaf.synthetic.reports import KEYWORDS
    counts = Counter(s for r in reports for s in sentence_set(r))
    pairs = {}
    for name, words in KEYWORDS.items():
        neg = [s for s, _ in counts.most_common() if any(w in s.lower() for w in (*words, name.lower()))
               and any(f" {n} " in f" {s.lower().rstrip('.')} " for n in ("no", "not", "without"))]
        pos = [s for s, _ in counts.most_common() if any(w in s.lower() for w in words)
               and not any(f" {n} " in f" {s.lower().rstrip('.')} " for n in ("no", "not", "without"))]
        if neg and pos:
            pairs[name] = (neg[0], pos[0])
    return pairs


def train_variant(data: dict, feats: dict, prompts: dict, settings: dict, seed: int) -> dict:
    seed = settings.get("seed", seed)  # the *_seed_N variants: another initialisation and sample order
    steps, lr, sampling = settings.get("steps", STEPS), settings.get("lr", LR), settings.get("sampling", "both")
    total, steps = steps, min(steps, settings.get("max_steps", steps))
    batch = settings.get("batch", BATCH)
    torch.manual_seed(seed)
    # the text head is given explicitly (linear, or "mlp" with its inner width), so variants recorded before the demo
    # config changed its head rerun as they ran
    cfg = load_model_config("demo")
    mlp = settings.get("text_mlp")
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(
        cfg.text, proj="mlp" if mlp else "linear", proj_hidden=settings.get("text_mlp_hidden") if mlp else None))
    model = create_model(cfg, **{**RECORDED_VISION, **settings.get("overrides", {})})
    if "logit_scale" in settings:
        model.logit_scale.data.fill_(math.log(settings["logit_scale"]))
    image_bn = nn.BatchNorm1d(model.visual.head.proj.in_features, affine=False) if settings.get("image_bn") else None
    hidden = model.text.transformer.config.hidden_size
    text_bn = nn.BatchNorm1d(hidden, affine=False) if settings.get("text_bn") else None
    if settings.get("text_mlp_layers"):  # a deeper head than text.proj "mlp"
        width = model.text.transformer.config.hidden_size
        hidden = settings.get("text_mlp_hidden", width)
        layers = [nn.Linear(width, hidden), nn.GELU()]
        for _ in range(settings["text_mlp_layers"] - 2):
            layers += [nn.Linear(hidden, hidden), nn.GELU()]
        model.text.proj = nn.Sequential(*layers, nn.Linear(hidden, model.cfg.embed_dim))
    if settings.get("image_mlp"):
        width, out = model.visual.head.proj.in_features, model.visual.head.proj.out_features
        model.visual.head.proj = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, out))

    def encode_image(x: torch.Tensor) -> torch.Tensor:
        if image_bn is None:
            return model.encode_image(x)
        return F.normalize(model.visual.head.proj(image_bn(model.visual.trunk(x))), dim=-1)

    text_dropout = settings.get("text_dropout", 0.0)

    def feature(text: str) -> torch.Tensor:
        parts = split_sentences(text) if settings.get("sentence_mean") else []
        return torch.stack([feats[s] for s in parts]).mean(0) if len(parts) > 1 else feats[text]

    def encode_text(texts: list[str]) -> torch.Tensor:
        f = torch.stack([feature(t) for t in texts])
        if text_dropout and model.training:  # dropout on the frozen features, before the head
            f = F.dropout(f, text_dropout)
        return F.normalize(model.text.proj(f if text_bn is None else text_bn(f)), dim=-1)

    params = [p for p in model.parameters() if p.requires_grad]
    if settings.get("main_groups"):  # main.py's optimiser: weight decay on matrices only (reaf.training.optim)
        groups = param_groups(model, settings.get("wd", 0.2))
    else:  # as the variants before were recorded: every parameter decayed, the logit scale and biases too
        groups = [{"params": params, "weight_decay": settings.get("wd", 0.2)}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = CosineSchedule(opt, lr, settings.get("warmup", 50), total)
    train = data["train"]
    n = settings.get("train_volumes", len(train["x"]))  # the first n training volumes only
    g = torch.Generator().manual_seed(seed)
    order, losses, start_time = torch.randperm(n, generator=g), [], time.time()
    # an exponential moving average of the trained parameters, evaluated instead of the last ones
    ema = [p.detach().clone() for p in params] if settings.get("ema") else None
    model.train()
    for step in range(steps):
        start = (step * batch) % (n - n % batch)
        if start == 0 and step:
            order = torch.randperm(n, generator=g)
        schedule.apply(step)
        idx, epoch = order[start : start + batch], step // (n // batch)
        texts = [sample_text(train["reports"][i], sampling, seed=seed, epoch=epoch, index=int(i),
                             report_epochs=settings.get("report_epochs", 0),
                             sentence_share=settings.get("sentence_share", 0.5)) for i in idx]
        positives = None
        if settings.get("matched"):  # main.py --positives shared
            positives = torch.from_numpy(shared_positives(texts, [train["reports"][int(i)] for i in idx]))
        loss = local_contrastive_loss(encode_image(train["x"][idx]), encode_text(texts), model.logit_scale.exp(),
                                      positives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_logit_scale()
        losses.append(float(loss.detach()))
        if ema is not None:
            with torch.no_grad():
                for p, e in zip(params, ema):
                    e.lerp_(p, 1.0 - settings["ema"])
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    model.eval()
    for bn in (image_bn, text_bn):
        if bn is not None:
            bn.eval()
    valid = data["valid"]
    with torch.no_grad():
        image = torch.cat([encode_image(valid["x"][i : i + 50]) for i in range(0, len(valid["x"]), 50)])
        text = encode_text(valid["reports"])
        neg, pos = encode_text([p[0] for p in prompts.values()]), encode_text([p[1] for p in prompts.values()])
        scale = model.logit_scale.exp()
        prob = torch.softmax(scale * torch.stack([image @ neg.T, image @ pos.T], dim=-1), dim=-1)[..., 1]
        alt = report_style_pairs(train["reports"])
        alt_neg = encode_text([alt[c][0] for c in alt])
        alt_pos = encode_text([alt[c][1] for c in alt])
        alt_prob = torch.softmax(scale * torch.stack([image @ alt_neg.T, image @ alt_pos.T], dim=-1), dim=-1)[..., 1]
    cols = [list(prompts).index(c) for c in alt]
    alt_aucs = aucs(valid["y"][:, cols], alt_prob.numpy())
    ln_b, epoch_steps = math.log(batch), n // batch
    return {
        "steps": steps, "lr": lr, "batch": batch, "text_sampling": sampling, "settings": dict(settings),
        "loss_over_lnB_end_of_epoch_0": round(float(np.mean(losses[epoch_steps - 10 : epoch_steps])) / ln_b, 3),
        "loss_over_lnB_steps_140_149": round(float(np.mean(losses[140:150])) / ln_b, 3),
        "loss_over_lnB_last_10": round(float(np.mean(losses[-10:])) / ln_b, 3),
        "loss_over_lnB_every_15_steps": [round(float(np.mean(losses[i : i + 15])) / ln_b, 3)
                                         for i in range(0, min(len(losses), 300), 15)],
        "mean_auc_18": round(float(np.mean(aucs(valid["y"], prob.numpy()))), 4),
        "auc_per_class": dict(zip(prompts, np.round(aucs(valid["y"], prob.numpy()), 3).tolist())),
        "report_style_pairs": alt, "report_style_mean_auc": round(float(np.mean(alt_aucs)), 4),
        "report_style_auc_per_class": dict(zip(alt, np.round(alt_aucs, 3).tolist())),
        "R@5": recall_at_5(text, image), "logit_scale_end": round(float(scale), 3),
        "seconds": round(time.time() - start_time, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-dir", default="demo_runs/demo", help="a finished demo folder (its cache/ is read)")
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run these variants only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="stop every variant after this many steps (the schedule "
                   "still spans the variant's own steps): a quick look at epoch 0")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    machine = machine_info()
    cache = Path(args.demo_dir) / "cache"
    spec = InputSpec.from_args(list(INPUT_INFO), load_model_config("demo").vision.img_size)
    splits = find_splits(cache)
    data = {"train": load_split(cache, "train", spec), "valid": load_split(cache, "val" if splits.get("val") else
                                                                              "test", spec)}  # fmt: skip
    prompts = class_prompts("volume")
    start = time.time()
    feats = text_features(data, prompts)
    feature_seconds = round(time.time() - start, 1)
    results = {}
    for name in args.only or VARIANTS:
        settings = VARIANTS[name] if args.steps is None else {**VARIANTS[name], "max_steps": args.steps}
        results[name] = train_variant(data, feats, prompts, settings, args.seed)
        print(name, results[name], flush=True)
    out = write_result("demo_levers", {
        "settings": {"demo_dir": str(args.demo_dir), "seed": args.seed, "batch": BATCH, "chance_R@5": 5 / len(
            data["valid"]["x"]), "distinct_texts": len(feats), "text_feature_seconds": feature_seconds},
        "machine": {**machine, "note": "one process; other jobs may share the cores (see load averages)"},
        "results": results}, args.out, folder=RESEARCH_RESULTS)  # fmt: skip
    print(out)


if __name__ == "__main__":
    main()
