"""The search pipeline: query -> towers -> shared vector index + BM25 -> filters -> fusion -> re-ranker.

Serving, the CLI and the offline evaluation all go through this one class, so what is measured
offline is what is served.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from catalog.images import ImageCleaningConfig, load_config, prepare_photo
from catalog.store import Catalog
from encoders.bundle import MultiModalModel
from encoders.embed import encode_images_with_photo_vectors, load_embeddings
from index.bm25 import BM25Index
from index.fusion import reciprocal_rank_fusion
from index.index_set import digest_of, load_index_set
from index.vector_index import VectorIndex
from ranking.features import build_features
from ranking.reranker import Reranker
from ranking.types import Candidates, ListingTable, QueryContext
from search.filters import FilterMasks, SearchFilters
from search.listing_table import build_listing_table

if TYPE_CHECKING:
    from PIL import Image

    from core.workspace import Workspace
    from encoders.embed import EmbeddingTable
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


@dataclass
class Hit:
    listing_id: str
    rank: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class SearchResult:
    query_id: str
    hits: list[Hit]
    total_candidates: int
    predicted_category: str | None
    category_probs: dict[str, float]
    reranked: bool
    timings_ms: dict[str, float]


class Searcher:
    """Holds every loaded artefact; ``search`` is safe to call from several threads."""

    def __init__(
        self,
        model: MultiModalModel,
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
    ) -> None:
        self.model = model
        # how the catalogue photos were cleaned: every query photo is prepared the same way
        self.photo_config = photo_config or ImageCleaningConfig()
        self.listings = listings
        self.embeddings = embeddings
        self.vector_index = vector_index
        self.bm25 = bm25
        self.ranker = ranker
        self.feature_logger = feature_logger
        self.candidate_depth = candidate_depth
        self.index_version = index_version  # the published index set both indexes come from
        self._filters = FilterMasks(listings)
        # Per listing row: its id in each index (-1 when absent), so a filter mask maps to index ids in numpy.
        self._faiss_id = vector_index.faiss_ids_of(listings.ids)
        self._bm25_position = bm25.positions_of(listings.ids)
        # Row of each listing in the embedding table (-1 when a listing has no embedding yet).
        emb_row = {listing_id: row for row, listing_id in enumerate(embeddings.ids)}
        self._embedding_row = np.array([emb_row.get(i, -1) for i in listings.ids], dtype=np.int64)
        missing = int((self._embedding_row < 0).sum())
        if missing:
            logger.warning("%d listings have no embedding yet; run `marketsearch embed`", missing)

    @classmethod
    def from_workspace(
        cls,
        workspace: Workspace,
        *,
        load_ranker: bool = True,
        feature_logger: FeatureLogger | None = None,
        candidate_depth: int = DEFAULT_CANDIDATE_DEPTH,
    ) -> Searcher:
        """Load model bundle, catalogue table, embeddings, the current index set and (if trained) the re-ranker."""

        if not (workspace.model_dir).exists():
            raise FileNotFoundError(
                f"no model bundle in {workspace.model_dir}; run `marketsearch build --workspace {workspace.root}`"
            )
        model = MultiModalModel.load(workspace.model_dir)
        with Catalog(workspace.db_url, root=workspace.root) as catalog:
            listings = build_listing_table(catalog, model.labels)
            embeddings = load_embeddings(catalog, model.fingerprint)
        index_set = load_index_set(workspace.index_dir, expected_fingerprint=model.fingerprint)
        built_from = index_set.manifest.get("embeddings", {}).get("digest")
        if built_from != digest_of(embeddings.ids, embeddings.listing):
            logger.warning("the listing embeddings changed since index set %s was built; run `marketsearch index`",
                           index_set.version)
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
        probs = self.model.classify(text_emb=text_emb, image_emb=image_emb)[0].astype(np.float32)
        return QueryContext(text=text, has_image=image is not None, embedding=query, category_probs=probs,
                            photo_vector=photo_vector)

    # -- first stage ---------------------------------------------------------------------------

    def allowed_rows(self, filters: SearchFilters | None) -> np.ndarray | None:
        """Listing-table rows that satisfy ``filters`` (int64), or None when nothing is filtered."""
        if filters is None or not filters.active:
            return None
        return np.flatnonzero(self._filters.mask(filters))

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
    ) -> Candidates:
        """Vector top-``depth`` and BM25 top-``depth`` (text queries), unioned and fused with RRF."""
        depth = depth or self.candidate_depth
        timings = {} if timings is None else timings
        rows = self.allowed_rows(filters)
        if rows is not None and not len(rows):
            return _empty_candidates()
        allowed_faiss_ids = bm25_mask = None
        if rows is not None:
            allowed_faiss_ids = self._faiss_id[rows]
            positions = self._bm25_position[rows]
            bm25_mask = np.zeros(len(self.bm25), dtype=bool)
            bm25_mask[positions[positions >= 0]] = True

        start = time.perf_counter()
        _, vector_ids = self.vector_index.search(
            query.embedding[None, :], depth, allowed_faiss_ids=allowed_faiss_ids
        )
        vector_ranking = list(vector_ids[0])
        timings["vector"] = _ms_since(start)

        bm25_ranking: list[str] = []
        bm25_scores: Sequence[float] = []
        if query.text:
            start = time.perf_counter()
            scores, ids = self.bm25.search(query.text, depth, allowed_mask=bm25_mask)
            bm25_ranking, bm25_scores = list(ids), list(np.asarray(scores).ravel())
            timings["bm25"] = _ms_since(start)

        start = time.perf_counter()
        fused = reciprocal_rank_fusion([r for r in (vector_ranking, bm25_ranking) if r], k=RRF_K)
        candidates = self._assemble(query, fused, vector_ranking, bm25_ranking, bm25_scores)
        timings["fuse"] = _ms_since(start)
        return candidates

    def _assemble(
        self,
        query: QueryContext,
        fused: list[tuple[str, float]],
        vector_ranking: list[str],
        bm25_ranking: list[str],
        bm25_scores: Sequence[float],
    ) -> Candidates:
        ids = [listing_id for listing_id, _ in fused]
        n = len(ids)
        rows = self.listings.rows(ids)
        emb_rows = self._embedding_row[rows]
        has_emb = emb_rows >= 0
        safe_rows = np.where(has_emb, emb_rows, 0)

        def similarity(vectors: np.ndarray, present: np.ndarray) -> np.ndarray:
            sims = (vectors[safe_rows] @ query.embedding).astype(np.float32)
            return np.where(present, sims, np.nan).astype(np.float32)

        vector_rank = _rank_lookup(ids, vector_ranking)
        bm25_rank = _rank_lookup(ids, bm25_ranking)
        bm25_score_of = dict(zip(bm25_ranking, bm25_scores))
        return Candidates(
            listing_ids=ids,
            rows=rows,
            vector_score=similarity(self.embeddings.listing, has_emb & ~np.isnan(vector_rank)),
            vector_rank=vector_rank,
            bm25_score=np.array([bm25_score_of.get(i, np.nan) for i in ids], dtype=np.float32),
            bm25_rank=bm25_rank,
            rrf_score=np.array([score for _, score in fused], dtype=np.float32).reshape(n),
            text_sim=similarity(self.embeddings.text, has_emb),
            image_sim=similarity(self.embeddings.image, has_emb & self.embeddings.has_image[safe_rows]),
            **self.match_signals(query, rows),
        )

    def match_signals(self, query: QueryContext, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Per-candidate re-ranking columns that need the searcher's stores, for listing-table ``rows``.

        ``photo_sim`` (query photo vs the listing's stored photo vector, raw backbone space) and
        ``term_coverage``, ``idf_coverage``, ``term_bm25_score`` (the query's BM25 terms in the listing's
        indexed text); float32 (len(rows),) each, NaN where undefined.
        """
        rows = np.asarray(rows, dtype=np.int64)
        term_coverage, idf_coverage, term_bm25 = self._term_match(query, rows)
        return {
            "photo_sim": self._photo_similarity(query, self._embedding_row[rows]),
            "term_coverage": term_coverage,
            "idf_coverage": idf_coverage,
            "term_bm25_score": term_bm25,
        }

    def _photo_similarity(self, query: QueryContext, emb_rows: np.ndarray) -> np.ndarray:
        """cosine(query photo, listing photo) in the raw backbone space; NaN where either vector is missing."""
        sims = np.full(len(emb_rows), np.nan, dtype=np.float32)
        photo, has_photo = self.embeddings.photo, self.embeddings.has_photo
        if query.photo_vector is None or photo is None or photo.shape[1] != len(query.photo_vector):
            return sims
        present = emb_rows >= 0
        present[present] = has_photo[emb_rows[present]]
        if present.any():
            sims[present] = photo[emb_rows[present]].astype(np.float32) @ query.photo_vector.astype(np.float32)
        return sims

    def _term_match(self, query: QueryContext, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """term_coverage, idf_coverage and the full BM25 score of each candidate (NaN when not defined)."""
        def missing() -> np.ndarray:
            return np.full(len(rows), np.nan, dtype=np.float32)

        if not query.text or not len(rows):
            return missing(), missing(), missing()
        positions = self._bm25_position[rows]
        n_terms, idf, scores = self.bm25.term_scores(query.text, positions)
        if n_terms == 0:  # stopwords only: nothing to cover
            return missing(), missing(), missing()
        matched = scores > 0
        coverage = (matched.sum(axis=1) / n_terms).astype(np.float32)
        total_idf = float(idf.sum())
        idf_coverage = (matched @ idf / total_idf).astype(np.float32) if total_idf > 0 else missing()
        full_score = scores.sum(axis=1).astype(np.float32)
        outside = positions < 0  # not in the BM25 index (e.g. added since it was built)
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
    ) -> SearchResult:
        """The ``k`` best hits after skipping ``offset`` of them (a page). Past the candidate set
        (``total_candidates``) a page is empty."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        if not 0 <= offset <= MAX_OFFSET:
            raise ValueError(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")
        if sort not in SORT_ORDERS:
            raise ValueError(f"sort must be one of {SORT_ORDERS}, got {sort!r}")
        timings: dict[str, float] = {}
        total_start = time.perf_counter()
        query_id = uuid.uuid4().hex

        start = time.perf_counter()
        query = self.query_context(text, image)
        timings["encode"] = _ms_since(start)

        candidates = self.candidates(query, depth=max(self.candidate_depth, k), filters=filters, timings=timings)
        scores = candidates.rrf_score.astype(np.float64)
        reranked = False
        features = None
        if len(candidates) and ((self.ranker is not None and rerank) or self.feature_logger is not None):

            start = time.perf_counter()
            features, names = build_features(query, candidates, self.listings)
            if self.ranker is not None and rerank:
                scores = np.asarray(self.ranker.predict(features), dtype=np.float64)
                reranked = True
            timings["rerank"] = _ms_since(start)
            if self.feature_logger is not None:
                self.feature_logger.log(query_id, query, candidates, features, names)

        order = self._order(candidates, scores, sort)[offset : offset + k]
        hits = [
            Hit(
                listing_id=candidates.listing_ids[i],
                rank=rank,
                score=float(scores[i]),
                scores=_stage_scores(candidates, i, scores[i] if reranked else None),
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
        )

    def _order(self, candidates: Candidates, scores: np.ndarray, sort: str) -> np.ndarray:
        relevance = np.argsort(-scores, kind="stable")
        if sort == "relevance" or not len(candidates):
            return relevance
        # Secondary orders keep relevance as the tie-breaker and put unknown values last.
        column = self.listings.price if sort.startswith("price") else self.listings.created_days
        values = column[candidates.rows][relevance].astype(np.float64)
        key = values if sort == "price_asc" else -values
        key = np.where(np.isnan(key), np.inf, key)
        return relevance[np.argsort(key, kind="stable")]

    def _category_probs(self, probs: np.ndarray) -> dict[str, float]:
        order = np.argsort(-probs)
        return {self.model.labels.decode(int(i)): float(probs[i]) for i in order}


def _rank_lookup(ids: list[str], ranking: list[str]) -> np.ndarray:
    position = {listing_id: rank for rank, listing_id in enumerate(ranking, start=1)}
    return np.array([position.get(i, np.nan) for i in ids], dtype=np.float32)


def _stage_scores(candidates: Candidates, i: int, rerank_score: float | None) -> dict[str, float]:
    stages = {
        "vector": candidates.vector_score[i],
        "bm25": candidates.bm25_score[i],
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
