"""Train REAF: parse the flags, build the run, train (`torchrun --nproc_per_node=K main.py ...` for DDP)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    from reaf.cli import run_cli
    from reaf.training.run import train_main
    from reaf.training.settings import parse_args

    args = parse_args(argv)
    return run_cli("main.py", lambda: print(f"run folder: {train_main(args)}"))


if __name__ == "__main__":
    sys.exit(main())
