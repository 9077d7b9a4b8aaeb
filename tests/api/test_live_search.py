"""Search over HTTP never returns a listing deleted or sold before the request, even from a process whose
follower has not applied the change yet (the hits are checked against the database while being hydrated)."""

from __future__ import annotations

import dataclasses
import shutil

from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from api.state import ServiceState
from catalog.store import Catalog
from core.workspace import Workspace
from search.pipeline import Searcher


def assert_a_process_behind_the_log_serves_no_stale_delete(workspace: Workspace) -> None:
    """Sell one listing and delete another through the catalogue; a service whose searcher never follows the
    log must still not return either (tests/search/test_live_postgres.py runs this on PostgreSQL)."""
    searcher = Searcher.from_workspace(workspace, load_ranker=False)  # no follower: never catches up
    catalog = Catalog(workspace.db_url, root=workspace.root)
    state = ServiceState(Settings(workspace=workspace.root), workspace, catalog=catalog, searcher=searcher)
    try:
        with TestClient(create_app(state.settings, state=state)) as client:
            sold, deleted = catalog.get_listings(searcher.listings.ids[:2])

            def found(listing) -> set[str]:
                body = client.post("/search/text", json={"query": listing.title, "k": 100}).json()
                return {hit["listing"]["id"] for hit in body["hits"]}

            assert sold.id in found(sold) and deleted.id in found(deleted)
            catalog.upsert_listings([dataclasses.replace(sold, status="sold")])
            catalog.delete_listing(deleted.id)
            assert searcher.applied_seq < catalog.last_change()  # the index still holds both
            assert sold.id not in found(sold) and deleted.id not in found(deleted)
    finally:
        catalog.close()


def test_a_process_behind_the_log_serves_no_stale_delete(indexed_workspace, tmp_path):
    assert_a_process_behind_the_log_serves_no_stale_delete(
        Workspace.at(shutil.copytree(indexed_workspace.root, tmp_path / "ws"))
    )
