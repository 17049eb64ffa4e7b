"""Search a split's embeddings (zero_shot.py) or your own scans' (reaf.predict): free text -> volumes (`--query`),
volume -> the volumes most like it (`--like`), and volume -> reports (`--volume`, a split's)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reaf.arg_types import non_empty_text, positive_int
from reaf.evaluation.embeddings import check_fingerprint, load_embeddings
from reaf.evaluation.encoding import encode_texts
from reaf.evaluation.retrieval import normalize


def top_k(query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores of the k best gallery rows (G, E) for one query (E,); ties keep gallery order."""
    scores = normalize(gallery) @ normalize(query[None, :])[0]
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


def search_volumes(store: dict[str, Any], query_embedding: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The k volumes whose image embedding is nearest a text embedding (E,): [(volume name, score)]."""
    order, scores = top_k(query_embedding, store["image"], k)
    return [(store["names"][i], float(s)) for i, s in zip(order, scores)]


def find_volume(store: dict[str, Any], volume: str, source: str | Path) -> str:
    """The stored name `volume` means: itself, or the one name whose file name (without .nii.gz/.nii) it is, as
    reaf.predict stores paths; KeyError naming the file when none or several are."""
    if volume in store["names"]:
        return volume
    from reaf.data.csv_tables import strip_suffix

    stem = strip_suffix(volume)
    found = [n for n in store["names"] if strip_suffix(n.split("#")[0]) == stem]
    if len(found) == 1:
        return found[0]
    what = f"is several: {found[:5]}" if found else f"is not in it (it holds {len(store['names'])} volumes)"
    raise KeyError(f"{source}: volume {volume!r} {what}")


def search_like(store: dict[str, Any], volume: str, k: int) -> list[tuple[str, float, bool]]:
    """The k volumes whose image embedding is nearest volume `volume`'s, itself left out: [(name, score, same scan)]
    (a sibling reconstruction of the same scan is the nearest as a rule: it is marked, not hidden)."""
    names, scans = store["names"], store.get("scan_ids") or store["names"]
    i = names.index(volume)
    others = [j for j in range(len(names)) if j != i]
    order, scores = top_k(store["image"][i], store["image"][others], k)
    return [(names[others[j]], float(s), scans[others[j]] == scans[i]) for j, s in zip(order, scores)]


def search_reports(store: dict[str, Any], volume: str, k: int) -> list[tuple[str, float, list[str]]]:
    """The k distinct reports nearest volume `volume`'s image embedding: [(report, score, volumes with it)]."""
    if volume not in store["names"]:
        raise KeyError(f"volume {volume!r} is not in the embeddings file (it holds {len(store['names'])} volumes)")
    unique = list(dict.fromkeys(store["reports"]))
    first = {text: store["reports"].index(text) for text in unique}
    text = store["text"][[first[t] for t in unique]]  # identical reports share one embedding
    order, scores = top_k(store["image"][store["names"].index(volume)], text, k)
    owners = [[n for n, r in zip(store["names"], store["reports"]) if r == unique[i]] for i in order]
    return [(unique[i], float(s), who) for i, s, who in zip(order, scores, owners)]


def load_query_model(
    store: dict[str, Any], *, source: str | Path, resume: str | None, model: str | None, cxr_bert_path: str | None,
    device: str,
) -> torch.nn.Module:
    """The model that made the embeddings (file `source`): config and checkpoint as recorded in the file, or
    --model/--resume. The checkpoint must be the one recorded (its sha256, check_fingerprint), whichever path
    names it; a file that records none (written in training) needs --resume, which cannot be checked then."""
    from reaf.model.checkpoint import model_from_checkpoint

    meta = store["meta"]
    recorded = meta.get("checkpoint")
    if recorded is None and resume is None:
        raise ValueError(f"{source}: records no checkpoint (embeddings written during training?): pass --resume PATH "
                         "with the checkpoint that made them")
    if recorded is not None:
        check_fingerprint(recorded, resume or recorded["path"])
    checkpoint = resume or recorded["path"]
    net = model_from_checkpoint(checkpoint, model=model, config=meta["model_config"], cxr_bert_path=cxr_bert_path)
    return net.to(device)


def _shorten(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reaf.search", description=__doc__)
    parser.add_argument("--embeddings", required=True, help="embeddings.pt written by zero_shot.py or reaf.predict")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--query", type=non_empty_text, help="free text, e.g. 'bilateral pleural effusion': prints the nearest volumes")
    what.add_argument("--volume", type=non_empty_text, help="a volume name, e.g. valid_3_a_1: prints the nearest reports")
    what.add_argument("--like", type=non_empty_text, metavar="VOLUME",
                      help="a volume name (or a scan's file name, for reaf.predict's embeddings): prints the volumes "
                           "whose image embedding is nearest its own")
    parser.add_argument("-k", type=positive_int, default=10, help="how many results")
    parser.add_argument("--resume", help="checkpoint to encode the query with (default: the one recorded)")
    parser.add_argument("--model", help="model config name/JSON (default: the config recorded)")
    parser.add_argument("--cxr-bert-path", help="local CXR-BERT folder, when the model was built with one")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    store = load_embeddings(Path(args.embeddings))
    if args.like is not None:
        volume = find_volume(store, args.like, args.embeddings)
        print(f"volumes most like {volume} ({len(store['names']) - 1} others):")
        for rank, (name, score, same) in enumerate(search_like(store, volume, args.k), start=1):
            print(f"{rank:3d}  {score:+.4f}  {name}{'  <- the same scan' if same else ''}")
        return 0
    if args.volume is not None and store.get("reports") is None:
        raise ValueError(f"{args.embeddings}: holds no reports (made by reaf.predict); --volume needs a split's "
                         "embeddings from zero_shot.py, --query and --like work on it")
    if args.volume is not None and args.volume not in store["names"]:
        raise KeyError(f"{args.embeddings}: volume {args.volume!r} is not in it (it holds {len(store['names'])} volumes)")
    if args.volume is not None:
        print(f"reports nearest volume {args.volume} ({len(set(store['reports']))} distinct reports):")
        for rank, (report, score, owners) in enumerate(search_reports(store, args.volume, args.k), start=1):
            own = "  <- its own report" if args.volume in owners else ""
            print(f"{rank:3d}  {score:+.4f}  {owners[0]}{' +' + str(len(owners) - 1) if len(owners) > 1 else ''}{own}")
            print(f"      {_shorten(report)}")
        return 0
    net = load_query_model(
        store, source=args.embeddings, resume=args.resume, model=args.model, cxr_bert_path=args.cxr_bert_path, device=args.device
    )
    query = encode_texts(net, [args.query], batch_size=1, device=args.device)[0]
    print(f"volumes nearest {args.query!r} ({len(store['names'])} volumes):")
    for rank, (name, score) in enumerate(search_volumes(store, query, args.k), start=1):
        print(f"{rank:3d}  {score:+.4f}  {name}")
    return 0


if __name__ == "__main__":
    from reaf.exit_status import run_cli

    sys.exit(run_cli("python -m reaf.search", main))
