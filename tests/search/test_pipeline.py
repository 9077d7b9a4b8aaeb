import numpy as np
import pytest
from PIL import Image

from search.filters import SearchFilters


def test_text_search_returns_k_distinct_ranked_hits(searcher):
    result = searcher.search("red mountain bike", k=10)
    ids = [hit.listing_id for hit in result.hits]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert [hit.rank for hit in result.hits] == list(range(1, 11))
    scores = [hit.score for hit in result.hits]
    assert scores == sorted(scores, reverse=True)
    assert result.predicted_category in searcher.model.labels.classes
    assert abs(sum(result.category_probs.values()) - 1.0) < 1e-4
    assert not result.reranked
    assert {"encode", "vector", "bm25", "fuse", "total"} <= set(result.timings_ms)


def test_exact_title_finds_its_listing_at_the_top(searcher):
    listings = searcher.listings
    hits_at_1 = 0
    for row in range(0, len(listings), max(1, len(listings) // 20)):
        result = searcher.search(listings.titles[row], k=10)
        ids = [hit.listing_id for hit in result.hits]
        assert listings.ids[row] in ids, listings.titles[row]
        hits_at_1 += ids[0] == listings.ids[row]
    assert hits_at_1 >= 10  # most of the 20 sampled titles rank their own listing first


def test_every_hit_satisfies_the_filters_and_k_is_filled_when_possible(searcher):
    listings = searcher.listings
    rng = np.random.default_rng(0)
    prices = listings.price[~np.isnan(listings.price)]
    for _ in range(15):
        category = listings.categories[rng.integers(len(listings))].split(" / ")[0]
        low, high = sorted(rng.choice(prices, size=2))
        town = listings.towns[rng.integers(len(listings))]
        for filters in (
            SearchFilters(category=category),
            SearchFilters(min_price=float(low), max_price=float(high)),
            SearchFilters(location=town),
            SearchFilters(category=category, max_price=float(high)),
        ):
            allowed = set(searcher.allowed_ids(filters))
            result = searcher.search("good condition", k=20, filters=filters)
            ids = [hit.listing_id for hit in result.hits]
            assert set(ids) <= allowed
            assert len(ids) == min(20, len(allowed))


def test_filter_matching_nothing_returns_no_hits(searcher):
    result = searcher.search("sofa", k=5, filters=SearchFilters(location="Atlantis"))
    assert result.hits == []


def test_price_and_recency_sorts(searcher):
    asc = searcher.search("chair", k=30, sort="price_asc")
    prices = [searcher.listings.price[searcher.listings.row_of[h.listing_id]] for h in asc.hits]
    known = [p for p in prices if not np.isnan(p)]
    assert known == sorted(known)
    assert all(np.isnan(p) for p in prices[len(known):])  # unknown prices last
    newest = searcher.search("chair", k=30, sort="newest")
    days = [searcher.listings.created_days[searcher.listings.row_of[h.listing_id]] for h in newest.hits]
    known_days = [d for d in days if not np.isnan(d)]
    assert known_days == sorted(known_days, reverse=True)


@pytest.mark.parametrize("sort", ["relevance", "price_asc"])
def test_pages_continue_one_ranking(searcher, sort):
    whole = searcher.search("good condition", k=30, sort=sort)
    pages = [searcher.search("good condition", k=10, offset=offset, sort=sort) for offset in (0, 10, 20)]
    assert [h.listing_id for page in pages for h in page.hits] == [h.listing_id for h in whole.hits]
    assert [h.rank for h in pages[1].hits] == list(range(11, 21))
    assert {page.total_candidates for page in pages} == {whole.total_candidates}
    past_the_end = searcher.search("good condition", k=10, offset=whole.total_candidates)
    assert past_the_end.hits == [] and past_the_end.total_candidates == whole.total_candidates


def test_image_and_text_plus_image_queries(searcher, indexed_workspace):
    listings = searcher.listings
    row = int(np.flatnonzero(listings.photo_count > 0)[0])
    from catalog.store import Catalog

    with Catalog(indexed_workspace.db_url, root=indexed_workspace.root) as catalog:
        listing = catalog.get_listing(listings.ids[row])
        photo = Image.open(catalog.image_path(listing.image_ids[0])).convert("RGB")
    by_image = searcher.search(image=photo, k=10)
    assert listings.ids[row] in [h.listing_id for h in by_image.hits]
    assert "bm25" not in by_image.timings_ms
    both = searcher.search(listings.titles[row], image=photo, k=10)
    assert both.hits[0].listing_id == listings.ids[row]


def _first_photo(searcher, workspace) -> tuple[str, Image.Image]:
    from catalog.store import Catalog

    listing_id = searcher.listings.ids[int(np.flatnonzero(searcher.listings.photo_count > 0)[0])]
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        path = catalog.image_path(catalog.get_listing(listing_id).image_ids[0])
    with Image.open(path) as photo:
        return listing_id, photo.convert("RGB")


def stored_embeddings(searcher, workspace):
    """The embedding table with its photo vectors, as `marketsearch embed` stored them (a service built by
    `Searcher.from_workspace` loads it without them and reads them from its photo index)."""
    from catalog.store import Catalog
    from encoders.embed import load_embeddings, model_photo_dim

    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        return load_embeddings(catalog, searcher.model.fingerprint, photo_dim=model_photo_dim(searcher.model))


def test_an_image_query_adds_the_listings_with_the_nearest_photos(searcher, indexed_workspace):
    _, photo = _first_photo(searcher, indexed_workspace)
    query = searcher.query_context(image=photo)
    candidates = searcher.candidates(query, depth=10)
    # the photo retriever's top 10, by brute force over the stored photo vectors of the indexed listings
    embeddings = stored_embeddings(searcher, indexed_workspace)
    indexed = [embeddings.row_of[i] for i in searcher.photo_index.listing_ids]
    sims = embeddings.photo[indexed].astype(np.float32) @ query.photo_vector
    expected = [embeddings.ids[indexed[j]] for j in np.argsort(-sims, kind="stable")[:10]]
    retrieved = sorted((rank, i) for i, rank in zip(candidates.listing_ids, candidates.photo_rank) if np.isfinite(rank))
    assert [i for _, i in retrieved] == expected and [rank for rank, _ in retrieved] == list(range(1, 11))
    # fused: more candidates than the vector retriever's 10 alone whenever the two lists differ
    assert len(candidates) == len(set(expected) | {i for i, r in zip(candidates.listing_ids, candidates.vector_rank)
                                                    if np.isfinite(r)})
    assert searcher.candidates(searcher.query_context("garden chair")).photo_rank is None


def test_the_photo_retriever_keeps_to_the_filters(searcher, indexed_workspace):
    listing_id, photo = _first_photo(searcher, indexed_workspace)
    query = searcher.query_context(image=photo)
    tops = [path.split(" / ")[0] for path in searcher.listings.categories]
    own = tops[searcher.listings.row_of[listing_id]]
    filters = SearchFilters(category=next(top for top in sorted(set(tops)) if top != own))
    allowed = set(searcher.allowed_ids(filters))
    candidates = searcher.candidates(query, depth=10, filters=filters)
    photo_ranked = [i for i, rank in zip(candidates.listing_ids, candidates.photo_rank) if np.isfinite(rank)]
    assert photo_ranked and set(candidates.listing_ids) <= allowed


def test_without_a_photo_index_an_image_query_still_has_photo_similarities(searcher, indexed_workspace):
    from search.pipeline import Searcher

    # what a service loads from an index set published before photo indexes existed: the photo vectors in its table
    bare = Searcher(searcher.model, searcher.listings, stored_embeddings(searcher, indexed_workspace),
                    searcher.vector_index, searcher.bm25)
    _, photo = _first_photo(searcher, indexed_workspace)
    candidates = bare.candidates(bare.query_context(image=photo), depth=10)
    assert len(candidates) == 10 and np.isnan(candidates.photo_rank).all()
    assert np.isfinite(candidates.photo_sim).any()


@pytest.mark.parametrize("kwargs", [{}, {"text": "   "}])
def test_query_without_text_or_image_is_refused(searcher, kwargs):
    with pytest.raises(ValueError, match="needs text, an image"):
        searcher.search(**kwargs)


@pytest.mark.parametrize("kwargs, message", [({"k": 0}, "k must be"), ({"k": 101}, "k must be"),
                                             ({"sort": "cheapest"}, "sort must be"),
                                             ({"offset": -1}, "offset must be"),
                                             ({"offset": 1001}, "offset must be")])
def test_invalid_options_are_refused(searcher, kwargs, message):
    with pytest.raises(ValueError, match=message):
        searcher.search("bike", **kwargs)


def test_a_service_reads_photo_vectors_from_its_photo_index_with_the_stored_values(searcher, indexed_workspace):
    from search.pipeline import Searcher

    assert searcher.embeddings.photo is None  # no second copy of 1,792 values a listing in memory
    table = stored_embeddings(searcher, indexed_workspace)
    with_table = Searcher(searcher.model, searcher.listings, table, searcher.vector_index, searcher.bm25,
                          photo_index=searcher.photo_index)
    _, photo = _first_photo(searcher, indexed_workspace)
    served = searcher.candidates(searcher.query_context(image=photo), depth=50)
    expected = with_table.candidates(with_table.query_context(image=photo), depth=50)
    assert served.listing_ids == expected.listing_ids
    np.testing.assert_array_equal(served.photo_sim, expected.photo_sim)  # float16 values, exactly, either way
    present = np.isfinite(served.photo_sim)
    assert present.any()
    np.testing.assert_array_equal(present, table.has_photo[[table.row_of[i] for i in served.listing_ids]])
