"""GET /users/{id}/recommendations, GET /listings/{id}/similar and DELETE /users/{id} with real recommenders
trained on simulated users of the demo catalogue."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from api.state import ServiceState, load_state
from catalog.store import Catalog
from core.workspace import Workspace
from recommend import folder as recs_folder
from recommend.data import epoch_seconds, load_items
from recommend.train import train_recommender
from tests.recommend.test_recommend import SPLIT, simulate_into


@pytest.fixture(scope="module")
def recs_state(indexed_workspace, trained_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("recs_api") / "ws"
    shutil.copytree(indexed_workspace.root, root)
    workspace = Workspace.at(root)
    simulate_into(workspace, users=60)
    with Catalog(workspace.db_url) as catalog:
        items = load_items(catalog, trained_model.fingerprint)
        model = train_recommender(catalog, items, epoch_seconds(SPLIT), label_days=4)
    recs_folder.save(model, workspace.recs_dir, trained_model.fingerprint)
    state = load_state(Settings(workspace=root))
    yield state
    state.close()


@pytest.fixture(scope="module")
def recs_client(recs_state):
    with TestClient(create_app(recs_state.settings, state=recs_state), raise_server_exceptions=False) as client:
        yield client


def known_user(state: ServiceState) -> str:
    return max(state.recommender.model.profiles.values(), key=lambda p: p.n_events).user_id


def test_a_known_user_gets_recommendations_with_reasons(recs_client, recs_state):
    user = known_user(recs_state)
    answer = recs_client.get(f"/users/{user}/recommendations", params={"k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["cold_start"] is False and [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    assert all(r["reason"] for r in body["results"])
    history = [r for r in body["results"] if r["reason_kind"] == "history"]
    assert all(r["reason"].startswith("because you ") and r["because_listing_id"] for r in history)
    bought = {recs_state.recommender.model.items.ids[r] for r in recs_state.recommender.model.profile(user).bought}
    assert not bought & {r["listing"]["id"] for r in body["results"]}


def test_an_unknown_user_is_a_cold_start_near_the_asked_location(recs_client, recs_state):
    model = recs_state.recommender.model
    town = max(model.by_town, key=lambda t: len(model.by_town[t]))
    body = recs_client.get("/users/brand-new-visitor/recommendations", params={"k": 3, "location": town}).json()
    assert body["cold_start"] is True and len(body["results"]) == 3
    assert all(town in r["listing"]["location"] for r in body["results"])
    assert all(r["reason"] in (f"popular near {town}", f"new near {town}") for r in body["results"])
    capped = recs_client.get("/users/brand-new-visitor/recommendations", params={"max_price": 20}).json()
    assert all(r["listing"]["price"] is not None and r["listing"]["price"] <= 20 for r in capped["results"])


def test_similar_listings(recs_client, recs_state):
    listing = recs_state.recommender.model.items.ids[0]
    body = recs_client.get(f"/listings/{listing}/similar", params={"k": 4}).json()
    assert body["listing_id"] == listing and len(body["results"]) == 4
    assert listing not in {r["listing"]["id"] for r in body["results"]}
    assert recs_client.get("/listings/no-such-listing/similar").status_code == 404


def test_listings_written_live_join_the_served_recommenders_and_sold_ones_leave(recs_client, recs_state):
    import dataclasses
    import time

    catalog, model = recs_state.catalog, recs_state.recommender.model
    source, sold = catalog.get_listings([i for i in model.items.ids if model.available[model.items.row_of[i]]][:2])
    created = dataclasses.replace(source, id="recs-live-1")  # same words and photos: the same vector
    catalog.upsert_listings([created, dataclasses.replace(sold, status="sold")])
    deadline = time.monotonic() + 60  # the search follower encodes it, then the recs follower takes it in
    while "recs-live-1" not in recs_state.recommender.model.items.row_of and time.monotonic() < deadline:
        time.sleep(0.2)
    followed = recs_state.recommender.model
    row = followed.items.row_of["recs-live-1"]
    assert row == len(model.items) and followed.items.ids[: row] == model.items.ids  # appended; rows keep meaning
    assert followed.is_new[row] and followed.pop[row] == 0 and followed.items.town[row] == (created.town or "")
    assert not followed.available[followed.items.row_of[sold.id]]
    assert recs_client.get("/health").json()["live"]["recs"]["items"] == len(followed.items)

    body = recs_client.get("/listings/recs-live-1/similar", params={"k": 3}).json()
    assert body["results"][0]["listing"]["id"] == source.id  # its twin, by the vector it was just given
    back = recs_client.get(f"/listings/{source.id}/similar", params={"k": 3}).json()
    assert back["results"][0]["listing"]["id"] == "recs-live-1"  # found by the exact search of the new rows
    near = recs_client.get("/users/brand-new-visitor/recommendations", params={
        "k": 50, "location": created.town, "category": created.category}).json()
    assert "recs-live-1" in {r["listing"]["id"] for r in near["results"]}
    user = known_user(recs_state)
    ids = {r["listing"]["id"] for r in recs_client.get(f"/users/{user}/recommendations", params={"k": 50}).json()[
        "results"]}
    assert sold.id not in ids


def test_erasing_a_user_removes_them_from_the_served_state_and_the_saved_folder(recs_client, recs_state):
    from catalog.api_keys import create_key

    admin = {"Authorization": f"Bearer {create_key(recs_state.catalog, 'admin')[1]}"}
    user = known_user(recs_state)
    assert recs_client.get(f"/users/{user}/recommendations").json()["cold_start"] is False
    erased = recs_client.delete(f"/users/{user}", headers=admin).json()
    assert erased["erased_events"] > 0 and erased["derived"] == {"recommendations": 2}
    assert recs_state.recommender.model.profile(user) is None
    other = known_user(recs_state)  # the check below can see a user who is there
    assert other.encode("utf-32-le") in (recs_state.workspace.recs_dir / "users.npz").read_bytes()
    for path in recs_state.workspace.recs_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()  # numpy stores strings as UTF-32; npz is an uncompressed zip
            assert user.encode() not in data and user.encode("utf-32-le") not in data, path
    assert recs_client.get(f"/users/{user}/recommendations").json()["cold_start"] is True
    assert recs_client.delete(f"/users/{user}", headers=admin).json()["derived"] == {"recommendations": 0}


def test_a_user_erased_through_another_process_is_forgotten_here_at_their_next_request(recs_client, recs_state):
    from catalog.api_keys import create_key

    # a second process of `serve --workers 2`: its own recommenders in memory, the same database
    other = load_state(Settings(workspace=recs_state.workspace.root, live_follow=False))
    try:
        with TestClient(create_app(other.settings, state=other)) as other_client:
            user = sorted(other.recommender.model.profiles.values(), key=lambda p: -p.n_events)[1].user_id
            before = other_client.get(f"/users/{user}/recommendations", params={"k": 20}).json()
            assert before["cold_start"] is False
            admin = {"Authorization": f"Bearer {create_key(recs_state.catalog, 'admin')[1]}"}
            assert recs_client.delete(f"/users/{user}", headers=admin).json()["erased_events"] > 0
            assert other.recommender.model.profile(user) is not None  # erasure could not reach this process
            after = other_client.get(f"/users/{user}/recommendations", params={"k": 20}).json()
            assert after["cold_start"] is True and other.recommender.model.profile(user) is None
    finally:
        other.close()


def test_without_trained_recommenders_the_routes_answer_503_with_the_fix(fake_client):
    answer = fake_client.get("/users/u1/recommendations")
    assert answer.status_code == 503 and "train-recs" in answer.json()["detail"]
    assert fake_client.get("/listings/L1/similar").status_code == 503
