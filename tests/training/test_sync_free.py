"""The steps between logging points never read a tensor on the host; a NaN is still reported with its exact step.

No CUDA here, so the invariant is tested structurally: every Python-level way to bring a tensor's value to the host
(`item`, `tolist`, `cpu`, `numpy`, `bool`, `float`, `int`) is counted while train_one_epoch runs, apart from the
checks (LossWindow.check and the interval's log line) that are allowed to read. Reads torch makes in C++ (e.g. a
`nonzero`) are not seen here; bench/bench_gpu.py runs the steps under torch.cuda.set_sync_debug_mode("error").
"""

from collections import Counter

import pytest
import torch

from reaf.training import step as step_module
from reaf.training.loss_window import LossWindow
from reaf.training.optim import param_groups
from reaf.training.run_log import RunLogger
from reaf.training.state import Position
from reaf.training.step import NonFiniteLossError, autocast_factory, to_device, train_one_epoch, train_step
from tests.support.training import batches, context, tiny

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
# AdamW's foreach path keeps its step counter in a host tensor and reads it there (torch/optim/optimizer.py
# _get_value): no device is behind it; on CUDA the fused kernel reads its on-device counter itself
HOST_STATE = "torch/optim/"


class HostReads:
    """Counts host reads of tensors, split into those inside the allowed checks and those anywhere else."""

    def __init__(self, monkeypatch) -> None:
        self.outside: Counter = Counter()
        self.inside: Counter = Counter()
        self.depth = 0
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        for owner, name in ((LossWindow, "check"), (step_module, "_log_interval")):
            monkeypatch.setattr(owner, name, self._allowed(getattr(owner, name)))

    def _counted(self, name, original):
        import traceback

        def read(tensor, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0].filename
            if HOST_STATE not in caller.replace("\\", "/"):
                (self.inside if self.depth else self.outside)[name] += 1
            return original(tensor, *args, **kwargs)

        return read

    def _allowed(self, function):
        def allowed(*args, **kwargs):
            self.depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1

        return allowed


def quiet_logger(tmp_path) -> RunLogger:
    return RunLogger(tmp_path, (), project="", name="t", config={}, enabled=False)


@pytest.mark.parametrize("accum", [1, 2])
def test_steps_between_logging_points_read_no_tensor_on_the_host(data, tmp_path, monkeypatch, accum):
    model = tiny()
    loaded = list(batches(data, model, 2))  # the loader runs before counting: only the steps are watched
    reads = HostReads(monkeypatch)
    pos = train_one_epoch(context(model, accum), loaded, Position(), steps_per_epoch=len(loaded) // accum,
                          logger=quiet_logger(tmp_path), log_every=100)
    assert pos.step == len(loaded) // accum >= 2
    assert reads.outside == Counter(), f"host reads between logging points: {dict(reads.outside)}"
    assert reads.inside["tolist"] >= 1 and reads.inside["item"] >= 1  # the epoch-end check read the losses


def nan_batches(data, model, bad: int):
    out = list(batches(data, model, 2))
    out[bad]["image"][0] = float("nan")
    return out


def test_a_nan_at_step_k_is_reported_as_step_k_at_the_next_check_and_nothing_is_saved(data, tmp_path):
    model = tiny()
    loaded = nan_batches(data, model, bad=1)
    saved = []
    with pytest.raises(NonFiniteLossError) as err:
        train_one_epoch(context(model), loaded, Position(), steps_per_epoch=4, logger=quiet_logger(tmp_path),
                        log_every=3, save_every=2, on_save=saved.append)
    message = str(err.value)
    assert "at optimiser step 2;" in message and all(name in message for name in loaded[1]["name"])
    assert not any(name in message for name in loaded[0]["name"] + loaded[2]["name"])
    assert saved == []  # the save due after step 2 checked first and never ran


def test_the_check_at_the_logging_interval_finds_the_first_bad_step_among_later_bad_ones(data, tmp_path):
    """NaN weights after step 2 make every later loss NaN too; the report names step 2, not the last."""
    model = tiny()
    loaded = nan_batches(data, model, bad=1)
    logged = []
    logger = quiet_logger(tmp_path)
    logger.log = lambda metrics, step: logged.append(step)
    with pytest.raises(NonFiniteLossError, match=r"at optimiser step 2;"):
        train_one_epoch(context(model), loaded, Position(), steps_per_epoch=4, logger=logger, log_every=4)
    assert logged == []


def test_to_device_copies_without_blocking(monkeypatch):
    seen = []
    original = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: seen.append(k) or original(t, *a, **k))
    moved = to_device({"image": torch.zeros(1), "name": ["a"]}, torch.device("cpu"))
    assert moved["name"] == ["a"] and seen == [{"non_blocking": True}]


def test_the_logged_loss_is_the_mean_of_the_interval_s_step_losses(data, tmp_path):
    logged = {}
    for every in (1, 3):
        model = tiny()
        logger = quiet_logger(tmp_path)
        logger.log = lambda metrics, step, every=every: logged.setdefault(every, []).append(
            (step, metrics["train/loss"]))
        train_one_epoch(context(model), list(batches(data, model, 2)), Position(), steps_per_epoch=4, logger=logger,
                        log_every=every)
    each = [loss for _, loss in logged[1]]
    assert [step for step, _ in logged[1]] == [1, 2, 3, 4] and [step for step, _ in logged[3]] == [3, 4]
    assert logged[3][0][1] == pytest.approx(sum(each[:3]) / 3, rel=1e-6)
    assert logged[3][1][1] == pytest.approx(each[3], rel=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_fp16_grad_scaler_reads_found_inf_on_the_host_only_with_an_unfused_adamw(data, monkeypatch, fused):
    """By design GradScaler.step reads found_inf (`.item()`) to decide whether to step; the fused AdamW (what
    build_optimizer picks on CUDA; torch has it on the CPU too) takes found_inf on the device and skips there."""
    model = tiny()
    batch = next(iter(batches(data, model, 2)))
    ctx = context(model, clip=1.0)
    ctx.optimizer = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-3, fused=fused or None)
    ctx.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.autocast = autocast_factory("fp16", torch.device("cpu"))
    train_step(ctx, [batch], 0)  # first step: the scaler's lazy state is made
    reads = HostReads(monkeypatch)
    train_step(ctx, [batch], 1)
    assert reads.outside == (Counter() if fused else Counter(item=1))
