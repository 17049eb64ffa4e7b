"""README stays true: every flag of main.py and zero_shot.py is documented, and CI runs the README's test command."""

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def zero_shot_parser(monkeypatch) -> argparse.ArgumentParser:
    import zero_shot

    captured = {}

    def capture(self, argv=None, namespace=None):
        captured["parser"] = self
        raise SystemExit

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        zero_shot.parse_args([])
    return captured["parser"]


def test_every_flag_is_in_the_readme(monkeypatch):
    from reaf.training.settings import build_parser

    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(--[a-z0-9-]+)`", readme))
    missing = (flags(build_parser()) | flags(zero_shot_parser(monkeypatch))) - documented
    assert not missing, f"flags not in README.md: {sorted(missing)}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"Tests .*?```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci]
    assert not any(re.search(r"\|\|\s*(true|:)", line) for line in ci)
