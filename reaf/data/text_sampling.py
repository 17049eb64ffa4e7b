"""The training text of each sample (HLIP's text sampling): the whole report, one of its sentences, or either.

Sentences are split robustly enough for real CT-RATE text: section headings ("Findings:", "Impressions:") are
dropped, decimals ("3.5 mm") and common abbreviations ("e.g.", "approx.") do not end a sentence, a missing space
after a full stop ("normal.Heart") does, and numbered-list markers are not sentences. The choice is a pure function
of (seed, epoch, sample index), so it is the same whatever the worker count, and a resumed run draws what the
uninterrupted run drew.
"""

from __future__ import annotations

import functools
import re

import numpy as np

TEXT_SAMPLINGS = ("report", "sentence", "both")
HEADING = re.compile(
    r"^\s*(findings?|impressions?|conclusions?|clinical information|technique|comparison|history)\s*:\s*",
    re.IGNORECASE,
)
# a sentence ends at . ! ? or ; followed by space or the end, at a full stop glued to a capital, or at a line break
BOUNDARY = re.compile(r"(?<=[.!?;])\s+|(?<=[a-z)][.!?])(?=[A-Z])|\s*\n+\s*")
ABBREVIATIONS = ("e.g.", "i.e.", "approx.", "vs.", "cf.", "dr.", "fig.", "nr.", "max.", "min.", "resp.")


def split_sentences(report: str) -> list[str]:
    """Report text -> its sentences, in order, without section headings; [] when it holds no words. Each distinct
    text is split once per process (training splits every drawn text and report each step)."""
    return list(_split_sentences(report))


@functools.lru_cache(maxsize=1 << 16)
def _split_sentences(report: str) -> tuple[str, ...]:
    pieces, carry = [], ""
    for piece in BOUNDARY.split(report):
        piece = (carry + " " + piece).strip() if carry else piece.strip()
        carry = ""
        if piece.lower().endswith(ABBREVIATIONS):
            carry = piece  # "e.g." does not end a sentence: join the next piece
            continue
        pieces.append(piece)
    if carry:
        pieces.append(carry)
    sentences = []
    for piece in pieces:
        while HEADING.match(piece):
            piece = HEADING.sub("", piece, count=1)
        if re.search(r"[A-Za-z]{2}", piece):  # "1." or "-" alone is a list marker, not a sentence
            sentences.append(piece)
    return tuple(sentences)


def sample_text(report: str, mode: str, *, seed: int, epoch: int, index: int, report_epochs: int = 0,
                sentence_share: float = 0.5) -> str:
    """The training text of sample `index` in `epoch`: the report (`report`), one of its sentences drawn uniformly
    (`sentence`), or either (`both`: a sentence with probability `sentence_share`, 1/2 unless asked). A report
    without sentences is returned whole, and so is every report in the first `report_epochs` epochs (whole reports
    first, then `mode`)."""
    if mode not in TEXT_SAMPLINGS:
        raise ValueError(f"text sampling {mode!r} is not one of {TEXT_SAMPLINGS}")
    if report_epochs < 0:
        raise ValueError(f"report_epochs must be >= 0, got {report_epochs}")
    if not 0.0 < sentence_share < 1.0:
        raise ValueError(f"sentence_share must be in (0, 1), got {sentence_share}")
    if mode == "report" or epoch < report_epochs:
        return report
    rng = np.random.default_rng([seed % 2**32, epoch, index])
    if mode == "both" and rng.random() < 1.0 - sentence_share:
        return report
    sentences = split_sentences(report)
    return sentences[int(rng.integers(len(sentences)))] if sentences else report
