"""run_evaluation: each volume and prompt encoded once, the §7 probability formula, reuse of embeddings, outputs."""

import json
import logging

import pandas as pd
import pytest
import torch

from reaf.data.csv_tables import CLASSES
from reaf.data.input_spec import InputSpec
from reaf.data.readers import read_split
from reaf.evaluation.prompts import class_prompts
from reaf.evaluation.protocol import run_evaluation, validate_results
from tests.support.evaluation import NAMES, tiny_checkpoint, write_split


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    model, ckpt = tiny_checkpoint(root)
    split = read_split(write_split(root), fmt="stage2", require_labels=True)
    return model, split, InputSpec(size=(32, 96, 96)), ckpt


class Counter:
    """Wraps a model's encode functions and counts the rows (volumes / texts) that go through them."""

    def __init__(self, model, monkeypatch):
        self.image_rows, self.text_rows = 0, 0
        image, text = model.encode_image, model.encode_text

        def encode_image(volume):
            self.image_rows += volume.shape[0]
            return image(volume)

        def encode_text(ids, mask):
            self.text_rows += ids.shape[0]
            return text(ids, mask)

        monkeypatch.setattr(model, "encode_image", encode_image)
        monkeypatch.setattr(model, "encode_text", encode_text)


def _run(model, split, spec, out, ckpt, **kw):
    args = {"batch_size": 3, "workers": 0, "device": "cpu", "checkpoint": ckpt, "n_boot": 50, "plots": False}
    return run_evaluation(model, split, spec, results_dir=out, **{**args, **kw})


def test_each_volume_and_prompt_encoded_once_and_reused(setup, tmp_path, monkeypatch, caplog):
    model, split, spec, ckpt = setup
    counter = Counter(model, monkeypatch)
    results = _run(model, split, spec, tmp_path, ckpt, template="both")
    distinct_reports = len({s.report for s in split.samples})
    assert distinct_reports == len(NAMES) - 1  # the siblings share theirs
    assert counter.image_rows == len(NAMES)
    sentences = {s for t in ("volume", "organ") for pair in class_prompts(t).values() for s in pair}
    assert len(sentences) == 2 * 2 * len(CLASSES) - 2  # "Medical material" reads the same in both templates
    assert counter.text_rows == len(sentences) + distinct_reports
    assert results["timing"]["embeddings_reused"] is False
    validate_results(results)
    counter.image_rows = counter.text_rows = 0
    with caplog.at_level(logging.INFO, logger="reaf.evaluation.embeddings"):
        again = _run(model, split, spec, tmp_path, ckpt, template="both")
    assert counter.image_rows == 0 and counter.text_rows == len(sentences)
    assert again["timing"]["embeddings_reused"] is True and "reusing embeddings" in caplog.text
    assert again["classification"] == results["classification"] and again["retrieval"] == results["retrieval"]


def test_changed_checkpoint_is_not_reused(setup, tmp_path, monkeypatch):
    model, split, spec, ckpt = setup
    _run(model, split, spec, tmp_path, ckpt)
    other = tmp_path / "other.pt"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["logit_scale"] += 0.5
    torch.save({"state_dict": state, "config": {"model": model.cfg.to_dict()}}, other)
    counter = Counter(model, monkeypatch)
    results = _run(model, split, spec, tmp_path, other)
    assert counter.image_rows == len(NAMES) and results["timing"]["embeddings_reused"] is False


def test_probabilities_follow_the_protocol_formula(setup, tmp_path):
    model, split, spec, ckpt = setup
    results = _run(model, split, spec, tmp_path, ckpt, template="organ")
    table = pd.read_csv(tmp_path / "probabilities.csv")
    assert table["VolumeName"].tolist() == NAMES and results["template"] == "organ"
    from reaf.data.loader import VolumeDataset

    volume = VolumeDataset(split, spec)[3]["image"][None]
    with torch.inference_mode():
        img = model.encode_image(volume)
        scale = model.logit_scale.exp()
        for name, (neg, pos) in list(class_prompts("organ").items())[:4]:
            txt = torch.cat([model.encode_text(*model.tokenize([t])) for t in (neg, pos)])  # one sentence at a time
            expected = (scale * img @ txt.T).softmax(-1)[0, 1].item()
            assert table.loc[3, f"organ:{name}"] == pytest.approx(expected, abs=1e-5)
            assert table.loc[3, f"label:{name}"] == split.samples[3].labels[CLASSES.index(name)]


def test_results_schema_and_retrieval_pools(setup, tmp_path):
    model, split, spec, ckpt = setup
    results = json.loads(json.dumps(_run(model, split, spec, tmp_path, ckpt)))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    validate_results(on_disk)
    assert on_disk["protocol_version"] == "1" and on_disk["data"]["N"] == len(NAMES)
    assert on_disk["checkpoint"]["sha256_scope"] == "full file" and len(on_disk["checkpoint"]["sha256"]) == 64
    assert on_disk["retrieval"]["dup_all"]["report_to_volume"]["N"] == len(NAMES)
    assert on_disk["retrieval"]["dedup"]["volume_to_report"]["N"] == len(NAMES) - 1
    assert set(on_disk["classification"]["16"]["per_class"]) == set(CLASSES) - {"Medical material", "Lymphadenopathy"}
    assert on_disk["classification"] == results["classification"]
    bad = json.loads(json.dumps(on_disk))
    del bad["retrieval"]["dedup"]["report_to_volume"]["R@5"]
    with pytest.raises(ValueError, match="R@5"):
        validate_results(bad)


def test_fingerprint_of_a_huge_file_is_partial_and_says_so(tmp_path, monkeypatch):
    import hashlib

    import reaf.evaluation.embeddings as embeddings

    path = tmp_path / "big.pt"
    path.write_bytes(bytes(range(256)) * 4)
    assert embeddings.file_fingerprint(path)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(embeddings, "FULL_HASH_LIMIT", 100)
    monkeypatch.setattr(embeddings, "PARTIAL_BLOCK", 16)
    data = path.read_bytes()
    got = embeddings.file_fingerprint(path)
    assert got["sha256"] == hashlib.sha256(data[:16] + data[-16:] + b"1024").hexdigest()
    assert "first and last 16 bytes + size" in got["sha256_scope"] and got["size"] == 1024


def test_data_key_follows_volume_files_and_input(setup):
    import os

    from reaf.data.formats import volume_file
    from reaf.evaluation.embeddings import data_description

    _, split, spec, _ = setup
    before = data_description(split, spec)
    assert data_description(split, InputSpec(size=(32, 96, 96), mode="resize")) != before
    path = volume_file(split.root, split.samples[2].rel, split.fmt)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was rewritten
    assert data_description(split, spec)["volume_files_sha256"] != before["volume_files_sha256"]


def test_changed_bert_folder_is_not_reused(setup, tmp_path, monkeypatch):
    """The checkpoint replaces BERT's weights but not its tokenizer or config: a changed --cxr-bert-path (or a
    changed tokenizer file in it) encodes again."""
    model, split, spec, ckpt = setup
    folders = []
    for lower in (True, False):
        folder = tmp_path / f"bert_{lower}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "cxr-bert", "hidden_size": 48}))
        (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower}))
        folders.append(folder)
    counter = Counter(model, monkeypatch)
    reused = []
    for folder in (folders[0], folders[0], folders[1], None):
        monkeypatch.setattr(model, "bert_path", None if folder is None else str(folder))
        reused.append(_run(model, split, spec, tmp_path / "out", ckpt)["timing"]["embeddings_reused"])
    assert reused == [False, True, False, False]
    assert counter.image_rows == 3 * len(NAMES)
