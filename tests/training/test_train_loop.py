"""The training step on the real tiny model and real synthetic batches: groups, schedule, accumulation, NaN stop."""

import csv
import math
from pathlib import Path

import pytest
import torch

from reaf.training.optim import CosineSchedule, build_optimizer, param_groups, use_fused
from reaf.training.run_log import RunLogger
from reaf.training.state import Position, capture_rng, reference_optimizer_names, restore_rng, skip_batches
from reaf.training.step import NonFiniteLossError, train_one_epoch, train_step
from tests.support.training import batches, context, tiny

# the reference's key and optimizer-index lists, copied into the repository (tests/data/README.md says from where)
SHARED = Path(__file__).resolve().parents[1] / "data"


def test_param_groups_follow_the_documented_rules():
    model = tiny(fusion_method="learned", lock=True)
    no_decay, decay = param_groups(model, 0.2)
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(no_decay["param_names"] + decay["param_names"]) == sorted(trainable)  # each exactly once
    shapes = dict(model.named_parameters())
    assert all(shapes[n].ndim >= 2 for n in decay["param_names"])
    for name in ("logit_scale", "visual.trunk.cls_token", "visual.trunk.fusion.scan.logits",
                 "visual.trunk.blocks.0.attn.qkv.bias", "visual.trunk.norm.weight",
                 "text.transformer.encoder.layer.0.output.LayerNorm.weight"):
        assert name in no_decay["param_names"], name
    for name in ("visual.trunk.patch_embed.proj.weight", "visual.trunk.blocks.0.attn.qkv.weight",
                 "visual.trunk.fusion_layer.weight", "visual.head.proj.weight", "text.proj.weight"):
        assert name in decay["param_names"], name
    frozen = {"visual.trunk.spatial_posemb", "text.transformer.embeddings.word_embeddings.weight"}
    assert not frozen & set(no_decay["param_names"] + decay["param_names"])


def test_unlocked_bert_position_embeddings_are_not_decayed():
    no_decay, decay = param_groups(tiny(lock=False), 0.2)
    assert "text.transformer.embeddings.position_embeddings.weight" in no_decay["param_names"]
    assert "text.transformer.embeddings.word_embeddings.weight" in decay["param_names"]


def test_reference_optimizer_index_map_is_derived_from_the_state_dict():
    keys, index_map = SHARED / "reaf_checkpoint_keys.tsv", SHARED / "reaf_optimizer_index_map.tsv"
    with keys.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    shapes = {r["key"]: [] if r["shape"] == "scalar" else [int(s) for s in r["shape"].split("x")] for r in rows}
    state = {f"module.{key}": torch.empty(shape, device="meta") for key, shape in shapes.items()}
    with index_map.open() as f:
        expected = [r["parameter_name"] for r in csv.DictReader(f, delimiter="\t")]
    assert reference_optimizer_names(state) == expected


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))])
    sched = CosineSchedule(opt, 1.0, warmup=4, total=14)
    assert [sched.lr_at(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert sched.lr_at(4) == 1.0 and math.isclose(sched.lr_at(9), 0.5) and sched.lr_at(14) == 0.0
    assert sched.apply(9) == opt.param_groups[0]["lr"]


def test_accumulation_equals_one_big_batch(data, bert):
    """accum 2 x 2 volumes: the same loss, gradients and parameters after the step as 1 x 4 volumes (float noise
    only: Adam's first step turns a 1e-8 gradient difference near eps into lr * 1e-2, hence the small lr)."""
    big = next(iter(batches(data, tiny(bert), 4)))
    halves = [{k: v[part] for k, v in big.items()} for part in (slice(0, 2), slice(2, 4))]
    results = []
    for micro, accum in (([big], 1), (halves, 2)):
        model = tiny(bert)
        loss, _ = train_step(context(model, accum, lr=1e-4), micro, 0)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a, params_a), (loss_b, grads_b, params_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert grads_a.keys() == grads_b.keys() and "logit_scale" in grads_a  # its gradient counted once, not twice
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=1e-6, rtol=1e-4)
    for name, value in params_a.items():
        torch.testing.assert_close(params_b[name], value, atol=2e-6, rtol=0)


def test_logit_scale_is_clamped_and_gradients_clipped(data):
    model = tiny()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100) + 0.5)
    ctx = context(model, lr=1e-4, clip=0.01)
    train_step(ctx, [next(iter(batches(data, model, 2)))], 0)
    assert model.logit_scale.item() <= math.log(100) + 1e-6
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() <= 0.01 + 1e-6


def test_non_finite_loss_stops_with_the_step_and_volume_names(data, tmp_path):
    """The step itself no longer reads its loss (no sync); the epoch's check at its end names the step."""
    model = tiny()
    batch = next(iter(batches(data, model, 2)))
    batch["image"][1] = float("nan")
    logger = RunLogger(tmp_path, (), project="", name="t", config={}, enabled=False)
    with pytest.raises(NonFiniteLossError) as err:
        train_one_epoch(context(model), [batch], Position(0, 0, 6), steps_per_epoch=1, logger=logger, log_every=50)
    assert "step 7" in str(err.value) and all(name in str(err.value) for name in batch["name"])


def test_adamw_is_fused_only_when_every_parameter_is_on_a_cuda_device():
    from types import SimpleNamespace

    cuda, cpu = SimpleNamespace(device=torch.device("cuda", 0)), SimpleNamespace(device=torch.device("cpu"))
    assert use_fused([cuda, cuda]) and not use_fused([cuda, cpu]) and not use_fused([cpu]) and not use_fused([])
    opt = build_optimizer(tiny(), lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    assert not opt.defaults["fused"] and all(not group["fused"] for group in opt.param_groups)


def test_skipped_loader_yields_the_rest_of_the_epoch_without_loading_the_start(data):
    model = tiny()
    full = [b["name"] for b in batches(data, model, 2)]
    rest = [b["name"] for b in skip_batches(batches(data, model, 2), 3)]
    assert rest == full[3:] and len(full) == 4


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    state = capture_rng(torch.device("cpu"))
    first = (random.random(), np.random.rand(), torch.rand(3))
    torch.save(state, tmp_path / "rng.pt")
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True), torch.device("cpu"))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_bf16_autocast_when_asked_by_name_gives_a_close_loss(data):
    from reaf.training.step import autocast_factory

    batch = next(iter(batches(data, tiny(), 2)))
    losses = []
    for precision in ("fp32", "bf16"):
        model = tiny()
        model.eval()  # no dropout: the two precisions see the same network
        ctx = context(model)
        ctx.autocast = autocast_factory(precision, torch.device("cpu"))
        losses.append(train_step(ctx, [batch], 0)[0].item())
    assert math.isfinite(losses[1]) and losses[1] == pytest.approx(losses[0], abs=0.05)
