"""Listing details, photos and categories."""

from __future__ import annotations

import io

import pytest
from PIL import Image


@pytest.fixture
def fake_catalog_url(database_url):
    """These routes store and read the catalogue: every test runs on SQLite and on PostgreSQL."""
    return database_url


def test_listing_details_with_photo_urls(fake_client):
    response = fake_client.get("/listings/L1")
    assert response.status_code == 200
    body = response.json()
    assert body["title"] == "Red mountain bike"
    assert body["category_levels"] == ["Sports", "Cycling", "Bikes"]
    assert body["created_at"] == "2024-01-02"
    assert body["photos"] == [{"id": "I1", "url": "/images/I1", "width": 32, "height": 32}]


def test_text_only_listing_has_no_photos(fake_client):
    body = fake_client.get("/listings/L3").json()
    assert body["photos"] == [] and body["price"] == 0.0


def test_unknown_listing_is_404(fake_client):
    response = fake_client.get("/listings/NOPE")
    assert response.status_code == 404
    assert "NOPE" in response.json()["detail"]


def test_photo_is_served_as_jpeg(fake_client):
    response = fake_client.get("/images/I1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (32, 32)
    assert image.getpixel((16, 16))[0] > 150  # the red square written by the fixture


def test_unknown_image_is_404(fake_client):
    assert fake_client.get("/images/NOPE").status_code == 404


def test_image_whose_file_is_gone_is_404_with_the_fix(fake_client, fake_workspace):
    (fake_workspace.images_dir / "I2.jpg").unlink()
    response = fake_client.get("/images/I2")
    assert response.status_code == 404
    assert "marketsearch ingest" in response.json()["detail"]


def test_search_hits_link_to_listing_and_thumbnail(fake_client):
    body = fake_client.post("/search/text", json={"query": "table"}).json()
    first = body["hits"][0]["listing"]
    assert first["id"] == "L2" and first["thumbnail_url"] == "/images/I2" and first["url"] == "/listings/L2"
    assert fake_client.get(first["url"]).json()["title"] == first["title"]
    free_sofa = body["hits"][2]["listing"]
    assert free_sofa["thumbnail_url"] is None


def test_categories(fake_client):
    assert fake_client.get("/categories").json() == {"data": ["Home", "Sports"], "count": 2}
