"""reaf.search: text -> volumes with the recorded model, volume -> reports, on hand-made embeddings files."""

import numpy as np
import pytest
import torch

from reaf import create_model
from reaf.evaluation.embeddings import file_fingerprint, save_embeddings
from reaf.evaluation.encoding import encode_texts
from reaf.search import main

QUERY = "bilateral pleural effusion"


def _store(image, text, names, reports, meta):
    return {
        "names": names,
        "scan_ids": names,
        "reports": reports,
        "image": image,
        "text": text,
        "labels": None,
        "logit_scale": 10.0,
    }, meta


def test_volume_to_reports(tmp_path, capsys):
    names = ["v1", "v2", "v3", "v4"]
    reports = ["report A", "report B", "report B", "report C"]  # v2 and v3 share a report (sibling reconstructions)
    text = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    image = np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.95], [0.2, 0.9, 0.1], [0.5, 0.1, 0.8]], dtype=np.float32)
    store, meta = _store(image, text, names, reports, {"checkpoint": None, "model_config": {}})
    save_embeddings(tmp_path / "e.pt", store, key=None, meta=meta)
    assert main(["--embeddings", str(tmp_path / "e.pt"), "--volume", "v3", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "3 distinct reports" in lines[0]
    assert lines[1].split()[2:] == ["v2", "+1", "<-", "its", "own", "report"] and lines[2].strip() == "report B"
    assert lines[3].split()[2] == "v1" and len(lines) == 5  # k=2: two results, two lines each
    with pytest.raises(KeyError, match="v9"):
        main(["--embeddings", str(tmp_path / "e.pt"), "--volume", "v9"])


def test_query_to_volumes_with_recorded_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    query = encode_texts(model, [QUERY], batch_size=1, device="cpu")[0]
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, query.shape[0])).astype(np.float32)
    image[4] = query + 0.01 * image[4]  # volume v4 is the one the query describes
    image[1] = query + 0.1 * image[1]  # v1 is close, but less so
    names = [f"v{i}" for i in range(6)]
    meta = {"checkpoint": file_fingerprint(ckpt), "model_config": model.cfg.to_dict()}
    store, meta = _store(image, image, names, names, meta)
    save_embeddings(tmp_path / "e.pt", store, key=None, meta=meta)
    assert main(["--embeddings", str(tmp_path / "e.pt"), "--query", QUERY, "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "6 volumes" in lines[0]
    top = [line.split() for line in lines[1:]]
    assert [row[2] for row in top[:2]] == ["v4", "v1"] and len(top) == 3
    assert 0.99 < float(top[0][1]) <= 1.0 and float(top[0][1]) > float(top[1][1]) > float(top[2][1])
