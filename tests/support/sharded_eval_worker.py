"""Run by test_sharded_eval.py under torchrun (2 gloo ranks, fresh processes): encode_split and run_evaluation for
each case, saving what every rank got and which volume files it read. argv[1]: JSON {"weights", "out", "cases":
[[name, split folder, skip_bad], ...]}."""

import json
import sys
from pathlib import Path

import torch

import reaf.data.loader as loader_module
from reaf import create_model
from reaf.data.input_spec import InputSpec
from reaf.data.readers import read_split
from reaf.evaluation.encoding import encode_split
from reaf.evaluation.protocol import run_evaluation

SPEC = InputSpec(size=(32, 96, 96))
ARGS = {"batch_size": 2, "workers": 0, "device": "cpu"}
EVAL = {**ARGS, "n_boot": 20, "plots": False}


def count_reads(read: list[str]) -> None:
    """Make this process's loader record the name of every volume file it reads."""
    real = loader_module.load_volume

    def load_volume(path, *args, **kwargs):
        read.append(Path(path).name.split(".")[0])
        return real(path, *args, **kwargs)

    loader_module.load_volume = load_volume


def run_case(model, source: str, skip_bad: bool, results_dir: Path) -> dict:
    out: dict = {"read": []}
    count_reads(out["read"])
    try:
        split = read_split(source, fmt="stage2", require_labels=True, skip_bad=skip_bad)
        out["encoded"] = encode_split(model, split, SPEC, skip_bad=skip_bad, **ARGS)
        out["read_by_encode"] = list(out["read"])
        out["results"] = run_evaluation(model, split, SPEC, results_dir=results_dir, skip_bad=skip_bad, **EVAL)
    except Exception as err:  # recorded: the test checks that both ranks stop, and how
        out["error"] = f"{type(err).__name__}: {err}"
    return out


def main() -> None:
    job = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    model = create_model("tiny")
    model.load_state_dict(torch.load(job["weights"], weights_only=True))
    model.eval()
    real = loader_module.load_volume
    for name, source, skip_bad in job["cases"]:
        loader_module.load_volume = real
        result = run_case(model, source, skip_bad, Path(job["out"]) / name)
        torch.save(result, Path(job["out"]) / f"{name}_rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
