"""The encoder in timm's registry: the reference's name and size, and open_clip's TimmModel around it."""

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel

from reaf import create_model
from reaf.model.timm_models import TimmVolumeEncoder

REFERENCE_TRUNK_PARAMS = 91_884_288  # visual.trunk.* of the reference's key list
TSV = Path(__file__).resolve().parents[1] / "data" / "reaf_checkpoint_keys.tsv"  # copied in, see tests/data/README.md


def test_reference_name_builds_the_reference_trunk():
    assert "vit_base_singlescan_h2_token2744" in timm.list_models("vit_base_singlescan*")
    trunk = timm.create_model("vit_base_singlescan_h2_token2744", drop_path_rate=0.1)
    assert isinstance(trunk, TimmVolumeEncoder) and trunk.num_features == 768 and trunk.grid == (14, 14, 14)
    assert sum(p.numel() for p in trunk.parameters()) == REFERENCE_TRUNK_PARAMS
    assert trunk.cfg.drop_path_rate == 0.1 and trunk.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    rows = [line.split("\t") for line in TSV.read_text().splitlines()[1:]]
    ref = {k.removeprefix("visual.trunk."): shape for k, shape, *_ in rows if k.startswith("visual.trunk.")}
    ours = {k: "x".join(map(str, v.shape)) for k, v in trunk.state_dict().items()}
    assert len(ref) > 100 and ours == ref


def test_open_clip_timm_model_gives_encode_image():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    tower = TimmModel("reaf_tiny", embed_dim=64, image_size=model.cfg.vision.img_size, pool="", proj="linear")
    tower.load_state_dict(model.visual.state_dict(), strict=True)  # same keys: trunk.*, head.proj.weight
    tower.eval()
    volume = torch.randn(2, 1, *model.cfg.vision.img_size)
    with torch.no_grad():
        expected = model.encode_image(volume)
        got = F.normalize(tower(volume), dim=-1)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got[0], got[1])


def test_registered_encoder_refuses_what_it_cannot_be():
    with pytest.raises(ValueError, match="no weights are downloaded"):
        timm.create_model("reaf_tiny", pretrained=True)
    with pytest.raises(ValueError, match="global_pool must be 'token'"):
        TimmModel("reaf_tiny", embed_dim=64, pool="avg", proj="linear")
    with pytest.raises(ValueError, match="no classifier head"):
        timm.create_model("reaf_tiny", num_classes=10)
    with pytest.raises(TypeError, match=r"unknown arguments \['colour'\]"):
        timm.create_model("reaf_tiny", colour=1)


def test_import_timm_then_reaf_registers_the_encoder_and_reaf_alone_loads_no_torch():
    """In fresh interpreters: the README's `import timm, reaf` then timm.create_model; `import reaf` alone stays
    light (no torch) for the data tools."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    code = ("import timm, reaf; m = timm.create_model('reaf_tiny'); "
            "print(type(m).__name__, 'vit_base_singlescan_h2_token2744' in timm.list_models('vit_base_singlescan*'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["TimmVolumeEncoder", "True"], out.stderr[-2000:]
    light = subprocess.run([sys.executable, "-c", "import sys, reaf; print('torch' in sys.modules)"], cwd=repo,
                           capture_output=True, text=True, timeout=300)
    assert light.stdout.strip() == "False", light.stderr[-2000:]
