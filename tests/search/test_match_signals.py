"""The per-candidate columns only the searcher can compute: photo similarity and query-term coverage."""

import numpy as np
import pytest
from PIL import Image

from index.bm25 import BM25Index


@pytest.fixture(scope="module")
def small_bm25():
    return BM25Index.build(["a", "b", "c", "d"], ["Red road bike, bikes for sale", "Blue mountain bike for kids",
                                                  "Desk lamp, red shade", "Grey sofa"])


def test_term_scores_split_the_bm25_score_by_term(small_bm25):
    positions = small_bm25.positions_of(["a", "b", "c", "d", "not-indexed"])
    n_terms, idf, scores = small_bm25.term_scores("The red BIKES unicorn", positions)
    # "the" is a stopword; "bikes" is stemmed to "bike"; "unicorn" is a term the index never saw
    assert n_terms == 3
    assert scores.shape == (5, 2) and idf.shape == (2,)
    np.testing.assert_allclose(idf, np.log1p((4 - 2 + 0.5) / (2 + 0.5)), rtol=1e-6)  # both in 2 of 4 texts
    assert (scores[0] > 0).all() and scores[1, 0] == 0 and scores[1, 1] > 0 and scores[2, 0] > 0
    assert (scores[3] == 0).all() and np.isnan(scores[4]).all()
    np.testing.assert_allclose(scores[:4].sum(1), small_bm25.scores("The red BIKES unicorn"), rtol=1e-6)


def test_term_scores_of_a_stopword_query_are_empty(small_bm25):
    n_terms, idf, scores = small_bm25.term_scores("the and of", small_bm25.positions_of(["a", "b"]))
    assert n_terms == 0 and idf.shape == (0,) and scores.shape == (2, 0)


def test_text_query_coverage_and_full_bm25_score(searcher):
    listings = searcher.listings
    row = int(np.argmax([len(t.split()) for t in listings.titles]))
    query = searcher.query_context(text=listings.titles[row])
    candidates = searcher.candidates(query, depth=20)
    own = candidates.listing_ids.index(listings.ids[row])
    assert candidates.term_coverage[own] == 1.0  # every term of a title is in its own indexed text
    assert np.nanmax(candidates.term_coverage) <= 1.0 and np.nanmin(candidates.term_coverage) >= 0.0
    assert (candidates.idf_coverage[candidates.term_coverage == 1.0] == 1.0).all()
    # the full BM25 score is BM25's own score where BM25 retrieved the listing, and exists below its top k
    retrieved = np.isfinite(candidates.bm25_score)
    np.testing.assert_allclose(candidates.term_bm25_score[retrieved], candidates.bm25_score[retrieved], rtol=1e-5)
    assert np.isfinite(candidates.term_bm25_score).all()
    assert np.isnan(candidates.photo_sim).all()  # no query photo


def test_image_query_photo_similarity(searcher, indexed_workspace):
    from catalog.store import Catalog

    listings = searcher.listings
    row = int(np.flatnonzero(listings.photo_count == 1)[0])
    with Catalog(indexed_workspace.db_url, root=indexed_workspace.root) as catalog:
        listing = catalog.get_listing(listings.ids[row])
        photo = Image.open(catalog.image_path(listing.image_ids[0])).convert("RGB")
    query = searcher.query_context(image=photo)
    assert query.photo_vector is not None
    np.testing.assert_allclose(np.linalg.norm(query.photo_vector), 1.0, rtol=1e-5)
    candidates = searcher.candidates(query, depth=30)
    assert listings.ids[row] in candidates.listing_ids
    own = candidates.listing_ids.index(listings.ids[row])
    # the listing's only photo is the query photo, re-encoded as ingest stores photos (prepare_photo): the best of
    # all candidates, and nearly 1 (a JPEG generation moves a few pixels across the colour signature's bins)
    assert candidates.photo_sim[own] > 0.99
    assert candidates.photo_sim[own] == np.nanmax(candidates.photo_sim)
    no_photo = listings.photo_count[candidates.rows] == 0
    assert np.isnan(candidates.photo_sim[no_photo]).all() and np.isfinite(candidates.photo_sim[~no_photo]).all()
    assert np.isnan(candidates.term_coverage).all()  # no query text
