"""The paper config at full size: reference parameter counts, reference keys, a CPU forward, reaf.pt-format loading."""

import csv
from pathlib import Path

import pytest
import torch

from reaf import create_model, load_checkpoint

TSV = Path(__file__).resolve().parents[1] / "data" / "reaf_checkpoint_keys.tsv"  # the reference's list, see data/README.md


def reference_keys() -> dict[str, tuple[tuple[int, ...], bool]]:
    """key -> (shape, requires_grad) from the reference's key list (tests/data, copied from shared/reference)."""
    out = {}
    with TSV.open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            shape = () if row["shape"] == "scalar" else tuple(int(s) for s in row["shape"].split("x"))
            out[row["key"]] = (shape, row["requires_grad"] == "True")
    return out


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return create_model("vit_base_singlescan_h2_token2744").eval()


def test_parameter_counts_match_the_reference(paper_model):
    assert sum(p.numel() for p in paper_model.visual.parameters()) == 92_277_504
    assert sum(p.numel() for p in paper_model.text.parameters()) == 109_284_864


def test_state_dict_equals_the_reference_key_list(paper_model):
    ref = reference_keys()
    ours = {k: (tuple(v.shape), None) for k, v in paper_model.state_dict().items()}
    assert list(ours) == list(ref)  # same names, same order
    assert {k: v[0] for k, v in ours.items()} == {k: v[0] for k, v in ref.items()}
    grads = {n: p.requires_grad for n, p in paper_model.named_parameters()}
    assert grads == {k: v[1] for k, v in ref.items()}  # lock-text default, frozen position table


def test_full_size_forward_on_cpu(paper_model):
    with torch.no_grad():
        emb = paper_model.encode_image(torch.randn(1, 1, 112, 336, 336))
    assert emb.shape == (1, 512)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))


def test_reference_format_file_loads_strictly(paper_model, tmp_path):
    ref = reference_keys()
    g = torch.Generator().manual_seed(3)
    state = {f"module.{k}": torch.randn(shape, generator=g) for k, (shape, _) in ref.items()}
    state["module.text.transformer.embeddings.position_ids"] = torch.arange(512)[None]  # transformers <= 4.30
    path = tmp_path / "reaf.pt"
    torch.save({"epoch": 10, "name": "ref", "state_dict": state, "optimizer": {}, "scaler": {"scale": 1.0}}, path)
    assert not paper_model.visual.trunk.reference_compat
    load_checkpoint(paper_model, path)
    assert paper_model.visual.trunk.reference_compat
    loaded = paper_model.state_dict()
    for key in ("visual.trunk.spatial_posemb", "visual.head.proj.weight", "text.proj.weight", "logit_scale"):
        torch.testing.assert_close(loaded[key], state[f"module.{key}"])
    del state["module.text.proj.weight"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="1 missing"):
        load_checkpoint(paper_model, path)
