"""The flags zero_shot.py and `python -m reaf.probe` share, declared once, and the EvalSettings they parse to."""

from __future__ import annotations

import argparse

import torch

from reaf.arg_types import non_negative_int, positive_int
from reaf.data.input_spec import add_input_info_argument
from reaf.evaluation.evaluate import EvalSettings
from reaf.evaluation.prompts import TEMPLATE_MODES
from reaf.model.checkpoint import REFERENCE_MODEL


def add_eval_flags(p: argparse.ArgumentParser, *, results_dir: str) -> None:
    """Checkpoint, labelled split, input, text tower, prompts, outputs and run flags of an evaluation CLI."""
    p.add_argument("--model", help="model config name or JSON (default: the checkpoint's own config; the paper "
                   f"model {REFERENCE_MODEL} for a reference-format checkpoint)")
    p.add_argument("--resume", required=True, help="checkpoint: ours (main.py), the reference's reaf.pt or a weights "
                   "folder (reaf.export)")
    p.add_argument("--zeroshot-ct-rate", help="labelled split: a CT-RATE labels CSV, dataset/valid[_fixed] or a "
                   "split folder (default: the test split found under --data-root)")
    p.add_argument("--data-root", help="where the volume files live (a CT-RATE root or a preprocessed cache)")
    p.add_argument("--input-data-type", default="stage2", help="ori | stage1 | stage2 | cache")
    add_input_info_argument(p, recorded_default=True)
    p.add_argument("--report-root", help="reports as the reference's JSON (file or folder) instead of the CSV")
    p.add_argument("--use-cxr-bert", action=argparse.BooleanOptionalAction, default=True,
                   help="build the text tower from --cxr-bert-path (when given)")
    p.add_argument("--cxr-bert-path", help="local CXR-BERT folder (weights, config, tokenizer)")
    p.add_argument("--zeroshot-template", choices=TEMPLATE_MODES, default="volume",
                   help="prompt sentences: 'The volume shows: X.', 'The <organ> shows: X.', or both")
    p.add_argument("--prompts", default="v1", help="prompt set: v1 (the pairs), ensemble, or a JSON file")
    p.add_argument("--results-dir", default=results_dir, help="where results.json, the CSV and plots go")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0, help="torch seed and bootstrap seed")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for the AUC CIs (0: none)")
    p.add_argument("--skip-bad", action="store_true", help="leave out (count, log, list in results.json) bad samples")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNGs")


def eval_settings(args: argparse.Namespace, device: str | torch.device | None = None,
                  explain: list[str] | None = None) -> EvalSettings:
    """The EvalSettings of flags that add_eval_flags declared."""
    return EvalSettings(
        checkpoint=args.resume, split=args.zeroshot_ct_rate, data_root=args.data_root,
        input_data_type=args.input_data_type, input_info=args.input_info, report_root=args.report_root,
        model=args.model, cxr_bert_path=args.cxr_bert_path if args.use_cxr_bert else None,
        template=args.zeroshot_template, prompts=args.prompts, results_dir=args.results_dir,
        batch_size=args.batch_size, workers=args.workers, device=str(device or args.device), seed=args.seed,
        n_boot=args.bootstrap, plots=args.plots, skip_bad=args.skip_bad, explain=list(explain or []))
