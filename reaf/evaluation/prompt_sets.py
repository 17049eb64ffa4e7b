"""Prompt sets for zero-shot classification: v1's pairs, a built-in ensemble, or a JSON file; and how they combine.

A prompt set gives every class several phrasings per polarity, {class: {"negative": [...], "positive": [...]}}.
Combination (CLIP's prompt ensembling): the unit-norm text embeddings of a polarity's phrasings are averaged and the
mean is L2-normalised again; a polarity with a single phrasing keeps its embedding as encoded (already unit norm),
so a one-phrasing set is v1 to the last bit. The two combined vectors then enter the protocol's two-way softmax
p = softmax(scale * img . [t_neg, t_pos])[pos] unchanged. `python -m reaf.predict --prompts` and `zero_shot.py
--prompts` name a set the same way: "v1", "ensemble" or a path to a JSON file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reaf.data.csv_tables import CLASSES
from reaf.evaluation.prompts import class_prompts

PROMPT_SETS = ("v1", "ensemble")
POLARITIES = ("negative", "positive")
COMBINATION = (
    "per class and polarity: mean of the L2-normalised text embeddings of its phrasings, L2-normalised again (a "
    "single phrasing is used as encoded); then p = softmax(scale * img . [t_negative, t_positive])[positive]"
)
# The ensemble's phrasings besides the v1 pair, in CT-RATE's register. None of them is a sentence the synthetic
# demo's reports hold (reaf.synthetic.reports; tests/evaluation/test_prompt_sets.py checks it).
_ENSEMBLE_FORMS = {
    "negative": ("{Name} is absent.", "Findings are not consistent with {name}.", "There is no {name}."),
    "positive": ("{Name} is present.", "Findings are consistent with {name}.", "There is {name}."),
}

Phrasings = dict[str, dict[str, list[str]]]


@dataclass(frozen=True)
class PromptSet:
    """A named set of phrasings {class: {"negative": [...], "positive": [...]}} in CLASSES order."""

    name: str  # "v1", "ensemble" or the JSON file's path
    phrasings: Phrasings

    @property
    def sha256(self) -> str:
        return phrasings_sha256(self.phrasings)


def phrasings_sha256(phrasings: Phrasings) -> str:
    """sha256 of the canonical JSON of `phrasings` (keys sorted, no spaces, UTF-8): the set's identity."""
    blob = json.dumps(phrasings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def ensemble_phrasings(template: str) -> Phrasings:
    """The built-in ensemble: the v1 pair of `template` first, then three more phrasings per polarity."""
    out: Phrasings = {}
    for name, (negative, positive) in class_prompts(template, CLASSES).items():
        noun = name.lower()
        fields = {"name": noun, "Name": noun[:1].upper() + noun[1:]}
        out[name] = {
            "negative": [negative, *(form.format(**fields) for form in _ENSEMBLE_FORMS["negative"])],
            "positive": [positive, *(form.format(**fields) for form in _ENSEMBLE_FORMS["positive"])],
        }
    return out


def read_phrasings(path: str | Path) -> Phrasings:
    """{class: {"negative": [...], "positive": [...]}} from a JSON file: every class, non-empty lists of text."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable prompt-set JSON file ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object {{class: {{\"negative\": [...], \"positive\": [...]}}}}")
    unknown, missing = sorted(set(raw) - set(CLASSES)), [c for c in CLASSES if c not in raw]
    if unknown or missing:
        raise ValueError(f"{path}: classes must be exactly the 18 CT-RATE classes; unknown {unknown}, missing {missing}")
    out: Phrasings = {}
    for name in CLASSES:
        entry = raw[name]
        if not isinstance(entry, dict) or set(entry) != set(POLARITIES):
            raise ValueError(f"{path}: {name!r} must hold exactly the keys {list(POLARITIES)}")
        for polarity in POLARITIES:
            texts = entry[polarity]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"{path}: {name!r} {polarity!r} must be a non-empty list of non-empty strings")
        out[name] = {polarity: list(entry[polarity]) for polarity in POLARITIES}
    return out


def prompt_set(spec: str = "v1", template: str = "volume") -> PromptSet:
    """The prompt set `spec` names ("v1", "ensemble" or a JSON file's path) for one template ("volume" or
    "organ"; a JSON file's phrasings are the same for every template)."""
    if spec == "v1":
        pairs = class_prompts(template, CLASSES)
        return PromptSet("v1", {name: {"negative": [neg], "positive": [pos]} for name, (neg, pos) in pairs.items()})
    if spec == "ensemble":
        return PromptSet("ensemble", ensemble_phrasings(template))
    if Path(spec).suffix.lower() == ".json" or Path(spec).exists():
        return PromptSet(str(spec), read_phrasings(spec))
    raise ValueError(f"--prompts {spec!r}: expected one of {PROMPT_SETS} or a path to a JSON file")


def combine(embeddings: np.ndarray) -> np.ndarray:
    """One polarity's phrasings (P, E), each unit norm -> (E,): their mean, L2-normalised; P == 1: the row itself."""
    if len(embeddings) == 1:
        return embeddings[0]
    mean = embeddings.astype(np.float64).mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(embeddings.dtype)


def prompt_set_embeddings(model: Any, sets: dict[str, PromptSet], *, batch_size: int, device: Any
                          ) -> dict[str, np.ndarray]:
    """{key: (18, 2, E)} combined [negative, positive] text embeddings of each set; every distinct sentence over
    all the sets is encoded once (in first-seen order, the order v1 always used)."""
    from reaf.evaluation.encoding import encode_texts

    sentences = [s for ps in sets.values() for entry in ps.phrasings.values() for p in POLARITIES for s in entry[p]]
    unique = list(dict.fromkeys(sentences))
    emb = encode_texts(model, unique, batch_size=batch_size, device=device)
    row = {sentence: i for i, sentence in enumerate(unique)}
    return {
        key: np.stack([
            np.stack([combine(emb[[row[s] for s in ps.phrasings[name][p]]]) for p in POLARITIES]) for name in CLASSES
        ])
        for key, ps in sets.items()
    }


def describe(sets: dict[str, PromptSet]) -> dict[str, Any]:
    """results.json's "prompt_set": name, sha256 (of the first template's phrasings), per template, combination."""
    first = next(iter(sets.values()))
    return {"name": first.name, "sha256": first.sha256, "sha256_by_template": {t: ps.sha256 for t, ps in sets.items()},
            "combination": COMBINATION}
