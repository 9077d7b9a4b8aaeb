"""Hand-made queries, candidates and listing tables for the ranking tests."""

from __future__ import annotations

import numpy as np

from ranking.types import Candidates, ListingTable, QueryContext

NAN = np.nan


def small_listings() -> ListingTable:
    """Four listings: two bikes (one without a price), a lamp with no photo date, a title-less sofa."""
    return ListingTable(
        ids=["bike-1", "bike-2", "lamp-1", "sofa-1"],
        titles=["Red road bike", "Blue mountain bike for kids", "Desk lamp", ""],
        categories=["Sports / Cycling / Bikes", "Sports / Cycling / Bikes", "Home / Lighting", "Home / Sofas"],
        top_category_index=np.array([1, 1, 0, -1], dtype=np.int64),
        price=np.array([100.0, NAN, 20.0, 250.0], dtype=np.float32),
        category_median_price=np.array([50.0, 50.0, 40.0, NAN], dtype=np.float32),
        towns=["Leeds", "York", "Leeds", "Hull"],
        counties=["West Yorkshire", "North Yorkshire", "West Yorkshire", "East Riding"],
        photo_count=np.array([3, 1, 0, 2], dtype=np.int32),
        description_length=np.array([120, 40, 0, 300], dtype=np.int32),
        created_days=np.array([19000.0, 19010.0, NAN, 18990.0], dtype=np.float32),
    )


def small_query(text: str | None = "red bike", has_image: bool = False) -> QueryContext:
    embedding = np.zeros(4, dtype=np.float32)
    embedding[0] = 1.0
    return QueryContext(
        text=text, has_image=has_image, embedding=embedding,
        category_probs=np.array([0.2, 0.8], dtype=np.float32),
    )


def small_candidates() -> Candidates:
    """bike-1 found by both retrievers, bike-2 by the vector index only, lamp-1 and sofa-1 by BM25 only."""
    rrf = np.array([1 / 61 + 1 / 62, 1 / 62, 1 / 61, 1 / 63], dtype=np.float32)
    return Candidates(
        listing_ids=["bike-1", "bike-2", "lamp-1", "sofa-1"],
        rows=np.array([0, 1, 2, 3], dtype=np.int64),
        vector_score=np.array([0.9, 0.7, NAN, NAN], dtype=np.float32),
        vector_rank=np.array([1, 2, NAN, NAN], dtype=np.float32),
        bm25_score=np.array([4.0, NAN, 8.0, 2.0], dtype=np.float32),
        bm25_rank=np.array([2, NAN, 1, 3], dtype=np.float32),
        rrf_score=rrf,
        text_sim=np.array([0.8, 0.6, 0.1, 0.2], dtype=np.float32),
        image_sim=np.array([0.5, 0.4, NAN, 0.3], dtype=np.float32),
        photo_sim=np.array([0.6, 0.9, NAN, 0.2], dtype=np.float32),
        term_coverage=np.array([1.0, 0.5, 0.5, NAN], dtype=np.float32),  # the sofa is not in the BM25 index
        idf_coverage=np.array([1.0, 0.4, 0.6, NAN], dtype=np.float32),
        term_bm25_score=np.array([4.0, 1.0, 8.0, NAN], dtype=np.float32),  # bike-2: below BM25's top k
    )
