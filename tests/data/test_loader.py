"""DataLoader assembly: contract batches from real files, seeded order, rank sharding, scan sampling, errors."""

import gzip
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reaf.data.formats import load_volume, volume_file
from reaf.data.loader import UnitSampler, VolumeDataset, build_dataloader
from tests.support.layouts import SPEC, TRAIN, report_of


def names_of(loader) -> list[str]:
    return [name for batch in loader for name in batch["name"]]


def by_hand(t: dict) -> torch.Tensor | None:
    """The model input of one fixture volume (the `truth` fixture: (40, 36, 12) voxels stored (x, y, z)) computed here:
    its values are HU already (random HU whose air is at -1000; the CSV intercept -1024 would put air at -2000), in
    (z, y, x) order; trilinear to 3 x 1 x 1 mm at the CSV spacing, window [-1150, 350] to [0, 1], trilinear to
    SPEC.size (8, 16, 16), (v - 0.449) / 0.226. None where rounding and flooring the voxel count n * s / 3|1 differ
    (y = 36 x 0.71 = 25.56, ...): those sizes depend on resampled_shape's rule."""
    hu = torch.from_numpy(t["voxels"].transpose(2, 1, 0).astype(np.float32))
    extent = [n * s / target for n, s, target in zip(hu.shape, (t["z"], t["xy"][1], t["xy"][0]), (3.0, 1.0, 1.0))]
    if any(math.floor(e) != round(e) for e in extent):
        return None
    out = F.interpolate(hu[None, None], size=[round(e) for e in extent], mode="trilinear", align_corners=False)
    out = F.interpolate(((out + 1150.0) / 1500.0).clamp(0, 1), size=(8, 16, 16), mode="trilinear",
                        align_corners=False)
    return (out[0] - 0.449) / 0.226


def test_batches_follow_the_contract(split, truth, tokenize):
    loader = build_dataloader(split, SPEC, tokenize, batch_size=4, workers=0, seed=0, train=False)
    batches = list(loader)
    checked = []
    assert [len(b["name"]) for b in batches] == [4, 2] and names_of(loader) == [s.name for s in split.samples]
    for batch in batches:
        b = len(batch["name"])
        assert batch["image"].shape == (b, 1, *SPEC.size) and batch["image"].dtype == torch.float32
        assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
        assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == b
        ids, mask = tokenize(batch["report"])
        assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["attention_mask"], mask)
        for i, name in enumerate(batch["name"]):
            sample = next(s for s in split.samples if s.name == name)
            assert batch["report"][i] == report_of(truth[name])  # "Findings: ... Impressions: ..." of the CSV row
            assert torch.equal(batch["labels"][i], torch.from_numpy(truth[name]["labels"]))
            direct = load_volume(volume_file(split.root, sample.rel, "ori"), "ori", SPEC, sample.meta)
            assert torch.equal(batch["image"][i], direct)
            expected = by_hand(truth[name])
            if expected is not None:
                checked.append(name)
                torch.testing.assert_close(batch["image"][i], expected, atol=1e-5, rtol=0)
    assert checked == ["train_1_a_1", "train_2_b_1", "train_10_a_1"]  # xy 0.70, 0.73, 0.75: 25.2/28, 26.28/29.2, 27/30
    assert loader.pin_memory == torch.cuda.is_available() and not loader.persistent_workers


def test_unlabelled_split_gives_nan_labels(split, tokenize):
    unlabelled = type(split)(split.samples[:2], split.root, split.fmt, False, split.source)
    unlabelled.samples = [type(s)(**{**vars(s), "labels": None}) for s in unlabelled.samples]
    batch = next(iter(build_dataloader(unlabelled, SPEC, tokenize, batch_size=2, workers=0, seed=0, train=False)))
    assert batch["labels"].shape == (2, 18) and torch.isnan(batch["labels"]).all()


def test_same_seed_same_batches_with_workers(split, tokenize):
    def run(seed, workers, epoch=0):
        loader = build_dataloader(split, SPEC, tokenize, batch_size=2, workers=workers, seed=seed, train=True)
        loader.sampler.set_epoch(epoch)
        return [(b["name"], b["image"], b["input_ids"]) for b in loader]

    first, again = run(3, workers=2), run(3, workers=0)
    assert len(first) == 3 and [b[0] for b in first] == [b[0] for b in again]
    assert all(torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(first, again))
    orders = {tuple(n for b in run(seed, 0, epoch) for n in b[0]) for seed, epoch in [(3, 0), (4, 0), (3, 1)]}
    assert len(orders) == 3, "seed and epoch change the order"
    assert all(sorted(order) == sorted(TRAIN) for order in orders)


@pytest.mark.parametrize("train", [False, True])
def test_two_ranks_cover_without_overlap(split, tokenize, train):
    shards = [
        names_of(
            build_dataloader(
                split, SPEC, tokenize, batch_size=1, workers=0, seed=5, train=train, num_replicas=2, rank=r
            )
        )
        for r in (0, 1)
    ]
    assert isinstance(
        build_dataloader(split, SPEC, tokenize, batch_size=1, workers=0, seed=5, train=train).sampler,
        torch.utils.data.DistributedSampler,
    )
    assert len(shards[0]) == len(shards[1]) == 3
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == sorted(TRAIN)


def test_sampler_shard_sizes(split):
    def shards(train, drop_last, world=4):
        return [
            list(
                UnitSampler(
                    split, sample_unit="volume", seed=0, train=train, num_replicas=world, rank=r, drop_last=drop_last
                )
            )
            for r in range(world)
        ]

    evaluation = shards(False, False)
    assert [len(s) for s in evaluation] == [2, 2, 1, 1] and sorted(sum(evaluation, [])) == list(range(6))
    dropped = shards(True, True)
    assert [len(s) for s in dropped] == [1, 1, 1, 1] and len(set(sum(dropped, []))) == 4
    padded = shards(True, False)
    assert [len(s) for s in padded] == [2, 2, 2, 2] and set(sum(padded, [])) == set(range(6))


def test_sample_unit_scan_one_reconstruction_per_scan(split, tokenize):
    scans = [s.scan_id for s in split.samples]
    chosen = []
    for epoch in range(6):
        per_rank = [
            UnitSampler(split, sample_unit="scan", seed=1, train=True, num_replicas=2, rank=r, drop_last=False)
            for r in (0, 1)
        ]
        for sampler in per_rank:
            sampler.set_epoch(epoch)
        picked = sorted(i for sampler in per_rank for i in sampler)
        assert sorted(scans[i] for i in picked) == sorted(set(scans)), "one reconstruction of each scan, across ranks"
        chosen.append(tuple(picked))
    assert len(set(chosen)) > 1, "the reconstruction changes across epochs"
    loader = build_dataloader(split, SPEC, tokenize, batch_size=2, workers=0, seed=1, train=True, sample_unit="scan")
    assert len(loader) == 2 and sorted(n.rsplit("_", 1)[0] for n in names_of(loader)) == sorted(set(scans))
    with pytest.raises(ValueError, match="sample_unit"):
        build_dataloader(split, SPEC, tokenize, batch_size=2, workers=0, seed=1, train=True, sample_unit="patient")


def test_worker_error_names_the_file(split, tokenize, tmp_path):
    broken = type(split)(list(split.samples), tmp_path, split.fmt, True, split.source)
    for sample in broken.samples:
        src, dst = split.root / (sample.rel + ".nii.gz"), tmp_path / (sample.rel + ".nii.gz")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    victim = tmp_path / (broken.samples[3].rel + ".nii.gz")
    victim.write_bytes(gzip.compress(b"not a nifti")[:20])
    dataset = VolumeDataset(broken, SPEC)
    assert dataset[0]["image"].shape == (1, *SPEC.size)
    loader = build_dataloader(broken, SPEC, tokenize, batch_size=2, workers=1, seed=0, train=False)
    with pytest.raises(Exception, match=victim.name):
        names_of(loader)


def test_drop_last_needs_a_full_batch(split, tokenize):
    with pytest.raises(ValueError, match="batch size"):
        build_dataloader(split, SPEC, tokenize, batch_size=7, workers=0, seed=0, train=True)
    assert np.isclose(len(build_dataloader(split, SPEC, tokenize, batch_size=7, workers=0, seed=0, train=False)), 1)


def test_keep_in_memory_reads_each_file_once(split, tokenize, monkeypatch):
    import reaf.data.loader as loader_module

    reads = []
    real = loader_module.load_volume
    monkeypatch.setattr(loader_module, "load_volume", lambda path, *a: reads.append(path) or real(path, *a))
    loader = build_dataloader(split, SPEC, tokenize, batch_size=2, workers=0, seed=0, train=True,
                              keep_in_memory=True)
    first = {name: img for b in loader for name, img in zip(b["name"], b["image"])}
    loader.sampler.set_epoch(1)
    second = {name: img for b in loader for name, img in zip(b["name"], b["image"])}
    assert len(reads) == len(first) == len(set(reads))  # the second epoch read no file
    assert all(torch.equal(second[name], first[name]) for name in second)
    with pytest.raises(ValueError, match="--workers 0"):
        build_dataloader(split, SPEC, tokenize, batch_size=2, workers=1, seed=0, train=True, keep_in_memory=True)


def test_batches_reuse_a_kept_tensor_only_when_nothing_holds_it(split, tokenize):
    """In the training process a batch's volumes are stacked into a kept tensor once the batch before it is gone
    (no new 38 MB mapping per demo step), never while a batch, a view of it or a tensor autograd saved still holds
    it: every batch equals the volumes stacked anew."""
    loader = build_dataloader(split, SPEC, tokenize, batch_size=2, workers=0, seed=0, train=True,
                              keep_in_memory=True)
    list(loader)  # the first epoch loads the volumes into memory

    def stacked_anew(names):
        return torch.stack([loader.dataset.memory[i] for i in _indices(split, names)])

    held = list(loader)  # every batch kept alive: each its own storage, each right
    assert len({b["image"].data_ptr() for b in held}) == len(held)
    assert all(torch.equal(b["image"], stacked_anew(b["name"])) for b in held)
    del held
    pointers = []
    for epoch in (1, 2):  # consumed one at a time (the loop holds the batch before while it stacks the next)
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            assert torch.equal(batch["image"], stacked_anew(batch["name"]))
            pointers.append(batch["image"].data_ptr())
    assert len(pointers) >= 6 and len(set(pointers)) == 2  # the two kept tensors serve every batch
    del batch
    pointers, graph = [], None
    for batch in loader:
        assert torch.equal(batch["image"], stacked_anew(batch["name"]))
        pointers.append(batch["image"].data_ptr())
        if graph is None:  # autograd keeps the first batch for a backward that comes later: it must stay intact
            weight = torch.ones((), requires_grad=True)
            graph = (batch["image"] * weight).sum(), stacked_anew(batch["name"]).sum()
    assert pointers[0] not in pointers[1:]
    graph[0].backward()
    torch.testing.assert_close(weight.grad, graph[1])


def _indices(split, names) -> list[int]:
    index = {s.name: i for i, s in enumerate(split.samples)}
    return [index[name] for name in names]


def test_one_loader_with_a_persistent_worker_samples_new_sentences_each_epoch(split, tokenize):
    from reaf.data.text_sampling import sample_text

    loader = build_dataloader(split, SPEC, tokenize, batch_size=2, workers=1, seed=3, train=True,
                              text_sampling="sentence")
    index = {s.name: i for i, s in enumerate(split.samples)}
    for epoch in (0, 1, 2):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            ids, _ = tokenize([sample_text(split.samples[index[n]].report, "sentence", seed=3, epoch=epoch,
                                           index=index[n]) for n in batch["name"]])
            assert torch.equal(batch["input_ids"][:, : ids.shape[1]], ids)
    assert loader.persistent_workers
