"""The recommenders on the demo catalogue with simulated users: real ALS, co-visitation, profiles and blend."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil

import numpy as np
import pytest

from catalog.store import Catalog
from core.workspace import Workspace
from personal.events import Event
from personal.sim_world import SimCatalog
from personal.simulator import SimConfig, Simulator, store_events
from personal.store import EventStore
from recommend import folder as recs_folder
from recommend.data import EventLog, epoch_seconds, load_event_log, load_items
from recommend.model import Filters
from recommend.train import fit_signals, train_recommender

START = dt.datetime(2022, 3, 1, tzinfo=dt.timezone.utc)
DAYS = 14
SPLIT = START + dt.timedelta(days=11)


def simulate_into(workspace: Workspace, users=80, days=DAYS, seed=0) -> None:
    with Catalog(workspace.db_url) as catalog, EventStore(catalog) as store:
        listings = [x for batch in catalog.iter_listings() for x in batch]
        simulator = Simulator(SimCatalog.from_listings(listings), SimConfig(users=users, days=days, seed=seed,
                                                                             start=START))
        store_events(store, simulator.run(), batch_size=1000)


@pytest.fixture(scope="module")
def fingerprint(trained_model):
    return trained_model.fingerprint


@pytest.fixture(scope="module")
def sim_workspace(trained_workspace, tmp_path_factory):
    root = tmp_path_factory.mktemp("recs") / "ws"
    shutil.copytree(trained_workspace.root, root)
    workspace = Workspace.at(root)
    simulate_into(workspace)
    return workspace


@pytest.fixture(scope="module")
def model(sim_workspace, fingerprint):
    with Catalog(sim_workspace.db_url) as catalog:
        return train_recommender(catalog, load_items(catalog, fingerprint), epoch_seconds(SPLIT), label_days=4)


@pytest.fixture(scope="module")
def items(sim_workspace, fingerprint):
    with Catalog(sim_workspace.db_url) as catalog:
        return load_items(catalog, fingerprint)


def planted_log(items, pairs, users_per_pair=12, start=START) -> EventLog:
    """Users who view listing a, then b, in one session, for each planted (a, b)."""
    users, listings, times = [], [], []
    t = epoch_seconds(start)
    for p, (a, b) in enumerate(pairs):
        for u in range(users_per_pair):
            for listing in (a, b):
                users.append(f"p{p}-u{u}")
                listings.append(listing)
                times.append(t)
                t += 60
    return EventLog(np.array(users, object), np.array(listings, object), np.zeros(len(users), np.int8),
                    np.array(times))


def test_co_visitation_and_als_find_a_planted_pattern(items):
    pairs = [(items.ids[i], items.ids[i + 1]) for i in range(0, 40, 2)]
    model = fit_signals(planted_log(items, pairs), items, epoch_seconds(START) + 86400, als_params={"factors": 16})
    for a, b in pairs:
        row = items.row_of[a]
        neighbours = model.covisit.indices[model.covisit.indptr[row]:model.covisit.indptr[row + 1]]
        assert [items.ids[n] for n in neighbours] == [b]  # viewed together, and with nothing else
    # a new user who viewed only a: ALS (folded in, not retrained) puts b first among the listings
    a, b = pairs[3]
    profile = model.fold_in("newcomer", [a], ["view"], [epoch_seconds(START)])
    als = model.item_factors @ profile.factors
    als[items.row_of[a]] = -np.inf
    assert items.ids[int(np.argmax(als))] == b


def test_sold_deleted_and_bought_listings_never_come_back(model, items):
    user = max(model.profiles.values(), key=lambda p: len(p.bought))
    assert len(user.bought), "the simulation has purchases"
    everything = {h.listing_id for h in model.recommend(user.user_id, k=len(items))}
    assert not everything & {items.ids[r] for r in user.bought}
    assert model.sold.any() and not everything & {items.ids[r] for r in np.flatnonzero(model.sold)}
    sold = {items.ids[r] for r in np.flatnonzero(model.sold)}
    for other in list(model.profiles)[:20]:
        assert not {h.listing_id for h in model.recommend(other, k=30)} & sold
    # status 'sold' in the catalogue
    marked = sorted(everything)[0]
    model.items.active[items.row_of[marked]] = False
    model.refresh_item_signals()
    try:
        assert marked not in {h.listing_id for h in model.recommend(user.user_id, k=len(items))}
    finally:
        model.items.active[:] = True
        model.refresh_item_signals()


def test_a_deleted_listing_is_not_served_after_loading(model, items, fingerprint, tmp_path):
    recs_folder.save(model, tmp_path / "recs", fingerprint)
    gone = items.ids[int(np.argmax(model.pop))]
    keep = [i for i, x in enumerate(items.ids) if x != gone]
    fewer = dataclasses.replace(items, ids=[items.ids[i] for i in keep], row_of={}, **{
        f.name: getattr(items, f.name)[keep] for f in dataclasses.fields(items)
        if f.name not in ("ids", "row_of")})
    loaded = recs_folder.load(tmp_path / "recs", fewer, fingerprint)
    assert all(gone not in {h.listing_id for h in loaded.recommend(u, k=50)} for u in list(loaded.profiles)[:20])


def test_a_cold_user_gets_what_is_popular_near_them(model, items):
    town = max(model.by_town, key=lambda t: len(model.by_town[t]))
    hits = model.recommend("never-seen", k=10, filters=None)
    assert hits and all(h.reason.kind in ("popular", "new") for h in hits)
    near = model.recommend("never-seen", k=5, filters=Filters(location=town))
    assert near and all(items.town[items.row_of[h.listing_id]] == town for h in near)
    assert all(h.reason.kind in ("popular_near", "new_near") and h.reason.town == town for h in near)
    # popular near them comes first among their town's listings
    local = [items.ids[r] for r in model.by_town[town][:3] if model.available[r]]
    assert set(local) & {h.listing_id for h in near}


def test_a_new_listing_is_reachable_from_its_content(model, items):
    new = np.flatnonzero(model.engaged == 0)
    assert len(new)
    row = int(new[0])
    # a user whose history is the new listing's nearest neighbours
    sims = items.vectors @ items.vectors[row]
    sims[row] = -np.inf
    history = [items.ids[r] for r in np.argsort(-sims)[:3]]
    profile = model.fold_in("fan", history, ["save"] * 3, [model.reference - 3600] * 3)
    assert row in model.candidates(profile, model.eligible(profile, None), profile.home)
    assert items.ids[row] in {h.listing_id for h in model.recommend("fan", k=len(items))}
    model.forget("fan")


def test_fold_in_changes_recommendations_without_retraining(model, items):
    user = next(p for p in model.profiles.values() if p.n_events >= 3)
    before = [h.listing_id for h in model.recommend(user.user_id, k=10)]
    factors_before = model.item_factors.copy()
    other_category = next(c for c in np.unique(items.top_category) if user.affinity.get("t:" + c, 0) == 0)
    rows = np.flatnonzero(items.top_category == other_category)[:5]
    old = load_log_of(model, user)
    model.fold_in(user.user_id, list(old[0]) + [items.ids[r] for r in rows], list(old[1]) + ["contact_seller"] * 5,
                  list(old[2]) + [model.reference] * 5)
    after = [h.listing_id for h in model.recommend(user.user_id, k=10)]
    assert after != before
    assert sum(items.top_category[items.row_of[x]] == other_category for x in after) > sum(
        items.top_category[items.row_of[x]] == other_category for x in before)
    assert np.array_equal(model.item_factors, factors_before)  # nothing else refitted


def load_log_of(model, profile):
    ids = [model.items.ids[r] for r in profile.items]
    return ids, ["view"] * len(ids), [model.reference - 86400] * len(ids)


def test_save_and_load_give_the_same_recommendations_and_a_mismatch_is_refused(model, items, fingerprint,
                                                                               tmp_path):
    recs_folder.save(model, tmp_path / "recs", fingerprint)
    loaded = recs_folder.load(tmp_path / "recs", items, fingerprint)
    for user in list(model.profiles)[:15] + ["nobody"]:
        expected = [h.listing_id for h in model.recommend(user, k=10)]
        assert [h.listing_id for h in loaded.recommend(user, k=10)] == expected
    with pytest.raises(recs_folder.RecsFolderError, match="vectors of model"):
        recs_folder.load(tmp_path / "recs", items, "0" * 64)
    other = dataclasses.replace(items, ids=[f"other-{i}" for i in items.ids], row_of={})
    with pytest.raises(recs_folder.RecsFolderError, match="another catalogue"):
        recs_folder.load(tmp_path / "recs", other, fingerprint)


def test_the_time_split_reads_nothing_after_it(sim_workspace, fingerprint, model, tmp_path):
    """Events after T (here: a flood of impressions and purchases of one listing) change nothing of a model
    fitted before T; the test fails if any reader of the log ignores the split."""
    root = tmp_path / "ws"
    shutil.copytree(sim_workspace.root, root)
    with Catalog(Workspace.at(root).db_url) as catalog, EventStore(catalog) as store:
        target = catalog.listing_ids()[0]
        later = SPLIT + dt.timedelta(hours=1)
        store.record([Event(f"future-{n}", f"fut-u{n % 7}", target, kind, later, received_at=later)
                      for n, kind in enumerate(["impression", "purchase", "save", "view"] * 50)],
                     now=later + dt.timedelta(minutes=1))
        assert len(load_event_log(catalog, since=SPLIT)) > 0
        again = train_recommender(catalog, load_items(catalog, fingerprint), epoch_seconds(SPLIT), label_days=4)
    for name in ("pop", "engaged", "impressions", "first_shown", "sold"):
        assert np.array_equal(getattr(again, name), getattr(model, name), equal_nan=True), name
    assert set(again.profiles) == set(model.profiles)


def test_train_recs_and_evaluate_recs_use_a_catalogue_named_by_url(sim_workspace, tmp_path, monkeypatch):
    """A server catalogue (`$MARKETSEARCH_DATABASE_URL`, compose.yaml's PostgreSQL) leaves no catalog.db in the
    workspace: the commands open the URL instead of refusing (here an SQLite file outside the workspace)."""
    from typer.testing import CliRunner

    from core.workspace import DATABASE_URL_ENV
    from marketsearch.cli import app

    root = tmp_path / "ws"
    shutil.copytree(sim_workspace.root, root)
    elsewhere = tmp_path / "server" / "catalog.db"
    elsewhere.parent.mkdir()
    (root / "catalog.db").rename(elsewhere)
    monkeypatch.setenv(DATABASE_URL_ENV, f"sqlite:///{elsewhere}")

    trained = CliRunner().invoke(app, ["train-recs", "-w", str(root), "--no-progress", "--factors", "8",
                                       "--iterations", "2", "--label-days", "3"])
    assert trained.exit_code == 0, trained.output
    assert recs_folder.read_manifest(Workspace.at(root).recs_dir)["format"] == recs_folder.FORMAT
    evaluated = CliRunner().invoke(app, ["evaluate-recs", "-w", str(root), "--no-progress", "--test-days", "3",
                                         "--max-users", "20"])
    assert evaluated.exit_code == 0, evaluated.output
    assert not (root / "catalog.db").exists()
    report = json.loads(next((root / "eval" / "recs").glob("*/report.json")).read_text())
    assert {"hybrid", "hybrid_exact"} <= set(report["scores"]["all users"])
    recall = report["candidate_recall"]["all users"]
    assert recall["users"] > 0 and 0 < recall["approximate"] <= 1 and 0 < recall["exact"] <= 1


def test_a_listing_index_with_a_tail_finds_what_a_scan_of_every_row_finds():
    from recommend.retrieval import ListingIndex

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(1_500, 16)).astype(np.float32)  # an IVF index over the first 1,200
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ListingIndex(vectors[:1_200], scan_share=1.0).with_tail(vectors[1_200:])
    allowed = rng.random(1_500) < 0.7
    queries = vectors[[5, 1_250, 1_499]] + 0.05 * rng.normal(size=(3, 16)).astype(np.float32)
    found = index.search(queries, 10, allowed)
    scores = np.where(allowed, queries @ vectors.T, -np.inf)
    expected = np.unique(np.argsort(-scores, axis=1)[:, :10])
    np.testing.assert_array_equal(found, expected)  # every list probed: exact over the index and the tail
    assert (found >= 1_200).any() and allowed[found].all()
    unfiltered = np.unique(np.argsort(-(queries @ vectors.T), axis=1)[:, :10])
    np.testing.assert_array_equal(index.search(queries, 10), unfiltered)


def test_a_listing_index_extended_past_its_tail_share_is_rebuilt_over_every_row():
    from recommend.retrieval import EXACT_BELOW, TAIL_REBUILD_SHARE, ListingIndex

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(3_000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ListingIndex(vectors[:1_000], scan_share=1.0)
    small = index.extended(vectors[:1_900])  # a tail under EXACT_BELOW rows: appended, the FAISS index shared
    assert (small.size, len(small.tail), small.index is index.index) == (1_000, 900, True)
    edited = vectors[:3_000].copy()
    edited[7] = -edited[7]  # an edited listing: the rebuilt index searches its new vector
    rebuilt = index.extended(edited)
    assert EXACT_BELOW <= 2_000 and 2_000 >= TAIL_REBUILD_SHARE * 1_000
    assert (rebuilt.size, len(rebuilt.tail), rebuilt.rows, rebuilt.index.ntotal) == (3_000, 0, 3_000, 3_000)
    assert rebuilt.scan_share == 1.0
    queries = edited[[7, 2_500]]
    expected = np.unique(np.argsort(-(queries @ edited.T), axis=1)[:, :10])
    np.testing.assert_array_equal(rebuilt.search(queries, 10), expected)  # every list probed: exact
    assert rebuilt.extended(edited).index is rebuilt.index  # nothing new: the same index, an empty tail
    with pytest.raises(ValueError, match="cannot extend"):
        rebuilt.extended(edited[:10])


def test_a_recommender_uses_given_indexes_only_when_they_cover_its_items(model):
    import copy

    from recommend.retrieval import ListingIndex

    vectors = model.items.vectors
    served = copy.copy(model)
    with pytest.raises(ValueError, match="rows"):
        served.use_indexes(ListingIndex(vectors[:-1]), model.factor_index)
    index = ListingIndex(vectors[:-2]).with_tail(vectors[-2:])
    assert served.use_indexes(index, model.factor_index) is served and served.vector_index is index
    if model.factor_index is not None:
        with pytest.raises(ValueError, match="factor"):
            copy.copy(model).use_indexes(index, None)
