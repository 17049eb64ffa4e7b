"""The training tests' dataset helper gives cached splits at the tiny input size, whose values are the synthetic
volumes' model inputs and whose texts and labels are the synthetic CSVs'."""

import numpy as np
import pandas as pd
import torch

from tests.support.training import NUM_TRAIN, make_dataset
from tests.support.volumes import synthetic_model_inputs


def test_the_dataset_helper_gives_cached_splits_at_the_tiny_input(tmp_path):
    from reaf.data import readers
    from reaf.data.csv_tables import CLASSES
    from reaf.data.formats import load_volume, volume_file
    from reaf.data.input_spec import InputSpec

    root = make_dataset(tmp_path)
    raw = tmp_path / "raw" / "dataset"  # the synthetic CT-RATE the cache was made from
    found = readers.find_splits(root)
    split = readers.read_split(found["train"], data_root=str(root), fmt="cache")
    assert len(split.samples) == NUM_TRAIN
    meta = pd.read_csv(raw / "metadata" / "train_metadata.csv").set_index("VolumeName")
    reports = pd.read_csv(raw / "radiology_text_reports" / "train_reports.csv").set_index("VolumeName")
    labels = pd.read_csv(raw / "multi_abnormality_labels" / "train_predicted_labels.csv").set_index("VolumeName")
    assert sorted(s.name + ".nii.gz" for s in split.samples) == sorted(labels.index)
    spec = InputSpec.from_args(["-1150", "350", "resize"], (32, 96, 96))
    half_step = 0.5 / 4095 / 0.226  # the cache stores the windowed values as round(v * 4095)
    versions = set()
    for sample in split.samples:
        row = sample.name + ".nii.gz"
        assert sample.report == f"Findings: {reports.loc[row, 'Findings_EN'].strip()} " \
                                f"Impressions: {reports.loc[row, 'Impressions_EN'].strip()}"
        np.testing.assert_array_equal(sample.labels, labels.loc[row, CLASSES].to_numpy(np.float32))
        volume = load_volume(volume_file(split.root, sample.rel, "cache"), "cache", spec, sample.meta)
        assert volume.shape == (1, 32, 96, 96) and volume.dtype == torch.float32
        nifti = raw.parent / (sample.rel + ".nii.gz")
        versions.add("v2" if "_fixed/" in sample.rel else "v1")
        error = min((volume - x).abs().max().item() for x in synthetic_model_inputs(nifti, meta.loc[row], spec.size))
        assert error <= half_step + 1e-5, (sample.name, error)
    assert versions == {"v1", "v2"}  # raw + CSV intercept and stored HU both checked
