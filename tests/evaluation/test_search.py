"""reaf.search: text -> volumes with the recorded model, volume -> reports, on hand-made embeddings files."""

import numpy as np
import pytest
import torch

from reaf import create_model
from reaf.evaluation.embeddings import file_fingerprint, save_embeddings
from reaf.evaluation.encoding import encode_texts
from reaf.evaluation.retrieval import normalize
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


def _recorded(tmp_path, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("tiny").eval()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
    image = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    meta = {"checkpoint": file_fingerprint(ckpt), "model_config": model.cfg.to_dict()}
    store, meta = _store(image, image, ["v0", "v1", "v2"], ["a", "b", "c"], meta)
    save_embeddings(tmp_path / "e.pt", store, key=None, meta=meta)
    return ckpt, model


def test_a_checkpoint_replaced_since_is_refused_naming_it(tmp_path, capsys):
    from reaf.exit_status import run_cli

    ckpt, _ = _recorded(tmp_path)
    torch.manual_seed(1)  # another model's weights now lie at the recorded path
    torch.save({"state_dict": create_model("tiny").state_dict()}, ckpt)
    argv = ["--embeddings", str(tmp_path / "e.pt"), "--query", QUERY]
    assert run_cli("python -m reaf.search", lambda: main(argv)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"python -m reaf.search: error: {ckpt}: not the checkpoint the embeddings were made with")
    assert "the file changed since" in err and "\n" not in err
    other = tmp_path / "other.pt"
    ckpt.rename(other)
    assert run_cli("python -m reaf.search", lambda: main([*argv, "--resume", str(other)])) == 1
    assert f"error: {other}: not the checkpoint" in capsys.readouterr().err


def test_embeddings_written_in_training_name_the_file_and_need_resume(tmp_path, capsys):
    from reaf.exit_status import run_cli

    ckpt, _ = _recorded(tmp_path)
    store = torch.load(tmp_path / "e.pt", weights_only=True)
    store["meta"]["checkpoint"] = None  # what training's per-epoch evaluation records
    torch.save(store, tmp_path / "e.pt")
    argv = ["--embeddings", str(tmp_path / "e.pt"), "--query", QUERY]
    assert run_cli("python -m reaf.search", lambda: main(argv)) == 1
    assert capsys.readouterr().err.strip() == (
        f"python -m reaf.search: error: {tmp_path / 'e.pt'}: records no checkpoint (embeddings written during "
        "training?): pass --resume PATH with the checkpoint that made them")
    assert main([*argv, "--resume", str(ckpt), "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_volumes_like_a_volume_self_left_out_siblings_marked(tmp_path, capsys):
    """--like: image -> image cosine, the volume itself left out, a reconstruction of the same scan marked; the
    names reaf.predict stores (paths) are found by their file name, and a name that is none or several is refused."""
    image = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.6, 0.5, 0], [0, 0, 1]], dtype=np.float32)
    names = ["/scans/a/v1.nii.gz", "/scans/a/v1b.nii.gz", "/scans/b/v2.nii", "/dicom/s3#1.2.3", "/scans/c/v1.nii.gz"]
    store = {"names": names, "scan_ids": ["s1", "s1", "s2", "s3", "s4"], "reports": None, "image": image,
             "text": None, "labels": None, "logit_scale": 10.0}
    save_embeddings(tmp_path / "e.pt", store, key=None, meta={"checkpoint": None, "model_config": {}})
    assert main(["--embeddings", str(tmp_path / "e.pt"), "--like", "v1b", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "volumes most like /scans/a/v1b.nii.gz (4 others):"
    expected = normalize(image[[0, 3, 2]]) @ normalize(image[1:2])[0]
    assert [line.split()[2:] for line in lines[1:]] == [["/scans/a/v1.nii.gz", "<-", "the", "same", "scan"],
                                                        ["/dicom/s3#1.2.3"], ["/scans/b/v2.nii"]]
    assert [float(line.split()[1]) for line in lines[1:]] == pytest.approx(expected, abs=1e-4)
    assert main(["--embeddings", str(tmp_path / "e.pt"), "--like", "s3", "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2] == "/scans/a/v1b.nii.gz"  # "s3": the DICOM series
    for name, cause in (("v1", "is several"), ("v9", r"is not in it \(it holds 5 volumes\)")):
        with pytest.raises(KeyError, match=cause):
            main(["--embeddings", str(tmp_path / "e.pt"), "--like", name])
    with pytest.raises(ValueError, match="--query and --like work on it"):
        main(["--embeddings", str(tmp_path / "e.pt"), "--volume", "v2"])
