"""Real `marketsearch serve` processes following one catalogue: `serve --workers 2` on SQLite, and two
`serve` processes on one PostgreSQL catalogue (issue 16). Writes go through `Catalog` methods, what the write
routes run. Every process converges on a new listing (each worker seen through /health's ``live.pid``), and a
listing sold or deleted is never returned by any request sent after the write committed: zero violations.

Each request opens its own connection (``Connection: close``), so the kernel hands requests to every worker.
The loops are bounded in count and time; the times are printed (-s), never asserted.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import httpx
import pytest

from bench.http_load import free_port, serving
from catalog.store import Catalog
from core.workspace import Workspace
from tests.search.test_live_postgres import FAST, SLOW

pytestmark = pytest.mark.reliability

CONVERGE_GUARD_S = 180  # a hang guard on a loaded machine, not a timed assertion
STALE_CHECKS = 60  # searches per process after each sell / delete
CLOSE = {"Connection": "close"}


def _hit_ids(url: str, query: str) -> list[str]:
    response = httpx.post(url + "/search/text", json={"query": query, "k": 20}, headers=CLOSE, timeout=60)
    response.raise_for_status()
    return [hit["listing"]["id"] for hit in response.json()["hits"]]


def _found_after(url: str, listing, written_at: float) -> float:
    """Seconds from ``written_at`` until a search through ``url`` finds ``listing``."""
    deadline = time.monotonic() + CONVERGE_GUARD_S
    while time.monotonic() < deadline:
        if listing.id in _hit_ids(url, listing.title):
            return time.monotonic() - written_at
        time.sleep(0.05)
    raise AssertionError(f"{url} never found {listing.id}")


def _workers_converged(url: str, workers: int, seq: int) -> dict[int, dict]:
    """/health's live section of each of ``workers`` processes once it has applied every change up to ``seq``."""
    converged: dict[int, dict] = {}
    deadline = time.monotonic() + CONVERGE_GUARD_S
    while len(converged) < workers and time.monotonic() < deadline:
        live = httpx.get(url + "/health", headers=CLOSE, timeout=60).json()["live"]
        assert live["error"] is None, live
        if live["settled_seq"] >= seq:
            converged[live["pid"]] = live
        time.sleep(0.02)
    assert len(converged) == workers, f"converged: {sorted(converged)} of {workers} workers"
    return converged


def _stale_hits(urls: list[str], gone: list) -> int:
    """Searches (each gone listing by its title, through every url) that returned a gone listing."""
    gone_ids = {listing.id for listing in gone}
    return sum(bool(gone_ids & set(_hit_ids(url, listing.title)))
               for _ in range(STALE_CHECKS) for url in urls for listing in gone)


def _sell_and_delete(catalog: Catalog, urls: list[str]) -> dict:
    sold, deleted = catalog.get_listings(catalog.listing_ids()[:2])
    assert all(x.id in _hit_ids(url, x.title) for url in urls for x in (sold, deleted)), "not found before"
    catalog.upsert_listings([dataclasses.replace(sold, status="sold")])  # acknowledged: committed
    after_sell = _stale_hits(urls, [sold])
    catalog.delete_listing(deleted.id)
    after_delete = _stale_hits(urls, [sold, deleted])
    return {"stale_after_sell": after_sell, "stale_after_delete": after_delete,
            "requests": STALE_CHECKS * len(urls) * 3}


def test_every_worker_of_serve_workers_2_converges_and_none_serves_a_sold_listing(indexed_workspace, tmp_path):
    workspace = Workspace.at(shutil.copytree(indexed_workspace.root, tmp_path / "ws"))
    with serving(workspace.root, free_port(), workers=2, log_path=tmp_path / "server.log") as served:
        with Catalog(workspace.db_url, root=workspace.root) as catalog:
            catalog.upsert_listings([FAST])
            written_at, seq = time.monotonic(), catalog.last_change()
            found_s = _found_after(served.url, FAST, written_at)
            workers = _workers_converged(served.url, 2, seq)
            stale = _sell_and_delete(catalog, [served.url])
    print(json.dumps({"found_after_s": round(found_s, 3), "workers": sorted(workers), **stale}))
    assert all(live["delta_listings"] >= 1 for live in workers.values())
    assert stale["stale_after_sell"] == 0 and stale["stale_after_delete"] == 0, stale


@pytest.mark.postgres
def test_two_serve_processes_on_one_postgres_catalogue_agree(postgres_workspace, tmp_path):
    """Two workspace folders (two machines: nothing shared but the database), one PostgreSQL catalogue."""
    first = postgres_workspace
    second = Workspace.at(shutil.copytree(first.root, tmp_path / "second"))  # database.url travels with it
    assert first.db_url == second.db_url and not second.uses_own_sqlite
    with (serving(first.root, free_port(), log_path=tmp_path / "first.log") as one,
          serving(second.root, free_port(), log_path=tmp_path / "second.log") as two):
        urls = [one.url, two.url]
        with Catalog(first.db_url, root=first.root) as catalog:
            found_s = {}
            for listing in (FAST, SLOW):
                catalog.upsert_listings([listing])  # a write "through" the first; searched through both
                written_at = time.monotonic()
                found_s[listing.id] = [round(_found_after(url, listing, written_at), 3) for url in urls]
            seq = catalog.last_change()
            lives = [_workers_converged(url, 1, seq) for url in urls]
            stale = _sell_and_delete(catalog, urls)
    print(json.dumps({"found_after_s": found_s, **stale}))
    assert all(next(iter(live.values()))["settled_seq"] >= seq for live in lives)
    assert stale["stale_after_sell"] == 0 and stale["stale_after_delete"] == 0, stale
