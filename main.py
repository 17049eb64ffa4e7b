"""Train REAF: parse the flags, build the run, train (`torchrun --nproc_per_node=K main.py ...` for DDP)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    from reaf.training.run import train_main
    from reaf.training.settings import parse_args

    args = parse_args(argv)
    try:
        run_dir = train_main(args)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        print(f"main.py: error: {err}", file=sys.stderr)
        return 1
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
