"""`VectorIndex`: the shared FAISS index over listing embeddings, with a listing-id map and a manifest.

Ids: each listing gets an int64 FAISS id from a counter persisted with the index (``next_faiss_id``).
A listing keeps its FAISS id for the index's lifetime, through updates and rebuilds; ids of removed
listings are never reused, so a stale id can never point at another listing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np

from index import ivf, shards
from index.refine import DEFAULT_REFINE_FACTOR, REFINE_FACTORS, ExactVectors, refine, refined_search
from index.storage import (
    REBUILD_HINT,
    IndexLoadError,
    atomic_version,
    open_version,
    read_manifest,
    write_manifest,
)

logger = logging.getLogger(__name__)
_search_threads: int | None = None  # VectorIndex.set_search_threads

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
ID_MAP_FILE = "id_map.json"
DEFAULT_TARGET_RECALL = 0.95
CALIBRATION_K = 10
MAX_CALIBRATION_QUERIES = 1000
# Filters allowing at most this many listings are answered by exact search over the allowed vectors
# themselves, read back by id: exact, and cheaper than the id selector (whose probed lists rarely hold k
# allowed listings, so it must widen nprobe). Measured crossover at 100k vectors, d=256: ~1,000.
SUBSET_SEARCH_MAX = 1024
# From this many listings a new index stores 8-bit scalar codes (d bytes per listing, 4x smaller than floats)
# and re-scores its candidates with the exact vectors, memory-mapped from disk (index/refine.py): 2M float
# vectors of d=256 are 2 GB of RAM. PQ (d/4 bytes) is there for catalogues whose SQ8 codes outgrow RAM.
COMPRESS_ABOVE = 2_000_000
AUTO_CODEC = "sq8"


class VectorIndex:
    """FAISS IVF (or exact flat, for small catalogues) index keyed by listing id.

    Build with `VectorIndex.build`, or load with `VectorIndex.load`. ``search`` is safe to call from
    several threads (nprobe and filters are passed per call); ``add``/``remove``/``update`` are not.
    """

    def __init__(
        self,
        index: faiss.Index,
        listing_ids: Sequence[str],
        faiss_ids: np.ndarray,
        *,
        model_fingerprint: str,
        metric: str = "ip",
        nprobe: int = 0,
        next_faiss_id: int | None = None,
        info: dict | None = None,
        digests: Sequence[int] | None = None,
        exact: ExactVectors | None = None,
    ):
        faiss_ids = np.asarray(faiss_ids, dtype=np.int64)
        if len(listing_ids) != len(faiss_ids) or len(faiss_ids) != index.ntotal:
            raise ValueError(
                f"id map has {len(listing_ids)} listing ids and {len(faiss_ids)} FAISS ids but the index "
                f"holds {index.ntotal} vectors; {REBUILD_HINT}"
            )
        self.index = index
        self.model_fingerprint = model_fingerprint
        self.metric = metric
        self.nprobe = int(nprobe)
        self._faiss_id_of: dict[str, int] = dict(zip(listing_ids, faiss_ids.tolist()))
        self._listing_of: dict[int, str] = dict(zip(faiss_ids.tolist(), listing_ids))
        if len(self._faiss_id_of) != len(listing_ids) or len(self._listing_of) != len(listing_ids):
            raise ValueError("id map has duplicate listing ids or FAISS ids; " + REBUILD_HINT)
        # Digest of each listing's vector, so `sync` can tell changed listings from unchanged ones.
        self._digest_of: dict[str, int] = dict(zip(listing_ids, digests)) if digests is not None else {}
        start = int(faiss_ids.max()) + 1 if len(faiss_ids) else 0
        self.next_faiss_id = max(start, int(next_faiss_id or 0))
        self.info = dict(info or {})
        # exact vectors of an SQ8/PQ index, re-scoring its candidates (None: the index stores floats)
        self.exact = exact

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        listing_ids: Sequence[str],
        model_fingerprint: str,
        nlist: int | None = None,
        codec: str | None = "auto",
        calibration_queries: np.ndarray | None = None,
        *,
        metric: str = "ip",
        target_recall: float = DEFAULT_TARGET_RECALL,
        faiss_ids: np.ndarray | None = None,
        next_faiss_id: int = 0,
        seed: int = 0,
        map_shards: shards.ShardMap | None = None,
        n_shards: int = 1,
    ) -> VectorIndex:
        """Train and fill a new index, then calibrate nprobe for ``target_recall`` recall@10.

        ``nlist=None`` chooses it from the size (`ivf.choose_nlist`: exact flat below 10k vectors);
        ``nlist=0`` forces an exact flat index. ``codec="sq8"`` (d bytes per vector) or ``"pq"`` (d/4 bytes)
        stores compressed codes instead of floats and keeps the exact vectors beside them to re-score
        ``REFINE_FACTORS[codec]`` x k candidates; ``codec=None`` stores floats; ``"auto"`` chooses
        ``AUTO_CODEC`` from ``COMPRESS_ABOVE`` listings. ``calibration_queries`` should look like real queries
        (e.g. text embeddings); without them a sample of the indexed vectors is used, which overestimates recall.
        ``map_shards`` (e.g. ``shards.ray_map()``) fills an IVF index in ``n_shards`` parallel shards merged
        in order (index/shards.py): the same index as one process builds.
        """
        vectors = ivf.as_vectors(vectors)
        listing_ids = _as_listing_ids(listing_ids, len(vectors))
        if not model_fingerprint:
            raise ValueError("model_fingerprint is required (the model bundle's fingerprint)")
        n, dimension = vectors.shape
        if n == 0:
            raise ValueError("cannot build an index over 0 vectors; embed the catalogue first")
        if nlist is None:
            nlist = ivf.choose_nlist(n)
        if codec == "auto":
            codec = AUTO_CODEC if n >= COMPRESS_ABOVE and nlist > 0 else None
        if codec is not None and nlist == 0:
            logger.warning("%s codes requested but %d vectors is small: using an exact flat index of floats",
                           codec.upper(), n)
            codec = None
        if faiss_ids is None:
            faiss_ids = np.arange(next_faiss_id, next_faiss_id + n, dtype=np.int64)
        started = time.perf_counter()
        if map_shards is not None and nlist > 0:
            trained = ivf.train_index(vectors, nlist, metric=metric, codec=codec, seed=seed)
            index = shards.add_in_shards(trained, vectors, faiss_ids, shards=n_shards, map_shards=map_shards)
        else:
            index = ivf.build_ivf(vectors, faiss_ids, nlist, metric=metric, codec=codec, seed=seed)
        exact = ExactVectors(faiss_ids, vectors.copy()) if codec is not None else None
        build_seconds = time.perf_counter() - started
        info = {
            "nlist": nlist,
            "index_type": ivf.factory_string(nlist, ivf.codec_string(codec, dimension)),
            "trained_count": n,
            "build_seconds": round(build_seconds, 3),
            "built_at": _now(),
        }
        vi = cls(
            index,
            listing_ids,
            faiss_ids,
            model_fingerprint=model_fingerprint,
            metric=metric,
            next_faiss_id=next_faiss_id,
            info=info,
            digests=vector_digests(vectors).tolist(),
            exact=exact,
        )
        vi.calibrate(vectors, listing_ids, calibration_queries, target_recall=target_recall, seed=seed)
        return vi

    def calibrate(
        self,
        vectors: np.ndarray,
        listing_ids: Sequence[str],
        queries: np.ndarray | None = None,
        *,
        target_recall: float = DEFAULT_TARGET_RECALL,
        seed: int = 0,
    ) -> int:
        """Set nprobe to the smallest value reaching ``target_recall`` recall@10 against exact search.

        ``vectors`` of ``listing_ids`` (normally every indexed listing) are the exact reference
        (`IndexFlatIP`); ``queries`` default to a sample of ``vectors``.
        """
        vectors = ivf.as_vectors(vectors, self.dimension)
        listing_ids = _as_listing_ids(listing_ids, len(vectors))
        unknown = [i for i in listing_ids if i not in self._faiss_id_of]
        if unknown:
            raise ValueError(f"{len(unknown)} calibration listings are not indexed (e.g. {unknown[:3]!r})")
        faiss_ids = np.fromiter((self._faiss_id_of[i] for i in listing_ids), dtype=np.int64, count=len(listing_ids))
        rng = np.random.default_rng(seed)
        if queries is None:
            take = rng.choice(len(vectors), size=min(len(vectors), MAX_CALIBRATION_QUERIES), replace=False)
            queries = vectors[take]
            source = "indexed vectors"
        else:
            queries = ivf.as_vectors(queries, self.dimension, name="calibration_queries")
            if len(queries) > MAX_CALIBRATION_QUERIES:
                queries = queries[rng.choice(len(queries), size=MAX_CALIBRATION_QUERIES, replace=False)]
            source = "calibration queries"
        k = min(CALIBRATION_K, len(vectors))
        exact_scores, exact_ids = ivf.exact_search(vectors, faiss_ids, queries, k, self.metric)
        nprobe, recall = ivf.calibrate_nprobe(self.index, queries, exact_ids, k=k, target_recall=target_recall,
                                              search_fn=self._first_stage_search, exact_scores=exact_scores,
                                              metric=self.metric)
        self.nprobe = nprobe
        self.info.update(
            calibration={
                "queries": len(queries),
                "source": source,
                "k": k,
                "target_recall": target_recall,
                "recall": round(recall, 4),
                "calibrated_at": _now(),
            }
        )
        return nprobe

    def rebuild(
        self,
        vectors: np.ndarray,
        listing_ids: Sequence[str],
        nlist: int | None = None,
        codec: str | None = "keep",
        calibration_queries: np.ndarray | None = None,
        *,
        target_recall: float = DEFAULT_TARGET_RECALL,
        map_shards: shards.ShardMap | None = None,
        n_shards: int = 1,
    ) -> VectorIndex:
        """A new index re-trained on ``vectors`` (the whole current catalogue), keeping FAISS ids stable.
        ``codec="keep"`` keeps this index's codec; otherwise as in ``build``."""
        listing_ids = _as_listing_ids(listing_ids, len(vectors))
        next_id = self.next_faiss_id
        faiss_ids = np.empty(len(listing_ids), dtype=np.int64)
        for position, listing_id in enumerate(listing_ids):
            known = self._faiss_id_of.get(listing_id)
            if known is None:
                known, next_id = next_id, next_id + 1
            faiss_ids[position] = known
        if codec == "keep":
            codec = self.codec
        return VectorIndex.build(
            vectors,
            listing_ids,
            self.model_fingerprint,
            nlist=nlist,
            codec=codec,
            calibration_queries=calibration_queries,
            metric=self.metric,
            target_recall=target_recall,
            faiss_ids=faiss_ids,
            next_faiss_id=next_id,
            map_shards=map_shards,
            n_shards=n_shards,
        )

    def drift(self) -> dict:
        """How far the index has moved from what its quantiser was trained on; ``needs_rebuild`` says if
        ``marketsearch index --rebuild`` is advised (size changed 2x, or lists badly unbalanced)."""
        trained = int(self.info.get("trained_count", len(self)) or 1)
        growth = len(self) / trained
        inverted = ivf.ivf_of(self.index)
        imbalance = float(inverted.invlists.imbalance_factor()) if inverted is not None and len(self) else 1.0
        wanted_nlist = ivf.choose_nlist(len(self))
        reasons = []
        if growth > 2 or growth < 0.5:
            reasons.append(f"size changed {growth:.2f}x since training")
        if imbalance > 3:
            reasons.append(f"inverted lists unbalanced (imbalance factor {imbalance:.2f})")
        if (wanted_nlist == 0) != (self.nlist == 0):
            reasons.append(f"index type should change (nlist {self.nlist} -> {wanted_nlist})")
        return {"growth": growth, "imbalance": imbalance, "needs_rebuild": bool(reasons), "reasons": reasons}

    # ------------------------------------------------------------------ updates
    def add(self, vectors: np.ndarray, listing_ids: Sequence[str]) -> None:
        """Add new listings (no re-training). Raises ValueError for ids already indexed: use ``update``."""
        vectors = ivf.as_vectors(vectors, self.dimension)
        listing_ids = _as_listing_ids(listing_ids, len(vectors))
        present = [listing_id for listing_id in listing_ids if listing_id in self._faiss_id_of]
        if present:
            raise ValueError(
                f"{len(present)} listing ids are already indexed (e.g. {present[:3]}); use update() to replace them"
            )
        faiss_ids = np.arange(self.next_faiss_id, self.next_faiss_id + len(listing_ids), dtype=np.int64)
        self._add(vectors, listing_ids, faiss_ids)
        self.next_faiss_id += len(listing_ids)

    def _add(self, vectors: np.ndarray, listing_ids: list[str], faiss_ids: np.ndarray) -> None:
        if not len(listing_ids):
            return
        self.index.add_with_ids(vectors, faiss_ids)
        if self.exact is not None:
            self.exact = self.exact.updated(faiss_ids, vectors)
        for listing_id, faiss_id, digest in zip(listing_ids, faiss_ids.tolist(), vector_digests(vectors).tolist()):
            self._faiss_id_of[listing_id] = faiss_id
            self._listing_of[faiss_id] = listing_id
            self._digest_of[listing_id] = digest

    def remove(self, listing_ids: Collection[str]) -> int:
        """Remove listings; unknown ids are ignored. Returns how many were removed."""
        faiss_ids = [self._faiss_id_of[i] for i in dict.fromkeys(listing_ids) if i in self._faiss_id_of]
        if not faiss_ids:
            return 0
        removed = self.index.remove_ids(np.asarray(faiss_ids, dtype=np.int64))
        if removed != len(faiss_ids):
            raise RuntimeError(f"FAISS removed {removed} of {len(faiss_ids)} vectors; {REBUILD_HINT}")
        if self.exact is not None:
            self.exact = self.exact.without(np.asarray(faiss_ids, dtype=np.int64))
        for faiss_id in faiss_ids:
            listing_id = self._listing_of.pop(faiss_id)
            del self._faiss_id_of[listing_id]
            self._digest_of.pop(listing_id, None)
        return removed

    def update(self, vectors: np.ndarray, listing_ids: Sequence[str]) -> None:
        """Insert or replace listings (remove + add); a replaced listing keeps its FAISS id."""
        vectors = ivf.as_vectors(vectors, self.dimension)
        listing_ids = _as_listing_ids(listing_ids, len(vectors))
        known = {i: self._faiss_id_of[i] for i in listing_ids if i in self._faiss_id_of}
        self.remove(list(known))
        faiss_ids = np.empty(len(listing_ids), dtype=np.int64)
        for position, listing_id in enumerate(listing_ids):
            if listing_id in known:
                faiss_ids[position] = known[listing_id]
            else:
                faiss_ids[position] = self.next_faiss_id
                self.next_faiss_id += 1
        self._add(vectors, listing_ids, faiss_ids)

    def sync(self, vectors: np.ndarray, listing_ids: Sequence[str]) -> dict[str, int]:
        """Make the index hold exactly ``listing_ids`` with ``vectors`` (the current catalogue), incrementally.

        New listings are added, listings not in ``listing_ids`` removed, listings whose vector changed
        replaced (keeping their FAISS id); the coarse quantiser is not re-trained. Returns the counts
        ``added``, ``removed``, ``updated``, ``unchanged``.
        """
        vectors = ivf.as_vectors(vectors, self.dimension)
        listing_ids = _as_listing_ids(listing_ids, len(vectors))
        digests = vector_digests(vectors).tolist()
        wanted = set(listing_ids)
        gone = [i for i in self._faiss_id_of if i not in wanted]
        changed = [
            row
            for row, (listing_id, digest) in enumerate(zip(listing_ids, digests))
            if listing_id not in self._faiss_id_of or self._digest_of.get(listing_id) != digest
        ]
        added = sum(1 for row in changed if listing_ids[row] not in self._faiss_id_of)
        self.remove(gone)
        if changed:
            self.update(vectors[changed], [listing_ids[row] for row in changed])
        counts = {
            "added": added,
            "removed": len(gone),
            "updated": len(changed) - added,
            "unchanged": len(listing_ids) - len(changed),
        }
        logger.info("synced vector index: %s", counts)
        return counts

    # ------------------------------------------------------------------ search
    @staticmethod
    def set_search_threads(threads: int | None) -> None:
        """OpenMP threads of every later search, in whichever thread it runs (None: FAISS's default).

        ``faiss.omp_set_num_threads`` sets only the calling thread's count: the service set it at start, in
        the event loop's thread, and its searches ran in the request pool's threads with one OpenMP thread per
        core, whose barrier waits for a core on a busy machine (20 ms instead of 0.07 for 600 listings, load 12)."""
        global _search_threads
        _search_threads = threads
        if threads is not None:
            faiss.omp_set_num_threads(threads)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: Collection[str] | None = None,
        *,
        allowed_faiss_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k listings per query.

        Returns ``scores float32 (nq, k')`` and ``ids`` (nq lists of listing ids), best first, with
        ``k' = min(k, number of searchable listings)`` where searchable means indexed and, when
        ``allowed_ids`` is given, in it. Every row has exactly ``k'`` results: when the probed lists
        hold too few (filtered) vectors the row is searched again over all lists. Listings outside
        ``allowed_ids`` are never returned (FAISS id selector). A caller that filters often can pass
        the allowed set as ``allowed_faiss_ids`` (int64, from ``faiss_ids_of``) and skip the id lookup.
        """
        if _search_threads is not None and faiss.omp_get_max_threads() != _search_threads:
            faiss.omp_set_num_threads(_search_threads)  # this thread's own setting (see set_search_threads)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        if allowed_ids is not None and allowed_faiss_ids is not None:
            raise ValueError("pass allowed_ids or allowed_faiss_ids, not both")
        queries = ivf.as_vectors(queries, self.dimension, name="queries")
        selector = None
        if allowed_ids is not None:
            if isinstance(allowed_ids, str):
                raise ValueError("allowed_ids must be a collection of listing ids, not a single string")
            allowed_faiss_ids = self.faiss_ids_of(allowed_ids)
        if allowed_faiss_ids is None:
            available = len(self)
        else:
            allowed = np.asarray(allowed_faiss_ids, dtype=np.int64)
            allowed = np.unique(allowed[allowed >= 0])
            available = len(allowed)
            if available:
                selector = faiss.IDSelectorBatch(allowed)
        want = min(int(k), available)
        if want == 0:
            return np.zeros((len(queries), 0), dtype=np.float32), [[] for _ in range(len(queries))]
        if selector is not None and self.nlist and available <= self._subset_search_limit():
            scores, ids = self._search_subset(queries, want, allowed)
        else:
            scores, ids = self._first_stage_search(queries, want, self.nprobe or None, selector, available)
        short = (ids < 0).any(axis=1)
        if short.any() and self.nlist:
            # The probed lists held fewer than `want` (allowed) vectors: probe 8x more lists, then all.
            for nprobe in (min(self.nlist, 8 * max(self.nprobe, 1)), self.nlist):
                logger.debug("%d of %d queries came back short; nprobe=%d", short.sum(), len(ids), nprobe)
                scores[short], ids[short] = self._first_stage_search(queries[short], want, nprobe, selector,
                                                                     available)
                short = (ids < 0).any(axis=1)
                if not short.any():
                    break
        if (ids < 0).any():
            raise RuntimeError(
                f"index returned fewer than {want} results although {available} listings are searchable; "
                + REBUILD_HINT
            )
        listing_of = self._listing_of
        return scores, [[listing_of[i] for i in row] for row in ids.tolist()]

    def _first_stage_search(self, queries: np.ndarray, k: int, nprobe: int | None = None, selector=None,
                            available: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search; for a compressed index ``k * refine_factor`` candidates re-scored exactly."""
        if self.exact is None:
            return ivf.search(self.index, queries, k, nprobe, selector)
        return refined_search(lambda q, wide: ivf.search(self.index, q, wide, nprobe, selector), queries, k,
                              self.exact, factor=self.refine_factor,
                              available=available if available is not None else len(self), metric=self.metric)

    @property
    def codec(self) -> str | None:
        """``"sq8"`` or ``"pq"`` for an index of compressed codes, None for one of float32 vectors."""
        return ivf.codec_of(self.info.get("index_type", "")) if self.exact is not None else None

    @property
    def refine_factor(self) -> int | None:
        """Candidates re-scored with the exact vectors per wanted result (None: nothing to re-score)."""
        return REFINE_FACTORS.get(self.codec, DEFAULT_REFINE_FACTOR) if self.exact is not None else None

    def _subset_search_limit(self) -> int:
        return SUBSET_SEARCH_MAX

    def _search_subset(self, queries: np.ndarray, k: int, faiss_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among ``faiss_ids`` by brute force over their stored vectors (SQ8/PQ: the exact ones)."""
        if self.exact is not None:
            return refine(queries, np.broadcast_to(faiss_ids, (len(queries), len(faiss_ids))).copy(), self.exact, k,
                          self.metric)
        vectors = self.index.reconstruct_batch(faiss_ids)
        if self.metric == "ip":
            scores = queries @ vectors.T
        else:  # negated squared L2 so that larger is better here
            scores = 2 * queries @ vectors.T - (queries**2).sum(1, keepdims=True) - (vectors**2).sum(1)[None, :]
        if k < scores.shape[1]:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        best = np.take_along_axis(scores, top, 1).astype(np.float32)
        return (best if self.metric == "ip" else -best), faiss_ids[top]

    def faiss_ids_of(self, listing_ids: Iterable[str]) -> np.ndarray:
        """int64 FAISS id of each listing id, -1 for a listing that is not indexed."""
        lookup = self._faiss_id_of
        return np.fromiter((lookup.get(i, -1) for i in listing_ids), dtype=np.int64)

    def vectors(self, listing_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``listing_ids`` (float32 (n, d); for SQ8/PQ the exact ones kept beside the codes)."""
        missing = [i for i in listing_ids if i not in self._faiss_id_of]
        if missing:
            raise KeyError(f"{len(missing)} listings are not indexed (e.g. {missing[:3]!r})")
        return self.vectors_at(np.fromiter((self._faiss_id_of[i] for i in listing_ids), dtype=np.int64,
                                           count=len(listing_ids)))

    def vectors_at(self, faiss_ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these FAISS ids (float32 (n, d); for SQ8/PQ the exact ones kept beside the codes)."""
        faiss_ids = np.ascontiguousarray(faiss_ids, dtype=np.int64)
        if not len(faiss_ids):
            return np.zeros((0, self.dimension), np.float32)
        if self.exact is not None:
            return self.exact.lookup(faiss_ids)[0]
        return self.index.reconstruct_batch(faiss_ids)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.index.ntotal

    def __contains__(self, listing_id: str) -> bool:
        return listing_id in self._faiss_id_of

    @property
    def dimension(self) -> int:
        return self.index.d

    @property
    def nlist(self) -> int:
        inverted = ivf.ivf_of(self.index)
        return 0 if inverted is None else int(inverted.nlist)

    @property
    def listing_ids(self) -> list[str]:
        return list(self._faiss_id_of)

    def faiss_id(self, listing_id: str) -> int:
        return self._faiss_id_of[listing_id]

    def listing_id(self, faiss_id: int) -> str:
        return self._listing_of[int(faiss_id)]

    @property
    def manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "vector_index",
            "model_fingerprint": self.model_fingerprint,
            "dimension": self.dimension,
            "metric": self.metric,
            "count": len(self),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "index_type": self.info.get("index_type", ivf.factory_string(self.nlist)),
            "next_faiss_id": self.next_faiss_id,
            "faiss_version": faiss.__version__,
            "refine": ({"factor": self.refine_factor, "exact_vectors": "memory-mapped float32"}
                       if self.exact is not None else None),
            **{key: value for key, value in self.info.items() if key not in ("nlist", "index_type")},
        }

    def __repr__(self) -> str:
        return (
            f"VectorIndex({self.manifest['index_type']}, count={len(self)}, d={self.dimension}, "
            f"nprobe={self.nprobe}, model={self.model_fingerprint[:12]})"
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write index.faiss, id_map.json and manifest.json as a new version of ``directory``, atomically."""
        manifest = {**self.manifest, "saved_at": _now()}
        with atomic_version(directory, manifest) as folder:
            self._write_files(folder)
        return Path(directory)

    def write_to(self, folder: str | os.PathLike) -> Path:
        """Write index.faiss, id_map.json and manifest.json into the new folder ``folder``, for a caller that
        publishes it as part of something larger (the workspace's index set, ``index.index_set``)."""
        folder = Path(folder)
        folder.mkdir()
        self._write_files(folder)
        write_manifest(folder, {**self.manifest, "saved_at": _now()})
        return folder

    def _write_files(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        if self.exact is not None:
            self.exact.save(folder)
        id_map = {
            "listing_ids": list(self._faiss_id_of),
            "faiss_ids": list(self._faiss_id_of.values()),
            "next_faiss_id": self.next_faiss_id,
            "digests": [self._digest_of.get(i) for i in self._faiss_id_of],
        }
        with open(folder / ID_MAP_FILE, "w", encoding="utf-8") as handle:
            json.dump(id_map, handle)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        expected_fingerprint: str | None = None,
        expected_dimension: int | None = None,
        mmap: bool = False,
    ) -> VectorIndex:
        """Load the current version of ``directory`` after verifying checksums, model and dimension."""
        folder, manifest = open_version(directory, "vector index")
        return cls._read(folder, manifest, expected_fingerprint, expected_dimension, mmap)

    @classmethod
    def read_from(
        cls,
        folder: str | os.PathLike,
        expected_fingerprint: str | None = None,
        expected_dimension: int | None = None,
        mmap: bool = False,
        verify: bool = True,
    ) -> VectorIndex:
        """Load the folder written by `write_to` (``verify=False`` skips the checksums a caller has checked)."""
        folder = Path(folder)
        manifest = read_manifest(folder, "vector index", verify=verify)
        return cls._read(folder, manifest, expected_fingerprint, expected_dimension, mmap)

    @classmethod
    def _read(cls, folder: Path, manifest: dict, expected_fingerprint: str | None, expected_dimension: int | None,
              mmap: bool) -> VectorIndex:
        if manifest.get("kind") != "vector_index" or manifest.get("format_version") != FORMAT_VERSION:
            raise IndexLoadError(
                f"{folder} holds {manifest.get('kind')!r} format {manifest.get('format_version')!r}, "
                f"expected 'vector_index' format {FORMAT_VERSION}; {REBUILD_HINT}"
            )
        built_with = manifest.get("model_fingerprint")
        if expected_fingerprint is not None and built_with != expected_fingerprint:
            raise IndexLoadError(
                f"vector index at {folder} was built with model fingerprint {built_with!r} but the "
                f"current model's fingerprint is {expected_fingerprint!r}; {REBUILD_HINT}"
            )
        if expected_dimension is not None and manifest.get("dimension") != expected_dimension:
            raise IndexLoadError(
                f"vector index at {folder} holds {manifest.get('dimension')}-d vectors but the current "
                f"model embeds into {expected_dimension} dimensions; {REBUILD_HINT}"
            )
        index = faiss.read_index(str(folder / INDEX_FILE), _read_flags(manifest, mmap))
        if index.d != manifest["dimension"] or index.ntotal != manifest["count"]:
            raise IndexLoadError(
                f"{folder / INDEX_FILE} holds {index.ntotal} {index.d}-d vectors but the manifest says "
                f"{manifest['count']} {manifest['dimension']}-d; {REBUILD_HINT}"
            )
        id_map = json.loads((folder / ID_MAP_FILE).read_text(encoding="utf-8"))
        info_keys = ("index_type", "trained_count", "build_seconds", "built_at", "calibration", "saved_at")
        vi = cls(
            index,
            id_map["listing_ids"],
            np.asarray(id_map["faiss_ids"], dtype=np.int64),
            model_fingerprint=built_with,
            metric=manifest["metric"],
            nprobe=manifest["nprobe"],
            next_faiss_id=id_map["next_faiss_id"],
            info={key: manifest[key] for key in info_keys if key in manifest},
            digests=id_map.get("digests"),
            exact=ExactVectors.load(folder, mmap=True) if ExactVectors.present(folder) else None,
        )
        logger.info("loaded %r from %s", vi, folder)
        return vi


def _as_listing_ids(listing_ids: Sequence[str], n: int) -> list[str]:
    if isinstance(listing_ids, str):
        raise ValueError("listing_ids must be a sequence of ids, not a single string")
    listing_ids = list(listing_ids)
    if len(listing_ids) != n:
        raise ValueError(f"got {n} vectors but {len(listing_ids)} listing ids; they must match one to one")
    bad = [i for i in listing_ids if not isinstance(i, str) or not i]
    if bad:
        raise ValueError(f"listing ids must be non-empty strings; got {bad[:3]!r}")
    if len(set(listing_ids)) != n:
        seen, duplicates = set(), []
        for listing_id in listing_ids:
            if listing_id in seen:
                duplicates.append(listing_id)
            seen.add(listing_id)
        raise ValueError(f"duplicate listing ids: {duplicates[:5]!r}; each listing must appear once")
    return listing_ids


def vector_digests(vectors: np.ndarray) -> np.ndarray:
    """A 64-bit blake2b digest of each row's bytes (int64 (n,)): equal digests mean an unchanged vector."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little", signed=True)
            for row in vectors
        ],
        dtype=np.int64,
    )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["VectorIndex", "IndexLoadError"]


def _read_flags(manifest: dict, mmap: bool) -> int:
    """FAISS read flags: ``mmap`` maps the stored vectors read-only instead of copying them (the pages are the
    file's, shared by every process serving it, and read in as searches touch them). The inverted lists of an
    IVF index are mapped by ``IO_FLAG_MMAP``; the codes of a flat index by ``IO_FLAG_MMAP_IFC`` (FAISS refuses the
    second flag on an IVF index and ignores the first on a flat one)."""
    if not mmap:
        return 0
    flat = manifest.get("index_type", "").startswith("IDMap")
    return (faiss.IO_FLAG_MMAP_IFC if flat else faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
