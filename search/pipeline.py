"""The search pipeline: query -> towers -> shared vector index + BM25 (text) + photo index (photos) -> filters ->
fusion -> re-ranker.

Serving, the CLI and the offline evaluation all go through this one class, so what is measured
offline is what is served.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from catalog.images import ImageCleaningConfig, load_config, prepare_photo
from catalog.store import Catalog
from encoders.embed import EmbeddingTable, encode_images_with_photo_vectors, load_embeddings, model_photo_dim
from index.bm25 import BM25Index
from index.fusion import reciprocal_rank_fusion
from index.index_set import digest_of, load_index_set
from index.vector_index import VectorIndex
from ranking.features import build_features
from ranking.reranker import Reranker
from ranking.types import Candidates, ListingCard, ListingTable, QueryContext
from search.filters import SearchFilters
from search.listing_table import build_listing_table
from search.snapshot import Delta, MainPart, SearchSnapshot

if TYPE_CHECKING:
    from PIL import Image

    from core.workspace import Workspace
    from encoders.bundle import MultiModalModel
    from encoders.served import ServedModel
    from ranking.feature_log import FeatureLogger

logger = logging.getLogger(__name__)

SortOrder = Literal["relevance", "price_asc", "price_desc", "newest"]
SORT_ORDERS: tuple[str, ...] = get_args(SortOrder)
MAX_K = 100
# Paging slices the ranked candidate set, whose size does not depend on the offset: every page of a query is
# drawn from the same candidates, and the work per request is the same whatever the offset.
MAX_OFFSET = 1000
DEFAULT_CANDIDATE_DEPTH = 100
RRF_K = 60
# Personalised search: a user's columns for these candidate listing ids, float32 (n, m), appended to the
# re-ranker's features for `Searcher.personal_ranker` (built by the caller from the recommenders' state).
UserColumns = Callable[[list[str]], np.ndarray]


@dataclass
class Hit:
    listing_id: str
    rank: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    # the listing as the searched snapshot holds it (None when its table has no cards): what the hit shows
    card: ListingCard | None = None


@dataclass
class SearchResult:
    query_id: str
    hits: list[Hit]
    total_candidates: int
    predicted_category: str | None
    category_probs: dict[str, float]
    reranked: bool
    timings_ms: dict[str, float]
    personalised: bool = False


class Searcher:
    """Holds every loaded artefact; ``search`` is safe to call from several threads."""

    def __init__(
        self,
        model: MultiModalModel | ServedModel,
        listings: ListingTable,
        embeddings: EmbeddingTable,
        vector_index: VectorIndex,
        bm25: BM25Index,
        ranker: Reranker | None = None,
        *,
        feature_logger: FeatureLogger | None = None,
        candidate_depth: int = DEFAULT_CANDIDATE_DEPTH,
        index_version: str | None = None,
        photo_config: ImageCleaningConfig | None = None,
        checkpoint: int = 0,
        photo_index: VectorIndex | None = None,
    ) -> None:
        self.model = model
        # how the catalogue photos were cleaned: every query photo is prepared the same way
        self.photo_config = photo_config or ImageCleaningConfig()
        self.ranker = ranker
        # over the re-ranker's features then a user's columns; used only for a search given them (set by the
        # service next to the recommenders: recommend.personal_search)
        self.personal_ranker: Reranker | None = None
        self.feature_logger = feature_logger
        self.candidate_depth = candidate_depth
        main = MainPart(listings, embeddings, vector_index, bm25, index_version, checkpoint, photo_index)
        missing = int((main.embedding_row < 0).sum())
        if missing:
            logger.warning("%d listings have no embedding yet; run `marketsearch embed`", missing)
        # Every search reads this once and uses nothing else: the live follower (search/live.py) publishes a new
        # snapshot by replacing the reference, so a search sees one consistent state and never waits.
        self.snapshot = SearchSnapshot(main, Delta.empty(bm25, main.embeddings.dim if len(embeddings) else
                                                         vector_index.dimension, main.photo_dim), checkpoint)

    # The published set and its tables, as of the current snapshot (main rows, then the live delta's rows).
    @property
    def listings(self) -> ListingTable:
        return self.snapshot.listings

    @property
    def embeddings(self) -> EmbeddingTable:
        return self.snapshot.main.embeddings

    @property
    def vector_index(self) -> VectorIndex:
        return self.snapshot.main.vector_index

    @property
    def bm25(self) -> BM25Index:
        return self.snapshot.main.bm25

    @property
    def photo_index(self) -> VectorIndex | None:
        return self.snapshot.main.photo_index

    @property
    def index_version(self) -> str | None:
        return self.snapshot.index_version

    @property
    def applied_seq(self) -> int:
        """The change-log seq the current snapshot reflects."""
        return self.snapshot.applied_seq

    @classmethod
    def from_workspace(
        cls,
        workspace: Workspace,
        *,
        load_ranker: bool = True,
        feature_logger: FeatureLogger | None = None,
        candidate_depth: int = DEFAULT_CANDIDATE_DEPTH,
        model: MultiModalModel | ServedModel | None = None,
    ) -> Searcher:
        """Load model bundle, catalogue table, embeddings, the current index set and (if trained) the re-ranker.

        ``model``: the bundle already loaded (the service passes its served model, ``encoders.served``); by
        default the torch model of the workspace's bundle. The snapshot reflects the index set's checkpoint: a
        `search.live.LiveFollower` replays the change log past it (a listing changed since is served from the
        index set as it was until then)."""

        if not (workspace.model_dir).exists():
            raise FileNotFoundError(
                f"no model bundle in {workspace.model_dir}; run `marketsearch build --workspace {workspace.root}`"
            )
        if model is None:
            from encoders.bundle import MultiModalModel

            model = MultiModalModel.load(workspace.model_dir)
        # mapped, not copied: a search only reads it, and a restart or a second worker shares the file's pages
        index_set = load_index_set(workspace.index_dir, expected_fingerprint=model.fingerprint, mmap=True)
        with Catalog(workspace.db_url, root=workspace.root) as catalog:
            listings = build_listing_table(catalog, model.labels)
            embeddings = load_serving_embeddings(catalog, model, index_set)
        built_from = index_set.manifest.get("embeddings", {}).get("digest")
        if built_from != digest_of(embeddings.ids, embeddings.listing):
            logger.warning("the listing embeddings changed since index set %s was built; run `marketsearch index`",
                           index_set.version)
        if index_set.photo is None and embeddings.photo is not None:
            logger.warning("index set %s has no photo index (published before it existed): image queries go without "
                           "the photo retriever until you run `marketsearch index`", index_set.version)
        ranker = None
        if load_ranker and workspace.ranker_dir.exists():
            ranker = Reranker.load(workspace.ranker_dir)
        return cls(
            model,
            listings,
            embeddings,
            index_set.vector,
            index_set.bm25,
            ranker,
            feature_logger=feature_logger,
            candidate_depth=candidate_depth,
            index_version=index_set.version,
            photo_config=load_config(workspace.photo_config_path),
            checkpoint=index_set.checkpoint,
            photo_index=index_set.photo,
        )

    # -- query understanding -------------------------------------------------------------------

    def query_context(self, text: str | None = None, image: Image.Image | None = None) -> QueryContext:
        text = " ".join(text.split()) if text else None
        if not text and image is None:
            raise ValueError("a query needs text, an image, or both; got neither")
        text_emb = self.model.encode_texts([text]) if text else None
        image_emb = photo_vector = None
        if image is not None:
            # exactly the pixels a catalogue photo from the same source has; raises ImageRejected for a
            # shape no catalogue photo may have, so the work below never depends on the caller's shape
            image = prepare_photo(image, self.photo_config)
            # one forward pass gives the shared-space embedding and the raw backbone vector (photo_sim)
            image_emb, photo_vectors = encode_images_with_photo_vectors(self.model, [image])
            photo_vector = photo_vectors[0]
        parts = [e[0] for e in (text_emb, image_emb) if e is not None]
        query = np.sum(parts, axis=0).astype(np.float32)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        probs = self.model.classify(text_emb=text_emb, image_emb=image_emb, texts=[text] if text else None)[0]
        probs = probs.astype(np.float32)
        return QueryContext(text=text, has_image=image is not None, embedding=query, category_probs=probs,
                            photo_vector=photo_vector)

    # -- first stage ---------------------------------------------------------------------------

    def allowed_rows(self, filters: SearchFilters | None, snapshot: SearchSnapshot | None = None) -> np.ndarray | None:
        """Listing-table rows that satisfy ``filters`` (int64), or None when nothing is filtered."""
        if filters is None or not filters.active:
            return None
        return np.flatnonzero((snapshot or self.snapshot).filter_mask(filters))

    def allowed_ids(self, filters: SearchFilters | None) -> list[str] | None:
        rows = self.allowed_rows(filters)
        return None if rows is None else [self.listings.ids[r] for r in rows]

    def candidates(
        self,
        query: QueryContext,
        *,
        depth: int | None = None,
        filters: SearchFilters | None = None,
        timings: dict[str, float] | None = None,
        snapshot: SearchSnapshot | None = None,
    ) -> Candidates:
        """Vector top-``depth``, BM25 top-``depth`` (text queries) and photo top-``depth`` (queries with a photo:
        the listings whose photo vectors are nearest), unioned and fused with RRF; their ``rows`` are rows of
        ``snapshot`` (default: the current one)."""
        depth = depth or self.candidate_depth
        timings = {} if timings is None else timings
        snap = snapshot or self.snapshot
        rows = self.allowed_rows(filters, snap)
        if rows is not None and not len(rows):
            return _empty_candidates()

        start = time.perf_counter()
        vector_ranking = _vector_ranking(snap, query.embedding, depth, rows)
        timings["vector"] = _ms_since(start)

        bm25_ranking: list[str] = []
        bm25_scores: Sequence[float] = []
        if query.text:
            start = time.perf_counter()
            bm25_ranking, bm25_scores = _bm25_ranking(snap, query.text, depth, rows)
            timings["bm25"] = _ms_since(start)

        photo_ranking: list[str] = []
        if query.photo_vector is not None:
            start = time.perf_counter()
            photo_ranking = _photo_ranking(snap, query.photo_vector, depth, rows)
            timings["photo"] = _ms_since(start)

        start = time.perf_counter()
        fused = reciprocal_rank_fusion([r for r in (vector_ranking, bm25_ranking, photo_ranking) if r], k=RRF_K)
        candidates = self._assemble(snap, query, fused, vector_ranking, bm25_ranking, bm25_scores, photo_ranking)
        timings["fuse"] = _ms_since(start)
        return candidates

    def _assemble(
        self,
        snap: SearchSnapshot,
        query: QueryContext,
        fused: list[tuple[str, float]],
        vector_ranking: list[str],
        bm25_ranking: list[str],
        bm25_scores: Sequence[float],
        photo_ranking: list[str],
    ) -> Candidates:
        ids = [listing_id for listing_id, _ in fused]
        n = len(ids)
        rows = snap.listings.rows(ids)
        emb_rows = snap.embedding_row[rows]
        has_emb = emb_rows >= 0
        safe_rows = np.where(has_emb, emb_rows, 0)

        def similarity(column: str, present: np.ndarray) -> np.ndarray:
            sims = (snap.gather(column, safe_rows) @ query.embedding).astype(np.float32)
            return np.where(present, sims, np.nan).astype(np.float32)

        vector_rank = _rank_lookup(ids, vector_ranking)
        bm25_rank = _rank_lookup(ids, bm25_ranking)
        bm25_score_of = dict(zip(bm25_ranking, bm25_scores))
        return Candidates(
            listing_ids=ids,
            rows=rows,
            vector_score=similarity("listing", has_emb & ~np.isnan(vector_rank)),
            vector_rank=vector_rank,
            bm25_score=np.array([bm25_score_of.get(i, np.nan) for i in ids], dtype=np.float32),
            bm25_rank=bm25_rank,
            rrf_score=np.array([score for _, score in fused], dtype=np.float32).reshape(n),
            text_sim=similarity("text", has_emb),
            image_sim=similarity("image", has_emb & snap.gather("has_image", safe_rows)),
            photo_rank=_rank_lookup(ids, photo_ranking) if query.photo_vector is not None else None,
            **self._match_signals(snap, query, rows),
        )

    def match_signals(self, query: QueryContext, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Per-candidate re-ranking columns that need the searcher's stores, for listing-table ``rows``.

        ``photo_sim`` (query photo vs the listing's stored photo vector: raw backbone + colour signature) and
        ``term_coverage``, ``idf_coverage``, ``term_bm25_score`` (the query's BM25 terms in the listing's
        indexed text); float32 (len(rows),) each, NaN where undefined.
        """
        return self._match_signals(self.snapshot, query, rows)

    def _match_signals(self, snap: SearchSnapshot, query: QueryContext, rows) -> dict[str, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        term_coverage, idf_coverage, term_bm25 = self._term_match(snap, query, rows)
        return {
            "photo_sim": self._photo_similarity(snap, query, rows),
            "term_coverage": term_coverage,
            "idf_coverage": idf_coverage,
            "term_bm25_score": term_bm25,
        }

    def _photo_similarity(self, snap: SearchSnapshot, query: QueryContext, rows: np.ndarray) -> np.ndarray:
        """cosine(query photo, listing photo) of their appearance vectors (raw backbone + colour,
        ``encoders.appearance``) for listing ``rows``; NaN where either vector is missing."""
        sims = np.full(len(rows), np.nan, dtype=np.float32)
        if query.photo_vector is None or snap.main.photo_dim != len(query.photo_vector):
            return sims
        present, vectors = snap.photo_vectors(rows)
        if present.any():
            sims[present] = vectors @ query.photo_vector.astype(np.float32)
        return sims

    def _term_match(self, snap: SearchSnapshot, query: QueryContext, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """term_coverage, idf_coverage and the full BM25 score of each candidate (NaN when not defined)."""
        def missing() -> np.ndarray:
            return np.full(len(rows), np.nan, dtype=np.float32)

        if not query.text or not len(rows):
            return missing(), missing(), missing()
        positions = snap.bm25_position[rows]
        n_terms, idf, scores = snap.main.bm25.term_scores(query.text, positions)
        if n_terms == 0:  # stopwords only: nothing to cover
            return missing(), missing(), missing()
        delta_positions = snap.delta_position[rows]
        in_delta = delta_positions >= 0
        if in_delta.any():  # live listings: the same terms, scored with the main index's statistics
            scores[in_delta] = snap.delta.bm25.term_scores(query.text, delta_positions[in_delta])
            positions = np.where(in_delta, 0, positions)
        matched = scores > 0
        coverage = (matched.sum(axis=1) / n_terms).astype(np.float32)
        total_idf = float(idf.sum())
        idf_coverage = (matched @ idf / total_idf).astype(np.float32) if total_idf > 0 else missing()
        full_score = scores.sum(axis=1).astype(np.float32)
        outside = positions < 0  # in neither BM25 index
        for column in (coverage, idf_coverage, full_score):
            column[outside] = np.nan
        return coverage, idf_coverage, full_score

    # -- full search ---------------------------------------------------------------------------

    def search(
        self,
        text: str | None = None,
        image: Image.Image | None = None,
        *,
        k: int = 20,
        offset: int = 0,
        filters: SearchFilters | None = None,
        sort: SortOrder = "relevance",
        rerank: bool = True,
        user_columns: UserColumns | None = None,
    ) -> SearchResult:
        """The ``k`` best hits after skipping ``offset`` of them (a page). Past the candidate set
        (``total_candidates``) a page is empty. With ``user_columns`` (a user the recommenders know) and a
        personal ranker, the re-ranked order is the personal ranker's; otherwise nothing changes."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        if not 0 <= offset <= MAX_OFFSET:
            raise ValueError(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
        if sort not in SORT_ORDERS:
            raise ValueError(f"sort must be one of {SORT_ORDERS}, got {sort!r}")
        timings: dict[str, float] = {}
        total_start = time.perf_counter()
        query_id = uuid.uuid4().hex
        # one snapshot for the whole search: candidate rows, features, sort columns and the hits' cards all
        # index its listing table (the follower may publish the next one meanwhile)
        snap = self.snapshot
        listings = snap.listings

        start = time.perf_counter()
        query = self.query_context(text, image)
        timings["encode"] = _ms_since(start)

        candidates = self.candidates(query, depth=max(self.candidate_depth, k), filters=filters, timings=timings,
                                     snapshot=snap)
        scores = candidates.rrf_score.astype(np.float64)
        reranked = personalised = False
        features = None
        if len(candidates) and ((self.ranker is not None and rerank) or self.feature_logger is not None):

            start = time.perf_counter()
            features, names = build_features(query, candidates, listings)
            if self.ranker is not None and rerank:
                scores = np.asarray(self.ranker.predict(features), dtype=np.float64)
                reranked = True
            timings["rerank"] = _ms_since(start)
            if reranked and user_columns is not None and self.personal_ranker is not None:
                start = time.perf_counter()
                personal = np.hstack([features, user_columns(candidates.listing_ids)])
                scores = np.asarray(self.personal_ranker.predict(personal), dtype=np.float64)
                personalised = True
                timings["personalise"] = _ms_since(start)
            if self.feature_logger is not None:
                self.feature_logger.log(query_id, query, candidates, features, names)

        order = self._order(candidates, scores, sort, listings)[offset : offset + k]
        cards = listings.cards
        hits = [
            Hit(
                listing_id=candidates.listing_ids[i],
                rank=rank,
                score=float(scores[i]),
                scores=_stage_scores(candidates, i, scores[i] if reranked else None),
                card=None if cards is None else cards[candidates.rows[i]],
            )
            for rank, i in enumerate(order, start=offset + 1)
        ]
        probs = self._category_probs(query.category_probs)
        timings["total"] = _ms_since(total_start)
        return SearchResult(
            query_id=query_id,
            hits=hits,
            total_candidates=len(candidates),
            predicted_category=next(iter(probs), None),
            category_probs=probs,
            reranked=reranked,
            timings_ms=timings,
            personalised=personalised,
        )

    def _order(self, candidates: Candidates, scores: np.ndarray, sort: str, listings: ListingTable) -> np.ndarray:
        relevance = np.argsort(-scores, kind="stable")
        if sort == "relevance" or not len(candidates):
            return relevance
        # Secondary orders keep relevance as the tie-breaker and put unknown values last.
        column = listings.price if sort.startswith("price") else listings.created_days
        values = column[candidates.rows][relevance].astype(np.float64)
        key = values if sort == "price_asc" else -values
        key = np.where(np.isnan(key), np.inf, key)
        return relevance[np.argsort(key, kind="stable")]

    def _category_probs(self, probs: np.ndarray) -> dict[str, float]:
        order = np.argsort(-probs)
        return {self.model.labels.decode(int(i)): float(probs[i]) for i in order}


def _vector_ranking(snap: SearchSnapshot, query: np.ndarray, depth: int, rows: np.ndarray | None) -> list[str]:
    """Top-``depth`` listing ids by vector score: the main index (dead entries masked) merged with an exact
    search over the delta's vectors."""
    return _nearest(snap, query, depth, rows, index=snap.main.vector_index, faiss_id=snap.faiss_id,
                    dead_entries=snap.dead_in_vector, delta_vectors=snap.delta.embeddings.listing)


def _photo_ranking(snap: SearchSnapshot, photo_vector: np.ndarray, depth: int, rows: np.ndarray | None) -> list[str]:
    """Top-``depth`` listing ids by photo similarity (query photo vector against the listings' photo vectors): the
    main photo index merged with an exact search over the delta's photo vectors; [] without a photo index of
    the query vector's dimension (a set published before it, or photo vectors of another recipe)."""
    index = snap.main.photo_index
    if index is None or index.dimension != len(photo_vector):
        return []
    delta = snap.delta.embeddings
    return _nearest(snap, np.asarray(photo_vector, dtype=np.float32), depth, rows, index=index,
                    faiss_id=snap.photo_faiss_id, dead_entries=snap.dead_in_photo, delta_vectors=delta.photo,
                    delta_present=delta.has_photo)


def _nearest(snap: SearchSnapshot, query: np.ndarray, depth: int, rows: np.ndarray | None, *, index: VectorIndex,
             faiss_id: np.ndarray, dead_entries: int, delta_vectors: np.ndarray | None,
             delta_present: np.ndarray | None = None) -> list[str]:
    """Top-``depth`` listing ids of ``index`` (``faiss_id``: per snapshot row, -1 for a dead or unindexed one;
    ``dead_entries``: index entries of no live row) merged with an exact search over ``delta_vectors`` (the delta
    rows' vectors; ``delta_present`` masks the rows that have one, None = all), within listing-table ``rows``."""
    if rows is not None:
        allowed = faiss_id[rows]
        scores, ids = index.search(query[None, :], depth, allowed_faiss_ids=allowed[allowed >= 0])
        found = list(zip(scores[0].tolist(), ids[0]))
        delta_rows = snap.delta_position[rows]
        delta_rows = delta_rows[delta_rows >= 0]
    else:
        # unfiltered: over-fetch by the number of dead entries and drop them (cheaper than an id selector)
        scores, ids = index.search(query[None, :], depth + dead_entries)
        found = [(score, i) for score, i in zip(scores[0].tolist(), ids[0]) if snap.is_live_main(i)]
        delta_rows = np.arange(len(snap.delta))
    if index.metric != "ip":  # squared L2 distances, smaller is better: compare as similarities
        found = [(1.0 - score / 2.0, i) for score, i in found]
    if delta_present is not None:
        delta_rows = delta_rows[delta_present[delta_rows]]
    if len(delta_rows) and delta_vectors is not None:
        delta_scores = delta_vectors[delta_rows].astype(np.float32) @ query
        delta_ids = snap.delta.listings.ids
        found += [(float(score), delta_ids[row]) for score, row in zip(delta_scores, delta_rows.tolist())]
        found.sort(key=lambda pair: -pair[0])
    return [i for _, i in found[:depth]]


def _bm25_ranking(snap: SearchSnapshot, text: str, depth: int,
                  rows: np.ndarray | None) -> tuple[list[str], list[float]]:
    """Top-``depth`` listing ids by BM25 with their scores: the main index (dead entries masked) merged with
    the delta, which scores with the main index's statistics."""
    main_mask = snap.bm25_live_mask
    delta_mask = None
    if rows is not None:
        positions = snap.bm25_position[rows]
        main_mask = np.zeros(len(snap.main.bm25), dtype=bool)
        main_mask[positions[positions >= 0]] = True
        delta_rows = snap.delta_position[rows]
        delta_mask = np.zeros(len(snap.delta), dtype=bool)
        delta_mask[delta_rows[delta_rows >= 0]] = True
    scores, ids = snap.main.bm25.search(text, depth, allowed_mask=main_mask)
    found = list(zip(np.asarray(scores).ravel().tolist(), ids))
    if len(snap.delta):
        delta_scores, delta_ids = snap.delta.bm25.search(text, depth, allowed_mask=delta_mask)
        found += list(zip(delta_scores.tolist(), delta_ids))
        found.sort(key=lambda pair: -pair[0])
    found = found[:depth]
    return [i for _, i in found], [score for score, _ in found]


def _rank_lookup(ids: list[str], ranking: list[str]) -> np.ndarray:
    position = {listing_id: rank for rank, listing_id in enumerate(ranking, start=1)}
    return np.array([position.get(i, np.nan) for i in ids], dtype=np.float32)


def _stage_scores(candidates: Candidates, i: int, rerank_score: float | None) -> dict[str, float]:
    stages = {
        "vector": candidates.vector_score[i],
        "bm25": candidates.bm25_score[i],
        # photo similarity of a listing the photo retriever returned
        "photo": candidates.photo_sim[i] if candidates.photo_rank is not None and np.isfinite(candidates.photo_rank[i])
        else np.nan,
        "rrf": candidates.rrf_score[i],
    }
    if rerank_score is not None:
        stages["rerank"] = rerank_score
    return {name: float(value) for name, value in stages.items() if not np.isnan(value)}


def _empty_candidates() -> Candidates:
    empty = np.zeros(0, dtype=np.float32)
    return Candidates(
        listing_ids=[],
        rows=np.zeros(0, dtype=np.int64),
        vector_score=empty,
        vector_rank=empty,
        bm25_score=empty,
        bm25_rank=empty,
        rrf_score=empty,
        text_sim=empty,
        image_sim=empty,
    )


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def load_serving_embeddings(catalog: Catalog, model, index_set) -> EmbeddingTable:
    """The listing embeddings a service holds: without the photo vectors when the index set has a photo index of
    the model's photo dimension (searches read them from it: `SearchSnapshot.photo_vectors`), with them otherwise
    (a set published before photo indexes existed)."""
    photo_dim = model_photo_dim(model)
    from_index = index_set.photo is not None and index_set.photo.dimension == photo_dim
    return load_embeddings(catalog, model.fingerprint, photo_dim=photo_dim, photos=not from_index)
