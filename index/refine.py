"""Exact re-scoring of compressed-index candidates: an SQ8 or PQ index finds ``k * factor`` candidates from its codes,
their exact vectors (memory-mapped from disk, so they cost page cache rather than index memory) re-score them,
and the best ``k`` are kept. The exact vectors are kept by FAISS id, sorted, so a lookup is a binary search.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

IDS_FILE = "exact_ids.npy"
VECTORS_FILE = "exact_vectors.npy"
# Candidates re-scored per wanted result, by codec. On clustered vectors with the 10M benchmark's density
# (docs/benchmarks.md, "10M listings"): SQ8 codes rank so closely that 10x gives recall@10 1.000; PQ codes at
# d/4 bytes reach only 0.936 at 10x and 0.988 at 20x.
REFINE_FACTORS = {"sq8": 10, "pq": 20}
DEFAULT_REFINE_FACTOR = REFINE_FACTORS["sq8"]


class ExactVectors:
    """float32 (n, d) vectors under int64 FAISS ids (kept sorted by id); ``vectors`` may be a read-only memmap."""

    def __init__(self, faiss_ids: np.ndarray, vectors: np.ndarray):
        faiss_ids = np.asarray(faiss_ids, dtype=np.int64)
        if vectors.ndim != 2 or len(vectors) != len(faiss_ids):
            raise ValueError(f"{len(faiss_ids)} ids for vectors of shape {vectors.shape}")
        if len(faiss_ids) > 1 and not (np.diff(faiss_ids) > 0).all():
            order = np.argsort(faiss_ids, kind="stable")
            faiss_ids, vectors = faiss_ids[order], np.ascontiguousarray(vectors[order], dtype=np.float32)
            if (np.diff(faiss_ids) == 0).any():
                raise ValueError("duplicate FAISS ids among the exact vectors")
        self.faiss_ids = faiss_ids
        self.vectors = vectors

    def __len__(self) -> int:
        return len(self.faiss_ids)

    @property
    def nbytes(self) -> int:
        return int(self.faiss_ids.nbytes + self.vectors.nbytes)

    def lookup(self, faiss_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of ``faiss_ids`` (any shape) as ``(vectors (..., d), found bool (...))``; zeros where an
        id is unknown (FAISS's ``-1`` padding included)."""
        wanted = np.asarray(faiss_ids, dtype=np.int64)
        flat = wanted.ravel()
        rows = np.searchsorted(self.faiss_ids, flat)
        rows = np.minimum(rows, max(len(self.faiss_ids) - 1, 0))
        found = (self.faiss_ids[rows] == flat) if len(self.faiss_ids) else np.zeros(len(flat), dtype=bool)
        out = np.zeros((len(flat), self.vectors.shape[1]), dtype=np.float32)
        if found.any():
            picked = rows[found]
            order = np.argsort(picked)  # sorted reads are kinder to a memmap
            out[np.flatnonzero(found)[order]] = self.vectors[picked[order]]
        return out.reshape(*wanted.shape, self.vectors.shape[1]), found.reshape(wanted.shape)

    def updated(self, faiss_ids: np.ndarray, vectors: np.ndarray) -> ExactVectors:
        """A copy holding ``vectors`` under ``faiss_ids`` (replaced where present, added where new)."""
        faiss_ids = np.asarray(faiss_ids, dtype=np.int64)
        kept = self.without(faiss_ids)
        return ExactVectors(np.concatenate([kept.faiss_ids, faiss_ids]),
                            np.concatenate([np.asarray(kept.vectors), np.asarray(vectors, dtype=np.float32)]))

    def without(self, faiss_ids: np.ndarray) -> ExactVectors:
        keep = ~np.isin(self.faiss_ids, np.asarray(faiss_ids, dtype=np.int64))
        if keep.all():
            return self
        return ExactVectors(self.faiss_ids[keep], np.asarray(self.vectors[keep]))

    def save(self, folder: str | os.PathLike) -> None:
        np.save(Path(folder) / IDS_FILE, self.faiss_ids)
        np.save(Path(folder) / VECTORS_FILE, np.ascontiguousarray(self.vectors, dtype=np.float32))

    @classmethod
    def load(cls, folder: str | os.PathLike, mmap: bool = True) -> ExactVectors:
        """Read what ``save`` wrote; ``mmap``: the vectors stay on disk and are paged in as candidates need them."""
        folder = Path(folder)
        return cls(np.load(folder / IDS_FILE), np.load(folder / VECTORS_FILE, mmap_mode="r" if mmap else None))

    @staticmethod
    def present(folder: str | os.PathLike) -> bool:
        return (Path(folder) / VECTORS_FILE).is_file()


def refine(
    queries: np.ndarray, candidate_ids: np.ndarray, exact: ExactVectors, k: int, metric: str = "ip"
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score ``candidate_ids (nq, k')`` with their exact vectors; the best ``k`` as ``(scores, ids)``, with
    FAISS's conventions (inner product: larger is better; L2: squared distance, smaller is better; -1 pads)."""
    vectors, found = exact.lookup(candidate_ids)
    if metric == "ip":
        scores = np.einsum("qkd,qd->qk", vectors, queries)
        key = np.where(found, -scores, np.inf)
    else:
        scores = ((vectors - queries[:, None, :]) ** 2).sum(axis=2)
        key = np.where(found, scores, np.inf)
    k = min(k, candidate_ids.shape[1])
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(candidate_ids, order, 1)
    best = np.take_along_axis(scores, order, 1).astype(np.float32)
    missing = ~np.take_along_axis(found, order, 1)
    ids[missing] = -1
    return best, ids


def refined_search(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    exact: ExactVectors,
    *,
    factor: int = DEFAULT_REFINE_FACTOR,
    available: int | None = None,
    metric: str = "ip",
) -> tuple[np.ndarray, np.ndarray]:
    """``search(queries, k')`` for ``k' = k * factor`` compressed candidates (at most ``available``), then
    ``refine`` to the exact best ``k``."""
    wide = k * factor if available is None else min(k * factor, available)
    _, candidates = search(queries, max(wide, k))
    return refine(queries, candidates, exact, k, metric)
