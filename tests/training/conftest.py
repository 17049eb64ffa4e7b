"""Fixtures of the training tests: a tiny cached train split and a dropout-free BERT folder."""

import pytest

from tests.support.training import make_bert, make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from reaf.data.readers import find_splits, read_split

    root = make_dataset(tmp_path_factory.mktemp("data"))
    return read_split(find_splits(root)["train"], data_root=str(root), fmt="cache")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_bert(tmp_path_factory.mktemp("bert"))
