"""A wholly frozen text tower gets every training report's features before the first step, in order of length."""

import json

import pytest

import main as cli
from reaf.data.readers import find_splits, read_split
from reaf.model import text as text_module
from reaf.model.config import load_model_config
from tests.support.training import make_dataset, train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def frozen_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "tiny_frozen.json"
    path.write_text(json.dumps(load_model_config("tiny", lock="all", pooling="mean").to_dict()))
    return path


def bert_calls(monkeypatch) -> list[int]:
    """How many texts each BERT pass of a frozen tower computed, in order."""
    calls, original = [], text_module.TextTower._cache_new

    def counted(self, rows, device, batch_size, progress=False):
        new = original(self, rows, device, batch_size, progress)
        calls.append(new)
        return new

    monkeypatch.setattr(text_module.TextTower, "_cache_new", counted)
    return calls


def test_whole_report_epochs_find_every_report_cached(data, frozen_config, tmp_path, monkeypatch):
    text_module._SHARED_FEATURES.clear()
    calls = bert_calls(monkeypatch)
    argv = train_argv(data, tmp_path, "frozen", "--model", str(frozen_config), "--epochs", "1", "--batch-size", "4",
                      "--text-sampling", "both", "--report-epochs", "1")
    assert cli.main(argv) == 0
    reports = {sample.report for sample in read_split(find_splits(data)["train"], data_root=str(data), fmt="cache").samples}
    assert calls[0] == len(reports) > 1  # all of them, before the first step
    assert calls[1:] and set(calls[1:]) == {0}  # every step of the whole-report epoch read the cache
    assert f"text features of {len(reports)} distinct training report(s) from the frozen text tower" in (
        tmp_path / "frozen" / "train.log").read_text()


def test_sentence_only_runs_and_trainable_towers_compute_nothing_ahead(data, frozen_config, tmp_path, monkeypatch):
    text_module._SHARED_FEATURES.clear()
    calls = bert_calls(monkeypatch)
    argv = train_argv(data, tmp_path, "sentences", "--model", str(frozen_config), "--epochs", "1", "--batch-size",
                      "4", "--text-sampling", "sentence")
    assert cli.main(argv) == 0
    assert calls and all(n <= 4 for n in calls)  # sentences as the steps meet them, never the reports ahead
    assert "distinct training report(s)" not in (tmp_path / "sentences" / "train.log").read_text()
    argv = train_argv(data, tmp_path, "trainable", "--epochs", "1", "--batch-size", "4")
    assert cli.main(argv) == 0
    assert "distinct training report(s)" not in (tmp_path / "trainable" / "train.log").read_text()
