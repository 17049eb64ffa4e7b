"""Two parts of a training step that depend on how they are computed, not on what: the patch embedding and the batch.

    python -m bench.bench_step_parts [--repeats 9]  -> bench/results/step_parts.json

- The patch embedding (`PatchEmbed3d`) computed as one matrix product over the flattened patches (config
  `vision.patch_embed` "matmul", the default) or by its Conv3d ("conv"), forward alone (no grad) and forward plus
  the weight gradient, on the demo's batch (32 x 1 x 32 x 96 x 96, 8x16x16 patches, width 72) and on the paper's
  (1 x 1 x 112 x 336 x 336, 8x24x24 patches, width 768), each from the same weights (the outputs are compared).
- Stacking a batch of 32 of the demo's volumes (1 x 32 x 96 x 96 float32, held in memory as `--keep-in-memory`
  holds them): `torch.stack` into a new tensor against `reaf.data.loader.BatchBuffers` (one of two kept tensors).

- Writing one of the demo's synthetic volumes (`synth_volume`, seed 3, train_1_a_1) as .nii.gz: gzip level 1 by
  zlib (the standard library) against ISA-L (`isal`, which the generator uses when installed), with the sizes.

Each timing is the best and the median of `--repeats` calls after two warm-up calls, with 2 torch threads, each
variant timed in turn within one process.
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics

import nibabel as nib
import numpy as np
import torch
from isal import igzip

from bench.common import call_seconds, machine_info, write_result
from reaf.data.loader import BatchBuffers
from reaf.model.vision import PatchEmbed3d

SHAPES = {  # name: (input shape, patch size, width)
    "demo": ((32, 1, 32, 96, 96), (8, 16, 16), 72),
    "paper": ((1, 1, 112, 336, 336), (8, 24, 24), 768),
}


def timed(call, repeats: int) -> dict:
    times = call_seconds(call, repeats)
    return {"best_ms": round(min(times) * 1e3, 1), "median_ms": round(statistics.median(times) * 1e3, 1)}


def patch_embedding(name: str, repeats: int) -> dict:
    shape, patch, width = SHAPES[name]
    torch.manual_seed(0)
    volume = torch.randn(*shape)
    product = PatchEmbed3d(patch, width)
    conv = PatchEmbed3d(patch, width, conv=True)
    conv.load_state_dict(product.state_dict())
    row = {"input": list(shape), "patch_size": list(patch), "width": width}
    with torch.no_grad():
        row["max_abs_difference"] = float((product(volume) - conv(volume)).abs().max())
    for label, embed in (("matmul", product), ("conv", conv)):

        def forward_and_weight_grad(embed=embed):
            embed.zero_grad(set_to_none=True)
            embed(volume).sum().backward()

        with torch.no_grad():
            row[f"{label}_forward"] = timed(lambda embed=embed: embed(volume), repeats)
        row[f"{label}_forward_weight_grad"] = timed(forward_and_weight_grad, repeats)
    return row


def stacking(repeats: int) -> dict:
    held = [torch.randn(1, 32, 96, 96) for _ in range(256)]
    rng = random.Random(0)
    buffers = BatchBuffers()
    return {"volumes": 32, "volume_shape": [1, 32, 96, 96],
            "torch_stack_new": timed(lambda: torch.stack(rng.sample(held, 32)), repeats),
            "batch_buffers": timed(lambda: buffers.stack(rng.sample(held, 32)), repeats)}


def compression(repeats: int) -> dict:
    from reaf.synthetic.dataset import synth_volume

    hu, _, _ = synth_volume(3, "train_1_a_1")
    data = nib.Nifti1Image(hu, np.eye(4)).to_bytes()
    row = {"nifti_bytes": len(data)}
    for label, compress in (("zlib", gzip.compress), ("isal", igzip.compress)):
        row[f"{label}_level_1"] = timed(lambda compress=compress: compress(data, compresslevel=1, mtime=0), repeats)
        row[f"{label}_level_1"]["bytes"] = len(compress(data, compresslevel=1, mtime=0))
        assert gzip.decompress(compress(data, compresslevel=1, mtime=0)) == data
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    result = {"settings": {"repeats": args.repeats, "threads": 2}, "machine": machine_info(),
              "patch_embedding": {name: patch_embedding(name, args.repeats) for name in args.shapes},
              "stacking": stacking(args.repeats), "compression": compression(args.repeats)}
    for name, row in result["patch_embedding"].items():
        print(name, {k: v for k, v in row.items() if k.endswith(("forward", "grad"))})
    print("stacking", result["stacking"])
    print("compression", result["compression"])
    print(write_result("step_parts", result, args.out))


if __name__ == "__main__":
    main()
