"""Train REAF: parse the flags, build the run, train (`torchrun --nproc_per_node=K main.py ...` for DDP)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    from reaf.exit_status import run_cli
    from reaf.training.flags import parse_args
    from reaf.training.run import train_main

    args = parse_args(argv)
    return run_cli("main.py", lambda: print(f"run folder: {train_main(args)}"))


if __name__ == "__main__":
    sys.exit(main())
