"""Build or update a workspace's index set from its catalogue and stored embeddings.

``<workspace>/index/`` holds the published index set (``index.index_set``): the `VectorIndex` over the
listing vectors, the `BM25Index` over title + description and the photo index (a `VectorIndex` over the
listings' photo vectors, when the catalogue stores them), as one version. By default both vector indexes
are updated incrementally (new listings added, deleted ones removed, re-embedded ones replaced, nprobe
re-calibrated); ``rebuild`` re-trains their coarse quantisers. BM25 is rebuilt whenever the catalogue's texts
changed (bm25s has no incremental updates; it takes about a second per 100k listings). A run that changes
nothing publishes nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from catalog.store import Catalog
from encoders.embed import EmbeddingTable, embedding_checkpoint, load_embeddings, model_photo_dim
from index import ivf
from index.bm25 import BM25Index, listing_text
from index.index_set import IndexSet, digest_of, has_legacy_layout, load_index_set, publish_index_set
from index.storage import CURRENT, IndexLoadError
from index.vector_index import VectorIndex

logger = logging.getLogger(__name__)


@dataclass
class IndexReport:
    model_fingerprint: str
    mode: str  # "built", "rebuilt" or "updated"
    index_set: str  # the version now current
    published: bool  # False when nothing changed (the current set stays)
    listings: int  # searchable (active) listings: what the indexes cover
    vector_count: int
    bm25_count: int
    photo_count: int = 0  # listings in the photo index (those with a photo vector); 0 without one
    photo_index_type: str = ""
    added: int = 0
    removed: int = 0
    updated: int = 0
    unchanged: int = 0
    index_type: str = ""
    nlist: int = 0
    nprobe: int = 0
    recall_at_10: float | None = None
    needs_rebuild: bool = False
    drift_reasons: list[str] = field(default_factory=list)
    checkpoint: int = 0  # the change-log seq the published set reflects (search/live.py replays past it)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def read_model_fingerprint(model_dir: str | Path) -> str:
    """The fingerprint of the model bundle in ``model_dir``, computed from its content.

    ``bundle.json`` also records it, but a bundle whose files were edited (or written by an older
    version) would then disagree with what ``embed`` and the service compute, so the bundle is loaded.
    """
    return _load_model(model_dir).fingerprint


def _load_model(model_dir: str | Path):
    if not (Path(model_dir) / "bundle.json").is_file():
        raise FileNotFoundError(f"no model bundle at {model_dir} (bundle.json missing); run `marketsearch train`")
    from encoders.bundle import MultiModalModel

    return MultiModalModel.load(model_dir)


def _calibration_queries(vectors: np.ndarray, seed: int = 0, size: int = 1000) -> np.ndarray:
    """Real-looking queries: a sample of the catalogue's own text vectors (what text queries look like), or of
    its photo vectors for the photo index (a query photo is encoded as catalogue photos are)."""
    if len(vectors) <= size:
        return vectors
    return vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), size, replace=False))]


def update_indexes(
    workspace,
    *,
    rebuild: bool = False,
    nlist: int | None = None,
    codec: str | None = None,
    model_dir: str | Path | None = None,
    fingerprint: str | None = None,
    photo_dim: int | None = None,
    map_shards=None,
    n_shards: int = 1,
) -> IndexReport:
    """Bring ``workspace``'s index set up to date with its catalogue and embeddings, and publish it.

    Both indexes cover the searchable listings only (status ``active``): a sold listing is never a
    candidate, and the first stage spends no depth on it. The vector index covers those embedded with the
    current model; BM25 covers every one. An existing set built with another model (or corrupt, or in the
    layout before index sets) is rebuilt from scratch. The set records its checkpoint: the change-log seq
    its content reflects (the older of the embeddings' checkpoint and the log head read before the
    catalogue); a set whose content is unchanged is republished when the checkpoint moved on.
    ``codec`` (``"flat"``, ``"sq8"``, ``"pq"``) sets what a new or rebuilt index stores; None: chosen from the
    size for a new index (``VectorIndex.build``), kept on a rebuild.
    ``map_shards`` / ``n_shards``: a new or rebuilt IVF index is filled in parallel shards (index/shards.py,
    e.g. on Ray); incremental updates are small and stay in this process.
    The photo index covers the active listings with a stored photo vector; ``photo_dim`` (``model_photo_dim``
    of the model) leaves out photo vectors of an older recipe, which `marketsearch embed` re-encodes.
    """
    sharding = {"map_shards": map_shards, "n_shards": n_shards}
    if codec not in (None, "flat", *ivf.CODECS):
        raise ValueError(f"unknown codec {codec!r}; expected flat, {' or '.join(ivf.CODECS)}")

    timings: dict[str, float] = {}
    started = time.perf_counter()
    if fingerprint is None:
        model = _load_model(model_dir or workspace.model_dir)
        fingerprint, photo_dim = model.fingerprint, photo_dim or model_photo_dim(model)
    catalog = Catalog(workspace.db_url, root=workspace.root)
    try:
        # read before the catalogue is: a change committed meanwhile is past the checkpoint, so replayed
        checkpoint = min(catalog.settled_change(), embedding_checkpoint(catalog, fingerprint))
        table = load_embeddings(catalog, fingerprint, photo_dim=photo_dim)
        ids, texts = [], []
        for batch in catalog.iter_listings():
            for listing in batch:
                if listing.status != "active":  # sold: readable by id, never searched
                    continue
                ids.append(listing.id)
                texts.append(listing_text(listing.title, listing.description))
    finally:
        catalog.close()
    if not ids:
        raise ValueError(f"the catalogue at {workspace.db_url} has no active listing; run `marketsearch ingest` first")
    if len(table) == 0:
        raise LookupError(f"no listing embeddings for model {fingerprint[:12]}; run `marketsearch embed` first")
    table = _searchable(table, ids)
    timings["load"] = time.perf_counter() - started

    started = time.perf_counter()
    current = _current_set(workspace.index_dir, fingerprint, table.dim)
    build = {"rebuild": rebuild, "nlist": nlist, "codec": codec, **sharding}
    vector_index, mode, counts = _build_or_update(current.vector if current is not None else None, table.listing,
                                                  table.ids, fingerprint, _calibration_queries(table.text), **build)
    drift = vector_index.drift()
    if drift["needs_rebuild"]:
        logger.warning("the vector index has drifted (%s); run `marketsearch index --rebuild`",
                       "; ".join(drift["reasons"]))  # fmt: skip
    timings["vector"] = time.perf_counter() - started

    started = time.perf_counter()
    photo_index, photo_changed = None, False
    photo_ids, photo_vectors = table.photo_rows()
    if photo_ids:
        existing_photo = current.photo if current is not None else None
        if existing_photo is not None and existing_photo.dimension != photo_vectors.shape[1]:
            existing_photo = None  # photo vectors of another recipe: build afresh
        photo_index, photo_mode, photo_counts = _build_or_update(
            existing_photo, photo_vectors, photo_ids, fingerprint, _calibration_queries(photo_vectors), **build)
        photo_changed = _changed(photo_mode, photo_counts)
        photo_drift = photo_index.drift()
        if photo_drift["needs_rebuild"]:
            drift = {"needs_rebuild": True, "reasons": [*drift["reasons"],
                                                        *(f"photo index: {r}" for r in photo_drift["reasons"])]}
            logger.warning("the photo index has drifted (%s); run `marketsearch index --rebuild`",
                           "; ".join(photo_drift["reasons"]))  # fmt: skip
        timings["photo"] = time.perf_counter() - started
    elif current is not None and current.photo is not None:
        photo_changed = True  # the catalogue no longer has photo vectors of this recipe: publish without

    started = time.perf_counter()
    text_digest = digest_of(ids, texts)
    vector_changed = _changed(mode, counts)
    unchanged = (not (vector_changed or photo_changed) and current is not None
                 and current.manifest.get("text_digest") == text_digest)
    if unchanged and current.manifest.get("checkpoint", 0) >= checkpoint:
        bm25, version, published = current.bm25, current.version, False
        logger.info("nothing changed: index set %s stays current", version)
    else:
        bm25 = BM25Index.build(ids, texts)
        timings["bm25"] = time.perf_counter() - started
        started = time.perf_counter()
        embeddings = {"count": len(table), "digest": digest_of(table.ids, table.listing)}
        version = publish_index_set(workspace.index_dir, vector_index, bm25, embeddings=embeddings,
                                    text_digest=text_digest, checkpoint=checkpoint, photo=photo_index)
        published = True
        timings["publish"] = time.perf_counter() - started

    manifest = vector_index.manifest
    return IndexReport(
        model_fingerprint=fingerprint,
        mode=mode,
        index_set=version,
        published=published,
        listings=len(ids),
        vector_count=len(vector_index),
        bm25_count=len(bm25),
        photo_count=len(photo_index) if photo_index is not None else 0,
        photo_index_type=photo_index.manifest["index_type"] if photo_index is not None else "",
        index_type=manifest["index_type"],
        nlist=manifest["nlist"],
        nprobe=manifest["nprobe"],
        recall_at_10=manifest.get("calibration", {}).get("recall"),
        needs_rebuild=drift["needs_rebuild"],
        drift_reasons=drift["reasons"],
        checkpoint=checkpoint if published else int(current.manifest.get("checkpoint", 0)),
        seconds={key: round(value, 2) for key, value in timings.items()},
        **counts,
    )


def _changed(mode: str, counts: dict[str, int]) -> bool:
    """Whether `_build_or_update` changed the index: built or rebuilt, or listings added, removed or updated."""
    return mode != "updated" or any(counts[key] for key in ("added", "removed", "updated"))


def _build_or_update(existing: VectorIndex | None, vectors: np.ndarray, ids: list[str], fingerprint: str,
                     queries: np.ndarray, *, rebuild: bool, nlist: int | None, codec: str | None, map_shards=None,
                     n_shards: int = 1) -> tuple[VectorIndex, str, dict[str, int]]:
    """``existing`` brought up to date with ``vectors`` of ``ids`` (or a new index when there is none), the mode
    ("built", "rebuilt", "updated") and the counts of added, removed, updated and unchanged listings."""
    sharding = {"map_shards": map_shards, "n_shards": n_shards}
    chosen_codec = None if codec == "flat" else codec
    if existing is None:
        index = VectorIndex.build(vectors, ids, fingerprint, nlist=nlist,
                                  codec="auto" if codec is None else chosen_codec,
                                  calibration_queries=queries, **sharding)  # fmt: skip
        return index, "built", {"added": len(ids), "removed": 0, "updated": 0, "unchanged": 0}
    if rebuild:
        before = set(existing.listing_ids)
        index = existing.rebuild(vectors, ids, nlist=nlist, codec="keep" if codec is None else chosen_codec,
                                 calibration_queries=queries, **sharding)  # fmt: skip
        return index, "rebuilt", {"added": len(set(ids) - before), "removed": len(before - set(ids)),
                                  "updated": 0, "unchanged": len(before & set(ids))}  # fmt: skip
    if nlist is not None or codec is not None:
        logger.warning("--nlist/--codec only apply to a new index or with --rebuild; keeping %s",
                       existing.manifest["index_type"])  # fmt: skip
    counts = existing.sync(vectors, ids)
    if counts["added"] or counts["removed"] or counts["updated"]:
        existing.calibrate(vectors, ids, queries)
    return existing, "updated", counts


def _searchable(table: EmbeddingTable, active_ids: list[str]) -> EmbeddingTable:
    """The rows of ``table`` whose listing is active (sold listings keep their embeddings, unindexed)."""
    rows = [table.row_of[i] for i in active_ids if i in table.row_of]
    if len(rows) == len(table):
        return table
    return EmbeddingTable(ids=[table.ids[r] for r in rows], text=table.text[rows], image=table.image[rows],
                          has_image=table.has_image[rows], listing=table.listing[rows],
                          photo=None if table.photo is None else table.photo[rows],
                          has_photo=None if table.has_photo is None else table.has_photo[rows])


def _current_set(index_dir: Path, fingerprint: str, dimension: int) -> IndexSet | None:
    """The published set to update, or None (with the reason logged) when it must be built from scratch."""
    if has_legacy_layout(index_dir):
        logger.warning("building the index set from scratch: the indexes at %s use the layout before index sets",
                       index_dir)
        return None
    if not (Path(index_dir) / CURRENT).exists():
        return None
    try:
        return load_index_set(index_dir, expected_fingerprint=fingerprint, expected_dimension=dimension)
    except IndexLoadError as error:
        logger.warning("building the index set from scratch: %s", error)
        return None
