"""API test fixtures: a TestClient over a tiny catalogue with a recording stand-in searcher."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from api.main import create_app
from api.state import ServiceState
from core.workspace import Workspace
from tests.api.fakes import RecordingSearcher, tiny_catalog


@pytest.fixture
def fake_workspace(tmp_path: Path) -> Workspace:
    return Workspace.at(tmp_path / "ws")


@pytest.fixture
def fake_settings(fake_workspace: Workspace) -> Settings:
    # event_burst: the event tests send a few hundred batches in a few seconds (test_rate_limits.py tests the limits)
    return Settings(
        workspace=fake_workspace.root, max_upload_bytes=200_000, max_image_pixels=1_000_000, event_burst=1000
    )


@pytest.fixture
def fake_catalog_url(fake_workspace: Workspace) -> str:
    """The tiny catalogue's database: SQLite. A module whose routes store things overrides this fixture with
    ``database_url`` (tests/fixtures/postgres.py) to run on SQLite and on PostgreSQL."""
    return f"sqlite:///{fake_workspace.root / 'catalog.db'}"


@pytest.fixture
def fake_state(fake_settings: Settings, fake_workspace: Workspace, fake_catalog_url: str) -> ServiceState:
    catalog = tiny_catalog(fake_workspace.root, fake_catalog_url)
    state = ServiceState(fake_settings, fake_workspace, catalog=catalog, searcher=RecordingSearcher(["L2", "L1", "L3"]))
    yield state
    catalog.close()


@pytest.fixture
def fake_client(fake_settings: Settings, fake_state: ServiceState) -> TestClient:
    with TestClient(create_app(fake_settings, state=fake_state), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def api_key(fake_state: ServiceState):
    """``api_key(scope, seller=None)``: the headers of a new API key in the fake catalogue."""
    from catalog.api_keys import create_key

    def make(scope: str, seller: str | None = None) -> dict[str, str]:
        _, text = create_key(fake_state.catalog, scope, seller_id=seller)
        return {"Authorization": f"Bearer {text}"}

    return make


def jpeg_bytes(size: tuple[int, int] = (64, 48), color=(20, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# -- the real demo pipeline (session-scoped fixtures from tests/fixtures/search.py) --------------------


@pytest.fixture(scope="session")
def demo_state(indexed_workspace, searcher) -> ServiceState:
    from catalog.store import Catalog

    settings = Settings(workspace=indexed_workspace.root)
    catalog = Catalog(indexed_workspace.db_url)
    yield ServiceState(settings, indexed_workspace, catalog=catalog, searcher=searcher)
    catalog.close()


@pytest.fixture
def client(demo_state: ServiceState) -> TestClient:
    with TestClient(create_app(demo_state.settings, state=demo_state), raise_server_exceptions=False) as client:
        yield client
