"""One check that scores and embeddings are finite: a NaN must fail loudly, never rank first or count as a hit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["NonFiniteError", "require_finite"]


class NonFiniteError(ValueError):
    """Embeddings or scores hold NaN/inf; the message says which and, when known, which rows (volumes, texts)."""


def require_finite(values, what: str, names: Sequence[str] | None = None) -> None:
    """Raise NonFiniteError when `values` (an array or tensor, rows along axis 0) holds NaN or inf.

    The message names `what` (e.g. "image embeddings of valid.csv"), the count, and up to five offending rows by
    their `names` (or row index)."""
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    bad = ~np.isfinite(array)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.reshape(len(array), -1).any(axis=1)) if array.ndim else np.array([0])
    shown = [names[i] for i in rows[:5]] if names is not None else rows[:5].tolist()
    raise NonFiniteError(
        f"{what}: {int(bad.sum())} non-finite value(s) (NaN/inf) in {len(rows)} row(s), e.g. {shown}; "
        "a NaN volume file or a NaN checkpoint cannot be scored"
    )
