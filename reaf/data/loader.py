"""Batches for training and evaluation: volume dataset, tokenising collate, seeded (distributed) sampling."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from reaf import dist
from reaf.data.csv_tables import CLASSES
from reaf.data.formats import VolumeError, load_volume, volume_file
from reaf.data.input_spec import InputSpec
from reaf.data.orientation import LAYOUT_POLICY
from reaf.data.readers import SplitData
from reaf.data.text_sampling import sample_text

__all__ = ["SAMPLE_UNITS", "TokenizingCollate", "UnitSampler", "VolumeDataset", "build_dataloader", "seed_worker"]

SAMPLE_UNITS = ("volume", "scan")


class VolumeDataset(Dataset):
    """Item key -> {"image": (1, D, H, W) float32, "report": str, "text": str, "name": str,
    "labels": (18,) float32, NaN when the split has no labels}. The key is a sample index, or (index, epoch) from a
    UnitSampler with text sampling on. "text" is the text to encode: the report, or with text_sampling
    'sentence'/'both' (training) one drawn from (seed, epoch, index) by reaf.data.text_sampling. A volume that fails
    to load raises VolumeError naming its file; with skip_bad it gives {"name", "skipped": cause} instead, which
    TokenizingCollate drops from the batch and lists under "skipped". No other sample is ever substituted.
    keep_in_memory: each decoded volume is kept after its first load (in the process that loads it), so later epochs
    read no file."""

    def __init__(self, split: SplitData, spec: InputSpec, skip_bad: bool = False, text_sampling: str = "report",
                 seed: int = 0, keep_in_memory: bool = False, report_epochs: int = 0,
                 sentence_share: float = 0.5) -> None:
        self.split, self.spec, self.skip_bad = split, spec, skip_bad
        self.text_sampling, self.seed, self.report_epochs = text_sampling, seed, report_epochs
        self.sentence_share = sentence_share
        self.memory: dict[int, torch.Tensor] | None = {} if keep_in_memory else None
        # an unknown mode or a negative report_epochs fails here, not in a worker
        sample_text("", text_sampling, seed=seed, epoch=0, index=0, report_epochs=report_epochs,
                    sentence_share=sentence_share)

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.split.samples[index]
        path = volume_file(self.split.root, sample.rel, self.split.fmt)
        try:
            image = self.memory.get(index) if self.memory is not None else None
            if image is None:
                image = load_volume(path, self.split.fmt, self.spec, sample.meta, LAYOUT_POLICY[self.split.layout])
                if self.memory is not None:
                    self.memory[index] = image
        except Exception as e:  # anything a reader throws names the file (VolumeError already does)
            error = e if isinstance(e, VolumeError) else VolumeError(f"{path}: cannot load ({type(e).__name__}: {e})")
            if not self.skip_bad:
                raise error from e
            return {"name": sample.name, "skipped": str(error)}
        if sample.labels is None:
            labels = torch.full((len(CLASSES),), float("nan"))
        else:
            labels = torch.as_tensor(sample.labels, dtype=torch.float32)
        text = sample_text(sample.report, self.text_sampling, seed=self.seed, epoch=epoch, index=index,
                           report_epochs=self.report_epochs, sentence_share=self.sentence_share)
        return {"image": image, "report": sample.report, "text": text, "name": sample.name, "labels": labels}


class BatchBuffers:
    """Stacks a batch's volumes into one of two kept tensors when it is free, in the process that trains (a loader
    worker's batch goes to shared memory, so workers always stack anew). A batch-sized tensor is larger than glibc
    keeps in the heap (32 MiB at most), so a fresh one is a new mapping whose pages fault in one by one: 19 ms to
    stack the demo's 32 volumes (38 MB) against 2.6 ms into a kept tensor (bench/results/step_parts.json), 1500
    times a demo. Each batch gets an alias of its buffer, and a buffer is free again only when no tensor shares its
    storage any more (the batch, its views, tensors autograd saved), so a batch still in use is never overwritten;
    while both are in use, batches are stacked anew."""

    KEPT = 2

    def __init__(self) -> None:
        self._kept: list[tuple[torch.Tensor, int]] = []  # (buffer, its storage's use count while nothing aliases it)

    @staticmethod
    def _users(buffer: torch.Tensor) -> int:
        return torch._C._storage_Use_Count(buffer.untyped_storage()._cdata)

    def stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        # the use count is a private torch call: a torch without it (pyproject allows >= 2.4) stacks anew
        if get_worker_info() is not None or not hasattr(torch._C, "_storage_Use_Count"):
            return torch.stack(tensors)
        shape = (len(tensors), *tensors[0].shape)
        self._kept = [(b, idle) for b, idle in self._kept if b.shape == shape and b.dtype == tensors[0].dtype]
        free = next((b for b, idle in self._kept if self._users(b) == idle), None)
        if free is None:
            if len(self._kept) >= self.KEPT:
                return torch.stack(tensors)
            free = torch.empty(shape, dtype=tensors[0].dtype)
            self._kept.append((free, self._users(free)))
        torch.stack(tensors, out=free)
        return free.view(shape)


class TokenizingCollate:
    """Items -> {"image": (B, 1, D, H, W) float32, "input_ids": (B, L) long, "attention_mask": (B, L) long,
    "name": list[str], "report": list[str], "text": list[str], "labels": (B, 18) float32, "skipped": [(name, cause)]};
    tokenize(list[str]) -> (ids, mask) is applied to each item's "text" (its report unless text sampling chose a
    sentence). Items VolumeDataset skipped (skip_bad) are left out, so B may be smaller than the batch size, or 0
    (then every tensor is empty and "name" is [])."""

    def __init__(self, tokenize) -> None:
        self.tokenize = tokenize
        self.buffers = BatchBuffers()

    def __call__(self, items: list[dict]) -> dict:
        skipped = [(item["name"], item["skipped"]) for item in items if "skipped" in item]
        items = [item for item in items if "skipped" not in item]
        if not items:
            empty = torch.zeros(0, dtype=torch.long)
            return {"image": torch.zeros(0), "input_ids": empty, "attention_mask": empty, "name": [], "report": [],
                    "text": [], "labels": torch.zeros(0, len(CLASSES)), "skipped": skipped}
        reports = [item["report"] for item in items]
        texts = [item.get("text", item["report"]) for item in items]
        input_ids, attention_mask = self.tokenize(texts)
        return {
            "image": self.buffers.stack([item["image"] for item in items]),
            "input_ids": input_ids.long(),
            "attention_mask": attention_mask.long(),
            "name": [item["name"] for item in items],
            "report": reports,
            "text": texts,
            "labels": torch.stack([item["labels"] for item in items]),
            "skipped": skipped,
        }


class UnitSampler(DistributedSampler):
    """Seeded order over a split, sharded over ranks. sample_unit 'volume' uses every reconstruction; 'scan' one
    random reconstruction per scan, drawn from (seed, epoch) (so identical on every rank). Training shuffles and
    gives every rank the same count (drop_last truncates the remainder, otherwise the first units are repeated);
    evaluation keeps the split's order and shards it exactly once (ranks may differ by one sample).
    Call set_epoch(epoch) before each epoch for a new order and new reconstructions; skip_next(n) leaves out this
    rank's first n samples of the next pass only (resuming mid-epoch without loading them). keyed: yield
    (index, epoch) pairs, so the dataset (in persistent workers too) knows the epoch of each item."""

    def __init__(
        self,
        split: SplitData,
        *,
        sample_unit: str,
        seed: int,
        train: bool,
        num_replicas: int,
        rank: int,
        drop_last: bool,
        keyed: bool = False,
    ) -> None:
        if sample_unit not in SAMPLE_UNITS:
            raise ValueError(f"sample_unit must be one of {SAMPLE_UNITS}, got {sample_unit!r}")
        super().__init__(
            range(len(split)), num_replicas=num_replicas, rank=rank, shuffle=train, seed=seed, drop_last=drop_last
        )
        self.groups = split.scan_groups() if sample_unit == "scan" else [[i] for i in range(len(split))]
        self.skip, self.keyed = 0, keyed

    def skip_next(self, n: int) -> None:
        self.skip = max(0, n)

    def epoch_indices(self) -> list[int]:
        """This epoch's sample indices over all ranks, before sharding."""
        # seed and epoch mixed so that (seed, epoch + 1) does not repeat (seed + 1, epoch) as seed + epoch would
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        picks = torch.randint(0, 2**62, (len(self.groups),), generator=generator).tolist()
        units = [group[pick % len(group)] for group, pick in zip(self.groups, picks)]
        if self.shuffle:
            units = [units[i] for i in torch.randperm(len(units), generator=generator).tolist()]
        return units

    def __iter__(self):
        units, world = self.epoch_indices(), self.num_replicas
        if self.shuffle and self.drop_last:
            units = units[: len(units) - len(units) % world]
        elif self.shuffle and len(units) % world:
            units = units + (units * world)[: world - len(units) % world]
        skip, self.skip = self.skip, 0
        mine = units[self.rank :: world][skip:]
        return iter([(i, self.epoch) for i in mine] if self.keyed else mine)

    def __len__(self) -> int:
        n, world = len(self.groups), self.num_replicas
        if self.shuffle:
            return n // world if self.drop_last else -(-n // world)
        return len(range(self.rank, n, world))


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a loader worker from torch's per-worker seed (itself from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _world() -> tuple[int, int]:
    """(world size, rank) of this process."""
    return dist.world_size(), dist.rank()


def build_dataloader(
    split: SplitData,
    spec: InputSpec,
    tokenize,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    train: bool,
    sample_unit: str = "volume",
    epoch: int = 0,
    drop_last: bool | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
    skip_bad: bool = False,
    text_sampling: str = "report",
    keep_in_memory: bool = False,
    report_epochs: int = 0,
    sentence_share: float = 0.5,
) -> DataLoader:
    """A loader of TokenizingCollate batches over `split`, sharded by UnitSampler over the distributed ranks
    (num_replicas/rank override them). Deterministic given seed and epoch; the caller calls
    loader.sampler.set_epoch(epoch) before each later epoch. drop_last defaults to `train`. skip_bad: unreadable
    volumes are dropped from their batch and listed in its "skipped" (see reaf.training.skips), else they raise.
    text_sampling (training only): each sample's text is drawn from (seed, epoch, index), the sampler handing the
    epoch to the dataset with each index, so one loader (and its persistent workers) serves every epoch; the first
    report_epochs epochs use whole reports whatever text_sampling says; sentence_share is `both`'s share of
    sentences."""
    if keep_in_memory and workers > 0:
        raise ValueError(f"keeping {split.source}'s volumes in memory needs --workers 0 (each loader worker would "
                         "hold its own copy)")
    if text_sampling != "report" and not train:
        raise ValueError(f"text sampling {text_sampling!r} is for training; evaluation encodes the whole report")
    drop_last = train if drop_last is None else drop_last
    if num_replicas is None:
        num_replicas, rank = _world()
    sampler = UnitSampler(
        split,
        sample_unit=sample_unit,
        seed=seed,
        train=train,
        num_replicas=num_replicas,
        rank=rank or 0,
        drop_last=drop_last,
        keyed=text_sampling != "report",
    )
    sampler.set_epoch(epoch)
    if drop_last and len(sampler) < batch_size:
        raise ValueError(f"{split.source}: {len(sampler)} samples per rank < batch size {batch_size} with drop_last")
    return DataLoader(
        VolumeDataset(split, spec, skip_bad, text_sampling, seed, keep_in_memory, report_epochs, sentence_share),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=TokenizingCollate(tokenize),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
