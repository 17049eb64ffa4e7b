"""--resume keeps the run's schedule: changed schedule flags and model configs are refused naming what differs, and a
'--resume latest' that finds nothing says so in the run's own train.log."""

import pytest

import main as cli
from reaf.training.state import SCHEDULE_FLAGS, check_resume_flags
from tests.support.training import make_dataset, train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_changed_schedule_flags_are_refused_naming_each(data, tmp_path, capsys):
    flags = ("--epochs", "1", "--batch-size", "4", "--resume", "latest")
    assert cli.main(train_argv(data, tmp_path, "run", *flags)) == 0  # 'latest' finds nothing: a fresh run
    log = (tmp_path / "run" / "train.log").read_text()
    assert "--resume latest: no latest.pt under" in log and "starting a fresh run" in log
    changed = ("--epochs", "2", "--batch-size", "2", "--resume", "latest")
    assert cli.main(train_argv(data, tmp_path, "run", *changed)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    assert err == (f"main.py: error: --resume {latest}: --batch-size was 4, now 2; --epochs was 1, now 2: a resumed "
                   f"run keeps its schedule; start a new run with --load-checkpoint {latest} to train on with other "
                   "settings"), err
    # the same flags continue ("nothing to do": the run finished its one epoch)
    assert cli.main(train_argv(data, tmp_path, "run", *flags)) == 0
    assert "nothing to do" in (tmp_path / "run" / "train.log").read_text()


def test_another_model_config_names_the_keys_that_differ(data, tmp_path, capsys):
    assert cli.main(train_argv(data, tmp_path, "run", "--epochs", "1", "--batch-size", "4")) == 0
    argv = train_argv(data, tmp_path, "run", "--epochs", "1", "--batch-size", "4", "--resume", "latest",
                      "--fusion-method", "max")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model config differs from this run's: vision.fusion_method: " in err and "-> 'max'" in err, err
    assert len(err) < 400, err  # the keys that differ, not both configs


def test_every_schedule_flag_is_compared():
    saved = {"config": {"args": {key: 1 for key in SCHEDULE_FLAGS}}}
    for key in SCHEDULE_FLAGS:
        with pytest.raises(ValueError, match=f"--{key.replace('_', '-')} was 1, now 2"):
            check_resume_flags("ckpt.pt", saved, {**{k: 1 for k in SCHEDULE_FLAGS}, key: 2})
    check_resume_flags("ckpt.pt", saved, {k: 1 for k in SCHEDULE_FLAGS})
    check_resume_flags("ckpt.pt", {"config": {}}, {})  # a checkpoint without recorded flags: nothing to compare
