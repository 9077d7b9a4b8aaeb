"""A workspace without artefacts: the service starts, says what is missing and which command fixes it."""

from __future__ import annotations

import logging
import shutil

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from core.workspace import Workspace
from tests.api.conftest import jpeg_bytes
from tests.catalog.damaged import UNUSABLE, damage_pages, good_database


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


# -- a catalogue database the service cannot use: it starts, says what is broken and what to run ------------


def _assert_catalogue_answers(client, tmp_path):
    """/health and the listing and search routes answer 503 naming the broken file (workspace-relative), the
    problem and the command, and nothing else of the server's paths."""
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    detail = health.json()["detail"]
    assert detail.startswith("catalog.db cannot be used: ") and "marketsearch build --workspace ws" in detail
    for response in (
        client.get("/categories"),
        client.get("/listings/L0001"),
        client.post("/search/text", json={"query": "sofa"}),
        client.post("/search/image", files={"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}),
    ):
        assert response.status_code == 503, response.text
        assert response.json()["detail"] == detail
    for response in (health, client.get("/")):
        assert str(tmp_path) not in response.text


def _one_log_line(caplog):
    """What the service logged at WARNING or above: one line about the catalogue, no traceback."""
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "catalog.db cannot be used" in records[0].getMessage() and "\n" not in records[0].getMessage()
    assert records[0].exc_info is None and "Traceback" not in caplog.text


@pytest.mark.parametrize("damage", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_catalogue_is_reported_not_a_crash(tmp_path, caplog, damage):
    (tmp_path / "ws").mkdir()
    damage(tmp_path / "ws" / "catalog.db")
    caplog.set_level(logging.INFO)
    with TestClient(create_app(Settings(workspace=tmp_path / "ws")), raise_server_exceptions=False) as client:
        _one_log_line(caplog)
        _assert_catalogue_answers(client, tmp_path)


def test_a_damaged_catalogue_under_a_built_workspace_is_reported(indexed_workspace, tmp_path, caplog):
    """The file opens (its schema pages are intact) and the damage is met while the search pipeline reads the
    listings: the service still starts and reports the catalogue, not a pipeline traceback."""
    workspace = Workspace.at(tmp_path / "ws")
    shutil.copytree(indexed_workspace.root, workspace.root)
    damage_pages(workspace.db_path)
    caplog.set_level(logging.INFO)
    with TestClient(create_app(Settings(workspace=workspace.root)), raise_server_exceptions=False) as client:
        _one_log_line(caplog)
        _assert_catalogue_answers(client, tmp_path)


def test_damage_met_by_a_request_is_a_503_with_the_fix(tmp_path, caplog):
    """A catalogue that opens, in a workspace without search artefacts: start-up reads none of the damaged
    pages, the requests that do answer 503 naming the file and the fix, with one log line each."""
    (tmp_path / "ws").mkdir()
    good_database(tmp_path / "ws" / "catalog.db")
    damage_pages(tmp_path / "ws" / "catalog.db")
    with TestClient(create_app(Settings(workspace=tmp_path / "ws")), raise_server_exceptions=False) as client:
        caplog.clear()
        for path in ("/categories", "/listings/L0300"):
            response = client.get(path)
            assert response.status_code == 503, response.text
            assert response.json()["detail"].startswith("catalog.db cannot be used: the file is damaged")
            assert "marketsearch build --workspace ws" in response.json()["detail"]
            assert str(tmp_path) not in response.text
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.exc_info for r in records] == [None, None] and "Traceback" not in caplog.text
