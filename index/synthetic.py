"""Synthetic clustered embeddings for index tests and benchmarks (no downloads).

Points are unit vectors scattered around random unit cluster centres; queries are database points
moved by fresh noise and re-normalised, like a text query landing near (not on) a listing.
"""

from __future__ import annotations

import numpy as np


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def clustered_vectors(
    n: int,
    dimension: int = 256,
    n_clusters: int | None = None,
    spread: float = 0.6,
    seed: int = 0,
    chunk: int = 100_000,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` L2-normalised float32 vectors in ``n_clusters`` clusters (default ~sqrt(n)).

    ``spread`` is the norm of each point's offset from its unit centre before re-normalising. ``out``: an
    (n, dimension) float32 array to fill, e.g. a memory-mapped ``.npy`` for more vectors than fit in RAM.
    """
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, int(np.sqrt(n)))
    centres = _normalise(rng.standard_normal((n_clusters, dimension), dtype=np.float32))
    if out is None:
        out = np.empty((n, dimension), dtype=np.float32)
    elif out.shape != (n, dimension):
        raise ValueError(f"out has shape {out.shape}, expected {(n, dimension)}")
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = rng.standard_normal((stop - start, dimension), dtype=np.float32)
        block *= spread / np.sqrt(dimension)
        block += centres[rng.integers(0, n_clusters, stop - start)]
        out[start:stop] = _normalise(block)
    return out


def perturbed_queries(vectors: np.ndarray, n_queries: int, noise: float = 0.4, seed: int = 1) -> np.ndarray:
    """``n_queries`` unit vectors near random rows of ``vectors`` (offset of norm ~``noise``)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(vectors), n_queries)
    dimension = vectors.shape[1]
    offsets = rng.standard_normal((n_queries, dimension), dtype=np.float32) * (noise / np.sqrt(dimension))
    return _normalise(vectors[rows] + offsets)
