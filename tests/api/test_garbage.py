"""Throw garbage at every endpoint: whatever comes in, the answer is a 4xx with a detail, never a 500."""

from __future__ import annotations

import json
import random

import pytest

from tests.api.conftest import jpeg_bytes

NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "\u202e\u0000evil",
    "../../../../etc/passwd",
    "%00",
    "%2e%2e%2f",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "🙂" * 300,
    "\ud800",
    "null",
    "NaN",
    "-0",
    "1e309",
    "9" * 400,
    "a" * 5000,
    "\n\r\t",
    "{}",
    "[]",
]
NASTY_VALUES = [
    None,
    True,
    -1,
    0,
    10**30,
    -1e308,
    3.5,
    [],
    {},
    [1, [2, [3]]],
    {"a": {"b": {"c": None}}},
    *NASTY_STRINGS,
]


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(6 if depth < 3 else 3)
    if kind == 0:
        return rng.choice(NASTY_VALUES)
    if kind == 1:
        return rng.choice(NASTY_STRINGS)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["query", "k", "filters", "sort", "rerank", "category", "min_price", "max_price", "location", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def random_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def assert_handled(response):
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        assert response.json()["detail"]


def test_random_json_bodies_at_text_search(client):
    rng = random.Random(0)
    for _ in range(150):
        body = random_json(rng)
        if rng.random() < 0.5 and isinstance(body, dict):
            body["query"] = rng.choice(NASTY_STRINGS + ["bike"])
        assert_handled(
            client.post("/search/text", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        )


def test_raw_bytes_and_wrong_content_types_at_text_search(fake_client):
    rng = random.Random(1)
    for content_type in [
        "application/json",
        "text/plain",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "image/jpeg",
        "",
        "application/json; charset=utf-16",
    ]:
        for n in (0, 1, 17, 1000):
            assert_handled(
                fake_client.post("/search/text", content=random_bytes(rng, n), headers={"Content-Type": content_type})
            )


def test_random_uploads_and_form_fields_at_image_search(client):
    rng = random.Random(2)
    good = jpeg_bytes()
    for i in range(80):
        if i % 3 == 0:
            data = good
        elif i % 3 == 1:
            data = random_bytes(rng, rng.randrange(1, 3000))
        else:  # a real JPEG with damage somewhere
            damaged = bytearray(good)
            for _ in range(rng.randrange(1, 20)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            data = bytes(damaged[: rng.randrange(10, len(damaged) + 1)])
        fields = {
            key: str(rng.choice(NASTY_VALUES)).encode("utf-8", "surrogatepass")
            for key in rng.sample(["text", "k", "sort", "rerank", "category", "min_price", "max_price", "location"], 3)
        }
        name = rng.choice(["a.jpg", "", "../../x.png", "\x00.gif", "ü" * 300])
        files = {"file": (name, data, rng.choice(["image/jpeg", "text/html", "application/octet-stream", ""]))}
        assert_handled(client.post("/search/image", files=files, data=fields))


def test_malformed_multipart_at_image_search(fake_client):
    rng = random.Random(3)
    for content_type in [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=x",
        "multipart/mixed; boundary=x",
        "image/jpeg",
    ]:
        for body in [
            b"",
            b"--x\r\n",
            b"--x--\r\n",
            random_bytes(rng, 500),
            b"--x\r\nContent-Disposition: form-data\r\n\r\nzz\r\n--x--\r\n",
        ]:
            assert_handled(fake_client.post("/search/image", content=body, headers={"Content-Type": content_type}))


@pytest.mark.parametrize("method", ["get", "post", "put", "delete", "patch"])
def test_weird_paths_and_methods(fake_client, method):
    for value in ["NOPE", "%00", "..%2F..%2Fcatalog.db", "a" * 300, "%F0%9F%99%82", "%FF%FE", "L1%20", ".", "~"]:
        for template in [
            "/listings/{}",
            "/images/{}",
            "/search/{}",
            "/{}",
            "/static/{}",
            "/categories/{}",
            "/health/{}",
            "/static/..%2F..%2F{}",
        ]:
            assert_handled(getattr(fake_client, method)(template.format(value)))


def test_query_strings_are_ignored_or_rejected_cleanly(fake_client):
    for path in ["/health", "/categories", "/listings/L1", "/images/I1", "/"]:
        assert_handled(fake_client.get(path, params={"k": "-1", "q": "\x00" * 10, "x": "🙂"}))
