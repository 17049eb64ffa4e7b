"""The embedded demo: synthetic CT-RATE -> fast cache -> train a small REAF on the CPU -> zero-shot + retrieval.

`python -m reaf.demo` (or `bash train_ghs.sh` with no CT_RATE_ROOT) runs every stage with a progress bar and leaves
results, plots and a saliency picture under --out. Each stage is skipped when its output is already there, so a
rerun resumes. The model is scored on the synthetic test split, where the demo reports, and with `--valid` also on
valid, where every choice about the demo was made. `--ablation` also trains the plain scan/slice hierarchy (no
fusion, no saliency) on the same budget, after REAF (REAF's run does not depend on it); `--probe` adds a linear probe
and few-shot of REAF's image embeddings (train split -> test split) beside its zero-shot numbers.
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
    p.add_argument("--num-test", type=positive_int,
                   help="held-out test volumes, where the demo reports (default: --num-valid)")
    p.add_argument("--epochs", type=positive_int, default=20,
                   help="20 x 75 steps of batch 32 on 2400 volumes (30 until the demo had to fit 10 minutes: docs/demo.md)")
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
    p.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=False,
                   help="also train the plain hierarchy (no fusion, no saliency) on the same budget and compare")
    p.add_argument("--valid", action=argparse.BooleanOptionalAction, default=False,
                   help="also score the valid split, where every choice about the demo was made (test is where it "
                   "reports)")
    p.add_argument("--probe", action=argparse.BooleanOptionalAction, default=False,
                   help="also fit a linear probe and few-shot on REAF's image embeddings (python -m reaf.probe)")
    args = p.parse_args(argv)
    return argparse.Namespace(**{**vars(args), "num_test": args.num_valid if args.num_test is None else args.num_test})


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def make_data(args: argparse.Namespace, out: Path) -> Path:
    """Synthetic CT-RATE (layout A, NIfTI) and its fast cache for the demo model; returns the cache root."""
    from reaf.data.preprocessing import PreprocessSettings, preprocess_split, summary_line
    from reaf.synthetic.dataset import GENERATOR_VERSION, generate

    raw, cache = out / "ct_rate", out / "cache"
    stage("1/4 synthetic CT-RATE")
    wanted = {"seed": args.seed, "num_train": args.num_train, "num_valid": args.num_valid, "num_test": args.num_test,
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
        generate(raw, seed=args.seed, num_train=args.num_train, num_valid=args.num_valid, workers=args.workers,
                 num_test=args.num_test)
        atomic.write_text(marker, json.dumps(wanted))
    stage("2/4 preprocess into the fast cache")
    # the preprocessing CLI's console log, for this stage only: training sets up its own (one line per message)
    console, root = logging.StreamHandler(), logging.getLogger()
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        splits = ["train", *(["valid"] if args.valid else []), *(["test"] if args.num_test else [])]
        for split in splits:  # resumable: finished files verified
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


def eval_settings(checkpoint: Path, cache: Path, split: str, results_dir: Path, workers: int):
    """zero_shot.py's settings for one split of the demo's cache ("test" or "val")."""
    from reaf.data.readers import find_splits
    from reaf.evaluation.evaluate import EvalSettings

    return EvalSettings(checkpoint=str(checkpoint), split=find_splits(cache)[split], data_root=str(cache),
                        input_data_type="cache", input_info=list(INPUT_INFO), results_dir=str(results_dir),
                        batch_size=16, workers=workers, device="cpu")


def evaluate(checkpoint: Path, cache: Path, split: str, results_dir: Path, workers: int, explain: bool) -> dict:
    """zero_shot.py's code path on the synthetic test or valid split; writes results, plots (and a saliency PNG of
    the volume with the most findings)."""
    from dataclasses import replace

    from reaf.evaluation.evaluate import MOST_FINDINGS, evaluate_checkpoint
    from reaf.evaluation.plots import summary_table

    settings = eval_settings(checkpoint, cache, split, results_dir, workers)
    results = evaluate_checkpoint(replace(settings, explain=[MOST_FINDINGS] if explain else []))
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


def probe(checkpoint: Path, cache: Path, out: Path, workers: int) -> dict:
    """reaf.probe's code path on REAF's checkpoint: train split -> test split, the test embeddings of the zero-shot
    evaluation reused and the train split's written beside them; returns the headline numbers."""
    from reaf.data.readers import find_splits
    from reaf.evaluation.probe_run import ProbeSettings, probe_table, run_probe

    settings = eval_settings(checkpoint, cache, "test", out / "results" / "reaf" / "probe", workers)
    results = run_probe(ProbeSettings(settings, train_split=find_splits(cache)["train"],
                                      embeddings_dir=str(out / "results" / "reaf" / "test")))
    print(probe_table(results))
    return probe_headline(results)


def probe_headline(results: dict) -> dict:
    """The probe's numbers next to zero-shot's on the same embeddings: macro AUC (18) of each, few-shot per k."""
    return {
        "mean_auc_18": results["classification"]["18"]["mean"]["auc"],
        "zero_shot_mean_auc_18": results["zero_shot"]["classification"]["18"]["mean"]["auc"],
        "few_shot_mean_auc_18": {k: entry["18"]["mean_auc"] for k, entry in results["few_shot"]["by_k"].items()},
        "few_shot_sd_auc_18": {k: entry["18"]["sd_auc"] for k, entry in results["few_shot"]["by_k"].items()},
        "not_fitted": results["probe"]["not_fitted"],
        "encode_s": round(results["timing"]["encode_s"], 1),
        "fit_s": round(results["timing"]["fit_s"], 1),
    }


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
        row = {}
        # the demo reports test; its choices were made on valid (scored with --valid)
        for split, key in (("test", "test"), ("val", "valid"))[: 2 if args.valid else 1]:
            stage(f"4/4 zero-shot classification and retrieval: {name}, {key} split")
            results = evaluate(checkpoint, cache, split, out / "results" / name / key, args.workers,
                               explain=name == "reaf" and key == "test")
            row[key] = headline(results)
        summary[name] = {**row, **loss_record(checkpoint, args.batch_size), "checkpoint": str(checkpoint)}
    if args.probe:
        stage("linear probe and few-shot: reaf, train split -> test split")
        summary["reaf"]["probe"] = probe(Path(summary["reaf"]["checkpoint"]), cache, out, args.workers)
    summary["seconds"] = round(time.time() - start, 1)
    atomic.write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    stage("demo summary")
    for name, row in summary.items():
        if not isinstance(row, dict):
            continue
        for key in [key for key in ("test", "valid") if key in row]:
            split = row[key]
            print(f"{name:16s} {key:5s} mean AUC (18) {split['mean_auc_18']:.3f}   report->volume R@5 "
                  f"{split['report_to_volume_R@5']:.3f} (chance {split['R@5_chance']:.3f}, N={split['N']})")
        print(f"{name:16s} loss/ln(B) end of epoch 0 {row['epoch_0_over_ln_B']:.3f}, last {row['last_over_ln_B']:.3f}")
        if "probe" in row:
            few = "  ".join(f"k={k} {auc:.3f}" for k, auc in row["probe"]["few_shot_mean_auc_18"].items() if auc)
            auc = row["probe"]["mean_auc_18"]
            print(f"{name:16s} test  linear probe mean AUC (18) {'-' if auc is None else f'{auc:.3f}'}   few-shot {few}")
    print(f"total {summary['seconds']:.0f} s; results, plots and checkpoints under {out}")
    print("\n".join(next_steps(out, Path(summary["reaf"]["checkpoint"]))))
    return 0


def next_steps(out: Path, checkpoint: Path) -> list[str]:
    """The commands that take the demo's REAF to a scan of one's own (README: Your own scans), shown on one of the
    demo's test scans: a CT-RATE v2 file, HU with its affine (a v1 file would need --metadata, as CT-RATE's do)."""
    fixed = sorted((out / "ct_rate" / "dataset" / "test_fixed").rglob("*.nii.gz"))
    scan = fixed[0] if fixed else Path("SCAN.nii.gz")
    return ["your own scans with this model (README: Your own scans):",
            f"  python -m reaf.export {checkpoint} --out {out / 'weights'}",
            f"  python -m reaf.predict {scan} --model {out / 'weights'} --out {out / 'predictions'} --saliency"]


if __name__ == "__main__":
    from reaf.exit_status import run_cli

    raise SystemExit(run_cli("python -m reaf.demo", main))
