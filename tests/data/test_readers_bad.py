"""Bad input table: each case names the file and the cause; skip_bad counts per-volume problems, never substitutes."""


import pytest

from reaf.data.readers import ReaderError, read_split
from tests.support.bad_inputs import CASES, check_bad_input, make_split


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, case):
    check_bad_input(tmp_path, case)


def test_unknown_source_and_format(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ReaderError, match="neither a split folder"):
        read_split(tmp_path / "stuff", fmt="ori")
    with pytest.raises(ReaderError, match="does not exist"):
        read_split(tmp_path / "nope.csv", fmt="ori")
    source = make_split(tmp_path, "B")
    with pytest.raises(ReaderError, match="unknown input data type"):
        read_split(source, fmt="jpeg")
