"""A local CXR-BERT folder laid out as published loads without running its code; plain BERT folders still load."""

import json
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

from reaf import create_model
from reaf.model.bert_folder import load_bert, load_bert_tokenizer
from reaf.model.text import builtin_vocab

TINY_BERT = dict(vocab_size=len(builtin_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64)
CUSTOM_CODE = 'raise RuntimeError("the folder\'s custom code was executed")\n'


def write_published_folder(folder, *, weights="pytorch_model.bin", do_lower_case=True):
    """The file set of BiomedVLP-CXR-BERT-specialized at tiny size: custom-code config and tokenizer class, the
    .py files (here raising when imported), a CXRBertModel state dict (masked-LM + projection head, an old
    transformers' position_ids buffer)."""
    folder.mkdir(exist_ok=True)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(**TINY_BERT))
    config = {
        "architectures": ["CXRBertModel"],
        "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig", "AutoModel": "modeling_cxrbert.CXRBertModel"},
        "model_type": "cxr-bert", "projection_size": 16, "hidden_act": "gelu", "hidden_dropout_prob": 0.25,
        "attention_probs_dropout_prob": 0.25, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "position_embedding_type": "absolute", "type_vocab_size": 2, "torch_dtype": "float32",
        "transformers_version": "4.17.0.dev0", "use_cache": True, "gradient_checkpointing": False, **TINY_BERT,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": do_lower_case, "tokenize_chinese_chars": True, "strip_accents": None,
        "model_max_length": 512, "tokenizer_class": "CXRBertTokenizer",
        "auto_map": {"AutoTokenizer": ["configuration_cxrbert.CXRBertTokenizer", None]},
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}))
    (folder / "vocab.txt").write_text("\n".join(builtin_vocab()) + "\n")
    for name in ("configuration_cxrbert.py", "modeling_cxrbert.py"):
        (folder / name).write_text(CUSTOM_CODE)
    state = {k: v.clone() for k, v in mlm.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    for name, shape in {"dense_to_hidden.weight": (16, 32), "dense_to_hidden.bias": (16,), "LayerNorm.weight": (16,),
                        "LayerNorm.bias": (16,), "dense_to_output.weight": (16, 16), "dense_to_output.bias": (16,)}.items():
        state[f"cls_projection_head.{name}"] = torch.randn(shape)
    if weights == "model.safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    return mlm


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_published_cxr_bert_folder_loads_exactly_without_its_code(tmp_path, weights):
    mlm = write_published_folder(tmp_path / "cxr", weights=weights)
    model = create_model("tiny", cxr_bert_path=str(tmp_path / "cxr"))
    assert not any("cxrbert" in name for name in sys.modules)
    ours, theirs = model.text.transformer.state_dict(), mlm.bert.state_dict()
    assert ours.keys() == {k for k in theirs if not k.startswith("pooler.")}
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, msg=key)
    assert model.text.transformer.config.hidden_dropout_prob == 0.25  # the folder's config, not TextConfig's
    mlm.eval()
    model.text.eval()
    ids, mask = model.tokenize(["Left pleural effusion."])
    cls = mlm.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    torch.testing.assert_close(model.text.features(ids, mask), cls)


def test_published_tokenizer_is_wordpiece_with_the_folders_lower_casing(tmp_path):
    write_published_folder(tmp_path / "lower")
    write_published_folder(tmp_path / "cased", do_lower_case=False)
    lower, cased = load_bert_tokenizer(tmp_path / "lower"), load_bert_tokenizer(tmp_path / "cased")
    text = "Left PLEURAL effusion"
    ids = lower(text)["input_ids"]
    assert ids == lower(text.lower())["input_ids"] and lower.unk_token_id not in ids
    assert lower.convert_ids_to_tokens(ids) == ["[CLS]", "left", "pleural", "effusion", "[SEP]"]
    assert cased.convert_ids_to_tokens(cased(text)["input_ids"])[1:3] == ["[UNK]", "[UNK]"]  # vocab is lower case


def test_plain_bert_folder_saved_by_transformers_loads(tmp_path):
    torch.manual_seed(1)
    bert = BertModel(BertConfig(**TINY_BERT))  # save_pretrained of a BertModel: bare keys, a pooler
    bert.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(builtin_vocab()) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").unlink(missing_ok=True)  # transformers 5 keeps only tokenizer.json
    loaded = load_bert(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, bert.state_dict()[key], rtol=0, atol=0)
    tokenizer = load_bert_tokenizer(tmp_path)
    assert tokenizer.tokenize("Left PLEURAL effusion") == ["left", "pleural", "effusion"]


def test_bad_folders_name_the_file_and_cause(tmp_path):
    write_published_folder(tmp_path)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    del state["bert.encoder.layer.1.output.dense.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model.bin.*missing \['encoder.layer.1.output.dense.weight'\]"):
        load_bert(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ValueError, match=r"config.json: model_type 'roberta'"):
        load_bert(tmp_path)
    (tmp_path / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_bert_tokenizer(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="no BERT weights"):
        load_bert(tmp_path)


def test_loading_leaves_the_global_rng_untouched(tmp_path):
    write_published_folder(tmp_path)
    torch.manual_seed(3)
    load_bert(tmp_path)
    after = torch.rand(3)
    torch.manual_seed(3)
    torch.testing.assert_close(after, torch.rand(3), rtol=0, atol=0)  # models built after it draw as before
