"""How every command-line tool ends on a known error: one line naming the file and the cause, exit status 1.

The full traceback goes to the log at DEBUG level (main.py's run log also records it) and is printed when the
environment variable REAF_DEBUG=1 is set, which re-raises the error instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

# Errors that mean "this input or setting is wrong"; anything else is a bug and keeps its traceback.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, KeyError)


def debug_enabled() -> bool:
    """REAF_DEBUG=1 (or true/yes): show tracebacks instead of one-line errors."""
    return os.environ.get("REAF_DEBUG", "").strip().lower() in ("1", "true", "yes")


def one_line(err: BaseException) -> str:
    """The message of `err` on one line: a DataLoader worker's re-raised error keeps only its last line (the
    original `Type: file: cause`), a KeyError loses its quotes, anything else its line breaks."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return lines[-1]
    return " ".join(lines)


def run_cli(prog: str, entry: Callable[[], object]) -> int:
    """Run `entry()`; an int it returns is the exit status (anything else: 0). A known error prints
    '<prog>: error: <message>' to stderr and returns 1 (REAF_DEBUG=1: re-raised with its traceback)."""
    try:
        status = entry()
    except KNOWN_ERRORS as err:
        if debug_enabled():
            raise
        log.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        return 1
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
