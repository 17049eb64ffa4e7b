"""--skip-bad during training and evaluation: volumes dropped from their batch are counted, logged with file and
cause, listed in <run>/skipped.jsonl, and every rank's batch is cut to the smallest one so the loss sees the same
batch size on every rank."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from reaf import dist

log = logging.getLogger(__name__)
SKIPPED_FILE = "skipped.jsonl"


class SkipLog:
    """Counts skipped volumes and appends one JSON line per skip ({"phase", "epoch", "name", "cause"}) to `path`
    (rank 0 only writes; None: count and log only)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.count = path, 0

    def record(self, skipped: list[tuple[str, str]], *, phase: str, epoch: int) -> None:
        """Log and list skipped (name, cause) pairs (already gathered from every rank)."""
        self.count += len(skipped)
        for name, cause in skipped:
            log.warning("skipped %s (%s, epoch %d): %s", name, phase, epoch, cause)
        if self.path is not None and skipped and dist.is_main():
            with open(self.path, "a") as f:
                for name, cause in skipped:
                    f.write(json.dumps({"phase": phase, "epoch": epoch, "name": name, "cause": cause}) + "\n")


def truncate(batch: dict[str, Any], size: int) -> dict[str, Any]:
    """The first `size` samples of a TokenizingCollate batch (its "skipped" list kept as it is)."""
    if size >= len(batch["name"]):
        return batch
    return {k: v if k == "skipped" else v[:size] for k, v in batch.items()}


def equalize(
    batches: Iterable[dict[str, Any]], skips: SkipLog, *, epoch: int, device: torch.device | str = "cpu"
) -> Iterator[dict[str, Any]]:
    """Training batches with skipped volumes recorded and every rank cut to the smallest batch of this step.

    Chosen over filling from a spare volume: nothing is read twice or out of the sampler's order, so resume and
    the epoch's sample accounting stay exact; the cost is up to (world - 1) good volumes unused per bad one. A batch
    that is empty on some rank comes out empty on every rank (train_one_epoch then takes no step for it)."""
    for batch in batches:
        local = batch.get("skipped", [])
        smallest, most_skipped = dist.min_over_ranks([len(batch["name"]), -len(local)], device)
        if -most_skipped > 0:  # somebody skipped: gather the causes so rank 0 lists them all
            skips.record([s for rank in dist.all_gather_object(local) for s in rank], phase="train", epoch=epoch)
        if smallest < len(batch["name"]):
            log.debug("batch cut from %d to %d volume(s) to match the other ranks", len(batch["name"]), smallest)
        yield truncate(batch, smallest)
