"""Plain containers passed between the first stage, the re-ranker and the evaluation.

Missing values are NaN, never zero: a candidate that BM25 did not retrieve has
``bm25_score = nan`` and ``bm25_rank = nan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class QueryContext:
    """What the re-ranker may know about the query."""

    text: str | None
    has_image: bool
    embedding: np.ndarray  # float32 (d,), L2-normalised, the vector used for retrieval
    category_probs: np.ndarray  # float32 (C,), fusion classifier's distribution for the query
    # float32 (p,), L2-normalised appearance vector of the query photo (the image tower's pooled output before
    # its projection head joined with the photo's colour signature, encoders.appearance); None without a photo
    photo_vector: np.ndarray | None = None


@dataclass
class Candidates:
    """First-stage candidates for one query, one row per listing (arrays of equal length)."""

    listing_ids: list[str]
    rows: np.ndarray  # int64 (n,), row of each candidate in the ListingTable
    vector_score: np.ndarray  # float32 (n,), inner product with the listing vector, nan if not retrieved
    vector_rank: np.ndarray  # float32 (n,), 1-based rank in the vector retriever, nan if not retrieved
    bm25_score: np.ndarray  # float32 (n,), nan if not retrieved by BM25
    bm25_rank: np.ndarray  # float32 (n,), 1-based, nan if not retrieved
    rrf_score: np.ndarray  # float32 (n,), reciprocal rank fusion score (0 contribution for a missing list)
    text_sim: np.ndarray  # float32 (n,), cosine(query, listing text vector), nan if unknown
    image_sim: np.ndarray  # float32 (n,), cosine(query, listing image vector), nan if the listing has no photo
    # Columns below default to None, which means "not computed": every value is then missing (NaN).
    # 1-based rank in the photo-vector retriever (image queries: the listings whose photos are nearest the
    # query photo), nan if not retrieved
    photo_rank: np.ndarray | None = None
    # cosine(query photo vector, listing photo vector) in the raw backbone space; nan without either
    photo_sim: np.ndarray | None = None
    # share of the query's distinct analysed terms (BM25 tokenizer) found in the listing's indexed text;
    # nan for a query without terms or a listing outside the BM25 index
    term_coverage: np.ndarray | None = None
    idf_coverage: np.ndarray | None = None  # the same, weighted by each term's IDF (terms the index knows)
    term_bm25_score: np.ndarray | None = None  # full BM25 score (sum over the terms), also below BM25's top-k

    def __len__(self) -> int:
        return len(self.listing_ids)

    def column(self, name: str) -> np.ndarray:
        """A per-candidate column as float32 (n,), all NaN when it was not computed."""
        values = getattr(self, name)
        if values is None:
            return np.full(len(self), np.nan, dtype=np.float32)
        return np.asarray(values, dtype=np.float32).reshape(len(self))


@dataclass(frozen=True, slots=True)
class ListingCard:
    """What a search hit shows of its listing, as the catalogue holds it (exact price, no ranking columns):
    kept in memory beside the listing table so that a hit needs no catalogue read to be shown."""

    title: str
    price: float | None
    category: str
    top_category: str
    location: str
    thumbnail_image_id: str | None  # the first cleaned photo, None for a text-only listing


@dataclass
class ListingTable:
    """Columnar, in-memory metadata of every listing, used for filters and ranking features."""

    ids: list[str]
    titles: list[str]
    categories: list[str]  # full category path "A / B / C"
    top_category_index: np.ndarray  # int64 (n,), label index of the top-level category, -1 if unknown
    price: np.ndarray  # float32 (n,), GBP, nan if unknown
    category_median_price: np.ndarray  # float32 (n,), median price of the row's top-level category
    towns: list[str]
    counties: list[str]
    photo_count: np.ndarray  # int32 (n,)
    description_length: np.ndarray  # int32 (n,), characters
    created_days: np.ndarray  # float32 (n,), days since 1970-01-01 of the first photo, nan if unknown
    row_of: dict[str, int] = field(default_factory=dict)
    # per row, what a hit shows (search/listing_table.py fills it from the listings); None when the table was
    # built from columns alone (evaluation, tests): the service then reads the hits' listings from the catalogue
    cards: list[ListingCard] | None = None

    def __post_init__(self) -> None:
        if not self.row_of:
            self.row_of = {listing_id: row for row, listing_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, listing_ids: list[str]) -> np.ndarray:
        return np.fromiter((self.row_of[i] for i in listing_ids), dtype=np.int64, count=len(listing_ids))
