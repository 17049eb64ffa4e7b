"""The text tower from a local BERT folder (CXR-BERT style: a BertForMaskedLM checkpoint) and the built-in vocab."""

import json

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

from reaf import create_model
from reaf.model.text import builtin_vocab


@pytest.fixture()
def bert_folder(tmp_path):
    """A tiny CXR-BERT-like folder: masked-LM weights under `bert.`, config with a foreign model_type, vocab."""
    (tmp_path / "vocab.txt").write_text("\n".join(builtin_vocab()) + "\n")
    config = BertConfig(
        vocab_size=len(builtin_vocab()),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    mlm = BertForMaskedLM(config)
    mlm.save_pretrained(tmp_path)
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["CXRBertModel"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path, mlm


def test_local_bert_folder_loads_weights_and_tokenizer(bert_folder):
    path, mlm = bert_folder
    model = create_model("tiny", cxr_bert_path=str(path))
    bert = model.text.transformer
    assert bert.config.hidden_size == 32 and model.text.proj.weight.shape == (64, 32)
    torch.testing.assert_close(bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight)
    ids, mask = model.tokenize(["left pleural effusion"])
    assert ids[0, 0].item() == model.tokenizer.cls_token_id and (ids != model.tokenizer.unk_token_id).all()
    assert model.encode_text(ids, mask).shape == (1, 64)


def test_builtin_vocab_tokenizes_report_words_without_unknowns():
    model = create_model("tiny")
    ids, mask = model.tokenize(["Findings: 12 mm nodule in the right upper lobe; no effusion.", "x"])
    assert ids.shape[0] == 2 and mask[1].sum() < mask[0].sum()
    assert (ids[mask.bool()] != model.tokenizer.unk_token_id).all()


def test_paper_config_without_bert_folder_cannot_tokenize():
    from reaf.model.config import load_model_config
    from reaf.model.text import build_tokenizer

    with pytest.raises(ValueError, match="--cxr-bert-path"):
        build_tokenizer(load_model_config("vit_base_singlescan_h2_token2744").text)
