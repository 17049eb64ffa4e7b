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

Every measurement is a child process of its own with 2 torch threads, fp32, one 1x1x112x336x336 volume; the sides
alternate for --rounds rounds, ours first in odd rounds and the reference first in even ones (ABBA). In each child:
inference (eval mode, torch.inference_mode) then the train step (train mode, drop path on; loss = embedding . a
fixed unit vector, as the square sum of a unit embedding has no gradient; backward; no optimizer), each a warm-up
then --steps timed calls. Peak RSS is the child's ru_maxrss. Each call also records the child's CPU time over its
wall time (2.0 = both cores busy throughout, lower = it waited for cores that other jobs shared). A side's figure
is its best timed call over all rounds. First, once, both sides encode the same volume with the reference's weights
(ours loading them as `reaf.pt` would, reference_compat on): `same_output` holds the largest difference. `--tiny`
runs ours alone on configs/tiny.json (the reference's tower exists at full size only); so does a run without
--reference-python.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_CONFIG = "model/model_configs/vit_base_singlescan_h2_token2744.json"
REFERENCE_FILES = ("model/visual_encoder.py", "model/attention_hooks.py", "model/patch_embed.py", "model/pos_embed.py")
MEASURES = ("train_s", "inference_s", "peak_rss_mib")


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


def timed(call, steps: int) -> tuple[list[float], list[float], list[int]]:
    """One warm-up call, then `steps` timed calls: wall seconds each, this process's CPU seconds over wall seconds
    each (near the thread count when the call had the cores to itself; lower when it waited for them), and the
    minor page faults each (memory the call took fresh from the kernel, 4 KiB a fault)."""
    import resource

    call()
    times, cpu_per_wall, faults = [], [], []
    for _ in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        times.append(time.perf_counter() - start)
        cpu_per_wall.append((time.process_time() - cpu) / times[-1])
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return times, cpu_per_wall, faults


def measure(side: str, args: argparse.Namespace) -> dict:
    """Child: build one side, time inference then the train step, report times and peak RSS."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    before = rss_mib()
    torch.manual_seed(0)
    module, encode, summary = build_reference(args) if side == "reference" else build_ours(args)
    volume = torch.randn(1, 1, *summary["img_size"], generator=torch.Generator().manual_seed(1))
    target = torch.nn.functional.normalize(torch.randn(summary["embed_dim"]), dim=0)

    def infer() -> None:
        with torch.inference_mode():
            encode(volume)

    def train() -> None:
        (encode(volume) @ target).sum().backward()
        for p in module.parameters():
            p.grad = None

    load = os.getloadavg()[0]
    module.eval()
    inference, inference_cpu, inference_faults = timed(infer, args.steps)
    peak_inference = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    module.train()
    train_times, train_cpu, train_faults = timed(train, args.steps)
    return {"side": side, "train_s_all": train_times, "inference_s_all": inference, "train_s": min(train_times),
            "inference_s": min(inference), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_inference_mib": peak_inference, "rss_before_build_mib": before,
            "train_cpu_per_wall": train_cpu, "inference_cpu_per_wall": inference_cpu, "train_page_faults": train_faults,
            "inference_page_faults": inference_faults, "load_1min_at_start": load,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in module.parameters()), **summary}


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


def run_child(python: str, child: str, args: argparse.Namespace, extra: list[str] = ()) -> dict:
    """One child process (`python -m bench.bench_reference --child ...`); its last stdout line is its JSON."""
    argv = [python, "-m", "bench.bench_reference", "--child", child, "--model", args.model, "--steps",
            str(args.steps), "--threads", str(args.threads), "--reference-src", str(args.reference_src), *extra]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
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


def summarise(rounds: list[dict[str, dict]]) -> dict:
    """Best of each side per measure over the rounds, ratios ours / reference (best and per round)."""
    sides = [s for s in ("ours", "reference") if all(s in r for r in rounds)]
    best = {s: {m: min(r[s][m] for r in rounds) for m in MEASURES} for s in sides}
    if len(sides) < 2:
        return {"best": best, "ratio_ours_over_reference": None, "ratio_per_round": None}
    return {"best": best,
            "ratio_ours_over_reference": {m: best["ours"][m] / best["reference"][m] for m in MEASURES},
            "ratio_per_round": [{m: r["ours"][m] / r["reference"][m] for m in MEASURES} for r in rounds]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-python", help="the venv interpreter that runs the reference (omit: ours alone)")
    parser.add_argument("--reference-src", default="/work/ref_reaf", help="the reference's checkout")
    parser.add_argument("--reference-commit", default="02f217c5218ae04d8b2ed933c3e807ad6efaa6fa")
    parser.add_argument("--model", default="vit_base_singlescan_h2_token2744")
    parser.add_argument("--tiny", action="store_true", help="ours alone on configs/tiny.json (a quick check)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed calls per measure after one warm-up")
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
        child = measure(args.child, args) if args.child in ("ours", "reference") else same_output(args, args.weights)
        print(json.dumps(child))
        return None
    from bench.common import RESULTS, machine_info, write_result

    sides = {"ours": sys.executable, **({"reference": args.reference_python} if args.reference_python else {})}
    result = {"command": " ".join(["python -m bench.bench_reference", *(sys.argv[1:] if argv is None else argv)]),
              "settings": {k: v for k, v in vars(args).items() if k not in ("child", "weights")},
              "machine": {**machine_info(), "note": "each side in its own process, alternating; best timed call"},
              "reference": reference_record(args) if args.reference_python else {"status": "not run"}}
    if args.reference_python:
        result["same_output"] = check_same_output(args)
    rounds = []
    for i in range(args.rounds):
        order = list(sides.items())[:: 1 if i % 2 == 0 else -1]  # ABBA: drift and going first cancel out
        rounds.append({side: run_child(python, side, args) for side, python in order})
        print(f"round {i + 1}: " + "  ".join(f"{s} train {r['train_s']:.2f} s, inference {r['inference_s']:.2f} s, "
                                             f"peak {r['peak_rss_mib']:.0f} MiB" for s, r in rounds[-1].items()))
    result.update(rounds=rounds, **summarise(rounds))
    out = write_result("reference_cpu", result, args.out, RESULTS)
    print(f"wrote {out}: ratios {result['ratio_ours_over_reference']}")
    return result


if __name__ == "__main__":
    main()
