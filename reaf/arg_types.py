"""argparse types shared by every CLI: counts are checked when the flags are parsed, never used as Python slices."""

from __future__ import annotations

import argparse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def positive_int(text: str) -> int:
    """A count that must be >= 1 (a batch size, -k, --limit, --epochs)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A count where 0 means none or off (--workers, --bootstrap, a frequency)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_empty_text(text: str) -> str:
    """Free text that must say something (a search query)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
