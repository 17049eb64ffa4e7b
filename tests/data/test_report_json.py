"""--report-root: the reference's conversation JSON gives each image its first gpt text; repeats are logged."""

import json
import logging

from reaf.data.csv_tables import read_report_json


def conversation(image, *answers):
    turns = [{"from": "human", "value": "<image>\nWrite the report."}]
    for answer in answers:
        turns += [{"from": "gpt", "value": answer}, {"from": "human", "value": "More?"}]
    return {"image": image, "conversations": turns}


def test_first_gpt_text_per_image_is_kept_and_repeats_logged(tmp_path, caplog):
    (tmp_path / "a.json").write_text(json.dumps([
        conversation("valid/valid_1_a_1.nii.gz", "First report.", "A follow-up answer."),
        conversation("valid/valid_2_a_1.nii.gz", "Second report."),
        conversation("valid/valid_1_a_1.nii.gz", "A repeated image's other report."),
    ]))
    (tmp_path / "b.json").write_text(json.dumps([
        conversation("valid/valid_2_a_1.nii.gz", "Repeated in another file."),
        conversation("valid/valid_3_a_1.nii.gz", "  Third report.  "),
    ]))
    with caplog.at_level(logging.WARNING, logger="reaf.data.csv_tables"):
        reports = read_report_json(tmp_path)
    assert reports == {"valid_1_a_1": "First report.", "valid_2_a_1": "Second report.",
                       "valid_3_a_1": "Third report."}
    assert "2 repeated image(s)" in caplog.text and "valid_1_a_1, valid_2_a_1" in caplog.text


def test_an_image_without_a_gpt_turn_has_no_report(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps([conversation("valid_1_a_1.nii.gz")]))
    assert read_report_json(tmp_path / "r.json") == {"valid_1_a_1": None}
