"""The user simulator on the demo catalogue: seeded, valid events, position bias, tastes, sales, arrivals."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
from typer.testing import CliRunner

from catalog.store import Catalog
from marketsearch.cli import app
from personal.click_model import PositionBasedModel
from personal.sim_world import SimCatalog, content_words
from personal.simulator import PipelineSearch, SimConfig, Simulator, round_price, store_events
from personal.store import EventStore

START = dt.datetime(2022, 3, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def listings(demo_workspace):
    with Catalog(demo_workspace.db_url) as catalog:
        return [listing for batch in catalog.iter_listings() for listing in batch]


def run(listings, search=None, **config):
    simulator = Simulator(SimCatalog.from_listings(listings), SimConfig(start=START, **config), search=search)
    events = [e for session in simulator.run() for e in session]
    return simulator, events


def test_the_same_seed_gives_the_same_events_and_another_seed_others(listings):
    _, first = run(listings, users=40, days=10, seed=3)
    _, again = run(listings, users=40, days=10, seed=3)
    _, other = run(listings, users=40, days=10, seed=4)
    assert first == again and len(first) > 1000
    assert [e.listing_id for e in other[:200]] != [e.listing_id for e in first[:200]]
    assert {e.event_id.split("-")[0] for e in other} == {"sim4"}  # seeds never collide in one database


def test_every_simulated_event_passes_the_store_checks(listings, demo_workspace, tmp_path):
    shutil.copy(demo_workspace.db_path, tmp_path / "catalog.db")
    simulator = Simulator(SimCatalog.from_listings(listings), SimConfig(users=30, days=7, seed=1, start=START))
    with Catalog(tmp_path / "catalog.db") as catalog, EventStore(catalog) as store:
        totals = store_events(store, simulator.run(), batch_size=500)
        assert totals.rejected == Counter() and totals.duplicates == 0
        assert totals.stored == simulator.report.total_events == store.count()
        assert store.user_count() == len({e.user_id for b in store.iter_events() for e in b})


def test_events_fall_in_the_period_and_users_arrive_over_it(listings):
    simulator, events = run(listings, users=120, days=20, seed=0)
    times = [e.occurred_at for e in events]
    assert min(times) >= START and max(times) <= START + dt.timedelta(days=20)
    assert all(e.received_at >= e.occurred_at for e in events)
    first_seen = {}
    for e in sorted(events, key=lambda e: e.occurred_at):
        first_seen.setdefault(e.user_id, (e.occurred_at - START).total_seconds() / 86400)
    late = sum(day > 5 for day in first_seen.values())
    assert 0.2 * len(first_seen) < late < 0.7 * len(first_seen)  # half are there from day 0, half arrive later
    assert set(Counter(e.type for e in events)) == {"impression", "click", "view", "save", "contact_seller", "purchase"}


def shuffled_search(listings):
    """Every listing, in an order that depends on the words only: rank carries no relevance."""
    ids = [listing.id for listing in listings]

    def search(words, town, max_price):
        order = np.random.default_rng(sum(map(ord, words))).permutation(len(ids))
        return [ids[i] for i in order]

    return search


def test_clicks_are_position_biased(listings):
    """Click-through rate by rank on the page falls with the rank although the ranking is random (the click
    model examines the top of a page more)."""
    _, events = run(listings, search=shuffled_search(listings), users=150, days=20, seed=2)
    shown, clicked = Counter(), Counter()
    for e in events:
        if e.position is not None:
            rank = (e.position - 1) % 20 + 1
            (shown if e.type == "impression" else clicked if e.type == "click" else Counter())[rank] += 1
    ctr = {rank: clicked[rank] / shown[rank] for rank in shown}
    top, bottom = np.mean([ctr[r] for r in (1, 2, 3)]), np.mean([ctr[r] for r in range(11, 21)])
    assert top > 3 * bottom
    model = PositionBasedModel(eta=0.9)
    assert model.examination(np.array([1]))[0] == 1.0 and model.examination(np.array([10]))[0] < 0.2


def test_users_click_what_fits_their_hidden_taste(listings):
    """Among listings a user was shown, those in the user's favourite categories are clicked far more often."""
    simulator, events = run(listings, users=100, days=20, seed=5)
    catalog = simulator.catalog
    favourite = {t.user_id: set(t.categories) for t in simulator.tastes}
    rates = defaultdict(Counter)
    for e in events:
        if e.type in ("impression", "click"):
            fits = int(catalog.top[simulator.row_of[e.listing_id]] in favourite[e.user_id])
            rates[fits][e.type] += 1
    fit_ctr = rates[1]["click"] / rates[1]["impression"]
    other_ctr = rates[0]["click"] / max(1, rates[0]["impression"])
    assert fit_ctr > 2 * other_ctr


def test_a_bought_listing_leaves_and_is_bought_once(listings):
    simulator, events = run(listings, users=150, days=30, seed=6)
    purchases = [e for e in events if e.type == "purchase"]
    assert purchases and len({e.listing_id for e in purchases}) == len(purchases)
    sold_at = {e.listing_id: e.occurred_at for e in purchases}
    never = START + dt.timedelta(days=999)
    impressions = [e for e in events if e.type == "impression"]
    assert [e for e in impressions if e.occurred_at > sold_at.get(e.listing_id, never)] == []
    # popularity skew: a tenth of the listings gets a large share of the clicks
    clicks = np.sort(np.array(list(Counter(e.listing_id for e in events if e.type == "click").values())))[::-1]
    assert clicks[: max(1, len(listings) // 10)].sum() > 0.25 * clicks.sum()


def test_searches_use_buyer_words_and_log_the_served_ranking(listings):
    """With a search function, sessions search with words from listing titles and categories, and impressions
    carry the query id and the rank of what was served."""
    calls = []
    ranking = [listing.id for listing in listings]

    def search(words, town, max_price):
        calls.append((words, town, max_price))
        return ranking[len(words) % 7 :]  # any deterministic order, shifted so it depends on the words

    simulator, events = run(listings, search=search, users=60, days=10, seed=7)
    assert simulator.report.searches == len(calls) > 50 and simulator.report.browses > 0
    vocabulary = {w for listing in listings for w in content_words(listing.title + " " + listing.category)}
    assert all(set(words.split()) <= vocabulary for words, _, _ in calls)
    by_query = defaultdict(list)
    for e in events:
        if e.type == "impression" and e.query_id:
            by_query[e.query_id].append(e)
    assert 0 < len(by_query) <= len(calls)  # a search whose results are all sold shows nothing
    query_id, shown = next(iter(by_query.items()))
    assert len(query_id) == 32 and [e.position for e in shown] == list(range(1, len(shown) + 1))


def test_the_real_pipeline_can_be_the_users_search(searcher, listings):
    search = PipelineSearch(searcher)
    simulator, events = run(listings, search=search, users=15, days=5, seed=8)
    assert simulator.report.searches > 0 and len(search.cache) > 0
    words = next(w for (w, town, cap) in search.cache if town is None and cap is None)
    served = [hit.listing_id for hit in searcher.search(text=words, k=100).hits]
    assert search(words, None, None) == served
    shown = [e for e in events if e.type == "impression" and e.query_id]
    assert shown and all(e.listing_id in simulator.row_of for e in shown)
    assert any(e.query_id for e in events if e.type == "click")


def test_the_cli_writes_a_file_and_keeps_the_hidden_state_apart(demo_workspace, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(demo_workspace.root, workspace)
    out, hidden = tmp_path / "sim.jsonl", tmp_path / "hidden.json"
    args = ["simulate", "-w", str(workspace), "--users", "20", "--days", "5", "--seed", "2", "--search", "off"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--hidden-state", str(hidden), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    lines = out.read_text().splitlines()
    assert summary["events"] == len(lines) > 0 and summary["searches"] == 0
    assert set(json.loads(lines[0])) == {"event_id", "user_id", "listing_id", "type", "query_id", "position",
                                         "occurred_at", "received_at"}  # fmt: skip
    state = json.loads(hidden.read_text())
    assert len(state["users"]) == 20 and "categories" in state["users"][0]
    with Catalog(workspace / "catalog.db") as catalog, EventStore(catalog) as store:
        assert store.count() == 0  # --out: nothing went into the database

    result = CliRunner().invoke(app, [*args, "--json"])  # into the database, through the store's checks
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["stored"] == summary["events"] == len(lines) and summary["rejected"] == {}
    with Catalog(workspace / "catalog.db") as catalog:
        tables = set(catalog.engine.dialect.get_table_names(catalog.engine.connect()))
    assert not {name for name in tables if "sim" in name or "taste" in name}
    result = CliRunner().invoke(app, [*args, "--start", "2999-01-01"])
    assert result.exit_code == 2 and "in the future" in result.output


def test_price_caps_are_the_round_numbers_buyers_type():
    assert [round_price(x) for x in (0.4, 1, 1.1, 3, 7, 19, 20, 20.5, 480)] == [1, 1, 2, 5, 10, 20, 20, 50, 500]


def test_search_events_carry_the_query_id_the_pipeline_logged_features_under(searcher, listings, tmp_path):
    """The events of a simulated search join the feature log: their query id is the served search's, and the
    impressions are the logged candidates that ranked first."""
    from ranking.feature_log import FeatureLogger, log_files, read_feature_logs

    logger = FeatureLogger(tmp_path / "features")
    searcher.feature_logger, before = logger, searcher.feature_logger
    try:
        simulator, events = run(listings, search=PipelineSearch(searcher), users=15, days=5, seed=8)
    finally:
        searcher.feature_logger = before
    logged = read_feature_logs(log_files(tmp_path / "features"))
    candidates = defaultdict(set)
    for query_id, listing_id in zip(logged.query_ids, logged.listing_ids):
        candidates[query_id].add(listing_id)
    searched = [e for e in events if e.query_id]
    assert simulator.report.searches > 0 and searched
    assert all(e.listing_id in candidates[e.query_id] for e in searched)
