"""Evaluate a checkpoint: zero-shot classification (protocol v1) and report<->volume retrieval on a labelled split."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from reaf.data.formats import add_input_info_argument
from reaf.dist import init_distributed, shutdown
from reaf.evaluation.plots import explain_volume, summary_table
from reaf.evaluation.prompts import TEMPLATE_MODES
from reaf.evaluation.protocol import run_evaluation
from reaf.model.checkpoint import REFERENCE_MODEL, model_from_checkpoint

log = logging.getLogger("zero_shot")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--model",
        help="model config name or JSON (default: the checkpoint's own config; the paper "
        f"model {REFERENCE_MODEL} for a reference-format checkpoint)",
    )
    p.add_argument("--resume", required=True, help="checkpoint: ours (main.py) or the reference's reaf.pt")
    p.add_argument(
        "--zeroshot-ct-rate",
        help="labelled split: a CT-RATE labels CSV, dataset/valid[_fixed] or a "
        "split folder (default: the test split found under --data-root)",
    )
    p.add_argument("--data-root", help="where the volume files live (a CT-RATE root or a preprocessed cache)")
    p.add_argument("--input-data-type", default="stage2", help="ori | stage1 | stage2 | cache")
    add_input_info_argument(p)
    p.add_argument("--report-root", help="reports as the reference's JSON (file or folder) instead of the CSV")
    p.add_argument(
        "--use-cxr-bert",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="build the text tower from --cxr-bert-path (when given)",
    )
    p.add_argument("--cxr-bert-path", help="local CXR-BERT folder (weights, config, tokenizer)")
    p.add_argument(
        "--zeroshot-template",
        choices=TEMPLATE_MODES,
        default="volume",
        help="prompt sentences: 'The volume shows: X.', 'The <organ> shows: X.', or both",
    )
    p.add_argument("--results-dir", default="results/zero_shot", help="where results.json, CSV, plots go")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0, help="torch seed and bootstrap seed")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC CIs")
    p.add_argument(
        "--explain",
        metavar="NAME",
        action="append",
        default=[],
        help="also draw the saliency picture of volume NAME (repeatable)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out (count, log, list in results.json) samples or volume files that cannot be used",
    )
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the ROC/AUC/recall PNGs")
    return p.parse_args(argv)


def build_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The model described by --model or by the checkpoint, with the checkpoint's weights loaded (strictly)."""
    bert = args.cxr_bert_path if args.use_cxr_bert else None
    return model_from_checkpoint(args.resume, model=args.model, cxr_bert_path=bert).to(device)


def read_labelled_split(args: argparse.Namespace):
    """The split to evaluate: --zeroshot-ct-rate, else the test split found under --data-root."""
    from reaf.data.readers import find_splits, read_split

    source = args.zeroshot_ct_rate
    if source is None:
        if args.data_root is None:
            raise SystemExit("give --zeroshot-ct-rate (a labelled split) or --data-root to find one under")
        source = find_splits(args.data_root)["test"]
        if source is None:
            raise SystemExit(f"no test/valid split found under --data-root {args.data_root}")
    return read_split(
        source,
        data_root=args.data_root,
        fmt=args.input_data_type,
        report_root=args.report_root,
        require_labels=True,
        skip_bad=args.skip_bad,
    )


def explain(model: torch.nn.Module, split, spec, names: list[str], results_dir: Path, device: torch.device) -> None:
    """Saliency PNGs results_dir/plots/saliency_<NAME>.png for the named volumes."""
    from reaf.data.loader import VolumeDataset

    index = {s.name: i for i, s in enumerate(split.samples)}
    dataset = VolumeDataset(split, spec)
    for name in names:
        if name not in index:
            raise SystemExit(f"--explain {name}: no such volume in {split.source}")
        path = results_dir / "plots" / f"saliency_{name}.png"
        explain_volume(model, dataset[index[name]]["image"], path, title=f"{name}: regions kept", device=device)
        print(f"saliency picture: {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = init_distributed(args.device)  # under torchrun each rank encodes its share of the split
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    from reaf.data.formats import InputSpec

    try:
        model = build_model(args, env.device)
        spec = InputSpec.from_args(args.input_info, model.cfg.vision.img_size)
        split = read_labelled_split(args)
        results = run_evaluation(
            model,
            split,
            spec,
            results_dir=args.results_dir,
            batch_size=args.batch_size,
            workers=args.workers,
            device=env.device,
            template=args.zeroshot_template,
            checkpoint=args.resume,
            seed=args.seed,
            n_boot=args.bootstrap,
            plots=args.plots,
            skip_bad=args.skip_bad,
        )
        if env.is_main:
            explain(model, split, spec, args.explain, Path(args.results_dir), env.device)
            print(summary_table(results))
            print(f"\nresults: {Path(args.results_dir) / 'results.json'}")
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    from reaf.cli import run_cli

    sys.exit(run_cli("zero_shot.py", main))
