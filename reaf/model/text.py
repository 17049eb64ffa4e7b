"""The text tower (BERT -> CLS -> Linear, unit norm) and its tokenizers: a local CXR-BERT folder or a built-in vocab."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig, BertModel, BertTokenizer

from reaf import atomic
from reaf.model.bert_folder import load_bert, load_bert_tokenizer
from reaf.model.config import TextConfig

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARACTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:()-/%'\"")
# Whole words of chest-CT reports; anything else falls back to WordPiece characters.
REPORT_WORDS = """
the a an of in on at to and or with without no not is are was were be been has have there this that these those
shows show showed seen observed detected noted present absent evident identified visualized appears appear
normal abnormal finding findings impression impressions volume scan ct chest thorax thoracic examination
left right bilateral both side sides upper lower middle lobe lobes segment segments base bases apex apical basal
anterior posterior lateral medial central peripheral subpleural dependent diffuse focal multiple single small large
mild moderate severe minimal marked prominent increased decreased enlarged dilated thickened thickening
lung lungs pulmonary parenchyma airway airways trachea bronchi bronchial bronchus pleura pleural pleural fissure
heart cardiac pericardium pericardial coronary artery arteries arterial aorta aortic wall walls vessel vessels
mediastinum mediastinal hilar hilum esophagus esophageal hiatal hernia stomach diaphragm liver spine vertebra bone
medical material device catheter stent pacemaker clip clips wire
calcification calcifications calcified plaque plaques cardiomegaly effusion fluid lymphadenopathy lymph node nodes
emphysema emphysematous atelectasis atelectatic nodule nodules opacity opacities ground glass fibrotic fibrosis
sequela sequelae mosaic attenuation pattern peribronchial consolidation consolidative bronchiectasis interlobular
septal septum density densities area areas region regions mm cm size measuring diameter
abdomen abdominal air amount aortopulmonary appearance atherosclerotic bands breath bronchograms calibration
calibre centrilobular circumflex consistent contour contrast cough cylindrical cystic degree descending dyspnoea
either evaluation examined extensive fever few follow for from given gland hiatus hila included inlet intravenous
largest like linear lingula lumens main mass most multislice natural one open organs pain paraseptal paratracheal
parenchymal patchy patent pathological performed plate pneumothorax port position preoperative prevascular reaching
scanning sections shortness sizes smooth sternotomy sternum structures study subcarinal subsegmental supine surrounds
their thickness thyroid unremarkable up varicose week window windows wires
""".split()


def builtin_vocab() -> list[str]:
    """The offline vocabulary of tiny models: specials, characters, ##characters, then report words (deduplicated)."""
    words = SPECIAL_TOKENS + CHARACTERS + [f"##{c}" for c in CHARACTERS] + REPORT_WORDS
    return list(dict.fromkeys(words))


def _builtin_vocab_file() -> Path:
    text = "\n".join(builtin_vocab()) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"reaf_vocab_{digest}.txt"
    if not path.exists():
        atomic.write_text(path, text)
    return path


def build_tokenizer(cfg: TextConfig, bert_path: str | None = None):
    """A HF tokenizer: from the local BERT folder when given, else the built-in vocabulary (tiny configs)."""
    if bert_path is not None:
        return load_bert_tokenizer(bert_path)
    if cfg.tokenizer != "builtin":
        raise ValueError(
            f"the text tower uses the {cfg.tokenizer!r} tokenizer: pass --cxr-bert-path (a local folder) "
            "or use a config whose text.tokenizer is 'builtin'"
        )
    return BertTokenizer(str(_builtin_vocab_file()), do_lower_case=True)


def bert_config(cfg: TextConfig) -> BertConfig:
    """The BertConfig of a randomly initialised text tower (CXR-BERT-base for the paper config)."""
    vocab = len(builtin_vocab()) if cfg.tokenizer == "builtin" else cfg.vocab_size
    if cfg.tokenizer == "builtin" and cfg.vocab_size not in (0, vocab):
        raise ValueError(f"text.vocab_size={cfg.vocab_size} but the built-in vocabulary has {vocab} tokens")
    return BertConfig(
        vocab_size=vocab,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=2,
        pad_token_id=0,
        layer_norm_eps=1e-12,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        initializer_range=cfg.init_std,
    )


class TextTower(nn.Module):
    """Token ids (B, L) -> unit-norm embedding (B, E): BERT, CLS of the last hidden state, Linear without bias."""

    def __init__(self, cfg: TextConfig, embed_dim: int, bert_path: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if bert_path is not None:
            self.transformer = load_bert(bert_path)  # CXR-BERT's code never runs; nothing is fetched
        else:
            self.transformer = BertModel(bert_config(cfg), add_pooling_layer=False)
        self.proj = nn.Linear(self.transformer.config.hidden_size, embed_dim, bias=False)
        self.locked = False

    def lock(self) -> None:
        """Freeze BERT except its LayerNorms (the reference's --lock-text); the projection stays trainable."""
        for name, param in self.transformer.named_parameters():
            param.requires_grad = "LayerNorm" in name
        self.locked = True

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint BERT's layers, only while BERT is trainable (a frozen tower stores no activations to save)."""
        bert = self.transformer
        kwargs = {"use_reentrant": False}
        on = enabled and not self.locked
        if hasattr(bert, "activation_checkpointing_enable"):  # transformers 5 renamed gradient_checkpointing_*
            bert.activation_checkpointing_enable(kwargs) if on else bert.activation_checkpointing_disable()
        else:
            bert.gradient_checkpointing_enable(kwargs) if on else bert.gradient_checkpointing_disable()

    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) token ids -> (B, hidden) CLS of BERT's last hidden state, before the projection."""
        return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    def project(self, features: Tensor) -> Tensor:
        """(B, hidden) CLS features -> (B, E) unit-norm embeddings."""
        return F.normalize(self.proj(features), dim=-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.project(self.features(input_ids, attention_mask))


def tokenize(tokenizer, texts: list[str], context_length: int) -> tuple[Tensor, Tensor]:
    """list of N strings -> (input_ids, attention_mask), each (N, L) long, L <= context_length (padded to longest)."""
    out = tokenizer(list(texts), padding="longest", truncation=True, max_length=context_length, return_tensors="pt")
    return out["input_ids"].to(torch.long), out["attention_mask"].to(torch.long)
