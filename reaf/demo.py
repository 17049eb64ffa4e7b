"""The embedded demo: synthetic CT-RATE -> fast cache -> train a small REAF on the CPU -> zero-shot + retrieval.

`python -m reaf.demo` (or `bash train_ghs.sh` with no CT_RATE_ROOT) runs every stage with a progress bar and leaves
results, plots and a saliency picture under --out. Each stage is skipped when its output is already there, so a
rerun resumes. The plain scan/slice hierarchy (no fusion, no saliency) is trained on the same budget and reported
beside REAF; `--no-ablation` trains REAF only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

from reaf import atomic
from reaf.arg_types import non_negative_int, positive_int
from reaf.training.flags import add_text_flags

INPUT_INFO = ("-1150", "350", "resize")  # the synthetic chests are resized whole to the small model's input


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_runs/demo", help="demo folder (data, cache, runs, results)")
    p.add_argument("--model", default="demo", help="model config (configs/ name or JSON)")
    p.add_argument("--num-train", type=positive_int, default=2400)
    p.add_argument("--num-valid", type=positive_int, default=200)
    p.add_argument("--epochs", type=positive_int, default=30, help="30 x 75 steps of batch 32 on 2400 volumes")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=2e-3,
                   help="peak learning rate (bench/demo_research/demo_levers.py measures 1e-3 against it)")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="warm-up steps")
    p.add_argument("--workers", type=non_negative_int, default=2, help="processes for generation, preprocessing and loading")
    p.add_argument("--seed", type=int, default=0)
    # main.py's text flags (help and choices from main.py's parser) with the demo's defaults: whole reports in epoch
    # 0, then a sentence or the report with shared positives (docs/demo.md records the measurements)
    add_text_flags(p, text_sampling="both", report_epochs=1, positives="shared")
    p.add_argument("--keep-in-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="train from volumes held in memory after the first epoch (main.py --keep-in-memory, in this "
                   "process: no loader workers); 3-4x faster steps on 2 cores")
    p.add_argument(
        "--ablation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the plain hierarchy (no fusion, no saliency) on the same budget and compare",
    )
    return p.parse_args(argv)


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def make_data(args: argparse.Namespace, out: Path) -> Path:
    """Synthetic CT-RATE (layout A, NIfTI) and its fast cache for the demo model; returns the cache root."""
    from reaf.data.preprocessing import PreprocessSettings, preprocess_split, summary_line
    from reaf.synthetic.dataset import GENERATOR_VERSION, generate

    raw, cache = out / "ct_rate", out / "cache"
    stage("1/4 synthetic CT-RATE")
    wanted = {"seed": args.seed, "num_train": args.num_train, "num_valid": args.num_valid,
              "generator_version": GENERATOR_VERSION}
    marker = raw / "demo_data.json"  # written only once generation has finished
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != wanted:
            raise SystemExit(f"{raw} holds a synthetic CT-RATE made with {found}, but this run asks for {wanted}: "
                             f"use another --out, or delete {out} to start again")  # fmt: skip
        print(f"found {raw}, reusing it")
    elif raw.exists():
        raise SystemExit(f"{raw} exists but has no {marker.name} (an interrupted or older demo): delete {out} and run "
                         "again")  # fmt: skip
    else:
        generate(raw, seed=args.seed, num_train=args.num_train, num_valid=args.num_valid, workers=args.workers)
        atomic.write_text(marker, json.dumps(wanted))
    stage("2/4 preprocess into the fast cache")
    # the preprocessing CLI's console log, for this stage only: training sets up its own (one line per message)
    console, root = logging.StreamHandler(), logging.getLogger()
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        for split in ("train", "valid"):  # resumable: finished files are verified and skipped
            settings = PreprocessSettings(split=split, out=str(cache), format="cache", ct_rate_root=str(raw),
                                          model=args.model, input_info=INPUT_INFO, workers=args.workers)
            manifest = preprocess_split(settings)
            print(summary_line(manifest) + f"; manifest {manifest['path']}", flush=True)
            if manifest["failure"]:
                raise SystemExit(f"error: {manifest['failure']}")
    finally:
        root.removeHandler(console)
    return cache


def train(args: argparse.Namespace, cache: Path, out: Path, name: str, model: str) -> Path:
    """Train through main.py's code path; returns the final checkpoint."""
    from reaf.training.flags import TrainFlags
    from reaf.training.run import train_main

    flags = TrainFlags.with_defaults(
        model=model, data_root=str(cache), input_data_type="cache", input_info=list(INPUT_INFO),
        batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, warmup=args.warmup,
        workers=0 if args.keep_in_memory else args.workers, keep_in_memory=args.keep_in_memory,
        precision="fp32", device="cpu", val_frequency=0, zeroshot_frequency=0, report_to="none",
        logs=str(out / "runs"), name=name, seed=args.seed, resume="latest", save_frequency=0,
        text_sampling=args.text_sampling, report_epochs=args.report_epochs, positives=args.positives,
        sentence_share=args.sentence_share)
    run_dir = train_main(flags)
    return run_dir / "checkpoints" / "latest.pt"


def evaluate(checkpoint: Path, cache: Path, results_dir: Path, workers: int, explain: bool) -> dict:
    """zero_shot.py's code path on the synthetic test split; writes results, plots (and a saliency PNG of the
    volume with the most findings)."""
    from reaf.evaluation.evaluate import MOST_FINDINGS, EvalSettings, evaluate_checkpoint
    from reaf.evaluation.plots import summary_table

    results = evaluate_checkpoint(EvalSettings(
        checkpoint=str(checkpoint), data_root=str(cache), input_data_type="cache", input_info=list(INPUT_INFO),
        results_dir=str(results_dir), batch_size=16, workers=workers, device="cpu",
        explain=[MOST_FINDINGS] if explain else []))
    print(summary_table(results))
    for path in results["explained"]:
        print(f"saliency picture: {path}")
    return results


def headline(results: dict) -> dict:
    """The numbers the demo is judged by, with chance levels for comparison."""
    r2v = results["retrieval"]["dup_all"]["report_to_volume"]
    return {
        "mean_auc_18": results["classification"]["18"]["mean"]["auc"],
        "report_to_volume_R@5": r2v["R@5"],
        "R@5_chance": min(1.0, 5 / r2v["N"]),
        "N": r2v["N"],
    }


def loss_record(checkpoint: Path, batch_size: int) -> dict:
    """The run's logged training loss (means over 10-step windows, metrics.jsonl) against ln(B): the last window of
    epoch 0 and of the run."""
    rows = [json.loads(line) for line in (checkpoint.parent.parent / "metrics.jsonl").read_text().splitlines()]
    losses = [(row["epoch"], row["train/loss"]) for row in rows if "train/loss" in row]
    ln_b = math.log(batch_size)
    epoch0 = [loss for epoch, loss in losses if epoch == 0][-1]
    return {"ln_B": round(ln_b, 4), "loss_end_of_epoch_0": round(epoch0, 4), "epoch_0_over_ln_B": round(epoch0 / ln_b, 3),
            "loss_last": round(losses[-1][1], 4), "last_over_ln_B": round(losses[-1][1] / ln_b, 3)}


def plain_config(model: str, out: Path) -> Path:
    """The same architecture with fusion and saliency switched off, as a JSON main.py can take."""
    from reaf.model.config import load_model_config

    cfg = load_model_config(model, fusion_saliency=False).to_dict()
    path = out / "plain_hierarchy.json"
    atomic.write_text(path, json.dumps(cfg, indent=2))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    cache = make_data(args, out)
    variants = {"reaf": args.model}
    if args.ablation:
        variants["plain_hierarchy"] = str(plain_config(args.model, out))
    summary = {}
    for name, model in variants.items():
        stage(f"3/4 train {name} ({args.epochs} epochs, CPU)")
        checkpoint = train(args, cache, out, name, model)
        stage(f"4/4 zero-shot classification and retrieval: {name}")
        results = evaluate(checkpoint, cache, out / "results" / name, args.workers, explain=name == "reaf")
        summary[name] = {**headline(results), **loss_record(checkpoint, args.batch_size), "checkpoint": str(checkpoint)}
    summary["seconds"] = round(time.time() - start, 1)
    atomic.write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    stage("demo summary")
    for name, row in summary.items():
        if isinstance(row, dict):
            print(
                f"{name:16s} mean AUC (18) {row['mean_auc_18']:.3f}   report->volume R@5 "
                f"{row['report_to_volume_R@5']:.3f} (chance {row['R@5_chance']:.3f}, N={row['N']})   loss/ln(B) end of "
                f"epoch 0 {row['epoch_0_over_ln_B']:.3f}, last {row['last_over_ln_B']:.3f}"
            )
    print(f"total {summary['seconds']:.0f} s; results, plots and checkpoints under {out}")
    return 0


if __name__ == "__main__":
    from reaf.exit_status import run_cli

    raise SystemExit(run_cli("python -m reaf.demo", main))
