"""reaf.cpu_memory: glibc's thresholds set once, in the process that asks, and left alone when told."""

import subprocess
import sys

import pytest

CHILD = """
import ctypes, os, sys, time
import torch
from reaf.cpu_memory import keep_freed_memory
torch.set_num_threads(1)
print(keep_freed_memory(), keep_freed_memory())  # first, as the demo and training do
vols = [torch.randn(1, 32, 96, 96) for _ in range(32)]
def faults():
    return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])  # minflt
before = faults()
for _ in range(10):
    batch = torch.stack(vols)  # 37.7 MB, freed each time
    del batch
print(faults() - before)
"""


def run(env_value: str | None) -> tuple[str, int]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "REAF_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["REAF_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    flags, faults = out.stdout.split("\n")[:2]
    return flags, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_stops_each_batch_from_faulting_in_fresh_pages():
    flags, kept = run(None)
    assert flags == "True True"
    off_flags, fresh = run("0")
    assert off_flags == "False False"
    # a 37.7 MB batch is ~9200 pages: faulted in anew each time unless the freed block is reused
    assert fresh > 10 * 8000 and kept < 2 * 9500, (fresh, kept)
