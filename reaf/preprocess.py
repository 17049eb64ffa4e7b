"""CLI: NIfTI -> stage1 / stage2 / cache files at the same relative paths, in parallel, resumable, with a manifest."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from reaf.arg_types import non_negative_int, positive_int
from reaf.data.input_spec import add_input_info_argument
from reaf.data.preprocessing import DEFAULT_MODEL, PreprocessError, PreprocessSettings, preprocess_split, summary_line


def parse_args(argv: list[str] | None = None) -> PreprocessSettings:
    p = argparse.ArgumentParser(prog="python -m reaf.preprocess", description=__doc__)
    root = p.add_mutually_exclusive_group(required=True)
    root.add_argument("--ct-rate-root", help="layout A: ROOT/dataset/<split>[_fixed]/... with dataset/metadata/")
    root.add_argument("--data-root", help="layout B: ROOT/<split>/volumes/*.nii.gz or DICOM series folders <id>/")
    p.add_argument("--split", required=True, help="layout A: train|valid|test; layout B: the split folder name")
    p.add_argument("--out", required=True, help="output root; files land at the same relative paths as the NIfTIs")
    p.add_argument("--format", required=True, choices=["stage1", "stage2", "cache"])
    p.add_argument("--model", default=DEFAULT_MODEL, help="config name or JSON: input size")
    add_input_info_argument(p)
    p.add_argument("--stage2-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--workers", type=non_negative_int, default=os.cpu_count() or 1, help="processes; <= 1 runs in this process")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N volumes (sorted by path)")
    p.add_argument("--skip-bad", action="store_true", help="count, log and record bad volumes instead of failing")
    p.add_argument("--log-level", default="INFO", help="DEBUG shows the HU/spacing decision of each file")
    args = p.parse_args(argv)
    return PreprocessSettings(**{**vars(args), "input_info": tuple(args.input_info)})


def main(argv: list[str] | None = None) -> int:
    """Convert one split; PreprocessError '<file>: <cause>' on the first bad volume unless --skip-bad, OutputError
    naming the output when one cannot be written (run_cli prints either as one line and exits 1)."""
    settings = parse_args(argv)
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    manifest = preprocess_split(settings)  # errors end as 'python -m reaf.preprocess: error: ...' (run_cli)
    print(summary_line(manifest) + f"; manifest {manifest['path']}", flush=True)
    if manifest["failure"]:
        raise PreprocessError(manifest["failure"])
    return 0


if __name__ == "__main__":
    from reaf.exit_status import run_cli

    sys.exit(run_cli("python -m reaf.preprocess", main))
