"""What the demo's untried levers would cost: seconds per training step of batch 32, on the demo's own reports.

The demo trains each of its two models for 2250 steps of batch 32 within a 15-minute budget it shares with data
generation, preprocessing and evaluation (README.md, "The demo"). This times one optimiser step (forward, backward,
AdamW) of
- the image side of the `demo` config at width 48 (its width when this was first run), and with 8x8x8 patches
  (4x12x12 = 576 tokens) or 8x12x12 patches (4x8x8 = 256) or width 72, the text side reading cached features as in
  the demo;
- the text side with MiniLM trainable except its embeddings and attention/MLP weights (its LayerNorms, the
  reference's --lock-text; then no text feature can be cached), forward and backward through MiniLM on 32 of the
  demo's whole reports and on 32 single sentences;
and projects each to the demo's 2250 steps. Volumes are random (timing only); reports come from a demo folder's
CSV (pandas), tokenised by the model's MiniLM tokenizer.

    python -m bench.demo_research.demo_step_cost --demo-dir demo_runs/v4/seed_0

Writes bench/demo_research/results/demo_step_cost.json (or --out).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench.common import RESEARCH_RESULTS, call_seconds, demo_train_reports, machine_info, write_result
from reaf import create_model
from reaf.data.text_sampling import split_sentences
from reaf.model.config import load_model_config
from reaf.model.loss import local_contrastive_loss

BATCH, DEMO_STEPS = 32, 2250
WIDTH_48 = {"width": 48, "num_heads": 2}  # the `demo` config's width when this was first run (72 since)
IMAGE_VARIANTS = {
    "demo (8x16x16 patches, width 48)": WIDTH_48,
    "width 72": {"width": 72, "num_heads": 3},
    "8x12x12 patches": {**WIDTH_48, "patch_size": (8, 12, 12)},
    "8x8x8 patches": {**WIDTH_48, "patch_size": (8, 8, 8)},
}


def timed(step, repeats: int) -> float:
    """Median seconds of `step()` over `repeats` calls after two warm-up calls."""
    return statistics.median(call_seconds(step, repeats))


def image_step_seconds(overrides: dict, features: torch.Tensor, repeats: int) -> float:
    model = create_model("demo", **overrides).train()
    x = torch.randn(BATCH, 1, *model.cfg.vision.img_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = local_contrastive_loss(model.encode_image(x), model.text.project(features), model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(step, repeats)


def text_step_seconds(texts: list[str], repeats: int) -> tuple[float, int]:
    """MiniLM with trainable LayerNorms (lock without `whole`), no feature cache: one step on `texts`."""
    model = create_model("demo")
    model.text.lock(whole=False)
    model.train()
    ids, mask = model.tokenize(texts)
    image = torch.nn.functional.normalize(torch.randn(len(texts), model.cfg.embed_dim), dim=-1)
    opt = torch.optim.AdamW([p for p in model.text.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = local_contrastive_loss(image, model.encode_text(ids, mask), model.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed(step, repeats), int(mask.sum(1).float().mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-dir", required=True, help="a demo folder (its ct_rate/ reports CSV is read)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    machine = machine_info()
    reports = demo_train_reports(args.demo_dir, BATCH)
    sentences = [s for r in reports for s in split_sentences(r)][:BATCH]
    features = torch.randn(BATCH, load_model_config("demo").text.hidden_size)
    results = {}
    for name, overrides in IMAGE_VARIANTS.items():
        s = image_step_seconds(overrides, features, args.repeats)
        results[f"image side, {name}"] = {"seconds_per_step": round(s, 3), "seconds_for_2250_steps": round(
            s * DEMO_STEPS)}  # fmt: skip
        print(name, results[f"image side, {name}"], flush=True)
    for name, texts in (("whole reports", reports), ("single sentences", sentences)):
        s, tokens = text_step_seconds(texts, args.repeats)
        results[f"text side, trainable MiniLM LayerNorms, {name}"] = {
            "seconds_per_step": round(s, 3), "seconds_for_2250_steps": round(s * DEMO_STEPS),
            "mean_tokens_per_text": tokens}  # fmt: skip
        print(name, results[f"text side, trainable MiniLM LayerNorms, {name}"], flush=True)
    print(write_result("demo_step_cost", {
        "settings": {"demo_dir": args.demo_dir, "batch": BATCH, "repeats": args.repeats, "demo_steps": DEMO_STEPS,
                     "timing": "median of the repeats after two warm-up steps, fp32, torch threads as the demo"},
        "machine": machine, "results": results}, args.out, folder=RESEARCH_RESULTS))  # fmt: skip


if __name__ == "__main__":
    main()
