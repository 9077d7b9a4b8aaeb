"""Candidate retrieval for the recommenders: approximate inner-product search over the listings (FAISS IVF-Flat),
so a request scores a few hundred candidates instead of the whole catalogue.

One `ListingIndex` holds the listing vectors of the shared text-image space (queried with a user's interest
vectors), another the ALS item factors (queried with the user's factors). A search is restricted to the
listings a request may return (an `faiss.IDSelectorBitmap` over the eligibility mask), so sold, bought and
filtered-out listings never take a candidate's place.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

# Below this many listings an exact scan costs next to nothing.
EXACT_BELOW = 1_000
# Share of the sqrt(n) lists scanned per query, the same at every catalogue size, so the dev catalogue's
# evaluation (`marketsearch evaluate-recs` reports the candidate stage's recall) measures the approximation
# served at 100k listings.
SCAN_SHARE = 0.08
TRAIN_SAMPLE = 20_000  # k-means on at most this many listings: 63 per list at 100k, and seconds to train
# `extended` rebuilds the index once the rows searched exactly outgrow this share of it (and EXACT_BELOW rows): at
# 100k listings a tail of 5,000 adds about 1.5 ms to a search, and the rebuild takes under a second.
TAIL_REBUILD_SHARE = 0.05


class ListingIndex:
    """Inner-product search over the rows of ``vectors`` (float32 (n, d)); ids are the row numbers.

    ``with_tail`` gives the same index with rows appended after it (listings created since), searched exactly;
    ``extended`` does the same, or builds a new index over every row once those appended rows grow too many."""

    def __init__(self, vectors: np.ndarray, *, scan_share: float = SCAN_SHARE, seed: int = 0):
        vectors = np.ascontiguousarray(vectors, np.float32)
        n, dim = vectors.shape
        self.scan_share, self.seed = scan_share, seed
        self.size = n  # rows in the FAISS index; the tail's rows follow them
        self.tail = np.zeros((0, dim), np.float32)
        self.nprobe = 1
        if n < EXACT_BELOW:
            self.index = faiss.IndexFlatIP(dim)
        else:
            nlist = int(round(math.sqrt(n)))
            self.nprobe = max(1, math.ceil(scan_share * nlist))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed
            sample = np.random.default_rng(seed).choice(n, min(n, TRAIN_SAMPLE), replace=False)
            with one_thread():
                self.index.train(vectors[np.sort(sample)])
        with one_thread():
            self.index.add(vectors)

    @property
    def rows(self) -> int:
        """Rows searched: the FAISS index's and the tail's."""
        return self.size + len(self.tail)

    @property
    def exact(self) -> bool:
        return not isinstance(self.index, faiss.IndexIVF)

    def with_tail(self, tail: np.ndarray) -> ListingIndex:
        """This index (shared, not copied) with ``tail`` (float32 (m, d)) as rows ``size .. size + m - 1``."""
        extended = copy.copy(self)
        extended.tail = np.ascontiguousarray(tail, np.float32).reshape(-1, self.index.d)
        return extended

    def extended(self, vectors: np.ndarray) -> ListingIndex:
        """Search over ``vectors`` (float32 (n, d), n >= ``size``): this index's rows are its first ``size``.

        The rows after them become the exact tail (``with_tail``) until the tail reaches ``TAIL_REBUILD_SHARE`` of
        the index and ``EXACT_BELOW`` rows; then a new index is built over every row, taking ``vectors`` as they
        are now (an edited listing's new vector included)."""
        if len(vectors) < self.size:
            raise ValueError(f"{len(vectors)} vectors cannot extend an index of {self.size} rows")
        tail = len(vectors) - self.size
        if tail >= max(EXACT_BELOW, TAIL_REBUILD_SHARE * self.size):
            return ListingIndex(vectors, scan_share=self.scan_share, seed=self.seed)
        return self.with_tail(vectors[self.size:])

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """Rows of the ``k`` best listings of each query, among ``allowed`` (bool, one per row, the tail's
        included; None: all), merged into one array without repeats (queries that find fewer give fewer)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if not len(queries) or not self.rows:
            return np.zeros(0, np.int64)
        scores, rows = self._search_index(queries, min(k, self.size), allowed)
        if len(self.tail):
            tail_scores = queries @ self.tail.T
            if allowed is not None:
                tail_scores[:, ~np.asarray(allowed, bool)[self.size:]] = -np.inf
            scores = np.concatenate([scores, tail_scores], axis=1)
            rows = np.concatenate([rows, np.broadcast_to(self.size + np.arange(len(self.tail)), tail_scores.shape)],
                                  axis=1)
            best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            rows = np.where(np.isfinite(np.take_along_axis(scores, best, axis=1)),
                            np.take_along_axis(rows, best, axis=1), -1)
        rows = rows.ravel()
        return np.unique(rows[rows >= 0])

    def _search_index(self, queries: np.ndarray, k: int, allowed: np.ndarray | None
                      ) -> tuple[np.ndarray, np.ndarray]:
        if not k:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        params = faiss.SearchParametersIVF(nprobe=self.nprobe) if not self.exact else faiss.SearchParameters()
        if allowed is not None:
            bitmap = np.packbits(np.asarray(allowed, bool)[: self.size], bitorder="little")
            params.sel = faiss.IDSelectorBitmap(self.size, faiss.swig_ptr(bitmap))
        with one_thread():
            scores, rows = self.index.search(queries, k, params=params)
        return np.where(rows >= 0, scores, -np.inf), rows


@contextmanager
def one_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread for the block. A handful of queries gain nothing from threads, and on a busy
    machine the threads wait for each other: at 100k listings on the shared 2 cores (load average ~11), one
    thread was 2.5x faster per request and 2.3x faster to build the index. The setting is process-wide, so it is
    restored after."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
