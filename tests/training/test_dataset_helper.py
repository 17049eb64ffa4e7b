"""The training tests' dataset helper gives cached splits at the tiny input size."""

import torch

from tests.support.training import NUM_TRAIN, make_dataset


def test_the_dataset_helper_gives_cached_splits_at_the_tiny_input(tmp_path):
    from reaf.data import readers
    from reaf.data.formats import load_volume, volume_file
    from reaf.data.input_spec import InputSpec

    root = make_dataset(tmp_path)
    found = readers.find_splits(root)
    split = readers.read_split(found["train"], data_root=str(root), fmt="cache")
    assert len(split.samples) == NUM_TRAIN
    spec = InputSpec.from_args(["-1150", "350", "resize"], (32, 96, 96))
    volume = load_volume(volume_file(split.root, split.samples[0].rel, "cache"), "cache", spec, split.samples[0].meta)
    assert volume.shape == (1, 32, 96, 96) and torch.isfinite(volume).all()
