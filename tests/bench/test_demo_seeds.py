"""bench/demo_research/demo_seeds.py reads where a demo's training run spent its time from the run's train.log."""

from bench.demo_research.demo_seeds import train_log_stages

LOG = """\
2026-12-07 03:45:38,894 | INFO | run reaf on 1 process(es), device cpu, precision fp32
2026-12-07 03:45:45,305 | INFO | training from epoch 0, step 0 (75 steps per epoch)
2026-12-07 03:48:14,695 | INFO | text features of 1804 distinct training report(s) from the frozen text tower: 1804 new, 149.4 s
2026-12-07 03:48:27,001 | INFO | checkpoint: runs/reaf/checkpoints/latest.pt (epoch 1, step 75)
2026-12-07 03:52:33,243 | INFO | step=1500 train/loss=2.266281 epoch=19
2026-12-07 03:52:33,500 | INFO | checkpoint: runs/reaf/checkpoints/latest.pt (epoch 20, step 1500)
"""


def test_stages_from_a_train_log(tmp_path):
    path = tmp_path / "train.log"
    path.write_text(LOG)
    stages = train_log_stages(path)
    assert stages == {"text_features_s": 149.4, "training_s": 258.8, "steps": 1500, "s_per_step": 0.173}
    path.write_text(LOG.splitlines()[0] + "\n")  # a run that never trained: nothing to say
    assert train_log_stages(path) == {}
