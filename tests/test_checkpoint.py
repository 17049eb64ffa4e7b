"""Weights in and out on the tiny config: our format round-trips, mismatches are errors, compat follows the file."""

import pytest
import torch

from reaf import create_model, load_checkpoint


def ours(model):
    return {"epoch": 1, "state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict(), "args": {}}}


def test_our_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    src = create_model("tiny").eval()
    path = tmp_path / "ckpt.pt"
    torch.save(ours(src), path)
    torch.manual_seed(1)
    dst = create_model("tiny").eval()
    vol = torch.randn(1, 1, 32, 96, 96)
    assert not torch.allclose(src.encode_image(vol), dst.encode_image(vol))
    obj = load_checkpoint(dst, path)
    assert obj["epoch"] == 1
    torch.testing.assert_close(src.encode_image(vol), dst.encode_image(vol))
    assert not dst.visual.trunk.reference_compat


def test_reference_format_switches_compat_and_changes_the_embedding(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    vol = torch.randn(1, 1, 32, 96, 96)
    before = model.encode_image(vol)
    path = tmp_path / "ref.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    load_checkpoint(model, path)
    assert model.visual.trunk.reference_compat and model.cfg.vision.reference_compat
    assert not torch.allclose(before, model.encode_image(vol))  # same weights, the reference's quirks


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_mismatches_are_errors_naming_the_file(tmp_path, change):
    model = create_model("tiny")
    state = model.state_dict()
    if change == "missing":
        state.pop("visual.trunk.norm.weight")
    elif change == "unexpected":
        state["visual.trunk.extra"] = torch.zeros(1)
    else:
        state["text.proj.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="bad.pt") as err:
        load_checkpoint(model, path)
    assert {"missing": "1 missing", "unexpected": "1 unexpected", "shape": "1 shape"}[change] in str(err.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(create_model("tiny"), tmp_path / "nope.pt")
