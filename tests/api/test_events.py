"""POST /events, GET /users/{id}/events and DELETE /users/{id} over the tiny catalogue (listings L1, L2, L3)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import String, Text, column, inspect, select, table

from api.event_schemas import MAX_BATCH
from personal.events import EVENT_TYPES
from tests.api.test_garbage import NASTY_VALUES, assert_handled


@pytest.fixture
def fake_catalog_url(database_url):
    """These routes store and read the catalogue: every test runs on SQLite and on PostgreSQL."""
    return database_url


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def event(n: int, user="u1", listing="L1", kind="click", seconds_ago: float | None = None, **extra) -> dict:
    when = _now() - dt.timedelta(seconds=seconds_ago if seconds_ago is not None else 1000 - n)
    return {"event_id": f"e{n}", "user_id": user, "listing_id": listing, "type": kind,
            "occurred_at": when.isoformat(), **extra}  # fmt: skip


@pytest.fixture(autouse=True)
def events_key(fake_client, api_key) -> dict[str, str]:
    """Every request of these tests carries an events:write key (DELETE /users passes an admin key instead)."""
    headers = api_key("events:write")
    fake_client.headers.update(headers)
    return headers


def test_a_batch_is_stored_and_read_back_newest_first(fake_client):
    batch = [
        event(1, kind="impression", query_id="a" * 32, position=1),
        event(2, kind="click", query_id="a" * 32, position=1),
        event(3, listing="L2", kind="save"),
    ]
    response = fake_client.post("/events", json={"events": batch})
    assert response.status_code == 200
    assert response.json() == {"received": 3, "stored": 3, "duplicates": 0, "rejected": []}

    history = fake_client.get("/users/u1/events").json()
    assert history["user_id"] == "u1" and history["count"] == 3 and history["next_cursor"] is None
    assert [e["event_id"] for e in history["events"]] == ["e3", "e2", "e1"]
    first = history["events"][2]
    assert [first[k] for k in ("type", "query_id", "position", "listing_id")] == ["impression", "a" * 32, 1, "L1"]
    assert dt.datetime.fromisoformat(first["occurred_at"]) == dt.datetime.fromisoformat(batch[0]["occurred_at"])
    received = dt.datetime.fromisoformat(first["received_at"])
    assert abs((received - _now()).total_seconds()) < 600  # stamped by the server, in UTC


def test_a_retried_batch_stores_nothing_twice(fake_client):
    batch = [event(n) for n in range(5)]
    assert fake_client.post("/events", json={"events": batch}).json()["stored"] == 5
    retry = fake_client.post("/events", json={"events": batch + [event(9)]}).json()
    assert (retry["stored"], retry["duplicates"], retry["rejected"]) == (1, 5, [])
    assert fake_client.get("/users/u1/events").json()["count"] == 6


def test_invalid_events_are_reported_one_by_one_and_the_valid_ones_stored(fake_client):
    future = (_now() + dt.timedelta(hours=2)).isoformat()
    batch = [
        event(0),
        event(1, listing="NOT-A-LISTING"),
        event(2, kind="bought"),
        {**event(3), "occurred_at": future},
        {**event(4), "event_id": "no spaces allowed"},
        {**event(5), "user_id": "../etc"},
        event(6, position=0),
        event(7, listing="L3", kind="purchase"),
    ]
    response = fake_client.post("/events", json={"events": batch})
    assert response.status_code == 200
    body = response.json()
    assert (body["received"], body["stored"], body["duplicates"]) == (8, 2, 0)
    assert [(r["index"], r["event_id"], r["reason"]) for r in body["rejected"]] == [
        (1, "e1", "unknown_listing"),
        (2, "e2", "unknown_type"),
        (3, "e3", "time_in_future"),
        (4, None, "invalid_event_id"),
        (5, "e5", "invalid_user_id"),
        (6, "e6", "invalid_position"),
    ]
    assert all(r["detail"] for r in body["rejected"])
    assert {e["event_id"] for e in fake_client.get("/users/u1/events").json()["events"]} == {"e0", "e7"}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"occurred_at": 1709290000}, "occurred_at"),  # seconds since 1970: JSON Schema says a string
        ({"position": "3"}, "position"),
        ({"event_id": 7}, "event_id"),
        ({"colour": "red"}, "colour"),
        ({"type": None}, "type"),
    ],
)
def test_a_malformed_batch_is_a_422_naming_the_event(fake_client, change, where):
    batch = [event(0), {**event(1), **change}]
    response = fake_client.post("/events", json={"events": batch})
    assert response.status_code == 422
    locs = [item["loc"] for item in response.json()["detail"]]
    assert ["body", "events", 1, where] in locs
    assert fake_client.get("/users/u1/events").json()["count"] == 0  # nothing of a malformed batch is stored


def test_an_oversized_batch_is_a_413_and_stores_nothing(fake_client):
    batch = [event(n, seconds_ago=5) for n in range(MAX_BATCH + 1)]
    response = fake_client.post("/events", json={"events": batch})
    assert response.status_code == 413
    assert "at most 1,000" in response.json()["detail"]
    assert fake_client.get("/users/u1/events").json()["count"] == 0
    full = fake_client.post("/events", json={"events": batch[:MAX_BATCH]})  # the largest batch is fine
    assert full.status_code == 200 and full.json()["stored"] == MAX_BATCH


def test_the_body_is_bounded_before_it_is_parsed(fake_client, fake_settings):
    padding = "x" * 200
    events = [{**event(n), "query_id": padding} for n in range(400)]  # ~110 kB: above the JSON limit, below events'
    body = json.dumps({"events": events}).encode()
    assert fake_settings.max_json_bytes < len(body) < fake_settings.max_events_bytes
    ok = fake_client.post("/events", content=body, headers={"content-type": "application/json"})
    assert ok.status_code == 200  # the ids are too long (per-event rejections), but the body was read
    assert {r["reason"] for r in ok.json()["rejected"]} == {"invalid_query_id"}

    huge = b'{"events": [' + b" " * fake_settings.max_events_bytes + b"]}"
    response = fake_client.post("/events", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_pages_of_a_user_history_follow_the_cursor(fake_client):
    fake_client.post("/events", json={"events": [event(n) for n in range(12)] + [event(50, user="u2")]})
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = fake_client.get("/users/u1/events", params=params).json()
        seen += [e["event_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"e{n}" for n in range(11, -1, -1)]
    assert fake_client.get("/users/nobody/events").json() == {
        "user_id": "nobody", "count": 0, "events": [], "next_cursor": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [
        "/users/u1/events?limit=501",
        "/users/u1/events?limit=0",
        "/users/u1/events?cursor=yesterday",
        "/users/u1/events?cursor=99999999999999999_e1",  # past year 9999
        "/users/" + "u" * 65 + "/events",
        "/users/bad%20id/events",
    ],
)
def test_bad_paging_parameters_and_user_ids_are_422(fake_client, path):
    assert fake_client.get(path).status_code == 422


def test_delete_user_leaves_nothing_of_the_user_in_the_database(fake_client, fake_state, api_key):
    admin = api_key("admin")
    user = "gone-user-7f3a"
    fake_client.post("/events", json={"events": [event(n, user=user, listing=f"L{1 + n % 3}") for n in range(20)]})
    fake_client.post("/events", json={"events": [event(100 + n, user="stays") for n in range(3)]})
    assert _rows_mentioning(fake_state.catalog, user)  # the check below can see the user's rows

    response = fake_client.delete(f"/users/{user}", headers=admin)
    assert response.status_code == 200
    assert response.json() == {"user_id": user, "erased_events": 20, "erased_user": True, "derived": {}}
    assert _rows_mentioning(fake_state.catalog, user) == []
    assert fake_client.get(f"/users/{user}/events").json()["count"] == 0
    assert fake_client.get("/users/stays/events").json()["count"] == 3
    again = fake_client.delete(f"/users/{user}", headers=admin).json()
    assert (again["erased_events"], again["erased_user"]) == (0, False)


def test_events_need_an_events_key_and_erasure_an_admin_key(fake_client, fake_state, api_key, events_key):
    del fake_client.headers["Authorization"]
    batch = {"events": [event(1)]}
    missing = fake_client.post("/events", json=batch)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "marketsearch keys create --scope events:write" in missing.json()["detail"]
    unknown = fake_client.post("/events", json=batch, headers={"Authorization": "Bearer ms_0123456789ab_" + "x" * 43})
    assert unknown.status_code == 401 and "invalid_token" in unknown.headers["WWW-Authenticate"]
    wrong_scope = fake_client.post("/events", json=batch, headers=api_key("listings:write"))
    assert wrong_scope.status_code == 403 and "needs events:write" in wrong_scope.json()["detail"]
    assert fake_client.get("/users/u1/events").json()["count"] == 0  # reads stay public; nothing was stored
    by_header = {"X-API-Key": events_key["Authorization"].removeprefix("Bearer ")}
    assert fake_client.post("/events", json=batch, headers=by_header).json()["stored"] == 1
    assert fake_client.post("/events", json={"events": [event(2)]}, headers=api_key("admin")).json()["stored"] == 1

    assert fake_client.delete("/users/u1").status_code == 401
    assert fake_client.delete("/users/u1", headers=events_key).status_code == 403
    assert fake_client.delete("/users/u1", headers=api_key("listings:write", seller="s1")).status_code == 403
    assert fake_client.get("/users/u1/events").json()["count"] == 2
    assert fake_client.delete("/users/u1", headers=api_key("admin")).json()["erased_events"] == 2


def test_a_revoked_key_is_refused_at_once(fake_client, fake_state, events_key):
    from catalog.api_keys import key_id_of, revoke_key

    assert fake_client.post("/events", json={"events": [event(1)]}).status_code == 200
    assert revoke_key(fake_state.catalog, key_id_of(events_key["Authorization"].removeprefix("Bearer ")))
    refused = fake_client.post("/events", json={"events": [event(2)]})
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def _rows_mentioning(catalog, text: str) -> list[tuple[str, str]]:
    """(table, column) of every stored text value, in every table of the database, that contains ``text``."""
    found = []
    with catalog.engine.connect() as conn:
        inspector = inspect(conn)
        for name in inspector.get_table_names():
            columns = [c["name"] for c in inspector.get_columns(name) if isinstance(c["type"], String | Text)]
            for column_name in columns:
                values = conn.execute(select(column(column_name)).select_from(table(name))).scalars()
                found += [(name, column_name) for value in values if isinstance(value, str) and text in value]
    return found


def test_nasty_values_in_every_event_field_are_answered_without_a_500(fake_client):
    """Every field of an otherwise valid event gets each nasty value (lone surrogates, NUL, huge numbers, a
    year-9999 time with a negative offset, ...): a 200 with the event rejected, or a 422, never a 5xx, and
    never a stored event that breaks the rules."""
    times = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:00", "2024-02-30T00:00:00Z", "2024-01-01"]
    fields = ["event_id", "user_id", "listing_id", "type", "occurred_at", "query_id", "position"]
    sent = 0
    for field in fields:
        for value in [*NASTY_VALUES, *times]:
            sent += 1
            body = json.dumps({"events": [{**event(sent), field: value}]})
            response = fake_client.post("/events", content=body.encode(), headers={"content-type": "application/json"})
            assert_handled(response)
            if response.status_code == 200:
                answer = response.json()
                assert answer["stored"] + len(answer["rejected"]) == 1
    stored = fake_client.get("/users/u1/events", params={"limit": 500}).json()["events"]
    assert all(e["listing_id"] in {"L1", "L2", "L3"} and e["type"] in EVENT_TYPES for e in stored)
