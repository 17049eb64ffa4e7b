"""CLI: a checkpoint (ours or the reference's reaf.pt) -> a weights folder without pickles (config.json,
model.safetensors, text/, README.md model card), loadable offline with `reaf.from_pretrained(DIR)`."""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reaf.export", description=__doc__)
    p.add_argument("checkpoint", help="our checkpoint (main.py), the reference's reaf.pt, or a weights folder")
    p.add_argument("--out", required=True, help="the weights folder to write (must not exist, or be empty)")
    p.add_argument("--model", help="model config name or JSON (default: the checkpoint's own config; the paper model "
                                   "for reaf.pt)")
    p.add_argument("--results", help="a zero_shot.py results.json: the model card's evaluation table")
    p.add_argument("--cxr-bert-path", help="the local BERT folder the text tower was built from (its tokenizer "
                                           "goes into the weights folder); needed for reaf.pt")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from reaf.model.pretrained import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.out, results=args.results, cxr_bert_path=args.cxr_bert_path,
                               model=args.model)
    print(f"weights folder: {folder} (load with reaf.from_pretrained('{folder}'); model card {folder}/README.md)")
    return 0


if __name__ == "__main__":
    from reaf.exit_status import run_cli

    sys.exit(run_cli("python -m reaf.export", main))
