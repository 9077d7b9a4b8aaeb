"""POST /search/text: every invalid parameter is a 422 that names the field; valid edges pass through."""

from __future__ import annotations

import pytest

VALID = {"query": "oak table"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   \t\n "}, "query"),
        ({"query": "x" * 513}, "query"),
        ({}, "query"),
        ({"query": 42}, "query"),
        ({"query": ["a"]}, "query"),
        ({**VALID, "k": 0}, "k"),
        ({**VALID, "k": 101}, "k"),
        ({**VALID, "k": -5}, "k"),
        ({**VALID, "k": "ten"}, "k"),
        ({**VALID, "k": 2.5}, "k"),
        ({**VALID, "offset": -1}, "offset"),
        ({**VALID, "offset": 1001}, "offset"),
        ({**VALID, "offset": True}, "offset"),
        ({**VALID, "offset": "20"}, "offset"),
        ({**VALID, "sort": "cheapest"}, "sort"),
        ({**VALID, "rerank": "perhaps"}, "rerank"),
        ({**VALID, "filters": {"min_price": 50, "max_price": 10}}, "min_price"),
        ({**VALID, "filters": {"min_price": -1}}, "min_price"),
        ({**VALID, "filters": {"max_price": "cheap"}}, "max_price"),
        ({**VALID, "filters": {"colour": "red"}}, "colour"),
        ({**VALID, "filters": "Home"}, "filters"),
        ({**VALID, "filters": {"location": "x" * 201}}, "location"),
        ({**VALID, "page": 2}, "page"),
    ],
)
def test_invalid_parameters_are_422_naming_the_field(fake_client, fake_state, body, field):
    response = fake_client.post("/search/text", json=body)
    assert response.status_code == 422, response.text
    assert field in response.text
    assert fake_state.searcher.calls == []


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_prices_are_422(fake_client, literal):
    body = '{"query": "table", "filters": {"max_price": ' + literal + "}}"
    response = fake_client.post("/search/text", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("body", ["", "{", "[]", '"just a string"', "null", "\xff\xfe"])
def test_malformed_json_is_422(fake_client, body):
    response = fake_client.post(
        "/search/text", content=body.encode("latin-1"), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text


def test_inverted_price_range_message_says_how_to_fix(fake_client):
    response = fake_client.post("/search/text", json={**VALID, "filters": {"min_price": 50, "max_price": 10}})
    message = response.json()["detail"][0]["msg"]
    assert "min_price (50) is above max_price (10)" in message and "swap" in message


@pytest.mark.parametrize("k", [1, 100])
def test_k_edges_are_accepted(fake_client, fake_state, k):
    assert fake_client.post("/search/text", json={**VALID, "k": k}).status_code == 200
    assert fake_state.searcher.calls[-1]["k"] == k


@pytest.mark.parametrize(("offset", "expected"), [(None, 0), (0, 0), (20, 20), (1000, 1000)])
def test_offset_pages_through_the_ranking(fake_client, fake_state, offset, expected):
    response = fake_client.post("/search/text", json={**VALID, "k": 1, "offset": offset})
    assert response.status_code == 200, response.text
    assert fake_state.searcher.calls[-1]["offset"] == expected
    assert response.json()["offset"] == expected


def test_second_page_holds_the_next_hits(fake_client):
    first = fake_client.post("/search/text", json={**VALID, "k": 2}).json()
    second = fake_client.post("/search/text", json={**VALID, "k": 2, "offset": 2}).json()
    assert [h["rank"] for h in second["hits"]] == [3]  # the tiny catalogue has three listings
    assert {h["listing"]["id"] for h in first["hits"]}.isdisjoint(h["listing"]["id"] for h in second["hits"])


def test_query_of_exactly_512_characters_is_accepted(fake_client):
    assert fake_client.post("/search/text", json={"query": "y" * 512}).status_code == 200


def test_options_reach_the_pipeline_normalised(fake_client, fake_state, fake_settings):
    body = {
        "query": "  oak table  ",
        "sort": "price_desc",
        "rerank": False,
        "filters": {"category": "Home", "min_price": 5, "max_price": 5, "location": "   "},
    }
    assert fake_client.post("/search/text", json=body).status_code == 200
    call = fake_state.searcher.calls[-1]
    assert call["text"] == "oak table"
    assert call["image"] is None
    assert call["k"] == fake_settings.default_k
    assert call["sort"] == "price_desc" and call["rerank"] is False
    filters = call["filters"]
    assert (filters.category, filters.min_price, filters.max_price, filters.location) == ("Home", 5, 5, None)


def test_rerank_defaults_to_the_setting(fake_client, fake_state, fake_settings):
    fake_client.post("/search/text", json=VALID)
    assert fake_state.searcher.calls[-1]["rerank"] is fake_settings.rerank_default


def test_pipeline_value_error_is_422_not_500(fake_client, fake_state):
    fake_state.searcher.error = ValueError("category 'Nope' is not known; use GET /categories")
    response = fake_client.post("/search/text", json=VALID)
    assert response.status_code == 422
    assert "GET /categories" in response.json()["detail"][0]["msg"]  # the documented 422 shape, as a list


def test_json_body_over_the_limit_is_413(fake_client, fake_settings):
    body = {"query": "a", "filters": {"category": "x" * (fake_settings.max_json_bytes + 10)}}
    response = fake_client.post("/search/text", json=body)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


# -- found by schemathesis (tests/api/test_contract.py) and by hand -----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "caf\xe9"}',  # Latin-1, not UTF-8
        b"[" * 30_000,  # nested deeper than the JSON decoder's recursion limit
        b'{"query": "a", "k": ' + b"9" * 5000 + b"}",  # an integer too long to convert
    ],
    ids=["not-utf8", "too-deep", "huge-integer"],
)
def test_unparsable_json_is_422_not_400(fake_client, fake_state, body):
    response = fake_client.post("/search/text", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"] and "could not be parsed" in error["msg"]
    assert fake_state.searcher.calls == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**VALID, "k": True}, "k"),
        ({**VALID, "k": "10"}, "k"),
        ({**VALID, "rerank": 1}, "rerank"),
        ({**VALID, "rerank": "true"}, "rerank"),
        ({**VALID, "filters": {"min_price": False}}, "min_price"),
        ({**VALID, "filters": {"max_price": True}}, "max_price"),
        ({**VALID, "filters": {"max_price": "10"}}, "max_price"),
    ],
)
def test_json_numbers_and_booleans_are_strict(fake_client, fake_state, body, field):
    response = fake_client.post("/search/text", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"][0]["loc"]
    assert fake_state.searcher.calls == []


def test_integral_numbers_are_still_accepted(fake_client, fake_state):
    """JSON Schema's integer includes 10.0, and an integer is a number."""
    body = {**VALID, "k": 10.0, "rerank": False, "filters": {"min_price": 5, "max_price": 10}}
    assert fake_client.post("/search/text", json=body).status_code == 200
    call = fake_state.searcher.calls[-1]
    assert call["k"] == 10 and call["rerank"] is False
    assert (call["filters"].min_price, call["filters"].max_price) == (5.0, 10.0)


@pytest.mark.parametrize("query", ["\u200b\u200b", "\x00", "\u200b \ufeff\u2060", "\x07\x1b", "\u202e\u200e", "\u00ad"])
def test_query_of_only_invisible_characters_is_422(fake_client, fake_state, query):
    response = fake_client.post("/search/text", json={"query": query})
    assert response.status_code == 422, response.text
    assert "no visible characters" in response.json()["detail"][0]["msg"]
    assert fake_state.searcher.calls == []


def test_query_with_visible_characters_and_invisible_ones_is_accepted(fake_client):
    assert fake_client.post("/search/text", json={"query": "oak\u200b table"}).status_code == 200
