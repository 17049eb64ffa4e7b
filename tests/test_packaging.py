"""`pip install .` gives a working package: the wheel carries the configs and declares the dependencies, and the
installed `reaf` builds models and runs its `python -m` CLIs from any folder."""

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "configs", "reaf"):  # a copy: setuptools writes build/ into it
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        kwargs = {"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")} if name == "reaf" else {}
        copy(REPO / name, src / name, **kwargs)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("reaf-*.whl")
    return path


def test_wheel_ships_the_configs_and_declares_dependencies(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for config in (REPO / "configs").glob("*.json"):
            assert zf.read(f"reaf/configs/{config.name}") == config.read_bytes()  # copies of the source
        meta = email.message_from_bytes(zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    assert "reaf/model/timm_models.py" in names and "reaf/model/bert_folder.py" in names
    requires = meta.get_all("Requires-Dist")
    for dist in ("torch", "timm", "transformers", "nibabel", "pandas", "scikit-learn"):
        assert any(r.split(">")[0].split("<")[0].split(";")[0].strip() == dist for r in requires), dist
    assert any("isal" in r and 'extra == "fast"' in r for r in requires)
    assert set(meta.get_all("Provides-Extra")) >= {"fast", "logging", "interop", "dev"}


def test_installed_package_builds_models_and_runs_its_clis_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)  # a pure-Python wheel installed is its files on sys.path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import reaf, timm; from reaf import create_model; from reaf.model.config import available_configs; "
            "m = create_model('tiny'); print(reaf.__file__); print(available_configs()); "
            "print(type(timm.create_model('reaf_tiny')).__name__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    where, configs, encoder = done.stdout.splitlines()[-3:]
    assert where.startswith(str(site)) and encoder == "TimmVolumeEncoder"
    assert configs == "['demo', 'tiny', 'vit_base_singlescan_h2_token2744']"
    for module in ("reaf.preprocess", "reaf.search", "reaf.demo", "reaf.synthetic"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and "usage:" in done.stdout, (module, done.stderr[-2000:])
