"""Building one IVF index in shards: train once, fill shards in parallel, merge the inverted lists.

The recipe of the FAISS wiki's "indexes that do not fit in RAM": the coarse quantiser (and PQ codebooks) are
trained once on a sample, every shard is a copy of that empty trained index filled with a slice of the
vectors, and the shards' inverted lists are merged into one index with FAISS's own ``merge_from``. Shards
are contiguous slices merged in order, so every inverted list holds the same entries in the same order as
a single-process ``add_with_ids`` of all vectors into the same trained index: the searches are identical.

``map_shards`` decides where shards are filled: the built-in ``map`` (this process, one after the other)
or ``ray_map`` (Ray tasks on a cluster). Shards travel as serialised indexes (``uint8`` arrays).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import faiss
import numpy as np

from core.cluster import connect_ray, ray_cpus
from index import ivf

logger = logging.getLogger(__name__)

ShardMap = Callable[[Callable, Iterable, Iterable, Iterable], Iterable[np.ndarray]]


def serialize(index: faiss.Index) -> np.ndarray:
    return faiss.serialize_index(index)


def deserialize(blob: np.ndarray) -> faiss.Index:
    return faiss.deserialize_index(np.asarray(blob, dtype=np.uint8))


def fill_shard(trained: np.ndarray, vectors: np.ndarray, faiss_ids: np.ndarray) -> np.ndarray:
    """A copy of the empty ``trained`` index (serialised) holding ``vectors`` under ``faiss_ids``, serialised."""
    index = deserialize(trained)
    index.add_with_ids(ivf.as_vectors(vectors, index.d), np.ascontiguousarray(faiss_ids, dtype=np.int64))
    return serialize(index)


def fill_shard_from_file(trained: np.ndarray, path: str, start: int, stop: int, first_id: int = 0,
                         chunk: int = 500_000) -> np.ndarray:
    """``fill_shard`` for rows ``start:stop`` of a ``.npy`` file too big for memory (memory-mapped and added in
    chunks; ids ``first_id + row``): the file is read where the task runs (shared storage on a cluster)."""
    vectors = np.load(path, mmap_mode="r")
    index = deserialize(trained)
    for begin in range(start, stop, chunk):
        end = min(stop, begin + chunk)
        index.add_with_ids(np.ascontiguousarray(vectors[begin:end], dtype=np.float32),
                           np.arange(first_id + begin, first_id + end, dtype=np.int64))
    return serialize(index)


def merge_shards(trained: np.ndarray, shards: Iterable[np.ndarray]) -> faiss.Index:
    """One index holding every shard's vectors, in shard order (FAISS ``IndexIVF.merge_from``)."""
    merged = deserialize(trained)
    target = ivf.ivf_of(merged)
    if target is None:
        raise ValueError("only IVF indexes are built in shards; a flat index is built in one piece")
    for blob in shards:
        shard = deserialize(blob)
        target.merge_from(ivf.ivf_of(shard), 0)
        merged.ntotal = target.ntotal
    ivf.set_direct_map(merged)
    return merged


def shard_slices(n: int, shards: int) -> list[slice]:
    """``shards`` contiguous slices covering ``range(n)`` (the last ones may be one shorter)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    bounds = np.linspace(0, n, num=min(shards, max(n, 1)) + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def add_in_shards(
    trained: faiss.Index,
    vectors: np.ndarray,
    faiss_ids: np.ndarray,
    *,
    shards: int,
    map_shards: ShardMap = map,
) -> faiss.Index:
    """``trained`` (empty, trained IVF) filled with ``vectors`` by ``shards`` parallel fills and one merge."""
    vectors = ivf.as_vectors(vectors, trained.d)
    faiss_ids = np.ascontiguousarray(faiss_ids, dtype=np.int64)
    slices = shard_slices(len(vectors), shards)
    blob = serialize(trained)
    started = time.perf_counter()
    filled = map_shards(fill_shard, [blob] * len(slices), [vectors[s] for s in slices],
                        [faiss_ids[s] for s in slices])
    merged = merge_shards(blob, filled)
    logger.info("filled %d shards and merged %d vectors in %.1fs", len(slices), merged.ntotal,
                time.perf_counter() - started)
    return merged


def ray_map(address: str | None = "auto") -> ShardMap:
    """A ``map_shards`` running every shard as a Ray task on the cluster at ``address`` ("auto": the running
    cluster this machine belongs to, else a local one). The trained index is put in the object store once."""
    connect_ray(address)
    import ray

    fill = ray.remote(fill_shard)

    def run(function, trained_blobs: Sequence, vector_slices: Sequence, id_slices: Sequence) -> list[np.ndarray]:
        trained_ref = ray.put(trained_blobs[0])
        refs = [fill.remote(trained_ref, v, i) for v, i in zip(vector_slices, id_slices)]
        return ray.get(refs)

    return run


def ray_shard_count() -> int:
    """One shard per CPU of the connected Ray cluster."""
    return ray_cpus()
