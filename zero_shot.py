"""Evaluate a checkpoint: zero-shot classification (protocol v1) and report<->volume retrieval on a labelled split."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from reaf.dist import init_distributed, shutdown
from reaf.evaluation.eval_flags import add_eval_flags, eval_settings
from reaf.evaluation.evaluate import evaluate_checkpoint
from reaf.evaluation.plots import summary_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="zero_shot.py", description=__doc__)
    add_eval_flags(p, results_dir="results/zero_shot")
    p.add_argument("--explain", metavar="NAME", action="append", default=[], help="draw volume NAME's saliency")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = init_distributed(args.device)  # under torchrun each rank encodes its share of the split
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        results = evaluate_checkpoint(eval_settings(args, env.device, args.explain))
        if results is not None:
            for path in results["explained"]:
                print(f"saliency picture: {path}")
            print(summary_table(results))
            print(f"\nresults: {Path(args.results_dir) / 'results.json'}")
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    from reaf.exit_status import run_cli

    sys.exit(run_cli("zero_shot.py", main))
