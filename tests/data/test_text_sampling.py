"""--text-sampling: robust sentence splitting, draws fixed by (seed, epoch, index), training loaders only."""

import pytest

from reaf.data.loader import build_dataloader
from reaf.data.text_sampling import TEXT_SAMPLINGS, sample_text, split_sentences
from reaf.training.flags import parse_args
from tests.support.layouts import SPEC

REPORT = "Findings: Trachea is open. A nodule of 3.5 mm, e.g. in the lingula, is seen.Heart is normal.\n1. No effusion."


def test_split_sentences_handles_real_report_text():
    assert split_sentences(REPORT) == [
        "Trachea is open.",
        "A nodule of 3.5 mm, e.g. in the lingula, is seen.",
        "Heart is normal.",
        "No effusion.",
    ]
    assert split_sentences("IMPRESSIONS: Emphysema; no consolidation") == ["Emphysema;", "no consolidation"]
    assert split_sentences("  \n 1. ") == []


def test_sampling_is_a_function_of_seed_epoch_and_index():
    draws = {(e, i): sample_text(REPORT, "sentence", seed=3, epoch=e, index=i) for e in range(4) for i in range(8)}
    assert set(draws.values()) == set(split_sentences(REPORT))  # every sentence drawn, nothing else
    assert draws == {(e, i): sample_text(REPORT, "sentence", seed=3, epoch=e, index=i) for e, i in draws}
    assert draws != {(e, i): sample_text(REPORT, "sentence", seed=4, epoch=e, index=i) for e, i in draws}
    both = [sample_text(REPORT, "both", seed=0, epoch=e, index=i) for e in range(10) for i in range(10)]
    assert 30 < both.count(REPORT) < 70 and all(t == REPORT or t in split_sentences(REPORT) for t in both)
    assert sample_text(REPORT, "report", seed=0, epoch=0, index=0) == REPORT
    assert sample_text("...", "sentence", seed=0, epoch=0, index=0) == "..."  # no sentence: the report whole
    with pytest.raises(ValueError, match="not one of"):
        sample_text(REPORT, "paragraph", seed=0, epoch=0, index=0)


def test_training_loader_samples_sentences_and_evaluation_keeps_reports(split, tokenize):  # noqa: F811
    def texts(**kw) -> tuple[dict, dict]:
        """{name: token ids of its text} and {name: its report} over one epoch of a training loader."""
        loader = build_dataloader(split, SPEC, tokenize, batch_size=2, workers=0, seed=1, train=True, **kw)
        ids, reports = {}, {}
        for b in loader:
            for name, row, mask, report in zip(b["name"], b["input_ids"], b["attention_mask"], b["report"]):
                ids[name], reports[name] = tuple(row[mask.bool()].tolist()), report
        return ids, reports

    def token_ids(text: str) -> tuple:
        row, mask = tokenize([text])
        return tuple(row[0][mask[0].bool()].tolist())

    sent, reports = texts(text_sampling="sentence", epoch=0)
    assert sent == texts(text_sampling="sentence", epoch=0)[0]  # deterministic
    assert sent != texts(text_sampling="sentence", epoch=1)[0]  # a new draw each epoch
    for name, ids in sent.items():
        assert ids in {token_ids(s) for s in split_sentences(reports[name])}, reports[name]
    assert all(s.report == reports[s.name] for s in split.samples if s.name in reports)  # "report" stays whole
    whole, _ = texts(epoch=0)
    assert all(ids == token_ids(reports[name]) for name, ids in whole.items())
    with pytest.raises(ValueError, match="for training"):
        build_dataloader(split, SPEC, tokenize, batch_size=2, workers=0, seed=0, train=False, text_sampling="both")
    # --report-epochs 1: epoch 0 trains on whole reports, epoch 1 draws the sentences it draws without it
    first, _ = texts(text_sampling="sentence", epoch=0, report_epochs=1)
    assert first == whole != sent
    assert texts(text_sampling="sentence", epoch=1, report_epochs=1)[0] == texts(text_sampling="sentence", epoch=1)[0]


def test_report_epochs_come_first_and_must_not_be_negative():
    assert [sample_text(REPORT, "sentence", seed=0, epoch=e, index=0, report_epochs=2) == REPORT
            for e in range(3)] == [True, True, False]
    with pytest.raises(ValueError, match="report_epochs must be >= 0"):
        sample_text(REPORT, "sentence", seed=0, epoch=0, index=0, report_epochs=-1)
    assert parse_args(["--data-root", "x"]).report_epochs == 0
    assert parse_args(["--data-root", "x", "--report-epochs", "1"]).report_epochs == 1
    with pytest.raises(SystemExit):
        parse_args(["--data-root", "x", "--report-epochs", "-1"])


def test_flag_defaults_to_report_and_rejects_unknown(capsys):
    assert parse_args(["--data-root", "x"]).text_sampling == "report"
    assert parse_args(["--data-root", "x", "--text-sampling", "both"]).text_sampling == "both"
    assert set(TEXT_SAMPLINGS) == {"report", "sentence", "both"}
    with pytest.raises(SystemExit):
        parse_args(["--data-root", "x", "--text-sampling", "words"])


def test_the_training_run_hands_report_epochs_to_its_loader(split, tokenize):  # noqa: F811
    from reaf.training.run import RunData

    data = RunData(SPEC, tokenize, split, None, None, batch_size=2, workers=0, seed=1, sample_unit="volume",
                   skip_bad=False, text_sampling="sentence", keep_in_memory=False, report_epochs=1)  # fmt: skip

    def whole_reports(epoch: int) -> list[bool]:
        """Per sample of the epoch's loader: is its text the whole report?"""
        out = []
        for b in data.loader(epoch):
            for row, mask, report in zip(b["input_ids"], b["attention_mask"], b["report"]):
                ids, whole_mask = tokenize([report])
                out.append(row[mask.bool()].tolist() == ids[0][whole_mask[0].bool()].tolist())
        return out

    assert all(whole_reports(0))  # epoch 0: whole reports
    assert not any(whole_reports(1))  # epoch 1: one sentence each (every report here has several)


def test_sentence_share_sets_boths_mix_and_is_checked(split, tokenize):  # noqa: F811
    from reaf.training.run import RunData

    draws = [(e, i) for e in range(20) for i in range(20)]
    half = [sample_text(REPORT, "both", seed=0, epoch=e, index=i) for e, i in draws]
    assert half == [sample_text(REPORT, "both", seed=0, epoch=e, index=i, sentence_share=0.5) for e, i in draws]
    more = [sample_text(REPORT, "both", seed=0, epoch=e, index=i, sentence_share=0.75) for e, i in draws]
    assert 60 < more.count(REPORT) < 140 and 160 < half.count(REPORT) < 240  # 100 and 200 expected of 400
    for share in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="sentence_share must be in"):
            sample_text(REPORT, "both", seed=0, epoch=0, index=0, sentence_share=share)
    assert parse_args(["--data-root", "x"]).sentence_share == 0.5
    flags = parse_args(["--data-root", "x", "--text-sampling", "both", "--sentence-share", "0.75"])
    assert flags.sentence_share == 0.75
    for bad in (["--sentence-share", "0.75"], ["--text-sampling", "both", "--sentence-share", "1"]):
        with pytest.raises(SystemExit):  # with `report` it would do nothing; 1 is `sentence`
            parse_args(["--data-root", "x", *bad])
    data = RunData(SPEC, tokenize, split, None, None, batch_size=2, workers=0, seed=1, sample_unit="volume",
                   skip_bad=False, text_sampling="both", keep_in_memory=False, sentence_share=0.99)  # fmt: skip
    assert data.loader(0).dataset.sentence_share == 0.99
    reports = [r for b in data.loader(0) for r, t in zip(b["report"], b["text"]) if r == t]
    assert len(reports) < len(split.samples) / 2  # nearly every text is a sentence
