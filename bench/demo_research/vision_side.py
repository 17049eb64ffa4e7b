"""The demo's image side, measured: how alike its embeddings start, what the enhancer adds, what it learns.

On the demo's synthetic data (made the demo's way, held in memory; `--workdir` keeps and reuses it) and for each
vision-tower variant in VARIANTS (config overrides of the `demo` model):

  init       mean pairwise cosine of the image embeddings of validation volumes at initialisation, and the same
             along the way (input voxels, CLS before / after the final norm, mean-pooled tokens) to show where the
             volumes' differences are lost; for REAF the added vector's norm next to the CLS token's
  learn      CLIP loss between the vision tower and a learned embedding of each volume's label vector (a perfect
             text side, `clip_label_text` of bench/demo_research/demo_diagnostics.py), AdamW, batch 32: the loss over the first
             epoch (75 steps, the demo's) against ln(B), validation AUC per class and report->volume R@5 (chance 5/N)
  visibility per class, how much a planted finding changes the model input: each volume rendered with that finding
             alone and with none (reaf.synthetic.synth_volume, same anatomy and noise), fitted to the demo input,
             the max over tokens (8x16x16 voxels) of the mean |difference| in each token, in units of the
             normalised input (1 unit = 0.226 x 1500 HU = 339 HU)

Writes bench/demo_research/results/vision_side.json (or --out).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import RESEARCH_RESULTS, machine_info, write_result
from bench.demo_research.demo_diagnostics import aucs, load_split, recall_at_5
from reaf import create_model
from reaf.data import transforms as T
from reaf.data.csv_tables import CLASSES
from reaf.data.input_spec import InputSpec
from reaf.demo import INPUT_INFO, make_data
from reaf.model.config import load_model_config
from reaf.model.loss import local_contrastive_loss
from reaf.synthetic.dataset import plan_split, synth_volume
from reaf.training.optim import CosineSchedule

# REAF with the enhancer as the reference computes it
PAPER_REAF = {
    "fusion_saliency": True,
    "saliency_norm": "raw",
    "temperature": 1.0,
    "pool_norm": False,
    "fusion_scale_init": None,
}
# name -> overrides of the `demo` config
VARIANTS = {
    "plain": {"fusion_saliency": False},
    "reaf_paper_options": PAPER_REAF,
    "reaf_zero_scale": {**PAPER_REAF, "fusion_scale_init": 0.0},
    "reaf_zero_scale_mean_norm_t0.1": {
        **PAPER_REAF,
        "fusion_scale_init": 0.0,
        "saliency_norm": "mean",
        "temperature": 0.1,
    },
    "reaf_zero_scale_mean_norm_t0.1_pool_norm": {
        **PAPER_REAF,
        "fusion_scale_init": 0.0,
        "saliency_norm": "mean",
        "temperature": 0.1,
        "pool_norm": True,
    },
    "reaf_zero_scale_mean_norm_t1_pool_norm": {
        **PAPER_REAF,
        "fusion_scale_init": 0.0,
        "saliency_norm": "mean",
        "temperature": 1.0,
        "pool_norm": True,
    },
    "reaf_demo": {"fusion_saliency": True},
    # the readout (global_pool) of the plain hierarchy: the CLS, the mean or the per-channel max over patch tokens
    "plain_cls_readout": {"fusion_saliency": False, "global_pool": "token"},
    "plain_avg_readout": {"fusion_saliency": False, "global_pool": "avg"},
    "plain_max_readout": {"fusion_saliency": False, "global_pool": "max"},
}
# first-epoch probes (75 steps of the 600-step schedule): what moves the loss off ln(B) early
PROBES = {
    "plain": {"fusion_saliency": False},
    "plain_warmup10": {"fusion_saliency": False, "warmup": 10},
    "plain_lr3e-3": {"fusion_saliency": False, "lr": 3e-3},
    "plain_logit_scale_30": {"fusion_saliency": False, "logit_scale": 30.0},
    "plain_logit_scale_5": {"fusion_saliency": False, "logit_scale": 5.0},
    "plain_cls_init_0.02": {"fusion_saliency": False, "cls_init_std": 0.02},
}
BATCH = 32


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """(N, ...) -> mean cosine over the N(N-1) ordered pairs of distinct rows."""
    x = F.normalize(x.flatten(1).double(), dim=-1)
    sim = x @ x.T
    n = len(x)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def init_summary(model, x: torch.Tensor) -> dict:
    """Where the volumes' differences go at initialisation: mean pairwise cosines stage by stage."""
    trunk = model.visual.trunk
    last, outputs = trunk.run_blocks(trunk.embed(x))
    tokens = trunk.patch_embed(x)
    out = {
        "input_voxels": mean_pairwise_cosine(x),
        "patch_embedding_over_position_norm": float(
            tokens.norm(dim=-1).mean() / trunk.spatial_posemb.norm(dim=-1).mean()
        ),
        "cls_before_norm": mean_pairwise_cosine(last[:, 0]),
        "cls_after_norm": mean_pairwise_cosine(trunk.norm(last)[:, 0]),
        "mean_token_after_norm": mean_pairwise_cosine(trunk.norm(last)[:, 1:].mean(1)),
        "image_embedding": mean_pairwise_cosine(model.encode_image(x)),
    }
    if trunk.cfg.fusion_saliency:
        added = trunk.added_vector(outputs)
        out["added_vector_norm_over_cls_norm"] = float(added.norm(dim=-1).mean() / last[:, 0].norm(dim=-1).mean())
        weights, _ = trunk.saliency.token_weights(trunk.fusion["scan"](outputs["scan"]))
        out["scan_saliency_max_weight"] = float(weights.max(dim=1).values.mean())
    return {k: round(v, 4) for k, v in out.items()}


def build_model(variant: dict):
    """The `demo` model with the variant's config overrides; a None override is applied too (create_model skips
    None, so the enhancer's scale is removed here by hand when a variant asks for the reference's enhancer)."""
    cfg = load_model_config("demo")
    if "fusion_scale_init" in variant and variant["fusion_scale_init"] is None:
        cfg.vision.fusion_scale_init = None
    return create_model(cfg, **{k: v for k, v in variant.items() if k not in RUN_KNOBS})


RUN_KNOBS = ("logit_scale", "warmup", "lr", "cls_init_std")  # variant keys that are run settings, not config


def clip_vs_label_text(
    train: dict, valid: dict, variant: dict, steps: int, seed: int, lr: float, stop: int | None = None
) -> dict:
    """The vision tower against a learned embedding of the label vector; AdamW, warm-up, cosine decay over `steps`.

    `variant`: config overrides plus optional run knobs (RUN_KNOBS). `stop`: end after that many steps of the same
    schedule and report the losses and the initial state only (the first-epoch probe).
    """
    torch.manual_seed(seed)
    model = build_model(variant)
    if "logit_scale" in variant:
        model.logit_scale.data.fill_(math.log(variant["logit_scale"]))
    if "cls_init_std" in variant:
        nn.init.normal_(model.visual.trunk.cls_token, std=variant["cls_init_std"])
    lr = variant.get("lr", lr)
    labels = nn.Linear(len(CLASSES), model.cfg.embed_dim)
    init = init_summary(model, valid["x"][:64])
    params = list(model.visual.parameters()) + list(labels.parameters()) + [model.logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    schedule = CosineSchedule(opt, lr, warmup=variant.get("warmup", 50), total=steps)
    g = torch.Generator().manual_seed(seed)
    n = len(train["x"])
    order, losses = torch.randperm(n, generator=g), []
    for step in range(stop or steps):
        start = (step * BATCH) % (n - n % BATCH)
        if start == 0 and step:
            order = torch.randperm(n, generator=g)
        schedule.apply(step)
        idx = order[start : start + BATCH]
        text = F.normalize(labels(2 * train["y"][idx] - 1), dim=-1)
        loss = local_contrastive_loss(model.encode_image(train["x"][idx]), text, model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_logit_scale()
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            print(f"  step {step}: loss {losses[-1]:.3f}", flush=True)
    first_epoch = {
        "init": init,
        "loss_steps_65_74_over_lnB": round(float(np.mean(losses[65:75]) / math.log(BATCH)), 3),
        "loss_every_15_steps": [round(x, 3) for x in losses[::15]],
    }
    if stop:
        return first_epoch
    with torch.no_grad():
        image = torch.cat([model.encode_image(valid["x"][i : i + 50]) for i in range(0, len(valid["x"]), 50)])
        scores = (image @ labels.weight).numpy()  # each class's direction in the label embedding
        text = F.normalize(labels(2 * valid["y"] - 1), dim=-1)
    smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")  # smooth[i]: mean of steps i..i+9
    below = np.nonzero(smooth < 0.9 * math.log(BATCH))[0]
    per_class = aucs(valid["y"], scores)
    return {
        **first_epoch,
        "first_step_10_step_mean_below_0.9lnB": int(below[0] + 9) if len(below) else None,
        "last_loss": round(float(np.mean(losses[-10:])), 3),
        "mean_auc": round(float(np.mean(per_class)), 4),
        "R@5": recall_at_5(text, image),
        "auc": dict(zip(CLASSES, np.round(per_class, 3).tolist())),
        "logit_scale_end": round(float(model.logit_scale.exp()), 2),
    }


def finding_visibility(seed: int, spec: InputSpec, patch: tuple[int, int, int], volumes: int) -> dict:
    """Per class: over `volumes` train volumes, the max over tokens of the mean |input difference| it makes."""
    names = [name for _, _, name in plan_split(seed, "train", volumes)]
    per_class: dict[str, list[float]] = {c: [] for c in CLASSES}
    for name in names:
        hu, _, geometry = synth_volume(seed, name, classes=set())  # the same chest, noise included, no finding
        base = model_input(hu, geometry, spec)
        for cls in CLASSES:
            with_finding, _, _ = synth_volume(seed, name, classes={cls})
            diff = (model_input(with_finding, geometry, spec) - base).abs()[None]  # (1, 1, D, H, W)
            per_class[cls].append(float(F.avg_pool3d(diff, patch).max()))
    return {
        c: {"median": round(float(np.median(v)), 3), "min": round(float(np.min(v)), 3)} for c, v in per_class.items()
    }


def model_input(hu: np.ndarray, geometry, spec: InputSpec) -> torch.Tensor:
    """Rendered int16 HU (x, y, z) -> the model input (1, D, H, W), as the preprocessing makes it."""
    zyx = torch.from_numpy(np.ascontiguousarray(hu.transpose(2, 1, 0)).astype(np.float32))
    spacing = tuple(float(s) for s in reversed(geometry.spacing))
    return T.model_input(T.resample(zyx, spacing), spec.size, spec.hu_min, spec.hu_max, spec.mode)


def demo_data(args: argparse.Namespace, spec: InputSpec) -> tuple[dict, dict]:
    """The demo's train and validation splits (made the demo's way, or found in --workdir), held in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        data_args = argparse.Namespace(
            num_train=args.num_train, num_valid=args.num_valid, num_test=0, valid=True, seed=args.seed, workers=2,
            model="demo",
        )
        cache = make_data(data_args, Path(args.workdir or tmp))
        return load_split(cache, "train", spec), load_split(cache, "val", spec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-train", type=int, default=2400)
    p.add_argument("--num-valid", type=int, default=200)
    p.add_argument("--steps", type=int, default=600, help="optimiser steps per learner (batch 32)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"of {list(VARIANTS)}; none: visibility only")
    p.add_argument("--probe-variants", nargs="*", default=[], help=f"first epoch only, of {list(PROBES)}")
    p.add_argument("--visibility-volumes", type=int, default=12, help="0: skip the visibility measurement")
    p.add_argument("--threads", type=int, default=2, help="1 when other work shares the cores (2 threads thrash)")
    p.add_argument("--workdir", help="keep the generated data here (default: a temporary folder)")
    p.add_argument("--out", help="write the JSON here instead of bench/demo_research/results/vision_side.json")
    args = p.parse_args(argv)
    unknown = sorted(set(args.variants) - set(VARIANTS)) + sorted(set(args.probe_variants) - set(PROBES))
    if unknown:
        p.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    info = machine_info()
    spec = InputSpec.from_args(INPUT_INFO, create_model("demo").cfg.vision.img_size)
    results: dict = {}
    if args.variants or args.probe_variants:  # the visibility measurement renders its own volumes
        t0 = time.perf_counter()
        train, valid = demo_data(args, spec)
        results["data_seconds"] = round(time.perf_counter() - t0, 1)
    if args.visibility_volumes:
        t = time.perf_counter()
        patch = tuple(create_model("demo").cfg.vision.patch_size)
        results["visibility"] = finding_visibility(args.seed, spec, patch, args.visibility_volumes)
        results["visibility_seconds"] = round(time.perf_counter() - t, 1)
        print("visibility", results["visibility"], flush=True)
    for name in args.probe_variants:
        t = time.perf_counter()
        r = clip_vs_label_text(train, valid, PROBES[name], args.steps, args.seed, args.lr, stop=75)
        r["seconds"] = round(time.perf_counter() - t, 1)
        results.setdefault("first_epoch", {})[name] = r
        print(f"{name:20s} epoch-0 loss/lnB {r['loss_steps_65_74_over_lnB']:.3f}  init cos "
              f"{r['init']['image_embedding']:.3f}  {r['seconds']:.0f} s", flush=True)  # fmt: skip
    for name in args.variants:
        t = time.perf_counter()
        r = clip_vs_label_text(train, valid, VARIANTS[name], args.steps, args.seed, args.lr)
        r["seconds"] = round(time.perf_counter() - t, 1)
        results[name] = r
        print(f"{name:20s} AUC {r['mean_auc']:.3f}  R@5 {r['R@5']:.3f}  epoch-0 loss/lnB "
              f"{r['loss_steps_65_74_over_lnB']:.3f}  init cos {r['init']['image_embedding']:.3f}  {r['seconds']:.0f} s",
              flush=True)  # fmt: skip
    result = {
        "what": "the demo's image side: embeddings at init, first-epoch loss, AUC/R@5 against a perfect text side",
        "settings": {**vars(args), "batch_size": BATCH, "variants": {v: VARIANTS[v] for v in args.variants}},
        "results": results,
        "machine": info,
    }
    print(f"wrote {write_result('vision_side', result, args.out, folder=RESEARCH_RESULTS)}")


if __name__ == "__main__":
    main()
