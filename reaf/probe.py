"""Linear probe and few-shot of a checkpoint's frozen image embeddings (train split -> evaluation split), with
zero-shot on the same embeddings beside them: `python -m reaf.probe --resume CKPT --data-root ROOT ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from reaf.data.input_spec import add_input_info_argument
from reaf.evaluation.evaluate import EvalSettings
from reaf.evaluation.probe import CV_FOLDS, DEFAULT_DRAWS, DEFAULT_SHOTS
from reaf.evaluation.probe_run import ProbeSettings, probe_table, run_probe
from reaf.evaluation.prompts import TEMPLATE_MODES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", help="model config name or JSON (default: the checkpoint's own config)")
    p.add_argument("--resume", required=True, help="checkpoint: ours (main.py) or the reference's reaf.pt")
    p.add_argument("--train-data", help="labelled training split (CT-RATE labels CSV or split folder; default: the "
                   "train split under --data-root)")
    p.add_argument("--zeroshot-ct-rate", help="labelled evaluation split (default: the test split under --data-root)")
    p.add_argument("--data-root", help="where the volume files live (a CT-RATE root or a preprocessed cache)")
    p.add_argument("--input-data-type", default="stage2", help="ori | stage1 | stage2 | cache")
    add_input_info_argument(p)
    p.add_argument("--report-root", help="reports as the reference's JSON (file or folder) instead of the CSV")
    p.add_argument("--use-cxr-bert", action=argparse.BooleanOptionalAction, default=True,
                   help="build the text tower from --cxr-bert-path (when given)")
    p.add_argument("--cxr-bert-path", help="local CXR-BERT folder (weights, config, tokenizer)")
    p.add_argument("--zeroshot-template", choices=TEMPLATE_MODES, default="volume",
                   help="the zero-shot comparison's template (both: volume)")
    p.add_argument("--prompts", default="v1", help="the zero-shot comparison's prompt set: v1, ensemble or a JSON file")
    p.add_argument("--results-dir", default="results/probe", help="where results.json, the CSV and plots go")
    p.add_argument("--embeddings-dir", help="where embeddings.pt (evaluation split) and embeddings_train.pt are kept "
                   "and reused (default: --results-dir; zero_shot.py's --results-dir reuses its encoding)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0, help="torch, CV-fold, few-shot draw and bootstrap seed")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC CIs")
    p.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS), help="few-shot k values")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="seeded few-shot draws per k")
    p.add_argument("--folds", type=int, default=CV_FOLDS, help="stratified CV folds choosing the probe's C")
    p.add_argument("--skip-bad", action="store_true", help="leave out (count, log, list) unusable volumes")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNGs")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> ProbeSettings:
    evaluation = EvalSettings(
        checkpoint=args.resume, split=args.zeroshot_ct_rate, data_root=args.data_root,
        input_data_type=args.input_data_type, input_info=args.input_info, report_root=args.report_root,
        model=args.model, cxr_bert_path=args.cxr_bert_path if args.use_cxr_bert else None,
        template=args.zeroshot_template, prompts=args.prompts, results_dir=args.results_dir,
        batch_size=args.batch_size, workers=args.workers, device=args.device, seed=args.seed, n_boot=args.bootstrap,
        plots=args.plots, skip_bad=args.skip_bad)
    return ProbeSettings(evaluation, train_split=args.train_data, embeddings_dir=args.embeddings_dir,
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
