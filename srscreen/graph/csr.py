"""Index arithmetic of CSR layouts (structures -> atoms -> edges), shared by every reader of them."""

from __future__ import annotations

import numpy as np


def starts_of(counts: np.ndarray) -> np.ndarray:
    """First row of each run, for runs of `counts` rows laid end to end."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.cumsum(counts) - counts


def rows_of(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rows of the runs of `counts[i]` rows from `starts[i]`, concatenated in order."""
    counts = np.asarray(counts, dtype=np.int64)
    within = np.arange(int(counts.sum())) - np.repeat(starts_of(counts), counts)
    return np.repeat(np.asarray(starts, dtype=np.int64), counts) + within
