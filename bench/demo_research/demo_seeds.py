"""The embedded demo on several seeds, each from scratch: `python -m reaf.demo --seed S --out demo_runs/seed_S`
(REAF alone, as a user runs it; `--ablation` also trains the plain hierarchy).

For each seed it records the demo's own summary (mean zero-shot AUC over the 18 classes and report->volume R@5 with
its chance level, on the test split and, from a rerun with `--valid` that reuses every other stage, on valid; the
training loss against ln(B) at the end of epoch 0 and at the end) and the wall time of the demo as run (without
`--valid`), then writes bench/demo_research/results/demo_seeds.json naming the machine. A
seed whose demo folder already holds a demo_summary.json is read, not rerun (`--rerun` forces a run); if it has
no valid numbers yet, only the `--valid` rerun runs. A `--model`
in --demo-args may name a config variant (bench/demo_research/configs/*.json: the fields it changes over a named
base); it is written out whole under --root and the demo reads that file.

    python -m bench.demo_research.demo_seeds --seeds 0 1 2
    python -m bench.demo_research.demo_seeds --seeds 0 --root demo_runs/p12 \
        --demo-args "--model bench/demo_research/configs/demo_patch12.json"
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench.common import REPO, RESEARCH_RESULTS, machine_info, resolve_model_config, write_result
from reaf import atomic


def run_seed(seed: int, root: Path, rerun: bool, demo_args: list[str], ablation: bool, valid: bool) -> dict:
    out = root / f"seed_{seed}"
    summary = out / "demo_summary.json"
    if rerun and out.exists():
        shutil.rmtree(out)
    if not summary.is_file():
        start = time.time()
        command = [sys.executable, "-m", "reaf.demo", "--seed", str(seed), "--out", str(out),
                   *(["--ablation"] if ablation else []), *demo_args]
        subprocess.run(command, cwd=REPO, check=True)
        print(f"seed {seed}: {time.time() - start:.0f} s", flush=True)
    found = json.loads(summary.read_text())["reaf"]
    if valid and "test" in found and "valid" not in found:  # (a demo before the test split scored valid only)
        # then valid scored as well (every other stage reused), its time kept apart from the demo's as run
        command = [sys.executable, "-m", "reaf.demo", "--seed", str(seed), "--out", str(out),
                   *(["--ablation"] if ablation else []), *demo_args, "--valid"]
        seconds = json.loads(summary.read_text())["seconds"]  # the demo as run, timed by itself
        subprocess.run(command, cwd=REPO, check=True)
        result = json.loads(summary.read_text())
        atomic.write_text(summary, json.dumps({**result, "seconds": seconds,
                                               "valid_rerun_seconds": result["seconds"]}, indent=2))
    result = json.loads(summary.read_text())
    for model, row in result.items():  # where REAF's (and the plain hierarchy's) run spent its time
        if isinstance(row, dict) and (out / "runs" / model / "train.log").is_file():
            row["stages"] = train_log_stages(out / "runs" / model / "train.log")
    for model, row in result.items():  # each model's per-class AUCs from its results.json, per split
        if isinstance(row, dict):
            folder = out / "results" / model  # demos before the test split: results/<model>/results.json
            paths = {split: folder / split / "results.json" for split in ("test", "valid")}
            paths = {k: v for k, v in paths.items() if v.is_file()} or {"valid": folder / "results.json"}
            row["auc_per_class"] = {split: {name: round(c["auc"], 3) for name, c in json.loads(
                path.read_text())["classification"]["18"]["per_class"].items()} for split, path in paths.items()}
    return result


def train_log_stages(path: Path) -> dict:
    """From a run's train.log: the frozen text tower's seconds on the training reports (its own log line), and the
    seconds and optimiser steps from then to the last checkpoint (log timestamps)."""
    lines = path.read_text().splitlines()

    def stamp(line: str) -> float:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    text = [line for line in lines if "text features of" in line]
    saves = [line for line in lines if "| checkpoint: " in line]
    start = [line for line in lines if "training from epoch" in line]
    if not saves or not start:
        return {}
    begin = text[-1] if text else start[-1]
    steps = int(re.search(r"step (\d+)\)", saves[-1]).group(1)) - int(re.search(r"step (\d+)", start[-1]).group(1))
    seconds = stamp(saves[-1]) - stamp(begin)
    return {"text_features_s": float(re.search(r"([\d.]+) s$", text[-1]).group(1)) if text else None,
            "training_s": round(seconds, 1), "steps": steps, "s_per_step": round(seconds / max(steps, 1), 3)}


def resolve_model_args(demo_args: list[str], root: Path) -> list[str]:
    """The demo's flags with a `--model` config variant replaced by its full config written under `root`."""
    out = list(demo_args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--model" and out[i + 1].endswith(".json"):
            out[i + 1] = str(resolve_model_config(out[i + 1], root))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default=str(REPO / "demo_runs"), help="one demo folder per seed under it")
    p.add_argument("--rerun", action="store_true", help="delete and rerun a seed's demo folder that already exists")
    p.add_argument("--ablation", action="store_true", help="also train the plain hierarchy (reaf.demo --ablation)")
    p.add_argument("--valid", action=argparse.BooleanOptionalAction, default=True,
                   help="after each timed demo, score valid too (reaf.demo --valid, every other stage reused)")
    p.add_argument("--out", default=None, help="result file (default bench/demo_research/results/demo_seeds.json)")
    p.add_argument("--note", default="", help="how the seeds' demos were run (recorded in settings)")
    p.add_argument("--demo-args", default="", help="more flags for reaf.demo, e.g. \"--epochs 15 --model X.json\"")
    args = p.parse_args(argv)
    machine = machine_info()
    demo_args = resolve_model_args(args.demo_args.split(), Path(args.root))
    seeds = {str(seed): run_seed(seed, Path(args.root), args.rerun, demo_args, args.ablation, args.valid) for seed in args.seeds}
    rows = []
    for seed, summary in seeds.items():
        for model in ("reaf", "plain_hierarchy"):
            if model not in summary:
                continue
            row = {"seed": int(seed), "model": model}
            for split in ("test", "valid"):  # a demo before the test split has its valid numbers at the top level
                old = split == "valid" and "test" not in summary[model]
                found = summary[model].get(split, summary[model] if old else None)
                if found:
                    row |= {f"{split}_mean_auc_18": found["mean_auc_18"], f"{split}_R@5": found["report_to_volume_R@5"],
                            f"{split}_R@5_over_chance": round(found["report_to_volume_R@5"] / found["R@5_chance"], 2)}
            row |= {"epoch_0_loss_over_ln_B": summary[model]["epoch_0_over_ln_B"],
                    "last_loss_over_ln_B": summary[model]["last_over_ln_B"], "demo_seconds": summary["seconds"],
                    **summary[model].get("stages", {})}
            rows.append(row)
    flags = [*(["--ablation"] if args.ablation else []), *demo_args]
    command = " ".join(["python -m reaf.demo --seed S", *flags]) if flags else "python -m reaf.demo --seed S (defaults)"
    result = {"settings": {"command": command, "seeds": args.seeds,
                           "note": args.note},
              "machine": {**machine, "note": "demo wall time includes data generation, preprocessing, training "
                          "and evaluation; other jobs may share the cores (see load averages)"},
              "rows": rows, "summaries": seeds}
    print(json.dumps(rows, indent=1))
    print(write_result("demo_seeds", result, args.out, folder=RESEARCH_RESULTS))


if __name__ == "__main__":
    main()
