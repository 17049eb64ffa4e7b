"""Fixtures of the data tests: a small layout-A train split of real NIfTI files and the tiny tokenizer."""

import pytest

from reaf import create_model
from reaf.data.readers import read_split
from tests.support.layouts import TRAIN, truth_for, write_layout_a


@pytest.fixture(scope="module")
def tokenize():
    return create_model("tiny").tokenize


@pytest.fixture(scope="module")
def truth():
    """What the `split` fixture writes: labels, report parts, spacing and the (x, y, z) voxels of each volume."""
    return truth_for(TRAIN, shape=(40, 36, 12))


@pytest.fixture(scope="module")
def split(tmp_path_factory, truth):
    root = tmp_path_factory.mktemp("ctrate")
    labels_csv = write_layout_a(root, "train", truth, fixed={"train_1_a_1"})
    return read_split(labels_csv, fmt="ori")
