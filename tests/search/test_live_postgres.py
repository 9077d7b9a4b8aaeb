"""The live catalogue on PostgreSQL (issue 16): the follower, compaction and the stale-delete guard on a
catalogue copied onto the test session's PostgreSQL server, with two write transactions interleaved so that
a lower change-log seq commits after a higher one."""

from __future__ import annotations

import datetime
import threading

import pytest

from catalog.models import Listing
from catalog.store import Catalog
from index.compaction import compact
from search.live import LiveFollower
from search.pipeline import Searcher
from tests.api.test_live_search import assert_a_process_behind_the_log_serves_no_stale_delete
from tests.fixtures.postgres import held_before_commit

pytestmark = pytest.mark.postgres


def _listing(listing_id: str, word: str) -> Listing:
    return Listing(
        id=listing_id, title=f"{word} garden chair", description="A sturdy wooden chair for the garden.",
        price=25.0, category="Home & Garden / Garden / Furniture",
        category_levels=("Home & Garden", "Garden", "Furniture"), top_category="Home & Garden", town="Leeds",
        county="West Yorkshire", location="Leeds, West Yorkshire", created_at=datetime.date(2024, 5, 1),
        seller_id="s1",
    )


SLOW, FAST = _listing("live-slow", "zorblaxian"), _listing("live-fast", "quuxified")


def _found(searcher: Searcher, listing: Listing) -> bool:
    return listing.id in [hit.listing_id for hit in searcher.search(listing.title.split()[0], k=5, rerank=False).hits]


@pytest.fixture
def live(postgres_workspace):
    searcher = Searcher.from_workspace(postgres_workspace, load_ranker=False)
    follower = LiveFollower(searcher, postgres_workspace, compaction=False)
    yield searcher, follower
    follower.stop()


def test_a_listing_whose_seq_commits_after_a_higher_one_is_applied(live, postgres_workspace):
    searcher, follower = live
    url = postgres_workspace.db_url
    with held_before_commit(url, lambda catalog: catalog.upsert_listings([SLOW])):
        with Catalog(url) as catalog:
            catalog.upsert_listings([FAST])  # the next seq, committed first
        follower.poll()
        assert _found(searcher, FAST) and not _found(searcher, SLOW)
    follower.poll()
    assert _found(searcher, SLOW)  # a follower that had moved past FAST's seq would never apply it
    assert follower.status()["settled_seq"] == follower.status()["head_seq"]


def test_compaction_waits_for_a_write_in_flight_and_a_fresh_process_misses_nothing(postgres_workspace):
    searcher = Searcher.from_workspace(postgres_workspace, load_ranker=False)
    url = postgres_workspace.db_url
    reports = []
    with held_before_commit(url, lambda catalog: catalog.upsert_listings([SLOW])):
        with Catalog(url) as catalog:
            catalog.upsert_listings([FAST])
        compaction = threading.Thread(target=lambda: reports.append(compact(postgres_workspace, searcher.model)))
        compaction.start()
        compaction.join(5)  # its checkpoint may not pass SLOW's seq while SLOW is in flight: it waits for it
    compaction.join(600)
    with Catalog(url) as catalog:
        head = catalog.last_change()
    assert reports and reports[0].published and reports[0].checkpoint == head

    fresh = Searcher.from_workspace(postgres_workspace, load_ranker=False)  # starts at the set's checkpoint
    follower = LiveFollower(fresh, postgres_workspace, compaction=False)
    try:
        follower.catch_up()
        assert _found(fresh, FAST) and _found(fresh, SLOW)
    finally:
        follower.stop()


def test_every_follower_converges_after_a_compaction(postgres_workspace):
    searchers = [Searcher.from_workspace(postgres_workspace, load_ranker=False) for _ in range(2)]
    followers = [LiveFollower(s, postgres_workspace, compaction=False) for s in searchers]
    try:
        with Catalog(postgres_workspace.db_url) as catalog:
            catalog.upsert_listings([FAST])
            gone = catalog.listing_ids()[0]
            catalog.delete_listing(gone)
        for follower in followers:
            follower.poll()
        report = compact(postgres_workspace, searchers[0].model)
        assert report.published
        for searcher, follower in zip(searchers, followers):
            follower.poll()
            assert searcher.index_version == report.index_set and len(searcher.snapshot.delta) == 0
            assert FAST.id in searcher.vector_index and gone not in searcher.vector_index
            assert _found(searcher, FAST)
    finally:
        for follower in followers:
            follower.stop()


def test_a_process_behind_the_log_serves_no_stale_delete(postgres_workspace):
    assert_a_process_behind_the_log_serves_no_stale_delete(postgres_workspace)
