"""Happy paths against the real demo pipeline (session fixtures `indexed_workspace` + `searcher`)."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def listings(demo_state):
    return [listing for batch in demo_state.catalog.iter_listings(batch_size=500) for listing in batch]


@pytest.fixture(scope="module")
def with_photo(listings):
    return [x for x in listings if x.image_ids]


def search(client, **body):
    response = client.post("/search/text", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_text_search_returns_hydrated_hits(client, demo_state, with_photo):
    target = with_photo[3]
    body = search(client, query=target.title, k=10)
    assert body["query_type"] == "text"
    assert 1 <= body["count"] == len(body["hits"]) <= 10
    assert [hit["rank"] for hit in body["hits"]] == list(range(1, body["count"] + 1))
    assert body["total_candidates"] >= body["count"]
    for hit in body["hits"]:
        listing = demo_state.catalog.get_listing(hit["listing"]["id"])
        assert hit["listing"]["title"] == listing.title
        assert hit["listing"]["price"] == listing.price
        assert hit["listing"]["location"] == listing.location
        assert hit["listing"]["category"] == listing.category
        assert hit["listing"]["top_category"] == listing.top_category
        assert hit["listing"]["thumbnail_url"] == (f"/images/{listing.image_ids[0]}" if listing.image_ids else None)
        assert math.isfinite(hit["score"])
        assert set(hit["scores"]) <= {"vector", "bm25", "photo", "rrf", "rerank"}
    ids = [hit["listing"]["id"] for hit in body["hits"]]
    assert target.id in ids[:5]  # its own exact title
    for name in ("encode", "vector", "bm25", "fuse", "total", "hydrate", "service_total"):
        assert body["timings_ms"][name] >= 0


def test_hits_are_shown_from_the_searched_snapshot_not_read_from_the_catalogue(client, demo_state, with_photo,
                                                                              monkeypatch):
    """The listing of each hit comes from the listing table the search used; the catalogue is asked only which
    of the page's ids are still active (the stale-delete guard), never for the listings' rows."""
    def no_rows(ids):
        raise AssertionError(f"the search route read listing rows from the catalogue: {ids}")

    asked = []
    active_among = demo_state.catalog.active_among
    monkeypatch.setattr(demo_state.catalog, "get_listings", no_rows)
    monkeypatch.setattr(demo_state.catalog, "active_among", lambda ids: asked.append(list(ids)) or active_among(ids))
    target = with_photo[5]
    body = search(client, query=target.title, k=5)
    assert [hit["listing"]["id"] for hit in body["hits"]] == asked[0]
    assert body["hits"][0]["listing"]["id"] == target.id
    assert body["hits"][0]["listing"]["title"] == target.title and body["hits"][0]["listing"]["price"] == target.price


def test_predicted_category_and_probabilities(client, demo_state):
    body = search(client, query="mountain bike")
    probs = body["category_probs"]
    values = [p["probability"] for p in probs]
    assert body["predicted_category"] == probs[0]["category"]
    assert values == sorted(values, reverse=True)
    assert abs(sum(values) - 1.0) < 1e-3
    assert {p["category"] for p in probs} == set(demo_state.searcher.model.labels.classes)


def test_category_filter_holds_and_fills_k(client, listings):
    category = max({x.top_category for x in listings}, key=lambda c: sum(x.top_category == c for x in listings))
    matching = sum(x.top_category == category for x in listings)
    k = min(10, matching)
    body = search(client, query="good condition", k=k, filters={"category": category})
    assert body["count"] == k
    assert all(hit["listing"]["top_category"] == category for hit in body["hits"])


def test_price_range_and_location_filters_hold(client, demo_state, listings):
    priced = sorted(x.price for x in listings if x.price is not None)
    low, high = priced[len(priced) // 4], priced[len(priced) // 2]
    body = search(client, query="for sale", k=20, filters={"min_price": low, "max_price": high})
    assert body["count"] > 0
    assert all(low <= hit["listing"]["price"] <= high for hit in body["hits"])

    town = next(x.town for x in listings if x.town)
    body = search(client, query="for sale", k=20, filters={"location": town.upper()})
    assert body["count"] > 0
    for hit in body["hits"]:
        listing = demo_state.catalog.get_listing(hit["listing"]["id"])
        assert town.casefold() in {(listing.town or "").casefold(), (listing.county or "").casefold()}


def test_filter_that_matches_nothing_returns_no_hits(client):
    body = search(client, query="table", filters={"category": "No Such Category"})
    assert body["count"] == 0 and body["hits"] == []


def test_sort_by_price(client):
    body = search(client, query="good condition", k=30, sort="price_asc")
    prices = [hit["listing"]["price"] for hit in body["hits"] if hit["listing"]["price"] is not None]
    assert len(prices) > 5 and prices == sorted(prices)
    body = search(client, query="good condition", k=30, sort="price_desc")
    prices = [hit["listing"]["price"] for hit in body["hits"] if hit["listing"]["price"] is not None]
    assert prices == sorted(prices, reverse=True)


def test_photo_search_finds_the_listing_of_the_photo(client, demo_state, with_photo):
    found = 0
    for listing in with_photo[:5]:
        data = demo_state.catalog.image_path(listing.image_ids[0]).read_bytes()
        response = client.post("/search/image", files={"file": ("p.jpg", data, "image/jpeg")}, data={"k": "10"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["query_type"] == "image" and body["count"] == 10
        assert body["predicted_category"] is not None
        assert "bm25" not in body["timings_ms"] and body["timings_ms"]["decode"] > 0
        found += listing.id in [hit["listing"]["id"] for hit in body["hits"]]
    assert found >= 4  # its own photo brings a listing back in the top 10


def test_photo_plus_words(client, demo_state, with_photo):
    photo = demo_state.catalog.image_path(with_photo[0].image_ids[0])
    buffer = io.BytesIO()
    Image.open(photo).convert("RGB").resize((500, 400)).save(buffer, format="PNG")
    response = client.post(
        "/search/image",
        files={"file": ("p.png", buffer.getvalue(), "image/png")},
        data={"text": "in red", "max_price": "1000", "sort": "newest"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query_type"] == "image+text" and body["count"] > 0
    assert "bm25" in body["timings_ms"]
    assert all(hit["listing"]["price"] is not None and hit["listing"]["price"] <= 1000 for hit in body["hits"])


def test_listing_details_and_photos(client, demo_state, with_photo):
    listing = next(x for x in with_photo if len(x.image_ids) >= 2)
    body = client.get(f"/listings/{listing.id}").json()
    assert body["title"] == listing.title and body["description"] == listing.description
    assert [p["id"] for p in body["photos"]] == list(listing.image_ids)
    for photo in body["photos"]:
        response = client.get(photo["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == (photo["width"], photo["height"])
    assert client.get(f"/listings/{listing.id}-nope").status_code == 404


def test_categories_are_the_catalogue_top_levels(client, listings):
    body = client.get("/categories").json()
    assert body["data"] == sorted({x.top_category for x in listings}) and body["count"] == len(body["data"])


def test_health_reports_model_index_and_counts(client, demo_state):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    searcher = demo_state.searcher
    assert body["status"] == "ok" and body["detail"] is None
    assert body["listings"] == demo_state.catalog.count()
    assert body["model"]["fingerprint"] == searcher.model.fingerprint
    assert body["model"]["embed_dim"] == searcher.model.embed_dim
    assert set(body["model"]["details"]["backbones"]) == {"image", "text"}
    assert body["index"]["count"] == len(searcher.vector_index)
    assert {"nlist", "nprobe", "model_fingerprint"} <= set(body["index"])
    assert body["index"]["photo"]["count"] == len(searcher.photo_index) > 0
    assert body["bm25_documents"] == len(searcher.bm25)
    assert body["ranker"]["loaded"] is (searcher.ranker is not None)


def test_health_prints_no_absolute_server_path(client, demo_state):
    response = client.get("/health")
    root = demo_state.workspace.root
    assert response.json()["workspace"] == root.name
    for path in {str(root), str(root.resolve()), str(root.parent), "/tmp/", "/root/", "/work/"}:
        assert path not in response.text, path
