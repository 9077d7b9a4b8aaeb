"""Per-key rate limits of the write routes: token buckets, 429 with Retry-After."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.rate_limits import Rate, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate():
    clock = Clock()
    buckets = TokenBuckets(Rate(per_minute=60, burst=3), clock)
    assert [buckets.take("k1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k1") == pytest.approx(1.0)  # one token a second
    assert buckets.take("k2") == 0.0  # every key has its own bucket
    clock.now += 0.5
    assert buckets.take("k1") == pytest.approx(0.5)
    clock.now += 0.5
    assert buckets.take("k1") == 0.0
    clock.now += 3600
    assert [buckets.take("k1", cost=3), buckets.take("k1")] == [0.0, pytest.approx(1.0)]  # refills up to the burst
    with pytest.raises(ValueError):
        buckets.take("k1", cost=4)


def test_writes_over_the_rate_are_429_with_retry_after_in_whole_seconds(fake_settings, fake_state, api_key):
    settings = fake_settings.model_copy(update={"write_rate_per_minute": 2, "write_burst": 2, "event_burst": 1})
    seller, other = api_key("listings:write", seller="s1"), api_key("admin")
    with TestClient(create_app(settings, state=fake_state), raise_server_exceptions=False) as client:
        fields = {"title": "Bike", "price": "5", "category": "Sports / Bikes"}
        created = client.post("/listings", data=fields, headers=seller).json()
        assert client.patch(f"/listings/{created['id']}", json={"price": 6}, headers=seller).status_code == 200
        count = fake_state.catalog.count()
        limited = client.post("/listings", data=fields, headers=seller)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 30  # a token every 30 s
        assert "rate" in limited.json()["detail"] and fake_state.catalog.count() == count
        assert client.patch(f"/listings/{created['id']}", json={"price": 7}, headers=other).status_code == 200
        assert client.post("/events", json={"events": []}, headers=other).status_code == 200
        events = client.post("/events", json={"events": []}, headers=other)
        assert events.status_code == 429 and events.headers["Retry-After"].isdigit()


def test_photos_have_their_own_bucket(fake_settings, fake_state, api_key):
    from tests.api.conftest import jpeg_bytes

    settings = fake_settings.model_copy(update={"photo_rate_per_minute": 1, "photo_burst": 10})
    seller = api_key("listings:write", seller="s1")
    fields = {"title": "Bike", "price": "5", "category": "Sports / Bikes"}
    photos = [("photos", (f"{n}.jpg", jpeg_bytes(), "image/jpeg")) for n in range(8)]
    with TestClient(create_app(settings, state=fake_state), raise_server_exceptions=False) as client:
        assert client.post("/listings", data=fields, files=photos, headers=seller).status_code == 201
        limited = client.post("/listings", data=fields, files=photos[:3], headers=seller)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 60
        assert client.post("/listings", data=fields, files=photos[:2], headers=seller).status_code == 201
