"""Batches for training and evaluation: volume dataset, tokenising collate, seeded (distributed) sampling."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from reaf.readers import CLASSES, SplitData
from reaf.text_sampling import sample_text
from reaf.volume import InputSpec, VolumeError, load_volume, volume_file

__all__ = ["SAMPLE_UNITS", "TokenizingCollate", "UnitSampler", "VolumeDataset", "build_dataloader", "seed_worker"]

SAMPLE_UNITS = ("volume", "scan")


class VolumeDataset(Dataset):
    """Item i of a split -> {"image": (1, D, H, W) float32, "report": str, "text": str, "name": str,
    "labels": (18,) float32, NaN when the split has no labels}. "text" is the text to encode: the report, or with
    text_sampling 'sentence'/'both' (training) one drawn from (seed, epoch, i) by reaf.text_sampling. A volume that
    fails to load raises VolumeError naming its file; no other sample is ever substituted."""

    def __init__(
        self, split: SplitData, spec: InputSpec, text_sampling: str = "report", seed: int = 0, epoch: int = 0
    ) -> None:
        self.split, self.spec = split, spec
        self.text_sampling, self.seed, self.epoch = text_sampling, seed, epoch
        sample_text("", text_sampling, seed=seed, epoch=epoch, index=0)  # an unknown mode fails here, not in a worker

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.split.samples[index]
        path = volume_file(self.split.root, sample.rel, self.split.fmt)
        try:
            image = load_volume(path, self.split.fmt, self.spec, sample.meta)
        except VolumeError:
            raise
        except Exception as e:  # anything else a reader throws still names the file
            raise VolumeError(f"{path}: cannot load ({type(e).__name__}: {e})") from e
        if sample.labels is None:
            labels = torch.full((len(CLASSES),), float("nan"))
        else:
            labels = torch.as_tensor(sample.labels, dtype=torch.float32)
        text = sample_text(sample.report, self.text_sampling, seed=self.seed, epoch=self.epoch, index=index)
        return {"image": image, "report": sample.report, "text": text, "name": sample.name, "labels": labels}


class TokenizingCollate:
    """Items -> {"image": (B, 1, D, H, W) float32, "input_ids": (B, L) long, "attention_mask": (B, L) long,
    "name": list[str], "report": list[str], "labels": (B, 18) float32}; tokenize(list[str]) -> (ids, mask) is applied
    to each item's "text" (its report unless text sampling chose a sentence)."""

    def __init__(self, tokenize) -> None:
        self.tokenize = tokenize

    def __call__(self, items: list[dict]) -> dict:
        reports = [item["report"] for item in items]
        input_ids, attention_mask = self.tokenize([item.get("text", item["report"]) for item in items])
        return {
            "image": torch.stack([item["image"] for item in items]),
            "input_ids": input_ids.long(),
            "attention_mask": attention_mask.long(),
            "name": [item["name"] for item in items],
            "report": reports,
            "labels": torch.stack([item["labels"] for item in items]),
        }


class UnitSampler(DistributedSampler):
    """Seeded order over a split, sharded over ranks. sample_unit 'volume' uses every reconstruction; 'scan' one
    random reconstruction per scan, drawn from (seed, epoch) (so identical on every rank). Training shuffles and
    gives every rank the same count (drop_last truncates the remainder, otherwise the first units are repeated);
    evaluation keeps the split's order and shards it exactly once (ranks may differ by one sample).
    Call set_epoch(epoch) before each epoch for a new order and new reconstructions."""

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
    ) -> None:
        if sample_unit not in SAMPLE_UNITS:
            raise ValueError(f"sample_unit must be one of {SAMPLE_UNITS}, got {sample_unit!r}")
        super().__init__(
            range(len(split)), num_replicas=num_replicas, rank=rank, shuffle=train, seed=seed, drop_last=drop_last
        )
        self.groups = split.scan_groups() if sample_unit == "scan" else [[i] for i in range(len(split))]

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
        return iter(units[self.rank :: world])

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
    """(world size, rank): from reaf.dist when present, else torch.distributed when initialised, else (1, 0)."""
    if importlib.util.find_spec("reaf.dist") is not None:
        from reaf import dist

        size, rank = dist.world_size, dist.rank
        return (size() if callable(size) else size), (rank() if callable(rank) else rank)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


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
    text_sampling: str = "report",
) -> DataLoader:
    """A loader of TokenizingCollate batches over `split`, sharded by UnitSampler over the distributed ranks
    (num_replicas/rank override them). Deterministic given seed and epoch; the caller calls
    loader.sampler.set_epoch(epoch) before each later epoch. drop_last defaults to `train`. text_sampling
    (training only) draws each sample's text from (seed, `epoch`, index): build one loader per epoch for it."""
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
    )
    sampler.set_epoch(epoch)
    if drop_last and len(sampler) < batch_size:
        raise ValueError(f"{split.source}: {len(sampler)} samples per rank < batch size {batch_size} with drop_last")
    return DataLoader(
        VolumeDataset(split, spec, text_sampling, seed, epoch),
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
