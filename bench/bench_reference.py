"""Our full-size visual tower beside the reference's on the CPU: fwd+bwd and inference time, peak RSS, one run.

The reference (the jinlHe/REAF repository on GitHub, commit 02f217c) runs from its own checkout with its own
interpreter, a scratch venv outside this repository; it is never a dependency of the project:

    git clone https://github.com/jinlHe/REAF /work/ref_reaf && git -C /work/ref_reaf checkout 02f217c
    python3.11 -m venv /work/refvenv
    /work/refvenv/bin/pip install torch==2.14.1 timm==1.0.20 open-clip-torch==3.3.0 matplotlib seaborn
    python -m bench.bench_reference --reference-python /work/refvenv/bin/python --reference-src /work/ref_reaf

(timm >= 1.0.21 cannot build the reference's 3-D ViT; its model/attention_hooks.py imports matplotlib and seaborn.)
The reference's visual tower is built as open_clip builds it from its model/model_configs JSON (TimmModel: the timm
trunk, token pool, linear head, drop path 0.2), random weights; its AttentionFusion helper is pointed at the CPU
(its default device is 'cuda'). Ours is the tower configs/vit_base_singlescan_h2_token2744.json builds.

Each side runs in a child process of its own (2 torch threads, fp32, one 1x1x112x336x336 volume) that builds its
tower, makes one untimed inference call and one untimed train step, then waits for orders on its stdin; the two
children are started one after the other, so no build overlaps a timed call. Then --pairs pairs: in each, both
sides make one timed inference call (eval mode, torch.inference_mode), then both one timed train step (train mode,
drop path on; loss = embedding . a fixed unit vector, as the square sum of a unit embedding has no gradient;
backward; no optimizer), ours first in even pairs and the reference first in odd ones. The side that waits sleeps
on its pipe, so each call has the cores the host gives; the two calls of a pair are seconds apart, so a slow spell of
the host (the same call varies by up to 45% over minutes here) slows both and cancels in the pair's ratio. The run's
ratio is the median of the pairs' ratios (the best call per side is recorded too). Each call also records the
child's CPU time over its wall time (2.0 = both cores busy throughout) and its minor page faults; peak RSS is each
child's ru_maxrss at the end (after inference alone: `peak_rss_inference_mib`). First, once, both sides encode the
same volume with the reference's weights (ours loading them as `reaf.pt` would, reference_compat on): `same_output`
holds the largest difference. `--tiny` runs ours alone on configs/tiny.json (the reference's tower exists at full
size only); so does a run without --reference-python.

Until commit 8226401 each round started fresh processes and timed 2 calls per side, and a run's ratio was the best
call of one side over the best of the other (bench/results/reference_cpu_before.json, reference_cpu_run1.json to
reference_cpu_run5.json); the paired runs are bench/results/reference_cpu_paired_run*.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_CONFIG = "model/model_configs/vit_base_singlescan_h2_token2744.json"
REFERENCE_FILES = ("model/visual_encoder.py", "model/attention_hooks.py", "model/patch_embed.py", "model/pos_embed.py")
MEASURES = ("train_s", "inference_s", "peak_rss_mib")
REPO = Path(__file__).resolve().parent.parent


def build_ours(args: argparse.Namespace, reference_compat: bool = False):
    """Our VisionTower from its config: (module, volume -> unit embedding (B, E), config summary)."""
    from reaf.model.config import load_model_config
    from reaf.model.vision import VisionTower

    cfg = load_model_config(args.model, reference_compat=reference_compat or None)
    tower = VisionTower(cfg.vision, cfg.embed_dim)
    return tower, tower, {"img_size": list(cfg.vision.img_size), "embed_dim": cfg.embed_dim}


def build_reference(args: argparse.Namespace):
    """The reference's visual tower as open_clip builds it: (module, volume -> unit embedding (B, E), summary)."""
    import timm
    import torch.nn.functional as F
    from open_clip.timm_model import TimmModel

    sys.path.insert(0, args.reference_src)
    import model.visual_encoder  # noqa: F401  registers the reference's encoder with timm

    cfg = json.loads((Path(args.reference_src) / REFERENCE_CONFIG).read_text())
    vision = cfg["vision_cfg"]
    tower = TimmModel(vision["timm_model_name"], embed_dim=cfg["embed_dim"], pool=vision["timm_pool"],
                      proj=vision["timm_proj"], drop_path=vision["timm_drop_path"], pretrained=False)
    tower.trunk._attention_fusion.device = "cpu"  # a plain object whose default device is 'cuda'
    size = list(tower.trunk.patch_embed.grid_size)
    summary = {"img_size": [g * p for g, p in zip(size, tower.trunk.patch_embed.proj.kernel_size)],
               "embed_dim": cfg["embed_dim"], "timm": timm.__version__}
    # the reference's patch embedding takes (B, scans, C, D, H, W); open_clip's CLIP normalises the embedding
    return tower, lambda volume: F.normalize(tower(volume[:, None]), dim=-1), summary


def rss_mib() -> float:
    """This process's resident memory now, MiB."""
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS")) / 1024


PROTOCOL_PREFIX = "@bench "  # a child's protocol lines on stdout; anything else it prints is ignored
CALLS = {"inference": "inference_s", "train": "train_s"}


def timed_call(call) -> dict:
    """One timed call: wall seconds, this process's CPU seconds over wall seconds (near the thread count when the call
    had the cores to itself; lower when it waited for them), minor page faults (memory taken fresh from the kernel, 4
    KiB a fault)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start, cpu = time.perf_counter(), time.process_time()
    call()
    wall = time.perf_counter() - start
    return {"s": wall, "cpu_per_wall": (time.process_time() - cpu) / wall,
            "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}


def reply(record: dict) -> None:
    print(PROTOCOL_PREFIX + json.dumps(record), flush=True)


def serve(side: str, args: argparse.Namespace) -> None:
    """Child: build one side, warm each call up once, then time one call per line read from stdin ("inference",
    "train"); "done" answers with peak RSS and the side's summary and ends."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    before = rss_mib()
    torch.manual_seed(0)
    module, encode, summary = build_reference(args) if side == "reference" else build_ours(args)
    volume = torch.randn(1, 1, *summary["img_size"], generator=torch.Generator().manual_seed(1))
    target = torch.nn.functional.normalize(torch.randn(summary["embed_dim"]), dim=0)

    def inference() -> None:
        module.eval()
        with torch.inference_mode():
            encode(volume)

    def train() -> None:
        module.train()
        (encode(volume) @ target).sum().backward()
        for p in module.parameters():
            p.grad = None

    calls = {"inference": inference, "train": train}
    inference()
    peak_inference = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train()
    reply({"ready": True})
    for line in sys.stdin:
        order = line.strip()
        if order == "done":
            break
        reply({**timed_call(calls[order]), "load_1min": os.getloadavg()[0]})
    reply({"side": side, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "peak_rss_inference_mib": peak_inference, "rss_before_build_mib": before, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "params": sum(p.numel() for p in module.parameters()), **summary})


class Child:
    """A serving child (`python -m bench.bench_reference --child SIDE`): one order in, one JSON record out."""

    def __init__(self, python: str, side: str, args: argparse.Namespace):
        self.side = side
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(child_argv(python, side, args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, bufsize=1, cwd=REPO)
        self.read()  # built and warmed up

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL_PREFIX):
                return json.loads(line[len(PROTOCOL_PREFIX):])
        self.stderr.seek(0)
        raise RuntimeError(f"bench_reference: the {self.side} child ended (exit {self.proc.wait()}) without "
                           f"answering; its stderr:\n{self.stderr.read()[-4000:]}")

    def order(self, what: str) -> dict:
        self.proc.stdin.write(what + "\n")
        return self.read()

    def finish(self) -> dict:
        record = self.order("done")
        self.proc.wait()
        self.stderr.close()
        return record


def run_pairs(sides: dict[str, str], args: argparse.Namespace) -> tuple[list[dict], dict[str, dict]]:
    """--pairs pairs of calls, the sides alternating first (ours first in even pairs); returns the pairs (each
    measure -> side -> call record, and which side went first) and each side's closing record."""
    children = {}
    try:
        for side, python in sides.items():
            children[side] = Child(python, side, args)
        pairs = []
        for i in range(args.pairs):
            order = list(children)[:: 1 if i % 2 == 0 else -1]
            pair = {"first": order[0]}
            for what in CALLS:
                pair[what] = {side: children[side].order(what) for side in order}
            pairs.append(pair)
            print(f"pair {i + 1}: " + "  ".join(
                f"{what} " + " / ".join(f"{s} {pair[what][s]['s']:.2f} s" for s in children) for what in CALLS))
        return pairs, {side: child.finish() for side, child in children.items()}
    finally:
        for child in children.values():
            if child.proc.poll() is None:
                child.proc.kill()


def same_output(args: argparse.Namespace, path: str) -> dict:
    """Child: the reference encodes a volume and saves its weights and embedding to `path`; ours loads and compares."""
    import torch

    torch.set_num_threads(args.threads)
    volume = torch.randn(1, 1, 112, 336, 336, generator=torch.Generator().manual_seed(2))
    if args.child == "reference_save":
        torch.manual_seed(0)
        module, encode, _ = build_reference(args)
        module.eval()
        with torch.inference_mode():
            torch.save({"state_dict": module.state_dict(), "embedding": encode(volume)}, path)
        return {}
    from reaf.model.checkpoint import load_state_dict_strict

    saved = torch.load(path, weights_only=True)
    module, encode, _ = build_ours(args, reference_compat=True)
    load_state_dict_strict(module, saved["state_dict"], "the reference's state dict")
    module.eval()
    with torch.inference_mode():
        ours = encode(volume)
    ref = saved["embedding"]
    return {"max_abs_diff": (ours - ref).abs().max().item(), "cosine": torch.cosine_similarity(ours, ref).item(),
            "embedding_dim": ref.shape[-1], "reference_norm": ref.norm().item()}


def child_argv(python: str, child: str, args: argparse.Namespace, extra: list[str] = ()) -> list[str]:
    return [python, "-m", "bench.bench_reference", "--child", child, "--model", args.model, "--threads",
            str(args.threads), "--reference-src", str(args.reference_src), *extra]


def run_child(python: str, child: str, args: argparse.Namespace, extra: list[str] = ()) -> dict:
    """One child process that runs to its end; its last stdout line is its JSON."""
    out = subprocess.run(child_argv(python, child, args, extra), check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_same_output(args: argparse.Namespace) -> dict:
    """The two towers on one volume with the reference's weights: how far apart their embeddings are."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "reference.pt")
        run_child(args.reference_python, "reference_save", args, ["--weights", path])
        return run_child(sys.executable, "ours_compare", args, ["--weights", path])


def reference_record(args: argparse.Namespace) -> dict:
    """Which reference ran: the commit named, a hash of its model files, its interpreter's versions."""
    src = Path(args.reference_src)
    digest = hashlib.sha256(b"".join((src / f).read_bytes() for f in REFERENCE_FILES)).hexdigest()
    versions = subprocess.run(
        [args.reference_python, "-c", "import torch, timm, open_clip; print(torch.__version__, timm.__version__, "
         "open_clip.__version__)"], check=True, capture_output=True, text=True).stdout.split()
    return {"commit": args.reference_commit, "src": str(src), "model_files_sha256": digest,
            "python": args.reference_python, **dict(zip(("torch", "timm", "open_clip"), versions))}


def summarise(pairs: list[dict], closing: dict[str, dict]) -> dict:
    """Per side and measure: every call, the best and the median; peak RSS; with both sides, the ratios ours /
    reference per pair, their median (the run's figure) and the best call's over the best call's."""
    sides = list(closing)
    per_side = {}
    for side in sides:
        record = {}
        for what, measure in CALLS.items():
            times = [pair[what][side]["s"] for pair in pairs]
            record[measure] = min(times)
            record[measure.replace("_s", "_median_s")] = statistics.median(times)
        per_side[side] = {**record, "peak_rss_mib": closing[side]["peak_rss_mib"]}
    if sides != ["ours", "reference"]:
        return {"per_side": per_side, "ratio_median_of_pairs": None, "ratio_of_best_calls": None,
                "ratio_per_pair": None}
    per_pair = [{measure: pair[what]["ours"]["s"] / pair[what]["reference"]["s"] for what, measure in CALLS.items()}
                for pair in pairs]
    median = {measure: statistics.median(p[measure] for p in per_pair) for measure in CALLS.values()}
    best = {m: per_side["ours"][m] / per_side["reference"][m] for m in MEASURES}
    rss = closing["ours"]["peak_rss_mib"] / closing["reference"]["peak_rss_mib"]
    return {"per_side": per_side, "ratio_median_of_pairs": {**median, "peak_rss_mib": rss},
            "ratio_of_best_calls": best, "ratio_per_pair": per_pair}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", help="the venv interpreter that runs the reference (omit: ours alone)")
    parser.add_argument("--reference-src", default="/work/ref_reaf", help="the reference's checkout")
    parser.add_argument("--reference-commit", default="02f217c5218ae04d8b2ed933c3e807ad6efaa6fa")
    parser.add_argument("--model", default="vit_base_singlescan_h2_token2744")
    parser.add_argument("--tiny", action="store_true", help="ours alone on configs/tiny.json (a quick check)")
    parser.add_argument("--pairs", type=int, default=8, help="pairs of timed calls per measure (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="what this run measures (e.g. the change under test)")
    parser.add_argument("--out", default=None, help="default bench/results/reference_cpu.json")
    parser.add_argument("--child", choices=["ours", "reference", "reference_save", "ours_compare"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.reference_python = "tiny", None
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        if args.child in ("ours", "reference"):
            serve(args.child, args)
        else:
            print(json.dumps(same_output(args, args.weights)))
        return None
    from bench.common import RESULTS, machine_info, write_result

    sides = {"ours": sys.executable, **({"reference": args.reference_python} if args.reference_python else {})}
    result = {"command": " ".join(["python -m bench.bench_reference", *(sys.argv[1:] if argv is None else argv)]),
              "settings": {k: v for k, v in vars(args).items() if k not in ("child", "weights")},
              "machine": {**machine_info(), "note": "each side in its own serving process; pairs of calls, alternating which side goes first"},
              "reference": reference_record(args) if args.reference_python else {"status": "not run"}}
    if args.reference_python:
        result["same_output"] = check_same_output(args)
    pairs, closing = run_pairs(sides, args)
    result.update(sides=closing, pairs=pairs, **summarise(pairs, closing))
    out = write_result("reference_cpu", result, args.out, RESULTS)
    print(f"wrote {out}: ours / reference, median of the pairs {result['ratio_median_of_pairs']}")
    return result


if __name__ == "__main__":
    main()
