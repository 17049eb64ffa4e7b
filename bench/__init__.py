"""Benchmarks a user reruns, as `python -m bench.<name>` from the repository root (demo research: demo_research/)."""
