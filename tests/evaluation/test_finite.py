"""NaN never scores: retrieval, AUROC, zero-shot metrics and the encoders refuse non-finite values by name."""

import numpy as np
import pytest
import torch

from reaf import create_model
from reaf.evaluation.encoding import encode_texts, encode_volumes
from reaf.evaluation.metrics import classification_metrics, weighted_auroc
from reaf.evaluation.retrieval import retrieval_metrics, target_ranks
from reaf.finite import NonFiniteError


def test_nan_similarity_never_gives_rank_one():
    gallery = np.eye(3, dtype=np.float32)
    queries = np.array([[0.0, 0.0, 1.0], [np.nan, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    # without the check query 1's NaN similarities are never "ahead" of its target: it would get rank 1
    with pytest.raises(NonFiniteError, match=r"retrieval queries: 1 non-finite value.*\[1\]"):
        target_ranks(queries, gallery, np.array([0, 1, 2]))
    with pytest.raises(NonFiniteError, match="retrieval gallery"):
        target_ranks(gallery, queries, np.array([0, 1, 2]))


def test_retrieval_metrics_name_the_nan_volume():
    image = np.eye(3, dtype=np.float32)
    image[2, 0] = np.inf
    with pytest.raises(NonFiniteError, match=r"image embeddings.*\['v2'\]"):
        retrieval_metrics(image, np.eye(3), ["s0", "s1", "s2"], ["v0", "v1", "v2"], None)


def test_auroc_refuses_nan_scores():
    labels = np.array([0, 0, 1, 1])
    assert weighted_auroc(labels, np.array([0.1, 0.2, 0.3, 0.4]))[0] == 1.0
    # NaN sorted as the top group would have given 0.75 here (one negative above both positives)
    with pytest.raises(NonFiniteError, match="AUROC scores: 1 non-finite"):
        weighted_auroc(labels, np.array([np.nan, 0.2, 0.3, 0.4]))


def test_classification_metrics_refuse_nan_probabilities():
    labels = np.array([[0.0], [1.0], [0.0], [1.0]])
    probs = np.array([[0.1], [0.9], [np.nan], [0.8]])
    with pytest.raises(NonFiniteError, match="zero-shot probabilities"):
        classification_metrics(labels, probs, ["A"], n_boot=10)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny").eval()


def test_encode_volumes_refuses_nan_embeddings(model):
    image = torch.zeros(2, 1, *model.cfg.vision.img_size)
    image[1, 0, 0, 0, 0] = float("nan")
    batch = {"image": image, "name": ["good", "bad"]}
    with pytest.raises(NonFiniteError, match=r"image embeddings.*\['bad'\]"):
        encode_volumes(model, [batch], ["good", "bad"], device="cpu")
    ok = encode_volumes(model, [{"image": image[:1], "name": ["good"]}], ["good"], device="cpu")
    assert np.isfinite(ok).all() and np.allclose(np.linalg.norm(ok, axis=1), 1, atol=1e-5)


def test_encode_texts_refuses_nan_weights():
    torch.manual_seed(0)
    net = create_model("tiny").eval()
    assert np.isfinite(encode_texts(net, ["a b", "c"], batch_size=2, device="cpu")).all()
    with torch.no_grad():
        next(net.text.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="text embeddings"):
        encode_texts(net, ["a b", "c"], batch_size=2, device="cpu")
