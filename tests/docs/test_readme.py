"""README stays a true manual: every flag documented, CI runs its test command, it stays short and free of the demo's
research narration, and every benchmark file and bench module it names exists (each file recording its machine)."""

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
RESULT_FILE = re.compile(r"bench/(?:demo_research/)?results/[\w.-]+\.json")
NARRATION = re.compile(r"\b(this stop|(two|three|the last) stops ago|previous (demo|stop)|stop \d+|reverted)\b", re.I)


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


def records_machine(result: dict) -> bool:
    """A CPU model in `machine`, or in the `machine` of every run of a file that holds several runs."""
    runs = result.get("runs") if isinstance(result.get("runs"), list) else [result]
    return all(isinstance(run.get("machine"), dict) and run["machine"].get("cpu_model") for run in runs)


def test_every_flag_is_in_the_readme(monkeypatch):
    from reaf.training.flags import build_parser

    documented = set(re.findall(r"`(--[a-z0-9-]+)`", README))
    missing = (flags(build_parser()) | flags(zero_shot_parser(monkeypatch))) - documented
    assert not missing, f"flags not in README.md: {sorted(missing)}"


def test_ci_runs_the_readme_test_command():
    command = re.search(r"Tests .*?```bash\n(.+?)\n```", README, re.S).group(1).strip()
    assert command == "python -m pytest -q -n 2 --dist loadfile"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci]
    assert not any(re.search(r"\|\|\s*(true|:)", line) for line in ci)


def test_readme_is_a_manual_not_a_research_record():
    assert len(README.splitlines()) <= 400
    narration = [line for line in README.splitlines() if NARRATION.search(line)]
    assert not narration, f"research narration in README.md (it belongs in docs/demo.md): {narration}"


def test_every_python_dash_m_module_named_exists():
    import importlib.util

    named = set(re.findall(r"python -m (reaf(?:\.\w+)+)", README))
    assert {"reaf.predict", "reaf.export", "reaf.search", "reaf.preprocess"} <= named
    for module in named:
        assert importlib.util.find_spec(module) is not None, f"README.md runs python -m {module}, which does not exist"


def test_every_result_file_named_exists_and_records_its_machine():
    named = sorted(set(RESULT_FILE.findall(README)))
    assert "bench/results/encoder_cpu.json" in named  # the pattern finds what the benchmarks table names
    for name in named:
        path = ROOT / name
        assert path.is_file(), f"README.md names {name}, which does not exist"
        assert records_machine(json.loads(path.read_text())), f"{name} records no machine (cpu_model)"


def test_every_bench_module_named_exists():
    modules = sorted(set(re.findall(r"python -m (bench(?:\.\w+)+)", README)))
    assert modules, "the README names no benchmark command"
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"README.md runs {module}, which does not exist"
