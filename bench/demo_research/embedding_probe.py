"""Is a class's information in a trained demo model's image embedding, or lost between it and the prompts?

For each model of a finished demo folder, its final checkpoint encodes the training and validation volumes (the
demo's fast cache); per class, a logistic regression on the training embeddings (the model's L2-normalised
64-d image embedding, the one zero-shot scores) is scored on the validation split, beside the zero-shot AUC the
demo measured (protocol v1). A class with a high probe AUC and a zero-shot AUC near 0.5 is seen by the image tower
but not reached through the text side's prompt pair. Also recorded: the mean pairwise cosine, across the 18 classes,
of their "X" minus "Not X" prompt differences (1: every class scores along one shared direction), and, as a
diagnostic of the prompts' wording (the protocol's prompts do not change), the zero-shot AUC when each class's
pair is reworded: without the "The volume shows:" prefix ("Not X." / "X."), as "No x." / "X.", and as
"No x was detected." / "X is observed." (x: the positive finding in lower case).

    python -m bench.demo_research.embedding_probe --demo-dir demo_runs/v3/seed_0

Writes bench/demo_research/results/embedding_probe.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from bench.common import RESEARCH_RESULTS, machine_info, write_result
from bench.demo_research.demo_diagnostics import aucs, load_split
from reaf.data.csv_tables import CLASSES
from reaf.data.input_spec import InputSpec
from reaf.data.readers import find_splits
from reaf.demo import INPUT_INFO
from reaf.evaluation.prompts import VOLUME_PAIRS, class_prompts, sentence
from reaf.model.checkpoint import model_from_checkpoint


def image_embeddings(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model.encode_image(x[i : i + 50]) for i in range(0, len(x), 50)]).numpy()


def probe(train: np.ndarray, y_train: torch.Tensor, valid: np.ndarray, y_valid: torch.Tensor) -> list[float]:
    mu, sd = train.mean(0), train.std(0) + 1e-6
    scores = np.stack([LogisticRegression(C=1.0, max_iter=1000).fit((train - mu) / sd, y_train[:, c].numpy())
                       .decision_function((valid - mu) / sd) for c in range(len(CLASSES))], axis=1)  # fmt: skip
    return aucs(y_valid, scores)


def prompt_differences(model: torch.nn.Module) -> dict:
    """How alike the 18 classes' zero-shot directions are: for each class the difference between the model's
    (normalised) text embeddings of its "X" and "Not X" prompts; the mean pairwise cosine of these differences
    across classes, in the model's embedding space and in MiniLM's feature space (before the projection)."""
    pairs = list(class_prompts("volume").values())
    with torch.no_grad():
        neg, pos = ([p[i] for p in pairs] for i in (0, 1))
        emb = [model.encode_text(*model.tokenize(t)) for t in (neg, pos)]
        raw = [model.text.features(*model.tokenize(t)) for t in (neg, pos)]

    def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        d = torch.nn.functional.normalize(b - a, dim=-1)
        c = d @ d.T
        return round(float((c.sum() - c.diagonal().sum()) / (len(d) * (len(d) - 1))), 3)

    return {"embedding_space": mean_cosine(*emb), "text_features": mean_cosine(*raw)}


PROMPT_FORMS = {  # (negative, positive) finding of a class's "volume" pair -> a reworded sentence pair
    "protocol": lambda neg, pos: (sentence("volume", "volume", neg), sentence("volume", "volume", pos)),
    "without_prefix": lambda neg, pos: (f"{neg}.", f"{pos}."),
    "no_x": lambda neg, pos: (f"No {pos.lower()}.", f"{pos}."),
    "no_x_was_detected": lambda neg, pos: (f"No {pos.lower()} was detected.", f"{pos} is observed."),
}


def prompt_forms(model: torch.nn.Module, image: np.ndarray, labels: torch.Tensor) -> dict:
    """Zero-shot AUCs (mean and per class) with each class's prompt pair reworded as PROMPT_FORMS says; "protocol"
    rebuilds the protocol's own sentences, so it repeats the demo's zero-shot AUC."""
    out = {}
    for form, reword in PROMPT_FORMS.items():
        pairs = [reword(*VOLUME_PAIRS[c]) for c in CLASSES]
        with torch.no_grad():
            neg, pos = (model.encode_text(*model.tokenize([p[i] for p in pairs])).numpy() for i in (0, 1))
        a = aucs(labels, image @ pos.T - image @ neg.T)  # the softmax over the pair ranks as this difference does
        out[form] = {"mean_auc_18": round(float(np.mean(a)), 4), "per_class": dict(zip(CLASSES, np.round(a, 3)
                                                                                        .tolist()))}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-dir", required=True, help="a finished demo folder (cache/, runs/, results/)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    machine, root = machine_info(), Path(args.demo_dir)
    cache = root / "cache"
    summary = json.loads((root / "demo_summary.json").read_text())
    models = [m for m in ("reaf", "plain_hierarchy") if m in summary]
    spec = None
    results = {}
    for name in models:
        start = time.time()
        model = model_from_checkpoint(summary[name]["checkpoint"])
        if spec is None:
            spec = InputSpec.from_args(list(INPUT_INFO), model.cfg.vision.img_size)
            splits = find_splits(cache)
            train, valid = load_split(cache, "train", spec), load_split(cache, "val" if splits.get("val") else "test",
                                                                        spec)  # fmt: skip
        valid_image = image_embeddings(model, valid["x"])
        probe_auc = probe(image_embeddings(model, train["x"]), train["y"], valid_image, valid["y"])
        folder = root / "results" / name  # the valid split's zero-shot (a demo before the test split: the only one)
        path = folder / "valid" / "results.json" if (folder / "valid").is_dir() else folder / "results.json"
        zero_shot = json.loads(path.read_text())["classification"]["18"]
        per_class = {c: {"probe": round(a, 3), "zero_shot": round(zero_shot["per_class"][c]["auc"], 3)}
                     for c, a in zip(CLASSES, probe_auc)}  # fmt: skip
        results[name] = {"mean_probe_auc_18": round(float(np.mean(probe_auc)), 4),
                         "mean_zero_shot_auc_18": round(zero_shot["mean"]["auc"], 4),
                         "prompt_difference_mean_cosine": prompt_differences(model), "per_class": per_class,
                         "prompt_forms": prompt_forms(model, valid_image, valid["y"]),
                         "seconds": round(time.time() - start, 1)}  # fmt: skip
        print(name, results[name]["mean_probe_auc_18"], results[name]["mean_zero_shot_auc_18"], flush=True)
    print(write_result("embedding_probe", {"settings": {"demo_dir": str(root), "probe": "logistic regression, C=1, "
                       "standardised 64-d image embeddings, fit on the training split, scored on validation"},
                       "machine": machine, "results": results}, args.out, folder=RESEARCH_RESULTS))  # fmt: skip


if __name__ == "__main__":
    main()
