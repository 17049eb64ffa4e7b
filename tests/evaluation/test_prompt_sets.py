"""Prompt sets: v1 unchanged to the digit, the documented combination (mean of unit-norm embeddings, renormalised),
the recorded name and hash, JSON files, and an ensemble that holds no sentence of the demo's training reports."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from reaf.data.csv_tables import CLASSES
from reaf.data.input_spec import InputSpec
from reaf.data.readers import read_split
from reaf.evaluation.encoding import encode_texts
from reaf.evaluation.prompt_sets import ensemble_phrasings, prompt_set, read_phrasings
from reaf.evaluation.prompts import class_prompts
from reaf.evaluation.protocol import prompt_embeddings, run_evaluation
from tests.support.evaluation import NAMES, tiny_checkpoint, write_split


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    model, ckpt = tiny_checkpoint(root)
    split_dir = write_split(root)
    return model, read_split(split_dir, fmt="stage2", require_labels=True), ckpt, split_dir


def _run(setup, out, **kw):
    model, split, ckpt, _ = setup
    return run_evaluation(model, split, InputSpec(size=(32, 96, 96)), results_dir=out, batch_size=3, workers=0,
                          device="cpu", checkpoint=ckpt, n_boot=50, plots=False, **kw)


def _canonical_sha(phrasings: dict) -> str:
    return hashlib.sha256(json.dumps(phrasings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_v1_embeddings_are_the_pairs_as_encoded_before(setup):
    """The v1 path through prompt sets gives, bit for bit, the (18, 2, E) array the protocol always built: every
    distinct pair sentence encoded once, in the same order and batches, and stacked [negative, positive]."""
    model = setup[0]
    templates = ["volume", "organ"]
    pairs = {t: class_prompts(t) for t in templates}
    unique = list(dict.fromkeys(s for t in templates for pair in pairs[t].values() for s in pair))
    emb = encode_texts(model, unique, batch_size=16, device="cpu")
    row = {s: i for i, s in enumerate(unique)}
    got = prompt_embeddings(model, templates, batch_size=16, device="cpu")
    for t in templates:
        expected = emb[[row[s] for pair in pairs[t].values() for s in pair]].reshape(len(CLASSES), 2, -1)
        assert got[t].dtype == np.float32 and np.array_equal(got[t], expected), t


def test_a_one_phrasing_json_set_equals_v1_exactly(setup, tmp_path):
    v1 = _run(setup, tmp_path / "v1")
    path = tmp_path / "v1_copy.json"
    pairs = class_prompts("volume")
    path.write_text(json.dumps({c: {"negative": [neg], "positive": [pos]} for c, (neg, pos) in pairs.items()}))
    copy = _run(setup, tmp_path / "copy", prompts=str(path))
    assert copy["classification"] == v1["classification"]
    a, b = (pd.read_csv(tmp_path / d / "probabilities.csv") for d in ("v1", "copy"))
    assert a.equals(b)
    assert v1["prompt_set"]["name"] == "v1" and copy["prompt_set"]["name"] == str(path)
    assert copy["prompt_set"]["sha256"] == v1["prompt_set"]["sha256"]  # the hash is of the phrasings, not the name


def test_ensemble_combines_as_documented_and_records_its_hash(setup, tmp_path):
    model = setup[0]
    results = _run(setup, tmp_path, prompts="ensemble")
    phrasings = ensemble_phrasings("volume")
    assert results["prompt_set"]["name"] == "ensemble" and results["prompts"]["volume"] == phrasings
    assert results["prompt_set"]["sha256"] == _canonical_sha(phrasings)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["prompt_set"]["sha256"] == _canonical_sha(phrasings) and "mean" in on_disk["prompt_set"]["combination"]
    table = pd.read_csv(tmp_path / "probabilities.csv")
    from reaf.data.loader import VolumeDataset

    volume = VolumeDataset(setup[1], InputSpec(size=(32, 96, 96)))[4]["image"][None]
    with torch.inference_mode():
        img = model.encode_image(volume)[0].double()
        scale = model.logit_scale.exp().double()
        for name in ("Cardiomegaly", "Lung nodule", "Interlobular septal thickening"):
            combined = []
            for polarity in ("negative", "positive"):
                rows = torch.cat([model.encode_text(*model.tokenize([t])) for t in phrasings[name][polarity]]).double()
                rows = rows / rows.norm(dim=1, keepdim=True)  # one sentence at a time, unit norm
                mean = rows.mean(0)
                combined.append(mean / mean.norm())
            expected = torch.softmax(scale * torch.stack(combined) @ img, 0)[1].item()
            assert table.loc[4, f"volume:{name}"] == pytest.approx(expected, abs=1e-5), name
            pair = torch.cat([model.encode_text(*model.tokenize([t])) for t in class_prompts("volume")[name]])
            v1 = torch.softmax(scale * pair.double() @ img, 0)[1].item()
            assert abs(table.loc[4, f"volume:{name}"] - v1) > 1e-6, "the ensemble must not reduce to v1"


def test_ensemble_holds_the_v1_pair_and_several_phrasings(setup):
    for template in ("volume", "organ"):
        phrasings = ensemble_phrasings(template)
        assert list(phrasings) == CLASSES
        for name, (neg, pos) in class_prompts(template).items():
            assert phrasings[name]["negative"][0] == neg and phrasings[name]["positive"][0] == pos
            for polarity in ("negative", "positive"):
                assert len(set(phrasings[name][polarity])) >= 4
    assert prompt_set("ensemble", "organ").sha256 != prompt_set("ensemble", "volume").sha256
    assert prompt_set("v1").sha256 != prompt_set("ensemble").sha256


def test_no_ensemble_phrasing_is_a_sentence_of_the_demo_reports():
    from reaf.synthetic.dataset import plan_split_tables

    sentences = set()
    for seed in range(2):
        _, (_, reports, _) = plan_split_tables(seed, "train", 200, Path("/nonexistent"))
        for column in ("Findings_EN", "Impressions_EN"):
            for text in reports[column]:
                sentences.update(s.strip() for s in re.split(r"(?<=\.)\s+", text))
    assert len(sentences) > 500
    for template in ("volume", "organ"):
        for entry in ensemble_phrasings(template).values():
            for text in entry["negative"] + entry["positive"]:
                assert text not in sentences, text


def test_bad_json_sets_name_the_file_and_the_cause(tmp_path):
    path = tmp_path / "set.json"
    good = {c: {"negative": [f"No {c}."], "positive": [f"{c}."]} for c in CLASSES}
    path.write_text(json.dumps(good))
    assert read_phrasings(path) == good
    for broken, cause in (({k: v for k, v in good.items() if k != "Emphysema"}, "missing \\['Emphysema'\\]"),
                          ({**good, "Emphysema": {"negative": [], "positive": ["x"]}}, "non-empty list"),
                          ({**good, "Emphysema": {"positive": ["x"]}}, "exactly the keys")):
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*{cause}"):
            prompt_set(str(path))
    with pytest.raises(ValueError, match="--prompts 'v2'"):
        prompt_set("v2")


def test_zero_shot_cli_prompts_v1_is_the_default_to_the_digit(setup, tmp_path):
    import zero_shot

    _, _, ckpt, split_dir = setup
    common = ["--resume", str(ckpt), "--model", "tiny", "--zeroshot-ct-rate", str(split_dir), "--input-data-type",
              "stage2", "--input-info", "-1150", "350", "resize", "--batch-size", "3", "--workers", "0", "--device",
              "cpu", "--bootstrap", "50", "--no-plots"]
    outputs = {}
    for name, extra in (("default", []), ("v1", ["--prompts", "v1"]), ("ensemble", ["--prompts", "ensemble"])):
        assert zero_shot.main([*common, "--results-dir", str(tmp_path / name), *extra]) == 0
        outputs[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert outputs["v1"]["classification"] == outputs["default"]["classification"]
    assert (tmp_path / "v1" / "probabilities.csv").read_bytes() == (tmp_path / "default" / "probabilities.csv").read_bytes()
    assert outputs["default"]["prompt_set"]["name"] == "v1" and outputs["ensemble"]["prompt_set"]["name"] == "ensemble"
    assert outputs["ensemble"]["classification"] != outputs["default"]["classification"]
    assert outputs["ensemble"]["data"]["N"] == len(NAMES)
