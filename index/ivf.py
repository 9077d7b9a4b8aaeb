"""FAISS IVF helpers: small free functions over numpy arrays (in the spirit of `faiss.contrib`).

Vectors are ``float32 (n, d)``, FAISS ids ``int64 (n,)``; searches return ``(scores, ids)`` matrices of
shape ``(nq, k)`` with FAISS's ``-1`` padding where fewer than ``k`` results exist.
"""

from __future__ import annotations

import logging
import math
import time

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

logger = logging.getLogger(__name__)

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
# Below this many vectors an exact flat scan is fast enough (a few ms per query at d=256) and IVF's
# training cost and recall loss do not pay.
FLAT_BELOW = 10_000
# FAISS warns below 39 training points per centroid; k-means quality degrades under it.
MIN_POINTS_PER_LIST = 39
# Train on at most this many points per list: more costs k-means time without better lists.
MAX_TRAIN_POINTS_PER_LIST = 50


def as_vectors(vectors, dimension: int | None = None, name: str = "vectors") -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 (n, d) array, or raise a ValueError naming the problem."""
    array = np.asarray(vectors)
    if array.ndim == 1 and dimension is not None and array.shape[0] == dimension:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d); got shape {array.shape}")
    if dimension is not None and array.shape[1] != dimension:
        raise ValueError(
            f"{name} have dimension {array.shape[1]} but the index holds {dimension}-d vectors; "
            "encode with the same model the index was built with"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values; re-encode them")
    return array


def metric_type(metric: str) -> int:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {sorted(METRICS)}")
    return METRICS[metric]


def choose_nlist(n: int, flat_below: int = FLAT_BELOW) -> int:
    """Number of IVF lists for ``n`` vectors, or 0 when an exact flat index is the better choice.

    FAISS guideline: between 4*sqrt(n) and 16*sqrt(n) lists, with at least ~39 training vectors per
    list. We take the low end (4*sqrt(n)): fewer lists train faster and need a smaller nprobe for the
    same recall, which matters on a 2-core machine.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if n < flat_below:
        return 0
    nlist = int(round(4 * math.sqrt(n)))
    return max(1, min(nlist, n // MIN_POINTS_PER_LIST))


def choose_pq_subquantizers(dimension: int) -> int:
    """Number of PQ sub-quantisers (bytes per vector): one per 4 dimensions, 16x smaller than float32.

    It must divide ``dimension``. Fewer bytes (d/8) cost too much recall on clustered embeddings.
    """
    target = max(1, dimension // 4)
    for m in range(target, 0, -1):
        if dimension % m == 0:
            return m
    return 1


# The compressed codecs a large index may store instead of float32 vectors (candidates are then re-scored with
# the exact vectors, index/refine.py): 8-bit scalar quantisation (d bytes per vector, ranks almost exactly)
# and product quantisation (d/4 bytes, 4x smaller again, needs a deeper re-scoring).
CODECS = ("sq8", "pq")


def codec_string(codec: str | None, dimension: int) -> str:
    """The FAISS code description of ``codec`` (None: float32 vectors): ``Flat``, ``SQ8`` or ``PQ{m}x8``."""
    if codec is None:
        return "Flat"
    if codec == "sq8":
        return "SQ8"
    if codec == "pq":
        return f"PQ{choose_pq_subquantizers(dimension)}x8"
    raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS} or None")


def codec_of(index_type: str) -> str | None:
    """The codec of an index described by ``factory_string`` (``"IVF4096,SQ8"`` -> ``"sq8"``)."""
    codes = index_type.rsplit(",", 1)[-1]
    if codes.startswith("SQ8"):
        return "sq8"
    if codes.startswith("PQ"):
        return "pq"
    return None


def factory_string(nlist: int, codes: str = "Flat") -> str:
    """The `faiss.index_factory` description: ``codes`` (``codec_string``) with an id map when nlist == 0,
    else in ``nlist`` inverted lists."""
    return f"IDMap2,{codes}" if nlist == 0 else f"IVF{nlist},{codes}"


def build_ivf(
    vectors: np.ndarray,
    faiss_ids: np.ndarray,
    nlist: int,
    metric: str = "ip",
    codec: str | None = None,
    max_train_points: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """Build a FAISS index over ``vectors`` with ``faiss_ids``.

    ``nlist == 0`` gives an exact ``IDMap2,Flat`` index; otherwise ``IVF{nlist},Flat`` (or ``,SQ8`` /
    ``,PQ{d/4}x8`` for ``codec`` ``"sq8"`` / ``"pq"``), trained on a random sample of at most
    ``MAX_TRAIN_POINTS_PER_LIST * nlist`` vectors.
    """
    vectors = as_vectors(vectors)
    faiss_ids = _as_faiss_ids(faiss_ids, len(vectors))
    index = train_index(vectors, nlist, metric=metric, codec=codec, max_train_points=max_train_points, seed=seed)
    set_direct_map(index)
    started = time.perf_counter()
    index.add_with_ids(vectors, faiss_ids)
    logger.info("added %d vectors to %s in %.1fs", len(vectors), index_description(index),
                time.perf_counter() - started)
    return index


def _as_faiss_ids(faiss_ids: np.ndarray, n: int) -> np.ndarray:
    faiss_ids = np.ascontiguousarray(faiss_ids, dtype=np.int64)
    if faiss_ids.shape != (n,):
        raise ValueError(f"faiss_ids must have shape ({n},) to match the vectors; got {faiss_ids.shape}")
    return faiss_ids


def index_description(index: faiss.Index) -> str:
    inverted = ivf_of(index)
    return f"IVF{inverted.nlist} ({type(faiss.downcast_index(inverted)).__name__})" if inverted else "flat index"


def train_index(
    vectors: np.ndarray,
    nlist: int,
    metric: str = "ip",
    codec: str | None = None,
    max_train_points: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """A new, empty index (``factory_string(nlist, codec_string(codec, d))``) whose coarse quantiser (and
    scalar ranges or PQ codebooks) are trained on a seeded random sample of ``vectors`` of at most
    ``MAX_TRAIN_POINTS_PER_LIST * nlist`` rows."""
    vectors = as_vectors(vectors)
    n, dimension = vectors.shape
    if nlist < 0:
        raise ValueError(f"nlist must be >= 0 (0 = exact flat index); got {nlist}")
    if nlist > 0 and n < nlist:
        raise ValueError(
            f"cannot train {nlist} IVF lists on {n} vectors; use nlist <= {max(1, n // MIN_POINTS_PER_LIST)} "
            "(or nlist=None to choose it from the catalogue size)"
        )
    description = factory_string(nlist, codec_string(codec, dimension))
    index = faiss.index_factory(dimension, description, metric_type(metric))
    inverted = ivf_of(index)
    if codec == "pq" and inverted is not None:
        # Polysemous training (on by default) only speeds up Hamming-filtered search, which we do not
        # use, and costs about a minute even on 10k vectors.
        faiss.downcast_index(inverted).do_polysemous_training = False
    started = time.perf_counter()
    if not index.is_trained:
        limit = max_train_points or max(MAX_TRAIN_POINTS_PER_LIST * max(nlist, 1), 256 * 39)
        if n > limit:
            sample = np.random.default_rng(seed).choice(n, size=limit, replace=False)
            train = vectors[np.sort(sample)]
        else:
            train = vectors
        if nlist > 0 and len(train) < MIN_POINTS_PER_LIST * nlist:
            logger.warning(
                "training %d IVF lists on only %d vectors (< %d per list); recall may suffer",
                nlist,
                len(train),
                MIN_POINTS_PER_LIST,
            )
        index.train(train)
        logger.info("trained %s on %d vectors in %.1fs", description, len(train), time.perf_counter() - started)
    return index


def set_direct_map(index: faiss.Index) -> None:
    """id -> list position, so vectors can be read back by id (`reconstruct_batch`): sparse filters are
    answered exactly from them. About 16 bytes per vector. Set after merging shards (FAISS merges none)."""
    inverted = ivf_of(index)
    if inverted is not None:
        inverted.set_direct_map_type(faiss.DirectMap.Hashtable)


def ivf_of(index: faiss.Index):
    """The IndexIVF inside ``index``, or None for a flat index."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def search_parameters(index: faiss.Index, nprobe: int | None = None, selector=None):
    """Per-call search parameters (thread-safe: nothing is set on the shared index)."""
    if ivf_of(index) is not None:
        params = faiss.SearchParametersIVF()
        if nprobe is not None:
            params.nprobe = int(nprobe)
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def search(
    index: faiss.Index, queries: np.ndarray, k: int, nprobe: int | None = None, selector=None
) -> tuple[np.ndarray, np.ndarray]:
    """k-NN search; returns ``(scores float32 (nq, k), faiss_ids int64 (nq, k))``, ``-1`` ids where short."""
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    queries = as_vectors(queries, index.d, name="queries")
    params = search_parameters(index, nprobe, selector)
    return index.search(queries, int(k), params=params)


def exact_search(
    vectors: np.ndarray, faiss_ids: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip"
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force reference search with ``IndexFlatIP``/``IndexFlatL2``; same output shape as ``search``."""
    vectors = as_vectors(vectors)
    flat = faiss.IndexIDMap(faiss.IndexFlat(vectors.shape[1], metric_type(metric)))
    flat.add_with_ids(vectors, np.ascontiguousarray(faiss_ids, dtype=np.int64))
    return flat.search(as_vectors(queries, vectors.shape[1], name="queries"), int(k))


def recall_at_k(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Fraction of the exact top-k found by the approximate search (FAISS's intersection measure)."""
    return float(knn_intersection_measure(approximate_ids, exact_ids))


# One-sided 95 % normal quantile: calibration asks that recall reaches its target with this confidence over the
# queries, not just on average. At 10M vectors, nprobe=1 gave recall@10 0.957 on the 1,000 calibration queries
# but 0.944 on 1,000 fresh ones (docs/benchmarks.md, "10M listings").
CALIBRATION_CONFIDENCE_Z = 1.645


# Scores within this of the exact k-th neighbour's count as tying it (float32 sums over a few hundred dimensions,
# computed by the IVF scan and the flat reference in different orders, differ by ~1e-7).
TIE_TOLERANCE = 1e-5


def per_query_recall(approximate_ids: np.ndarray, exact_ids: np.ndarray, approximate_scores: np.ndarray | None = None,
                     exact_scores: np.ndarray | None = None, metric: str = "ip") -> np.ndarray:
    """Recall@k of each query: the share of its exact top-k among its first k approximate ids. The mean is
    ``recall_at_k``.

    With both ``approximate_scores`` and ``exact_scores`` (exact similarities or distances of the returned
    ids), a returned neighbour whose score ties the exact k-th neighbour's counts as found as well: among
    listings with the same vector (a photo posted in many listings) exact search returns an arbitrary k of the
    tied ones, and an approximate search that returns another k of them has lost nothing."""
    approximate_ids, exact_ids = np.asarray(approximate_ids), np.asarray(exact_ids)
    k = exact_ids.shape[1]
    found = np.array([len(set(a[:k].tolist()) & set(e.tolist())) for a, e in zip(approximate_ids, exact_ids)])
    if approximate_scores is not None and exact_scores is not None:
        kth = np.asarray(exact_scores)[:, k - 1 : k]
        returned = np.asarray(approximate_scores)[:, :k]
        tying = returned >= kth - TIE_TOLERANCE if metric == "ip" else returned <= kth + TIE_TOLERANCE
        tying &= np.asarray(approximate_ids)[:, :k] >= 0
        found = np.maximum(found, tying.sum(axis=1))
    return found / k


def lower_confidence_bound(per_query: np.ndarray, z: float = CALIBRATION_CONFIDENCE_Z) -> float:
    """One-sided lower confidence bound of the mean of ``per_query``: ``mean - z * std / sqrt(n)``."""
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else 0.0
    return float(per_query.mean() - z * per_query.std(ddof=1) / np.sqrt(len(per_query)))


def recall_lower_bound(
    approximate_ids: np.ndarray, exact_ids: np.ndarray, z: float = CALIBRATION_CONFIDENCE_Z
) -> float:
    """One-sided lower confidence bound of the mean per-query recall@k."""
    return lower_confidence_bound(per_query_recall(approximate_ids, exact_ids), z)


def calibrate_nprobe(
    index: faiss.Index,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    k: int = 10,
    target_recall: float = 0.95,
    search_fn=None,
    exact_scores: np.ndarray | None = None,
    metric: str = "ip",
) -> tuple[int, float]:
    """Smallest nprobe whose recall@k against ``exact_ids`` reaches ``target_recall`` with 95 % confidence
    (``recall_lower_bound`` over the queries), so that fresh queries reach it too. With ``exact_scores``,
    neighbours that tie the exact k-th one count as found (``per_query_recall``).

    Doubles nprobe until the target is met, then bisects between the last failing and first passing
    value. Returns ``(nprobe, recall)``; for a flat index ``(0, recall)``. If even nprobe == nlist
    misses the target (possible with PQ codes), returns nlist with a warning. ``search_fn(queries, k, nprobe)``
    replaces the plain FAISS search (a PQ index calibrates its refined search).
    """
    if search_fn is None:
        def search_fn(q, k_, nprobe):
            return search(index, q, k_, nprobe)

    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1]; got {target_recall}")
    exact_ids = np.asarray(exact_ids)[:, :k]
    if exact_scores is not None:
        exact_scores = np.asarray(exact_scores)[:, :k]
    ivf = ivf_of(index)
    cache: dict[int, tuple[float, float]] = {}

    def measured(nprobe: int | None) -> tuple[float, float]:
        key = nprobe or 0
        if key not in cache:
            scores, ids = search_fn(queries, k, nprobe)
            per_query = per_query_recall(ids, exact_ids, scores, exact_scores, metric)
            cache[key] = float(per_query.mean()), lower_confidence_bound(per_query)
            logger.debug("nprobe=%s recall@%d=%.4f (lower bound %.4f)", nprobe, k, *cache[key])
        return cache[key]

    def recall(nprobe: int | None) -> float:
        return measured(nprobe)[0]

    def reaches(nprobe: int) -> bool:
        return measured(nprobe)[1] >= target_recall

    if ivf is None:
        return 0, recall(None)
    nlist = ivf.nlist
    low, high = 0, 1
    while not reaches(high):
        if high >= nlist:
            logger.warning(
                "recall@%d reaches only %.3f at nprobe=nlist=%d (target %.2f); using nprobe=%d",
                k,
                recall(nlist),
                nlist,
                target_recall,
                nlist,
            )
            return nlist, recall(nlist)
        low, high = high, min(2 * high, nlist)
    while high - low > 1:
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle
    logger.info("calibrated nprobe=%d (recall@%d=%.4f, target %.2f)", high, k, recall(high), target_recall)
    return high, recall(high)
