"""The OpenAPI schema lists every status a route can answer, and /docs, /redoc work without internet."""

from __future__ import annotations

import re

import pytest

EXPECTED_STATUSES = {
    ("post", "/search/text"): {"200", "413", "422", "503"},
    ("post", "/search/image"): {"200", "413", "415", "422", "503"},
    ("get", "/listings/{listing_id}"): {"200", "404", "422", "503"},
    ("get", "/images/{image_id}"): {"200", "404", "422", "503"},
    ("get", "/categories"): {"200", "503"},
    ("get", "/health"): {"200", "503"},
    ("post", "/events"): {"200", "413", "422", "503"},
    ("get", "/users/{user_id}/events"): {"200", "422", "503"},
    ("delete", "/users/{user_id}"): {"200", "422", "503"},
    ("get", "/users/{user_id}/recommendations"): {"200", "422", "503"},
    ("get", "/listings/{listing_id}/similar"): {"200", "404", "422", "503"},
}


def test_every_route_lists_its_error_statuses_with_a_body_model(fake_client):
    paths = fake_client.get("/openapi.json").json()["paths"]
    found = {(method, path): op for path, ops in paths.items() for method, op in ops.items()}
    assert set(found) == set(EXPECTED_STATUSES)
    for key, statuses in EXPECTED_STATUSES.items():
        responses = found[key]["responses"]
        assert set(responses) == statuses, key
        for status in statuses - {"200"}:
            assert responses[status]["content"]["application/json"]["schema"]["$ref"], (key, status)


def test_422_is_documented_in_the_shape_it_is_sent(fake_client):
    schema = fake_client.get("/openapi.json").json()
    ref = schema["paths"]["/search/text"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    model = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert model["properties"]["detail"]["type"] == "array"


def test_search_hits_link_to_their_listing_and_listings_to_their_photos(fake_client):
    paths = fake_client.get("/openapi.json").json()["paths"]
    for path in ("/search/text", "/search/image"):
        link = paths[path]["post"]["responses"]["200"]["links"]["listing"]
        assert link["parameters"] == {"listing_id": "$response.body#/hits/0/listing/id"}
    link = paths["/listings/{listing_id}"]["get"]["responses"]["200"]["links"]["photo"]
    assert link["parameters"] == {"image_id": "$response.body#/photos/0/id"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_no_external_urls(fake_client, page):
    response = fake_client.get(page)
    assert response.status_code == 200
    assert re.findall(r"https?://", response.text) == [], response.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert assets
    for asset in assets:
        assert asset.startswith("/"), asset
        served = fake_client.get(asset)
        assert served.status_code == 200 and served.content, asset
