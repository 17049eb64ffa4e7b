"""CLI: your own chest CT scans in (NIfTI files, DICOM series folders, folders of them, or a CSV with a `path`
column), the 18 CT-RATE findings' zero-shot probabilities out (protocol v1, as zero_shot.py computes them), with
each scan's embedding (searchable with `python -m reaf.search`) and optionally the enhancer's kept regions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from reaf.data.input_spec import add_input_info_argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reaf.predict", description=__doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="NIfTI file, DICOM series folder (or one file of the series), folder, or CSV")
    p.add_argument("--model", required=True, help="a weights folder (reaf.export), our checkpoint, or reaf.pt")
    p.add_argument("--out", default="predictions", help="output folder (predictions.csv, embeddings.pt, ...)")
    p.add_argument("--cxr-bert-path", help="local CXR-BERT folder (for reaf.pt or a checkpoint trained with one)")
    p.add_argument("--config", help="model config name or JSON to build instead of the checkpoint's own "
                                    "(as zero_shot.py --model)")
    p.add_argument("--series", metavar="UID", help="the SeriesInstanceUID to read from DICOM folders holding several")
    p.add_argument("--metadata", action="append", metavar="CSV",
                   help="a CT-RATE metadata CSV (repeatable): a NIfTI named there is read with its row's "
                        "RescaleSlope/RescaleIntercept and spacing, as layout A is (CT-RATE v1 files need it)")
    p.add_argument("--template", choices=["volume", "organ"], default="volume", help="prompt template (protocol v1)")
    add_input_info_argument(p, recorded_default=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--saliency", action="store_true",
                   help="write saliency/<scan>.nii.gz (kept regions in the scan's own grid and affine) and a PNG")
    p.add_argument("--tokens", action="store_true", help="write tokens/<scan>.safetensors: the (d, h, w, C) tokens")
    p.add_argument("--skip-bad", action="store_true",
                   help="list unreadable scans in predictions.csv with their cause instead of stopping")
    p.add_argument("--top", type=int, default=3, help="findings shown per scan in the printed table")
    p.add_argument("--thresholds", metavar="RESULTS_JSON",
                   help="a zero_shot.py results.json of this model on a labelled validation split: each class's "
                        "ROC-corner threshold there makes the `findings` column (same weights, prompts and input)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from reaf.evaluation.prediction_files import PredictionWriter, summary_lines
    from reaf.evaluation.predictor import Predictor
    from reaf.evaluation.scans import find_scans

    sources = find_scans(args.inputs, args.series, args.metadata)  # every input is found before the model loads
    predictor = Predictor(args.model, cxr_bert_path=args.cxr_bert_path, device=args.device,
                          input_info=args.input_info, template=args.template, batch_size=args.batch_size,
                          model_config=args.config, thresholds=args.thresholds)
    writer = PredictionWriter(args.out, predictor, [str(i) for i in args.inputs], metadata=args.metadata)
    stream = predictor.predict_many(sources, saliency=args.saliency, tokens=args.tokens, skip_bad=args.skip_bad)
    rows = [writer.add(pred) for pred in tqdm(stream, total=len(sources), desc="predict", unit="scan")]
    summary = writer.finish()
    print("\n".join(summary_lines(rows, summary, Path(args.out), top=args.top)))
    return 0


if __name__ == "__main__":
    from reaf.exit_status import run_cli

    sys.exit(run_cli("python -m reaf.predict", main))
