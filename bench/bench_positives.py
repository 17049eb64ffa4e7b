"""What `--positives shared` costs a training step: the (N, N) text-is-true-of-volume mask of a global batch.

Every rank computes the mask of the whole global batch before the loss (reaf.training.step._positives). This times
reaf.model.loss.shared_positives against the subset definition it implements (each text's sentence set
within each report's, as nested frozenset comparisons: the implementation before it), on N reports of a demo folder
(pandas CSV) with the texts `--text-sampling both` draws in epoch 1, and checks that both give the same mask.

    python -m bench.bench_positives --demo-dir demo_runs/v4/seed_0

Writes bench/results/positives.json (or --out).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.common import demo_train_reports, machine_info, write_result
from reaf.data.text_sampling import sample_text, split_sentences
from reaf.model.loss import shared_positives


def by_definition(texts: list[str], reports: list[str]) -> np.ndarray:
    report_sets = [frozenset(split_sentences(r)) | {r.strip()} for r in reports]
    text_sets = [frozenset(split_sentences(t)) or frozenset({t.strip()}) for t in texts]
    return np.array([[t <= r for r in report_sets] for t in text_sets], dtype=bool)


def median_seconds(fn, texts: list[str], reports: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(texts, reports)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-dir", required=True, help="a demo folder (its ct_rate/ training reports CSV is read)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 1024, 2048], help="global batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    machine = machine_info()
    reports = demo_train_reports(args.demo_dir, max(args.sizes))
    results = {}
    for n in args.sizes:
        batch = reports[:n]
        texts = [sample_text(r, "both", seed=0, epoch=1, index=i) for i, r in enumerate(batch)]
        same = bool(np.array_equal(shared_positives(texts, batch), by_definition(texts, batch)))
        ours = median_seconds(shared_positives, texts, batch, args.repeats)
        definition = median_seconds(by_definition, texts, batch, args.repeats)
        results[str(n)] = {"shared_positives_ms": round(ours * 1000, 1), "subset_definition_ms": round(
            definition * 1000, 1), "same_mask": same}  # fmt: skip
        print(n, results[str(n)], flush=True)
    print(write_result("positives", {
        "settings": {"demo_dir": args.demo_dir, "sizes": args.sizes, "repeats": args.repeats,
                     "texts": "--text-sampling both, epoch 1, seed 0", "timing": "median, one process"},
        "machine": machine, "results": results}, args.out))  # fmt: skip


if __name__ == "__main__":
    main()
