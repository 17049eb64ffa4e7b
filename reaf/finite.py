"""The one finite check: NaN/inf volumes, embeddings and scores fail loudly, never rank first or count as a hit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["NonFiniteError", "nonfinite_count", "require_finite", "require_finite_voxels"]


class NonFiniteError(ValueError):
    """Embeddings or scores hold NaN/inf; the message says which and, when known, which rows (volumes, texts)."""


def nonfinite_count(values) -> int:
    """How many NaN/inf entries a tensor or array holds (integer types: none), counted without a float64 copy."""
    if hasattr(values, "detach"):
        return int((~torch.isfinite(values.detach())).sum()) if values.dtype.is_floating_point else 0
    array = np.asarray(values)
    return int((~np.isfinite(array)).sum()) if array.dtype.kind in "fc" else 0


def require_finite_voxels(values) -> None:
    """ValueError naming the count of NaN/inf voxels of a volume (a tensor or array of any shape)."""
    bad = nonfinite_count(values)
    if bad:
        raise ValueError(f"{bad} NaN/inf voxels")


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
