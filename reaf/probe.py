"""Linear probe and few-shot of a checkpoint's frozen image embeddings (train split -> evaluation split), with
zero-shot on the same embeddings beside them: `python -m reaf.probe --resume CKPT --data-root ROOT ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from reaf.arg_types import positive_int
from reaf.evaluation.eval_flags import add_eval_flags, eval_settings
from reaf.evaluation.probe import CV_FOLDS, DEFAULT_DRAWS, DEFAULT_SHOTS
from reaf.evaluation.probe_run import ProbeSettings, probe_table, run_probe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reaf.probe", description=__doc__)
    add_eval_flags(p, results_dir="results/probe")  # the evaluation split, zero-shot's prompts, ... as zero_shot.py
    p.add_argument("--train-data", help="labelled training split (CT-RATE labels CSV or split folder; default: the "
                   "train split under --data-root)")
    p.add_argument("--embeddings-dir", help="where embeddings.pt (evaluation split) and embeddings_train.pt are kept "
                   "and reused (default: --results-dir; zero_shot.py's --results-dir reuses its encoding)")
    p.add_argument("--shots", type=positive_int, nargs="+", default=list(DEFAULT_SHOTS), help="few-shot k values")
    p.add_argument("--draws", type=positive_int, default=DEFAULT_DRAWS, help="seeded few-shot draws per k")
    p.add_argument("--folds", type=positive_int, default=CV_FOLDS, help="stratified CV folds choosing the probe's C")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> ProbeSettings:
    return ProbeSettings(eval_settings(args), train_split=args.train_data, embeddings_dir=args.embeddings_dir,
                         shots=tuple(args.shots), draws=args.draws, folds=args.folds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run_probe(settings_from_args(args))
    print(probe_table(results))
    print(f"\nresults: {Path(args.results_dir) / 'results.json'}")
    return 0


if __name__ == "__main__":
    from reaf.exit_status import run_cli

    sys.exit(run_cli("python -m reaf.probe", main))
