"""With drop_path 0.2 and dropout 0.1 on: grad checkpointing recomputes the same masks, and a resumed run replays
the same random draws (its losses equal those of an unbroken run), so the RNG handling is tested where it matters."""

import json

import pytest
import torch

import main as cli
from reaf import create_model
from reaf.model.config import load_model_config
from tests.support.training import make_dataset, step_losses, train_argv

TEXTS = ["bilateral pleural effusion.", "no nodule is seen in the lungs."]


def stochastic_config(folder):
    cfg = load_model_config("tiny").to_dict()
    cfg["vision"]["drop_path_rate"] = 0.2
    cfg["text"]["dropout"] = 0.1
    path = folder / "tiny_stochastic.json"
    path.write_text(json.dumps(cfg))
    return path


def test_grad_checkpointing_equal_with_drop_path_and_dropout(tmp_path):
    config = stochastic_config(tmp_path)
    vol = torch.randn(2, 1, 32, 96, 96, generator=torch.Generator().manual_seed(1))
    results = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = create_model(str(config), lock=False).train()
        model.set_grad_checkpointing(enabled)
        ids, mask = model.tokenize(TEXTS)
        torch.manual_seed(5)  # the same draws for both runs; the recompute must reproduce them
        img, txt, scale = model(vol, ids, mask)
        (scale * img @ txt.T).logsumexp(0).sum().backward()
        results.append((img.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.manual_seed(6)  # another draw gives another output: the layers really are stochastic here
    model.set_grad_checkpointing(False)
    assert (model.encode_image(vol).detach() - results[0][0]).abs().max() > 1e-4
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_resume_replays_drop_path_and_dropout(data, tmp_path):
    """2 epochs straight; then a new process state resumed from its epoch_1.pt: epoch 2's losses are the same."""
    model = str(stochastic_config(tmp_path))
    flags = ("--epochs", "2", "--batch-size", "2", "--grad-checkpointing", "--save-frequency", "1")

    def argv(logs, *extra):
        return [a if a != "tiny" else model for a in train_argv(data, logs, "straight", *flags, *extra)]

    assert cli.main(argv(tmp_path / "a")) == 0
    expected = {step: values[0] for step, values in step_losses(tmp_path / "a" / "straight").items()}
    assert sorted(expected) == list(range(1, 9))
    torch.manual_seed(123)  # the resumed run must take its random state from the checkpoint, not from here
    resume = tmp_path / "a" / "straight" / "checkpoints" / "epoch_1.pt"
    assert cli.main(argv(tmp_path / "b", "--resume", str(resume))) == 0
    got = step_losses(tmp_path / "b" / "straight")
    assert sorted(got) == [5, 6, 7, 8]
    for step, values in got.items():
        assert values == pytest.approx([expected[step]], rel=1e-6, abs=1e-7), step
    # the check can fail: the same checkpoint without its RNG states (restarted from the seed) draws other masks
    stripped = torch.load(resume, weights_only=True)
    stripped["rng"] = []
    torch.save(stripped, tmp_path / "no_rng.pt")
    assert cli.main(argv(tmp_path / "c", "--resume", str(tmp_path / "no_rng.pt"))) == 0
    other = step_losses(tmp_path / "c" / "straight")
    assert [other[s][0] for s in (5, 6, 7, 8)] != pytest.approx([expected[s] for s in (5, 6, 7, 8)], rel=1e-4)
