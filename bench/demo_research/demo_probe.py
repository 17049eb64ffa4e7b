"""The demo's linear probe and few-shot beside its zero-shot, over a finished demo folder (`python -m reaf.demo`).

REAF's final checkpoint encodes the demo cache's train split (images only; kept beside the test split's embeddings in
<demo>/results/reaf/test/embeddings_train.pt, which the demo's own zero-shot evaluation wrote and this reuses) and
reaf.probe's code path fits the per-class probe (C by CV on train) and the few-shot draws, scored on the test split
with zero-shot on the same embeddings. This is what `python -m reaf.demo --probe` adds at the end of a demo; it is
opt-in there because encoding the 2400 training volumes alone takes ~90 s on 2 busy cores (measured on a 96-volume
demo cache: 3.6 s), and the fits ~25 s more.

    python -m bench.demo_research.demo_probe --demo-dir demo_runs/demo

Writes bench/demo_research/results/demo_probe.json (or --out) and <demo>/results/reaf/probe/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.common import RESEARCH_RESULTS, machine_info, write_result


def main(argv: list[str] | None = None) -> None:
    from reaf.demo import probe

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-dir", default="demo_runs/demo", help="a finished demo folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, help=f"result JSON (default {RESEARCH_RESULTS / 'demo_probe.json'})")
    args = p.parse_args(argv)
    demo = Path(args.demo_dir)
    checkpoint = demo / "runs" / "reaf" / "checkpoints" / "latest.pt"
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: not found; run `python -m reaf.demo --out {demo}` first")
    machine, start = machine_info(), time.perf_counter()
    headline = probe(checkpoint, demo / "cache", demo, args.workers)
    result = {"command": "python -m bench.demo_research.demo_probe " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {"demo_dir": str(demo), "checkpoint": str(checkpoint), "train": "cache train split",
                           "eval": "cache test split"},
              "probe": headline, "results": str(demo / "results" / "reaf" / "probe" / "results.json"),
              "seconds": round(time.perf_counter() - start, 1), "machine": machine}  # fmt: skip
    print(write_result("demo_probe", result, args.out, folder=RESEARCH_RESULTS))


if __name__ == "__main__":
    main()
