"""fp16 autocast + GradScaler (`--precision amp` on a GPU), run on the CPU: the same code path, device aside."""

import math

import pytest
import torch

from reaf import create_model
from reaf.training.optim import CosineSchedule, build_optimizer
from reaf.training.state import Position, checkpoint_payload, restore_training
from reaf.training.step import StepContext, autocast_factory, train_step

CPU = torch.device("cpu")
REPORTS = ["left pleural effusion", "no nodule in the right upper lobe", "mild cardiomegaly", "emphysema apical"]


def tiny():
    torch.manual_seed(0)
    return create_model("tiny").train()


def make_batch(model, seed, n=2):
    gen = torch.Generator().manual_seed(seed)
    ids, mask = model.tokenize((REPORTS[seed % 2:] + REPORTS)[:n])
    volume = torch.randn(n, 1, *model.cfg.vision.img_size, generator=gen)
    return {"image": volume, "input_ids": ids, "attention_mask": mask, "name": [f"v{seed}_{i}" for i in range(n)]}


def fp16_context(model, scaler=None, accum=1):
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    scaler = scaler or torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    return StepContext(model, opt, scaler, CosineSchedule(opt, 1e-3, 0, 20), autocast_factory("fp16", CPU), CPU,
                       accum, grad_clip_norm=1.0)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fp16_steps_skip_inf_gradients_and_resume_with_the_scaler(tmp_path):
    model = tiny()
    ctx = fp16_context(model)
    dtypes = []
    model.visual.trunk.blocks[0].attn.qkv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    for step in range(2):  # two good steps: parameters move, the scale doubles after growth_interval=2
        before = params(model)
        loss, _ = train_step(ctx, [make_batch(model, step)], step)
        assert math.isfinite(loss.item()) and loss.dtype == torch.float32
        assert any(not torch.equal(before[n], p) for n, p in params(model).items())
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert dtypes[0] == torch.float16 and ctx.scaler.get_scale() == 2.0**11

    ctx.scaler.update(new_scale=2.0**60)  # scaled fp16 gradients overflow: the step must be skipped
    before, adam_steps = params(model), [s["step"].item() for s in ctx.optimizer.state.values()]
    loss, _ = train_step(ctx, [make_batch(model, 2)], 2)
    assert math.isfinite(loss.item())  # the loss itself is fine; only its scaled gradients are inf
    assert all(torch.equal(before[n], p) for n, p in params(model).items())
    assert [s["step"].item() for s in ctx.optimizer.state.values()] == adam_steps
    assert ctx.scaler.get_scale() == 2.0**59

    ctx.scaler.update(new_scale=2.0**12)  # back to a scale whose gradients are finite; one good step after it
    train_step(ctx, [make_batch(model, 3)], 3)  # growth tracker now 1 of growth_interval 2
    payload = checkpoint_payload(model, ctx.optimizer, ctx.scaler, Position(0, 4, 4), name="fp16", config={},
                                 rng=[], sampler={})
    torch.save(payload, tmp_path / "latest.pt")
    resumed = tiny()
    ctx2 = fp16_context(resumed, torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=2))
    restore_training(torch.load(tmp_path / "latest.pt", weights_only=True), resumed, ctx2.optimizer, ctx2.scaler)
    assert ctx2.scaler.state_dict() == ctx.scaler.state_dict() and ctx2.scaler.get_scale() == 2.0**12
    batch = make_batch(model, 4)
    loss_a, _ = train_step(ctx, [batch], 4)
    loss_b, _ = train_step(ctx2, [batch], 4)
    assert loss_b.item() == loss_a.item()
    assert ctx.scaler.get_scale() == ctx2.scaler.get_scale() == 2.0**13  # the restored tracker made it grow
    for name, value in params(model).items():
        torch.testing.assert_close(params(resumed)[name], value, rtol=0, atol=0, msg=name)


# Tolerances of "accumulation 2 x 2 volumes == one step on the same 4 volumes", per precision. The loss is the
# same computation on the same cached features (equal to float rounding). Gradients: in fp32 they differ only by
# summation order (1e-6 absolute on gradients of norm ~1); under fp16 autocast the 2-volume and 4-volume forwards
# round differently in half precision (2^-11 relative per op), ~1e-4 absolute, so 1e-3 / 2%. Parameters after
# Adam's first step p -= lr * g / (|g| + eps) (+ decay): a weight whose true gradient is 0 (e.g. attention key
# biases) gets float noise g ~ 1e-8 against eps = 1e-6, a step of up to lr * 1e-2 = 1e-5 that differs between the
# two runs; so 2e-5 in fp32, while a real step is lr = 1e-3. In fp16 the noise is ~1e-5 and the steps of such
# weights can differ by up to 2 * lr.
ACCUM_TOLERANCE = {"fp32": dict(loss=1e-6, grad=(1e-6, 1e-4), param=2e-5),
                   "fp16": dict(loss=1e-3, grad=(1e-3, 2e-2), param=2e-3)}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_accumulation_through_the_scaler_equals_one_step_on_the_global_batch(precision):
    """accum_freq 2 with the GradScaler (scale 2^10) and clipping on, as in an fp16 run: the loss, the unscaled
    gradients and the updated parameters equal those of one unaccumulated step on the same 4 volumes."""
    tol = ACCUM_TOLERANCE[precision]
    batch = make_batch(tiny(), 0, n=4)
    halves = [{k: v[part] for k, v in batch.items()} for part in (slice(0, 2), slice(2, 4))]
    results = []
    for micro, accum in (([batch], 1), (halves, 2)):
        model = tiny()
        ctx = fp16_context(model, accum=accum)
        ctx.autocast = autocast_factory(precision, CPU)
        before = params(model)
        loss, _ = train_step(ctx, micro, 0)
        assert ctx.scaler.get_scale() == 2.0**10  # a finite step; growth needs growth_interval=2 of them
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        after = params(model)
        assert all(not torch.equal(before[n], after[n]) for n in ("visual.trunk.patch_embed.proj.weight",
                                                                   "text.proj.weight", "logit_scale"))
        results.append((loss.item(), grads, after))
    (loss_a, grads_a, params_a), (loss_b, grads_b, params_b) = results
    assert loss_b == pytest.approx(loss_a, abs=tol["loss"])
    assert grads_a.keys() == grads_b.keys() and "logit_scale" in grads_a  # its gradient counted once, not twice
    atol, rtol = tol["grad"]
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, atol=atol, rtol=rtol, msg=name)
    for name, value in params_a.items():
        torch.testing.assert_close(params_b[name], value, atol=tol["param"], rtol=0, msg=name)


def test_fp16_loss_is_close_to_fp32():
    batch = None
    losses = []
    for precision in ("fp32", "fp16"):
        model = tiny().eval()  # no dropout: both precisions see the same network
        batch = batch or make_batch(model, 0)
        ctx = fp16_context(model)
        ctx.autocast = autocast_factory(precision, CPU)
        losses.append(train_step(ctx, [batch], 0)[0].item())
    assert losses[1] == pytest.approx(losses[0], abs=0.02)
