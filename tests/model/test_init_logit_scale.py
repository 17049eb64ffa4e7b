"""The learnable logit scale's start is a model-config field (open_clip's init_logit_scale, a log value)."""

import math

import pytest

from reaf import create_model
from reaf.model.config import config_from_dict, load_model_config


def test_clip_start_by_default_and_the_config_value_otherwise():
    assert create_model("tiny").logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert load_model_config("vit_base_singlescan_h2_token2744").init_logit_scale == pytest.approx(math.log(1 / 0.07))
    model = create_model("tiny", init_logit_scale=math.log(5.0))
    assert model.logit_scale.exp().item() == pytest.approx(5.0)
    assert model.cfg.to_dict()["init_logit_scale"] == pytest.approx(math.log(5.0))  # checkpoints record it


def test_a_config_without_the_field_reads_as_clip_and_a_bad_value_is_refused():
    assert config_from_dict({"text": {"tokenizer": "builtin"}}).init_logit_scale == pytest.approx(math.log(1 / 0.07))
    with pytest.raises(ValueError, match=r"x.json: init_logit_scale 5.0 is outside \[0, ln 100\]"):
        config_from_dict({"init_logit_scale": 5.0, "text": {"tokenizer": "builtin"}}, where="x.json")
    with pytest.raises(ValueError, match="init_logit_scale -1"):
        create_model("tiny", init_logit_scale=-1.0)
