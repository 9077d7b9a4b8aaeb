"""EventStore: validation, idempotent writes, paging, erasure and concurrent writers, on a real SQLite file."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select

from catalog import schema
from catalog.store import Catalog
from personal.erasure import erase_user
from personal.events import MAX_CLOCK_AHEAD, Event
from personal.store import EventStore
from tests.catalog.test_store import make_listing

NOW = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(params=["sqlite-driver", "sqlite-core", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog(request, tmp_path, monkeypatch):
    """Every test runs on three insert paths: SQLite's driver fast path, the SQLAlchemy Core one that other
    databases take (here on SQLite too), and that Core path on a real PostgreSQL server."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database()
    else:
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    monkeypatch.setattr("personal.store.DRIVER_INSERTS", request.param == "sqlite-driver")
    with Catalog(url, root=tmp_path) as catalog:
        catalog.upsert_listings([make_listing(f"L{i}") for i in range(1, 6)])
        yield catalog


@pytest.fixture
def store(catalog):
    with EventStore(catalog) as store:
        yield store


def event(n: int, user="u1", listing="L1", kind="click", minutes_ago=None, **extra) -> Event:
    occurred = NOW - dt.timedelta(minutes=minutes_ago if minutes_ago is not None else 100 - n)
    return Event(f"e{n}", user, listing, kind, occurred, **extra)


def test_valid_events_are_stored_with_every_field(store):
    report = store.record(
        [event(1, kind="impression", query_id="q" * 32, position=3), event(2, listing="L2", kind="purchase")], now=NOW
    )
    assert (report.received, report.stored, report.duplicates, report.rejected) == (2, 2, 0, [])
    page = store.user_events("u1")
    assert [e.event_id for e in page.events] == ["e2", "e1"]  # newest first
    first = page.events[1]
    assert (first.type, first.listing_id, first.query_id, first.position) == ("impression", "L1", "q" * 32, 3)
    assert first.occurred_at == NOW - dt.timedelta(minutes=99) and first.occurred_at.tzinfo is not None
    assert first.received_at == NOW
    assert store.has_user("u1") and store.user_count() == 1


def test_a_retried_batch_stores_nothing_twice_and_counts_the_duplicates(store):
    batch = [event(n, listing=f"L{n}") for n in range(1, 5)]
    assert store.record(batch, now=NOW).stored == 4
    again = store.record(batch + [event(9)], now=NOW)
    assert (again.stored, again.duplicates) == (1, 4)
    assert store.count() == 5
    repeated = store.record([event(20), event(20, listing="L2"), event(21)], now=NOW)  # same id twice in one batch
    assert (repeated.stored, repeated.duplicates) == (2, 1)
    assert next(e for e in store.user_events("u1").events if e.event_id == "e20").listing_id == "L1"  # first wins


def test_invalid_events_are_rejected_one_by_one_while_the_valid_ones_are_stored(store):
    batch = [
        event(1),
        event(2, listing="NOPE"),
        event(3, kind="like"),
        Event("e4", "u1", "L1", "view", NOW + MAX_CLOCK_AHEAD + dt.timedelta(seconds=1)),
        Event("e/5", "u1", "L1", "view", NOW),
        Event("e6", "user with spaces", "L1", "view", NOW),
        Event("e7", "u1", "L1", "view", NOW, query_id="q" * 65),
        Event("e8", "u1", "L1", "click", NOW, position=0),
        Event("e9", "u1", "L1", "view", dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)),
        Event("e10", "u1", "L\x001", "view", NOW),
        event(11),
    ]
    report = store.record(batch, now=NOW)
    assert (report.stored, report.duplicates) == (2, 0)
    assert [(r.index, r.event_id, r.reason) for r in report.rejected] == [
        (1, "e2", "unknown_listing"),
        (2, "e3", "unknown_type"),
        (3, "e4", "time_in_future"),
        (4, None, "invalid_event_id"),
        (5, "e6", "invalid_user_id"),
        (6, "e7", "invalid_query_id"),
        (7, "e8", "invalid_position"),
        (8, "e9", "time_too_old"),
        (9, "e10", "invalid_listing_id"),
    ]
    assert "NOPE" in report.rejected[0].detail and "10 minutes" in report.rejected[2].detail
    assert sorted(e.event_id for e in store.user_events("u1").events) == ["e1", "e11"]


def test_the_future_bound_is_ten_minutes_of_clock_skew(store):
    at_bound = Event("a", "u1", "L1", "view", NOW + MAX_CLOCK_AHEAD)
    past_bound = Event("b", "u1", "L1", "view", NOW + MAX_CLOCK_AHEAD + dt.timedelta(microseconds=1))
    report = store.record([at_bound, past_bound], now=NOW)
    assert report.stored == 1 and [r.reason for r in report.rejected] == ["time_in_future"]
    assert MAX_CLOCK_AHEAD == dt.timedelta(minutes=10)


def test_a_time_without_an_offset_is_utc_and_offsets_are_converted(store):
    naive = Event("a", "u1", "L1", "view", dt.datetime(2024, 3, 1, 10, 0))
    paris = Event("b", "u1", "L1", "view", dt.datetime(2024, 3, 1, 11, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    store.record([naive, paris], now=NOW)
    times = {e.event_id: e.occurred_at for e in store.user_events("u1").events}
    assert times == {
        "a": dt.datetime(2024, 3, 1, 10, 0, tzinfo=dt.timezone.utc),
        "b": dt.datetime(2024, 3, 1, 10, 30, tzinfo=dt.timezone.utc),
    }


def test_pages_walk_the_history_newest_first_without_gaps_or_repeats(store):
    same_time = [Event(f"t{i}", "u1", "L1", "view", NOW - dt.timedelta(hours=1)) for i in range(5)]
    store.record([event(n, minutes_ago=n * 3) for n in range(20)] + same_time + [event(99, user="u2")], now=NOW)
    seen, before = [], None
    for _ in range(10):
        page = store.user_events("u1", limit=7, before=before)
        seen.extend(page.events)
        before = page.next_before
        if before is None:
            break
    assert len(seen) == 25 and len({e.event_id for e in seen}) == 25
    keys = [(e.occurred_at, e.event_id) for e in seen]
    assert keys == sorted(keys, reverse=True)
    assert all(e.user_id == "u1" for e in seen)
    with pytest.raises(ValueError, match="limit"):
        store.user_events("u1", limit=501)


def test_iter_events_yields_every_event_oldest_first_in_bounded_batches(store):
    store.record([event(n, user=f"u{n % 3}", minutes_ago=n) for n in range(23)], now=NOW)
    batches = list(store.iter_events(batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 3]
    times = [e.occurred_at for b in batches for e in b]
    assert times == sorted(times) and len({e.event_id for b in batches for e in b}) == 23


def test_erasing_a_user_removes_their_events_and_row_and_nothing_else(store, catalog):
    store.record([event(n, user="gone") for n in range(5)] + [event(10 + n, user="stays") for n in range(3)], now=NOW)

    class Profiles:  # derived state joins the erasure
        name = "profiles"
        forgotten: list[str] = []

        def forget(self, user_id):
            self.forgotten.append(user_id)
            return 1

    profiles = Profiles()
    erasure = erase_user(store, "gone", derived=[profiles])
    assert (erasure.events, erasure.user, erasure.derived) == (5, True, {"profiles": 1})
    assert profiles.forgotten == ["gone"]
    assert store.count("gone") == 0 and not store.has_user("gone")
    assert store.count("stays") == 3 and store.has_user("stays")
    with catalog.engine.connect() as conn:
        assert conn.execute(select(schema.events.c.event_id).where(schema.events.c.user_id == "gone")).all() == []
    again = erase_user(store, "gone")
    assert (again.events, again.user) == (0, False)


def test_concurrent_batches_with_overlapping_ids_store_each_event_once_and_count_exactly(store):
    """Four writers, each on its own connection, send overlapping batches at once (a retried batch racing
    the original): SQLite's write lock is taken before the stored ids are read, so nothing fails or doubles."""
    starts = (0, 100, 200, 0)
    batches = [[event(n, listing=f"L{1 + n % 5}", minutes_ago=n % 50) for n in range(s, s + 300)] for s in starts]
    reports, errors = [], []
    barrier = threading.Barrier(len(batches))

    def send(batch):
        barrier.wait(timeout=30)
        try:
            reports.append(store.record(batch, now=NOW))
        except Exception as exc:  # noqa: BLE001 -- collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    unique = len({e.event_id for b in batches for e in b})
    assert store.count() == unique == 500
    assert sum(r.stored for r in reports) == unique
    assert sum(r.duplicates for r in reports) == 4 * 300 - unique
