"""Plain-numpy reference search for the index tests."""

from __future__ import annotations

import numpy as np


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Reference top-k by inner product in plain numpy; returns row positions (nq, k')."""
    scores = queries @ vectors.T
    if allowed is not None:
        masked = np.full_like(scores, -np.inf)
        masked[:, allowed] = scores[:, allowed]
        scores = masked
        k = min(k, len(allowed))
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]
