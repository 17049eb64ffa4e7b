"""The losses of the steps since the last check, kept on the device: read (one sync) and checked for NaN/inf only at
the logging interval, before a checkpoint and at the epoch end, so that the steps between never wait for the GPU."""

from __future__ import annotations

import math

import torch

from reaf import dist


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the first such step and the volumes of its batch."""


class LossWindow:
    """Each step's global loss (a 0-dim device tensor, the same on every rank) with its step and this rank's volume
    names; recording costs no host-device synchronisation, `check` one device-to-host copy for all steps since."""

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.names: list[list[str]] = []
        self.values: list[float] = []  # checked losses of the interval, for its mean

    def record(self, loss: torch.Tensor, step: int, names: list[str]) -> None:
        """`loss` of 0-based optimiser step `step`, whose batches on this rank held the volumes `names`."""
        self.pending.append(loss.detach().float())
        self.steps.append(step)
        self.names.append(names)

    def check(self) -> None:
        """Read the unchecked losses (one sync); raise NonFiniteLossError naming the first non-finite step and its
        volumes on every rank. Every rank calls it at the same steps, and the loss is the global batch's, so the
        ranks agree whether to raise (the names are gathered only then)."""
        if not self.pending:
            return
        values = torch.stack(self.pending).tolist()
        for value, step, local in zip(values, self.steps, self.names):
            if not math.isfinite(value):
                every = [n for rank_names in dist.all_gather_object(local) for n in rank_names]
                raise NonFiniteLossError(f"non-finite loss ({value}) at optimiser step {step + 1}; the batch held "
                                         f"the volumes {every}")
        self.values += values
        self.pending, self.steps, self.names = [], [], []

    def take(self) -> list[float]:
        """The checked losses of every step since the last `take`, and the window emptied."""
        self.check()
        values, self.values = self.values, []
        return values
