"""--positives shared: a text counts as a positive of every volume of the global batch whose report holds all of its
sentences (issue #12: a repeated negation sentence, the one report of two reconstructions, is not a negative)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reaf.data.text_sampling import sample_text, split_sentences
from reaf.model.loss import _symmetric_ce, local_contrastive_loss, shared_positives
from reaf.training.flags import parse_args
from reaf.training.step import train_step
from tests.support.training import context, tiny

REPORTS = [
    "Cardiomegaly is observed. No pleural effusion was detected.",
    "No pleural effusion was detected. The lungs show no emphysema.",
    "Left pleural effusion is observed. The lungs show no emphysema.",
    "Cardiomegaly is observed. No pleural effusion was detected.",  # a second reconstruction of scan 0
]


def test_a_text_is_shared_with_every_report_that_holds_all_its_sentences():
    texts = ["No pleural effusion was detected.", "The lungs show no emphysema.", REPORTS[2], REPORTS[3]]
    mask = shared_positives(texts, REPORTS)
    assert mask.tolist() == [
        [True, True, False, True],  # the repeated negation is true of volumes 0, 1, 3, not of the effusion
        [False, True, True, False],
        [False, False, True, False],  # a whole report: only its own volume
        [True, False, False, True],  # the other reconstruction's report is the same text
    ]
    with pytest.raises(ValueError, match="3 texts for 4 reports"):
        shared_positives(texts[:3], REPORTS)


def test_the_mask_is_the_subset_relation_on_a_large_batch_of_drawn_texts():
    """The vectorised mask equals its definition (the text's sentence set within the report's) on 300 reports drawn
    from a pool of sentences, with repeated reports, sentence and whole-report texts, a blank text and a text holding a
    sentence no report holds."""
    rng = np.random.default_rng(0)
    pool = [f"Finding {k} is {'absent' if k % 2 else 'present'} in the lung." for k in range(12)]
    reports = [" ".join(rng.choice(pool, size=rng.integers(1, 6), replace=False)) for _ in range(300)]
    reports[7] = reports[3]
    texts = [sample_text(r, "both", seed=0, epoch=1, index=i) for i, r in enumerate(reports)]
    texts[0], texts[1] = "  ", reports[1] + " A sentence of no report."
    report_sets = [frozenset(split_sentences(r)) | {r.strip()} for r in reports]
    text_sets = [frozenset(split_sentences(t)) or frozenset({t.strip()}) for t in texts]
    expected = np.array([[t <= r for r in report_sets] for t in text_sets])
    mask = shared_positives(texts, reports)
    assert mask.dtype == bool and np.array_equal(mask, expected)
    assert mask[3, 7] and mask[7, 3] and not mask[0].any() and not mask[1].any()
    assert 300 < mask.sum() < 300 * 300  # the sentence texts are shared, the whole reports mostly not


def test_own_positives_give_clip_and_shared_ones_spread_the_target():
    gen = torch.Generator().manual_seed(0)
    img, txt = (F.normalize(torch.randn(4, 8, generator=gen), dim=-1) for _ in range(2))
    scale = torch.tensor(5.0)
    eye = torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(local_contrastive_loss(img, txt, scale, eye), local_contrastive_loss(img, txt, scale))
    mask = torch.from_numpy(shared_positives(["No pleural effusion was detected.", *REPORTS[1:]], REPORTS))
    logits = scale * txt @ img.T  # (text, volume)
    by_text = -(mask / mask.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    by_image = -(mask.T / mask.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(local_contrastive_loss(img, txt, scale, mask), (by_text + by_image) / 2)
    # a rank's rows against every rank's columns: the mean over two "ranks" of 2 rows is the whole batch's loss
    halves = [_symmetric_ce(img[r], txt[r], img, txt, scale, offset=r.start, positives=mask)
              for r in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(sum(halves) / 2, local_contrastive_loss(img, txt, scale, mask))
    with pytest.raises(ValueError, match="diagonal"):
        local_contrastive_loss(img, txt, scale, ~eye)
    with pytest.raises(ValueError, match=r"must be \(N, N\) = \(4, 4\)"):
        local_contrastive_loss(img, txt, scale, eye[:3])


def test_shared_positives_in_the_training_step_accumulate_like_one_batch(data):  # noqa: F811
    """On real synthetic sentence batches: shared texts change the loss, and accumulation 2 x 2 still equals 1 x 4."""
    from reaf.data import loader as loaders
    from reaf.data.input_spec import InputSpec

    model = tiny()
    spec = InputSpec.from_args(["-1150", "350", "resize"], model.cfg.vision.img_size)
    big = next(iter(loaders.build_dataloader(data, spec, model.tokenize, batch_size=4, workers=0, seed=0, train=True,
                                             text_sampling="sentence")))  # fmt: skip
    mask = shared_positives(big["text"], big["report"])
    assert all(set(split_sentences(t)) <= set(split_sentences(r)) for t, r in zip(big["text"], big["report"]))
    assert mask.sum() > 4, "the synthetic reports share sentences (the tail, negations): some text is shared"
    halves = [{k: v[part] for k, v in big.items()} for part in (slice(0, 2), slice(2, 4))]
    losses = {}
    for positives, micro, accum in (("own", [big], 1), ("shared", [big], 1), ("shared", halves, 2)):
        model = tiny()
        ctx = context(model, accum, lr=1e-4)
        ctx.positives = positives
        losses[positives, accum] = train_step(ctx, micro, 0)[0].item()
    assert losses["shared", 1] == pytest.approx(losses["shared", 2], abs=1e-6)
    assert losses["shared", 1] != pytest.approx(losses["own", 1], abs=1e-4)
    assert math.isfinite(losses["shared", 1])


def test_positives_flag_defaults_to_clip_and_is_checked():
    assert parse_args(["--data-root", "x"]).positives == "own"
    assert parse_args(["--data-root", "x", "--positives", "shared"]).positives == "shared"
    with pytest.raises(SystemExit):
        parse_args(["--data-root", "x", "--positives", "all"])
    from reaf.training.flags import TrainFlags

    with pytest.raises(ValueError, match="--positives 'all'"):
        TrainFlags.with_defaults(data_root="x", positives="all")
    assert np.array_equal(shared_positives(["a b."], ["a b."]), [[True]])
