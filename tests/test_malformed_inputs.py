"""Malformed input table across the loaders and CLIs: each bad input gives a clear error naming the file and the
cause, or (where --skip-bad applies) a counted skip. Reader-table cases live in test_readers_bad.py."""

import logging

import pandas as pd
import pytest
from test_readers import VALID, truth_for, write_layout_a
from test_readers_bad import LABELS, VICTIM, add_orphan, drop_row, edit_csv

from reaf.readers import ReaderError, read_split


def test_subset_labels_csv_defines_the_split(tmp_path, caplog):
    """A labels CSV listing a subset of the files (the reference's *_clean.csv) is a split, not an error."""
    source = write_layout_a(tmp_path, "valid", truth_for(VALID))
    edit_csv(LABELS, drop_row)(tmp_path)
    add_orphan(tmp_path)
    with caplog.at_level(logging.INFO, logger="reaf.readers"):
        split = read_split(source, fmt="ori")
    assert [s.name for s in split.samples] == [n for n in VALID if n != VICTIM]
    assert split.unlisted == 2 and split.skipped == []
    notes = [r for r in caplog.records if "does not list" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "valid_predicted_labels.csv" in notes[0].getMessage() and "2 volume file(s)" in notes[0].getMessage()


def test_listed_row_without_file_stays_an_error(tmp_path):
    source = write_layout_a(tmp_path, "valid", truth_for(VALID))
    df = pd.read_csv(source)
    pd.concat([df, df.iloc[[0]].assign(VolumeName="valid_7_a_1.nii.gz")]).to_csv(source, index=False)
    with pytest.raises(ReaderError, match=r"valid_predicted_labels.csv: valid_7_a_1 is listed but no .nii.gz file"):
        read_split(source, fmt="ori")
    split = read_split(source, fmt="ori", skip_bad=True)
    assert [name for name, _ in split.skipped] == ["valid_7_a_1"] and len(split) == len(VALID)
