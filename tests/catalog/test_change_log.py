"""Reading the change log exactly when seqs commit out of order (PostgreSQL): a write that took seq 1 and
commits after the write that took seq 2 is still read, a rolled-back seq is waited for only while it is in
flight, and a checkpoint is never a head with a lower seq still in flight."""

from __future__ import annotations

import pytest

from catalog.change_log import LogCursor
from catalog.errors import CatalogError
from catalog.store import Catalog, record_changes
from tests.catalog.test_store import make_listing
from tests.fixtures.postgres import held_before_commit


def _poll(cursor: LogCursor, catalog: Catalog) -> list[str]:
    head, rows = cursor.fetch(catalog, limit=100)
    cursor.advance(head, rows)
    return [listing_id for _, listing_id, _ in rows]


def test_on_sqlite_the_cursor_reads_the_log_in_order(tmp_path):
    with Catalog(tmp_path / "catalog.db") as catalog:
        cursor = LogCursor(catalog.last_change())
        catalog.upsert_listings([make_listing("a"), make_listing("b")])
        assert _poll(cursor, catalog) == ["a", "b"]
        assert cursor.settled == cursor.high == catalog.last_change() == catalog.settled_change()
        assert _poll(cursor, catalog) == []


@pytest.mark.postgres
def test_a_lower_seq_committed_after_a_higher_one_is_read(postgres_server):
    url = postgres_server.create_database()
    with Catalog(url) as catalog:
        cursor = LogCursor(catalog.last_change())
        with held_before_commit(url, lambda slow: slow.upsert_listings([make_listing("slow")])):
            catalog.upsert_listings([make_listing("fast")])  # takes the next seq and commits first
            slow_seq, fast_seq = cursor.settled + 1, catalog.last_change()
            assert fast_seq == slow_seq + 1
            assert _poll(cursor, catalog) == ["fast"]
            assert cursor.settled < slow_seq  # the slow write's seq may still appear
            with pytest.raises(CatalogError, match="in flight"):
                catalog.settled_change(timeout=0)  # no checkpoint past a seq in flight
        assert _poll(cursor, catalog) == ["slow"]  # a reader that had moved past fast_seq would never see it
        assert _poll(cursor, catalog) == []
        assert cursor.settled == fast_seq and catalog.settled_change(timeout=0) == fast_seq


@pytest.mark.postgres
def test_a_rolled_back_seq_is_waited_for_only_while_its_writer_is_in_flight(postgres_server):
    with Catalog(postgres_server.create_database()) as catalog:
        cursor = LogCursor(catalog.last_change())
        with catalog.engine.connect() as conn:
            failing = conn.begin()
            record_changes(conn, ["rolled-back"], "upsert")  # takes a seq, in flight
            catalog.upsert_listings([make_listing("after")])
            assert _poll(cursor, catalog) == ["after"]
            assert cursor.settled < catalog.last_change() and len(cursor.holes()) == 1
            failing.rollback()
        assert _poll(cursor, catalog) == []
        assert cursor.settled == catalog.last_change() and cursor.holes() == []
