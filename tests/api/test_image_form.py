"""POST /search/image: the multipart form fields next to the photo agree with the OpenAPI schema."""

from __future__ import annotations

import pytest

from tests.api.conftest import jpeg_bytes


def _search(client, data, files=None):
    return client.post("/search/image", data=data, files=files or {"file": ("a.jpg", jpeg_bytes(), "image/jpeg")})


@pytest.mark.parametrize("empty", ["null", ""])
def test_nullable_fields_take_null_as_not_given(fake_client, fake_state, fake_settings, empty):
    """The schema says k, rerank and the prices are nullable; multipart spells null as `null` (or nothing)."""
    fields = {"k": empty, "offset": empty, "rerank": empty, "min_price": empty, "max_price": empty}
    response = _search(fake_client, fields)
    assert response.status_code == 200, response.text
    call = fake_state.searcher.calls[-1]
    assert call["k"] == fake_settings.default_k and call["rerank"] is fake_settings.rerank_default
    assert call["offset"] == 0
    assert call["filters"].min_price is None and call["filters"].max_price is None


def test_form_strings_are_parsed(fake_client, fake_state):
    fields = {"k": "10", "offset": "20", "rerank": "false", "min_price": "5.5", "text": "null"}
    response = _search(fake_client, fields)
    assert response.status_code == 200, response.text
    assert response.json()["offset"] == 20
    call = fake_state.searcher.calls[-1]
    assert call["k"] == 10 and call["offset"] == 20 and call["rerank"] is False and call["filters"].min_price == 5.5
    assert call["text"] == "null"  # words are words


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"k": "true"}, "k"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "1001"}, "offset"),
        ({"rerank": "maybe"}, "rerank"),
        ({"min_price": "false"}, "min_price"),
        ({"max_price": "2e9"}, "max_price"),  # the schema's maximum, now also on the form field
        ({"text": "x" * 513}, "text"),
        ({"text": "\u200b\u200b"}, "text"),
        ({"location": "x" * 201}, "location"),
    ],
)
def test_invalid_form_fields_are_422(fake_client, fake_state, data, field):
    response = _search(fake_client, data)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"][0]["loc"]
    assert fake_state.searcher.calls == []


def test_a_field_given_twice_is_422(fake_client, fake_state):
    photo = ("file", ("a.jpg", jpeg_bytes(), "image/jpeg"))
    files = [photo, ("location", (None, "Leeds")), ("location", (None, "Bath"))]
    response = fake_client.post("/search/image", files=files)
    assert response.status_code == 422, response.text
    assert "more than once" in response.json()["detail"][0]["msg"]
    assert fake_state.searcher.calls == []


def test_multipart_without_a_boundary_is_422_not_400(fake_client):
    response = fake_client.post("/search/image", content=b"garbage", headers={"Content-Type": "multipart/form-data"})
    assert response.status_code == 422, response.text
    assert "could not be parsed" in response.json()["detail"][0]["msg"]


def test_upload_errors_are_422_in_the_documented_shape(fake_client):
    response = _search(fake_client, {}, files={"file": ("a.jpg", b"", "image/jpeg")})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "value_error" and error["loc"] == ["body"] and "empty" in error["msg"]
