"""A workspace without artefacts: the service starts, says what is missing and which command fixes it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from tests.api.conftest import jpeg_bytes


@pytest.fixture
def empty_client(tmp_path):
    settings = Settings(workspace=tmp_path / "nothing-built")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_health_is_503_and_names_the_build_command(empty_client, tmp_path):
    response = empty_client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "marketsearch build --workspace nothing-built" in body["detail"]


def test_no_absolute_server_path_in_public_answers(empty_client, tmp_path):
    """The workspace is named by its folder, artefacts relative to it: /health, the 503 details (which the
    page's banner shows) and the listing routes never print where the service lives on disk."""
    health = empty_client.get("/health")
    assert health.json()["workspace"] == "nothing-built"
    assert "catalog.db" in health.json()["detail"]
    for response in (health, empty_client.get("/categories"), empty_client.post("/search/text", json={"query": "a"})):
        assert str(tmp_path) not in response.text and str(tmp_path.resolve()) not in response.text


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", "/search/text", {"json": {"query": "bike"}}),
        ("post", "/search/image", {"files": {"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}}),
        ("get", "/listings/L1", {}),
        ("get", "/images/I1", {}),
        ("get", "/categories", {}),
        ("post", "/events", {"json": {"events": []}}),
        ("get", "/users/u1/events", {}),
        ("delete", "/users/u1", {}),
    ],
)
def test_endpoints_are_503_with_the_fix(empty_client, method, path, kwargs):
    response = getattr(empty_client, method)(path, **kwargs)
    assert response.status_code == 503
    assert "marketsearch build" in response.json()["detail"]


def test_page_and_docs_still_load(empty_client):
    assert empty_client.get("/").status_code == 200
    assert empty_client.get("/docs").status_code == 200
    assert "/search/text" in empty_client.get("/openapi.json").json()["paths"]


def test_catalogue_without_search_artefacts_serves_listings(tmp_path):
    from tests.api.fakes import tiny_catalog

    tiny_catalog(tmp_path).close()  # a catalogue is there, but no model or index
    with TestClient(create_app(Settings(workspace=tmp_path)), raise_server_exceptions=False) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["listings"] == 3
        assert "marketsearch build" in health.json()["detail"]
        assert client.get("/listings/L1").status_code == 200
        assert client.post("/search/text", json={"query": "bike"}).status_code == 503
