"""Checkpoint files: atomic writes, epoch_K + latest, finding what to resume, and resuming a reference-format file."""

import os

import pytest
import torch

from reaf import create_model
from reaf.atomic import torch_save as atomic_save
from reaf.training.optim import build_optimizer, param_groups
from reaf.training.state import (
    Position,
    batches_to_skip,
    find_resume,
    reference_optimizer_names,
    restore_reference,
    restore_training,
    write_checkpoint,
)


def test_atomic_save_replaces_without_leaving_temp_files(tmp_path):
    path = tmp_path / "ck" / "latest.pt"
    atomic_save({"a": torch.ones(2)}, path)
    atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert os.listdir(path.parent) == ["latest.pt"]


def test_epoch_file_and_latest_are_the_same_checkpoint_and_later_latest_leaves_it(tmp_path):
    write_checkpoint({"epoch": 1, "v": torch.ones(1)}, tmp_path, epoch_file=True)
    folder = tmp_path / "checkpoints"
    assert torch.load(folder / "latest.pt", weights_only=True)["epoch"] == 1
    write_checkpoint({"epoch": 1, "v": torch.zeros(1)}, tmp_path, epoch_file=False)  # a mid-epoch save
    assert torch.equal(torch.load(folder / "epoch_1.pt", weights_only=True)["v"], torch.ones(1))
    assert torch.equal(torch.load(folder / "latest.pt", weights_only=True)["v"], torch.zeros(1))
    assert sorted(os.listdir(folder)) == ["epoch_1.pt", "latest.pt"]


def test_find_resume(tmp_path):
    assert find_resume("latest", tmp_path, "run") is None  # nothing yet: a fresh start
    for name in ("old", "new"):
        write_checkpoint({"epoch": 0}, tmp_path / name, epoch_file=False)
    os.utime(tmp_path / "old" / "checkpoints" / "latest.pt", (1, 1))
    assert find_resume("latest", tmp_path, "old") == tmp_path / "old" / "checkpoints" / "latest.pt"
    assert find_resume("latest", tmp_path, None) == tmp_path / "new" / "checkpoints" / "latest.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        find_resume(str(tmp_path / "nope.pt"), tmp_path, None)


def test_batches_to_skip_converts_when_the_batch_geometry_changed():
    ckpt = {"batches_done": 6, "sampler": {"batch_size": 4, "world_size": 2}}
    assert batches_to_skip(ckpt, 4, 2) == 6
    assert batches_to_skip(ckpt, 2, 2) == 12 and batches_to_skip(ckpt, 8, 4) == 1


def reference_file(tmp_path, model):
    """A file in the reference's format (DESIGN §4.4): `module.` keys, AdamW state indexed by the reference's
    group order after one step, no config/step/rng."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    names = reference_optimizer_names(state)
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [params[n] for n in names]}], lr=1e-3)
    for i, name in enumerate(names):
        params[name].grad = torch.full_like(params[name], float(i + 1))
    opt.step()
    saved = opt.state_dict()
    path = tmp_path / "reaf.pt"
    torch.save({"epoch": 3, "name": "ref", "state_dict": state, "optimizer": saved, "scaler": {}}, path)
    return path, names, saved


def test_resume_of_a_reference_file_maps_the_adamw_state_by_name(tmp_path):
    torch.manual_seed(0)
    path, names, saved = reference_file(tmp_path, create_model("tiny", lock=True))
    model = create_model("tiny", lock=True)  # the reference's trainable set: BERT locked but its LayerNorms
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    pos = restore_reference(path, torch.load(path, weights_only=True), model, optimizer)
    assert pos == Position(epoch=3, batches_done=0, step=1)
    assert model.visual.trunk.reference_compat
    ours = [n for g in optimizer.param_groups for n in g["param_names"]]
    assert ours != names  # the groups differ (cls_token is not decayed here) ...
    by_param = {id(p): name for name, p in model.named_parameters()}
    for param, state in optimizer.state.items():  # ... yet every moment sits on its own parameter
        index = names.index(by_param[id(param)])
        assert torch.equal(state["exp_avg"], saved["state"][index]["exp_avg"])
    assert len(optimizer.state) == len(names)


def test_resume_of_a_reference_file_with_another_trainable_set_points_to_load_checkpoint(tmp_path):
    torch.manual_seed(0)
    path, _, _ = reference_file(tmp_path, create_model("tiny", lock=True))
    model = create_model("tiny", lock=False)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    with pytest.raises(ValueError, match="--load-checkpoint"):
        restore_reference(path, torch.load(path, weights_only=True), model, optimizer)


def test_vision_init_loads_mae_weights_through_the_cli(tmp_path):
    from reaf.training.flags import parse_args
    from reaf.training.run import build_model
    from tests.support.mae import synthetic_mae

    def qkv(*flags):
        args = parse_args(["--model", "tiny", "--train-data", "x", *flags])
        return build_model(args, None, torch.device("cpu")).visual.trunk.blocks[0].attn.qkv.weight

    mae = synthetic_mae(48, 3)
    torch.save(mae, tmp_path / "mae.pt")
    assert torch.equal(qkv("--vision-init", str(tmp_path / "mae.pt")), mae["blocks.0.attn.qkv.weight"])
    assert not torch.equal(qkv(), mae["blocks.0.attn.qkv.weight"])


def test_load_checkpoint_flag_loads_weights_only(tmp_path):
    from reaf.training.flags import parse_args
    from reaf.training.run import build_model

    torch.manual_seed(1)
    source = create_model("tiny")
    torch.save({"state_dict": source.state_dict(), "config": {"model": source.cfg.to_dict()}}, tmp_path / "w.pt")
    args = parse_args(["--model", "tiny", "--train-data", "x", "--load-checkpoint", str(tmp_path / "w.pt")])
    model = build_model(args, None, torch.device("cpu"))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    assert not model.visual.trunk.reference_compat


@pytest.mark.parametrize("saved_fused", [True, False])
def test_resume_keeps_this_run_s_adamw_kernel_and_its_step_counters(saved_fused):
    """A checkpoint from a fused (CUDA) run resumes in a foreach run and the other way round: the kernel is the
    device's choice, and the loaded step counters sit where that kernel reads them."""
    torch.manual_seed(0)
    model = create_model("tiny")
    saved = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-3, fused=saved_fused or None)
    model.logit_scale.grad = torch.ones_like(model.logit_scale)
    saved.step()
    optimizer = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-3, fused=(not saved_fused) or None)
    restore_training({"state_dict": model.state_dict(), "optimizer": saved.state_dict(), "epoch": 0, "step": 1},
                     model, optimizer, torch.amp.GradScaler("cpu", enabled=False))
    assert [bool(group["fused"]) for group in optimizer.param_groups] == [not saved_fused] * 2
    step = optimizer.state[model.logit_scale]["step"]
    assert step.item() == 1 and step.dtype == torch.float32
    optimizer.step()  # each kernel rejects counters in the wrong place or type
    assert optimizer.state[model.logit_scale]["step"].item() == 2
