"""Personalised search: simulated users search the demo catalogue through the pipeline (features logged), the
personal ranker learns from those searches joined with their events, and `/search/text` and `/search/image`
rank for a known `user_id` while every other request gets exactly today's ranking."""

from __future__ import annotations

import io
import shutil
from collections import defaultdict

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.config import Settings
from api.main import create_app
from api.state import load_state
from catalog.store import Catalog
from core.workspace import Workspace
from personal.sim_world import SimCatalog
from personal.simulator import PipelineSearch, SimConfig, Simulator, store_events
from personal.store import EventStore
from ranking.feature_log import FeatureLogger, log_files, read_feature_logs, training_data_from_logs
from ranking.reranker import Reranker
from recommend import folder as recs_folder
from recommend.data import GRADES, epoch_seconds, load_items, log_end
from recommend.personal_search import USER_FEATURES, user_columns
from recommend.train import train_recommender
from search.pipeline import Searcher
from tests.recommend.test_recommend import START

TRAINED: dict = {}  # the trained recommenders' summary (model.info)
QUERIES = ("sofa", "bike", "lamp", "chair", "table", "phone", "dress", "drill")


def base_ranker(catalog, logged) -> Reranker:
    """Today's re-ranker: trained on the logged searches, labelled by the events that carry their query id."""
    labels: dict[str, dict[str, int]] = defaultdict(dict)
    with catalog.engine.connect() as conn:
        for query_id, listing_id, kind in conn.exec_driver_sql(
                "SELECT query_id, listing_id, type FROM events WHERE query_id IS NOT NULL AND type != 'impression'"):
            labels[query_id][listing_id] = max(labels[query_id].get(listing_id, 0), GRADES[kind])
    X, y, group, _ = training_data_from_logs(logged, labels)
    return Reranker(n_estimators=40, log_every=0).fit(X, y, group)


@pytest.fixture(scope="module")
def personal_state(indexed_workspace, trained_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("personal_search") / "ws"
    shutil.copytree(indexed_workspace.root, root)
    workspace = Workspace.at(root)
    searcher = Searcher.from_workspace(workspace, load_ranker=False,
                                       feature_logger=FeatureLogger.for_workspace(workspace))
    with Catalog(workspace.db_url) as catalog, EventStore(catalog) as store:
        listings = [x for batch in catalog.iter_listings() for x in batch]
        simulator = Simulator(SimCatalog.from_listings(listings), SimConfig(users=50, days=14, seed=0, start=START),
                              search=PipelineSearch(searcher))
        store_events(store, simulator.run(), batch_size=1000)
        logged = read_feature_logs(log_files(workspace.logs_dir / "features"))
        base_ranker(catalog, logged).save(workspace.ranker_dir)
        items = load_items(catalog, trained_model.fingerprint)
        model = train_recommender(catalog, items, epoch_seconds(log_end(catalog)) + 1, label_days=4,
                                  search_log=logged)
    assert model.search_ranker is not None, model.info
    TRAINED.update(model.info)
    recs_folder.save(model, workspace.recs_dir, trained_model.fingerprint)
    model.search_ranker.save(workspace.personal_ranker_dir)
    state = load_state(Settings(workspace=root, rerank_default=True))
    assert state.searcher.personal_ranker is not None, state.ranker_error
    yield state
    state.close()


@pytest.fixture(scope="module")
def client(personal_state):
    with TestClient(create_app(personal_state.settings, state=personal_state), raise_server_exceptions=False) as c:
        yield c


def hits(client, query, **extra):
    answer = client.post("/search/text", json={"query": query, "k": 20, **extra})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return [h["listing"]["id"] for h in body["hits"]], body


def known_users(state, count=8):
    profiles = sorted(state.recommender.model.profiles.values(), key=lambda p: -p.n_events)
    return [p.user_id for p in profiles[:count]]


def test_no_user_unknown_user_and_user_without_history_get_exactly_todays_ranking(client, personal_state):
    for query in QUERIES:
        plain, body = hits(client, query)
        assert body["reranked"] is True and body["personalised"] is False
        for user in ("never-seen-user", None):
            same, body = hits(client, query, user_id=user)
            assert same == plain and body["personalised"] is False


def test_a_user_with_history_gets_the_personal_ranking(client, personal_state):
    changed = 0
    for user in known_users(personal_state):
        for query in QUERIES:
            plain, _ = hits(client, query)
            mine, body = hits(client, query, user_id=user)
            assert body["personalised"] is True and "personalise" in body["timings_ms"]
            changed += mine != plain
    assert changed > 0  # the user columns move something for someone


def test_the_training_summary_says_what_the_blend_and_the_personal_ranker_learned_from(personal_state):
    assert TRAINED["blend_training"]["users"] >= 10 and TRAINED["blend_training"]["rows"] > 0
    searches = TRAINED["search_ranker_training"]
    assert searches["searches"] >= 20 and searches["users"] <= searches["searches"] and searches["rows"] > 0


def test_user_columns_say_what_the_user_engaged_with(personal_state):
    model = personal_state.recommender.model
    profile = model.profile(known_users(personal_state, 1)[0])
    engaged = [model.items.ids[r] for r in profile.items[:5]]
    others = [i for i in model.items.ids if i not in set(model.items.ids[r] for r in profile.items)][:5]
    columns = user_columns(model, profile, engaged + others + ["not-a-listing"])
    seen = columns[:, USER_FEATURES.index("user_seen")]
    assert (seen[:5] > 0).all() and (seen[5:10] == 0).all() and np.isnan(columns[10]).all()
    content = columns[:, USER_FEATURES.index("user_content_max")]
    assert content[:5].mean() > content[5:10].mean()


def test_image_search_takes_the_user_id_form_field(client, personal_state):
    photo = io.BytesIO()
    Image.new("RGB", (96, 96), (180, 40, 40)).save(photo, format="PNG")
    user = known_users(personal_state, 1)[0]
    for fields, personalised in (({}, False), ({"user_id": user}, True), ({"user_id": "nobody-here"}, False)):
        answer = client.post("/search/image", files={"file": ("p.png", photo.getvalue(), "image/png")},
                             data={"k": "10", **fields})
        assert answer.status_code == 200, answer.text
        assert answer.json()["personalised"] is personalised
    bad = client.post("/search/text", json={"query": "sofa", "user_id": "no spaces allowed"})
    assert bad.status_code == 422


# -- the web page ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server_url(personal_state):
    import threading
    import time

    import uvicorn

    from tests.api.test_browser import _free_port

    port = _free_port()
    app = create_app(personal_state.settings, state=personal_state)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from tests.api.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not __import__("pathlib").Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (`make browser`)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def open_page_as(browser, server_url, user_id):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"localStorage.setItem('marketsearch.user_id', {user_id!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server_url + "/")
    return context, page, errors


def stored_events(state, user_id, kind):
    with state.catalog.engine.connect() as conn:
        return {row[0] for row in conn.exec_driver_sql(
            "SELECT listing_id FROM events WHERE user_id = ? AND type = ?", (user_id, kind))}


@pytest.mark.browser
def test_the_page_recommends_for_its_user_and_shows_similar_listings(browser, server_url, personal_state):
    import time

    user = known_users(personal_state, 1)[0]
    context, page, errors = open_page_as(browser, server_url, user)
    try:
        page.wait_for_selector("#for-you:not([hidden]) .card")
        shown = page.eval_on_selector_all("#for-you .card", "cards => cards.map(c => c.dataset.listingId)")
        served = [r["listing"]["id"] for r in TestClient(create_app(personal_state.settings, state=personal_state))
                  .get(f"/users/{user}/recommendations", params={"k": 8}).json()["results"]]
        assert shown == served and page.locator("#for-you .card-reason").count() == len(shown)
        deadline = time.monotonic() + 20  # the impressions are posted without waiting for them
        while not set(shown) <= stored_events(personal_state, user, "impression") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert set(shown) <= stored_events(personal_state, user, "impression")

        page.click("#for-you .card >> nth=0")
        page.wait_for_selector("#listing-dialog[open] #similar .card")
        similar = page.eval_on_selector_all("#similar .card", "cards => cards.map(c => c.dataset.listingId)")
        assert similar and shown[0] not in similar
    finally:
        context.close()
    assert errors == []


@pytest.mark.browser
def test_a_new_visitor_gets_popular_listings_and_the_page_sends_its_user_id_with_searches(browser, server_url):
    context, page, errors = open_page_as(browser, server_url, "brand-new-browser-user")
    try:
        page.wait_for_selector("#for-you:not([hidden]) .card")
        with page.expect_request(lambda r: r.url.endswith("/search/text")) as request:
            page.fill("#query", "chair")
            page.press("#query", "Enter")
        assert request.value.post_data_json["user_id"] == "brand-new-browser-user"
    finally:
        context.close()
    assert errors == []
