"""The listing write routes over the tiny catalogue (listings L1, L2 from a batch ingest, no seller): create, edit,
sell, delete, photos, validation, idempotency, keys and seller ownership."""

from __future__ import annotations

import io
import logging
import threading

import pytest
from PIL import Image

from catalog.listing_writes import MAX_PHOTOS
from tests.api.conftest import jpeg_bytes

FIELDS = {
    "title": "Oak dining table | in Leeds, West Yorkshire | Gumtree",
    "description": "Seats six",
    "price": "£120.50",
    "category": "Home & Garden / Furniture / Tables",
    "location": "Leeds, West Yorkshire",
}


@pytest.fixture
def seller(api_key) -> dict[str, str]:
    return api_key("listings:write", seller="s1")


def photo_files(*colors, name="p.jpg") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", (name, jpeg_bytes((60, 40), color), "image/jpeg")) for color in colors]


def changes_after(catalog, seq: int) -> list[tuple[str, str]]:
    return [(listing_id, op) for _, listing_id, op in catalog.changes_since(seq)]


def files_on_disk(workspace) -> set[str]:
    return {path.name for path in workspace.images_dir.iterdir()}


def test_a_created_listing_is_cleaned_owned_logged_and_readable(fake_client, fake_state, seller):
    seq = fake_state.catalog.last_change()
    photos = photo_files((200, 10, 10), (10, 200, 10))
    response = fake_client.post("/listings", data=FIELDS, files=photos, headers=seller)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["title"], body["price"], body["top_category"]) == ("Oak dining table", 120.5, "Home & Garden")
    assert (body["town"], body["county"]) == ("Leeds", "West Yorkshire")
    assert (body["status"], body["seller_id"]) == ("active", "s1")
    assert len(body["photos"]) == 2 and all(p["width"] == 256 for p in body["photos"])
    assert fake_client.get(f"/listings/{body['id']}").json() == body
    photo = fake_client.get(body["photos"][0]["url"])
    assert photo.status_code == 200 and Image.open(io.BytesIO(photo.content)).size == (256, 256)
    assert changes_after(fake_state.catalog, seq) == [(body["id"], "upsert")]


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [("price", "ten pounds", "bad_price"), ("price", "-3", "bad_price"), ("category", "/", "bad_category"),
     ("title", " | Gumtree", "missing_title")],
)  # fmt: skip
def test_a_bad_field_is_a_422_naming_the_field_and_the_rule(fake_client, fake_state, seller, field, value, rule):
    seq, files = fake_state.catalog.last_change(), files_on_disk(fake_state.workspace)
    data = {**FIELDS, field: value}
    response = fake_client.post("/listings", data=data, files=photo_files((1, 2, 3)), headers=seller)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", field], rule) and error["msg"]
    assert fake_state.catalog.count() == 3 and fake_state.catalog.last_change() == seq
    assert files_on_disk(fake_state.workspace) == files


def test_a_missing_required_field_is_a_422(fake_client, seller):
    response = fake_client.post("/listings", data={"title": "Bike", "price": "5"}, headers=seller)
    assert response.status_code == 422
    assert ["body", "category"] in [e["loc"] for e in response.json()["detail"]]


@pytest.mark.parametrize(
    ("photo", "status", "words"),
    [
        (b"%PDF-1.4 not a photo", 415, "not an image we can read"),
        (jpeg_bytes((64, 48))[:300], 422, "truncated or corrupt"),
        (jpeg_bytes((1200, 1000)), 413, "pixels"),  # the fake settings allow 1,000,000 pixels
        (jpeg_bytes((900, 20)), 422, "far too wide"),
        (b"", 422, "empty"),
    ],
)
def test_a_bad_photo_gets_the_search_uploads_answer_and_nothing_is_written(
    fake_client, fake_state, seller, photo, status, words
):
    seq, files = fake_state.catalog.last_change(), files_on_disk(fake_state.workspace)
    good = photo_files((9, 9, 9))[0]
    bad = ("photos", ("bad.jpg", photo, "image/jpeg"))
    response = fake_client.post("/listings", data=FIELDS, files=[good, bad], headers=seller)
    assert response.status_code == status, response.text
    assert words in response.text
    if status != 422 or photo:
        assert "photo 2 (bad.jpg)" in response.text
    assert fake_state.catalog.count() == 3 and fake_state.catalog.last_change() == seq
    assert files_on_disk(fake_state.workspace) == files


def test_a_created_listing_decodes_each_photo_once(fake_client, seller, monkeypatch):
    import api.uploads
    import catalog.images

    decoded = []
    real = catalog.images.decode_photo

    def counting(image, config):
        decoded.append(image.size)
        return real(image, config)

    monkeypatch.setattr(catalog.images, "decode_photo", counting)
    monkeypatch.setattr(api.uploads, "decode_photo", counting)
    response = fake_client.post("/listings", data=FIELDS, files=photo_files((200, 10, 10), (10, 200, 10)),
                                headers=seller)
    assert response.status_code == 201, response.text
    assert decoded == [(60, 40), (60, 40)]


def test_more_than_ten_photos_are_refused(fake_client, fake_state, seller):
    response = fake_client.post("/listings", data=FIELDS, files=photo_files(*[(n, 0, 0) for n in range(11)]),
                                headers=seller)  # fmt: skip
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "photos"]
    assert fake_state.catalog.count() == 3


def test_a_retried_create_is_answered_from_its_idempotency_key(fake_client, fake_state, seller):
    headers = {**seller, "Idempotency-Key": "sofa-7f3a"}
    first = fake_client.post("/listings", data=FIELDS, files=photo_files((5, 5, 5)), headers=headers)
    assert first.status_code == 201 and "Idempotent-Replay" not in first.headers
    count, seq = fake_state.catalog.count(), fake_state.catalog.last_change()
    files = files_on_disk(fake_state.workspace)
    retry = fake_client.post("/listings", data=FIELDS, files=photo_files((5, 5, 5)), headers=headers)
    assert retry.status_code == 201 and retry.headers["Idempotent-Replay"] == "true"
    assert retry.json() == first.json()
    assert (fake_state.catalog.count(), fake_state.catalog.last_change()) == (count, seq)
    assert files_on_disk(fake_state.workspace) == files

    other = fake_client.post("/listings", data={**FIELDS, "price": "99"}, files=photo_files((5, 5, 5)), headers=headers)
    assert other.status_code == 422
    (error,) = other.json()["detail"]
    assert (error["loc"], error["type"]) == (["header", "Idempotency-Key"], "idempotency_key_reused")
    assert fake_state.catalog.count() == count


def test_edit_and_sell_through_patch(fake_client, fake_state, seller):
    listing = fake_client.post("/listings", data=FIELDS, headers=seller).json()
    seq = fake_state.catalog.last_change()
    edited = fake_client.patch(f"/listings/{listing['id']}", json={"price": 99.5, "title": "Oak table"}, headers=seller)
    assert edited.status_code == 200 and (edited.json()["price"], edited.json()["title"]) == (99.5, "Oak table")
    sold = fake_client.patch(f"/listings/{listing['id']}", json={"status": "sold"}, headers=seller)
    assert sold.json()["status"] == "sold" and fake_client.get(f"/listings/{listing['id']}").json()["status"] == "sold"
    assert changes_after(fake_state.catalog, seq) == [(listing["id"], "upsert")] * 2

    bad = fake_client.patch(f"/listings/{listing['id']}", json={"price": "1.234"}, headers=seller)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "price"]
    assert bad.json()["detail"][0]["type"] == "bad_price"
    assert fake_client.patch(f"/listings/{listing['id']}", json={}, headers=seller).status_code == 422
    assert fake_client.patch(f"/listings/{listing['id']}", json={"status": "gone"}, headers=seller).status_code == 422
    assert fake_client.patch("/listings/nope", json={"price": 1}, headers=seller).status_code == 404
    assert len(changes_after(fake_state.catalog, seq)) == 2


def test_delete_a_listing_and_add_and_remove_photos(fake_client, fake_state, seller):
    listing = fake_client.post("/listings", data=FIELDS, headers=seller).json()
    seq = fake_state.catalog.last_change()
    added = fake_client.post(f"/listings/{listing['id']}/photos", files={"photo": ("a.png", jpeg_bytes(), "image/png")},
                             headers=seller)  # fmt: skip
    assert added.status_code == 201 and len(added.json()["photos"]) == 1
    image_id = added.json()["photos"][0]["id"]
    assert fake_client.get(f"/images/{image_id}").status_code == 200
    gone = fake_client.delete(f"/listings/{listing['id']}/photos/{image_id}", headers=seller)
    assert gone.status_code == 204 and gone.content == b""
    assert fake_client.get(f"/images/{image_id}").status_code == 404
    assert fake_client.delete(f"/listings/{listing['id']}/photos/{image_id}", headers=seller).status_code == 404
    bad = fake_client.post(f"/listings/{listing['id']}/photos", files={"photo": ("x.txt", b"hello", "text/plain")},
                           headers=seller)  # fmt: skip
    assert bad.status_code == 415 and fake_client.get(f"/listings/{listing['id']}").json()["photos"] == []

    deleted = fake_client.delete(f"/listings/{listing['id']}", headers=seller)
    assert deleted.status_code == 204
    assert fake_client.get(f"/listings/{listing['id']}").status_code == 404
    assert fake_client.delete(f"/listings/{listing['id']}", headers=seller).status_code == 404
    assert changes_after(fake_state.catalog, seq) == [(listing["id"], "upsert")] * 2 + [(listing["id"], "delete")]


def test_writes_need_a_listings_key_and_a_seller_changes_only_its_own(fake_client, fake_state, api_key, seller):
    assert fake_client.post("/listings", data=FIELDS).status_code == 401
    assert fake_client.post("/listings", data=FIELDS, headers=api_key("events:write")).status_code == 403
    own = fake_client.post("/listings", data=FIELDS, headers=seller).json()["id"]
    other = api_key("listings:write", seller="s2")
    seq = fake_state.catalog.last_change()
    for listing_id in (own, "L1"):  # another seller's listing, and a batch-ingested one
        assert fake_client.patch(f"/listings/{listing_id}", json={"price": 1}, headers=other).status_code == 403
        assert fake_client.delete(f"/listings/{listing_id}", headers=other).status_code == 403
        photo = {"photo": ("a.jpg", jpeg_bytes(), "image/jpeg")}
        assert fake_client.post(f"/listings/{listing_id}/photos", files=photo, headers=other).status_code == 403
    assert fake_client.delete("/listings/L1/photos/I1", headers=other).status_code == 403
    assert fake_client.patch(f"/listings/{own}", json={"price": 1}).status_code == 401
    assert fake_state.catalog.last_change() == seq
    assert fake_client.patch("/listings/L1", json={"price": 1}, headers=api_key("admin")).status_code == 200


def test_keys_never_reach_the_logs(fake_client, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    good = api_key("listings:write", seller="s1")
    secret = good["Authorization"].removeprefix("Bearer ")
    assert fake_client.post("/listings", data=FIELDS, files=photo_files((1, 1, 1)), headers=good).status_code == 201
    assert fake_client.post("/listings", data={**FIELDS, "price": "x"}, headers=good).status_code == 422
    assert fake_client.post("/events", json={"events": []}, headers=good).status_code == 403
    forged = secret[:-4] + "AAAA"
    assert fake_client.post("/listings", data=FIELDS, headers={"X-API-Key": forged}).status_code == 401
    assert caplog.records  # the requests were logged (httpx and our loggers), the keys were not
    # ms_<key id>_<secret>: the secret (token_urlsafe, which may itself contain "_") is everything after the id
    for key in (secret, forged):
        assert key.split("_", 2)[2] not in caplog.text


def test_concurrent_creates_from_two_threads_all_succeed(fake_client, fake_state, seller):
    statuses: list[int] = []

    def create(n: int) -> None:
        for i in range(4):
            headers = {**seller, "Idempotency-Key": f"t{n}-{i}"}
            statuses.append(fake_client.post("/listings", data=FIELDS, headers=headers).status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [201] * 8
    assert fake_state.catalog.count() == 3 + 8


def test_at_most_ten_photos_through_add_photo(fake_client, seller):
    listing = fake_client.post("/listings", data=FIELDS, files=photo_files(*[(n, 1, 1) for n in range(MAX_PHOTOS)]),
                               headers=seller).json()  # fmt: skip
    assert len(listing["photos"]) == MAX_PHOTOS
    photo = {"photo": ("a.jpg", jpeg_bytes(), "image/jpeg")}
    extra = fake_client.post(f"/listings/{listing['id']}/photos", files=photo, headers=seller)
    assert extra.status_code == 422 and "has 10 photos already" in extra.text
    assert len(fake_client.get(f"/listings/{listing['id']}").json()["photos"]) == MAX_PHOTOS


def test_a_405_allows_every_method_of_the_path(fake_client):
    """GET, PATCH and DELETE /listings/{id} are routes of two routers; Starlette would name only the first's."""
    response = fake_client.request("PUT", "/listings/L1")
    assert response.status_code == 405 and response.headers["Allow"] == "DELETE, GET, PATCH"
    assert fake_client.request("PUT", "/listings").headers["Allow"] == "POST"
