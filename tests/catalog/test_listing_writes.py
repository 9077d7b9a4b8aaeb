"""Listing writes (catalog/listing_writes.py): ingest's cleaning, the change log, photo files, ownership,
idempotency and concurrent writers, on a real SQLite workspace."""

from __future__ import annotations

import io
import threading

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from catalog import schema
from catalog.images import ImageCleaningConfig, ImageRejected, clean_image
from catalog.labels import LabelEncoder
from catalog.listing_writes import (
    MAX_PHOTOS,
    IdempotencyClaim,
    IdempotencyKeyReused,
    InvalidField,
    ListingNotFound,
    ListingWriter,
    NotTheSeller,
    PhotoNotFound,
    TooManyPhotos,
    clean_upload,
)
from catalog.models import Listing
from catalog.store import Catalog
from core.workspace import Workspace

CONFIG = ImageCleaningConfig(size=64)
FIELDS = {
    "title": "Oak table | in Leeds, West Yorkshire | Gumtree",
    "description": "Solid  oak,\nseats six",
    "price": "£1,250.00",
    "category": "Home & Garden / Dining / Tables",
    "location": "Leeds, West Yorkshire",
}


def photo_bytes(size=(80, 40), color=(200, 40, 40), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    ws = Workspace.at(tmp_path / "ws")
    ws.ensure()
    LabelEncoder(["Home & Garden"]).to_json(ws.labels_path)
    return ws


@pytest.fixture
def catalog(workspace):
    catalog = Catalog(workspace.db_url, root=workspace.root)
    batch = Listing("B1", "Batch sofa", "", 10.0, "Home & Garden / Sofas", ("Home & Garden", "Sofas"),
                    "Home & Garden", "Leeds", None, "Leeds", None)  # fmt: skip
    catalog.upsert_listings([batch])
    yield catalog
    catalog.close()


@pytest.fixture
def writer(catalog, workspace):
    writer = ListingWriter(catalog, workspace, CONFIG)
    yield writer
    writer.close()


def changes_after(catalog: Catalog, seq: int) -> list[tuple[str, str]]:
    return [(listing_id, op) for _, listing_id, op in catalog.changes_since(seq)]


def image_ids_on_disk(workspace: Workspace) -> set[str]:
    return {path.stem for path in workspace.images_dir.glob("*.jpg")}


def test_a_created_listing_is_cleaned_like_ingest_owned_by_its_seller_and_logged(writer, catalog, workspace):
    seq = catalog.last_change()
    created = writer.create(FIELDS, [clean_upload(photo_bytes(), CONFIG)], seller="s1")
    stored = catalog.get_listing(created.listing.id)
    assert stored == created.listing
    assert (stored.title, stored.description, stored.price) == ("Oak table", "Solid oak, seats six", 1250.0)
    assert (stored.category_levels, stored.top_category) == (("Home & Garden", "Dining", "Tables"), "Home & Garden")
    assert (stored.town, stored.county, stored.status, stored.seller_id) == ("Leeds", "West Yorkshire", "active", "s1")
    assert len(stored.id) == 32 and stored.created_at is not None
    (image,) = created.images
    assert stored.image_ids == (image.id,) and catalog.image_path(image.id).is_file()
    assert catalog.get_image(image.id).path == f"images/{image.id}.jpg"
    assert changes_after(catalog, seq) == [(stored.id, "upsert")]


def test_an_uploaded_photo_is_stored_as_the_same_bytes_ingest_makes_of_it(writer, catalog, tmp_path):
    data = photo_bytes((90, 30), (10, 160, 90), "JPEG")
    source = tmp_path / "source.jpg"
    source.write_bytes(data)
    ingested = clean_image(source, tmp_path / "ingested.jpg", CONFIG)
    created = writer.create(FIELDS, [clean_upload(data, CONFIG)])
    stored = catalog.image_path(created.images[0].id)
    assert stored.read_bytes() == (tmp_path / "ingested.jpg").read_bytes()
    row_key = _image_column(catalog, created.images[0].id, "source_key")
    assert row_key == ingested.source_key


def _image_column(catalog, image_id, name):
    with catalog.engine.connect() as conn:
        return conn.execute(select(schema.images.c[name]).where(schema.images.c.id == image_id)).scalar_one()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("price", "ten pounds", "bad_price"),
        ("price", "-5", "bad_price"),
        ("price", "", "bad_price"),
        ("category", "  ", "bad_category"),
        ("category", "Home / / Tables", "bad_category"),
        ("title", "| Gumtree", "missing_title"),
    ],
)
def test_a_bad_field_is_refused_with_ingests_reason_and_nothing_is_written(writer, catalog, field, value, reason):
    seq, count = catalog.last_change(), catalog.count()
    with pytest.raises(InvalidField) as refused:
        writer.create({**FIELDS, field: value})
    assert (refused.value.field, refused.value.reason) == (field, reason)
    assert refused.value.detail
    assert (catalog.last_change(), catalog.count()) == (seq, count)


def test_a_photo_ingest_would_quarantine_is_refused_with_its_reason():
    with pytest.raises(ImageRejected) as corrupt:
        clean_upload(photo_bytes(fmt="JPEG")[:200], CONFIG)
    assert corrupt.value.reason in ("image_truncated", "image_corrupt")
    with pytest.raises(ImageRejected) as wide:
        clean_upload(photo_bytes(size=(900, 10)), CONFIG)
    assert wide.value.reason == "image_aspect_ratio"


def test_edit_and_sell_go_through_the_cleaning_rules_and_the_log(writer, catalog, workspace):
    listing = writer.create(FIELDS, seller="s1").listing
    seq = catalog.last_change()
    edited = writer.update(listing.id, {"price": "Free", "category": "Toys / Outdoor"}, seller="s1")
    assert (edited.price, edited.category, edited.top_category) == (0.0, "Toys / Outdoor", "Toys")
    assert LabelEncoder.from_json(workspace.labels_path).classes == ["Home & Garden", "Toys"]
    sold = writer.update(listing.id, {}, status="sold", seller="s1")
    assert catalog.get_listing(listing.id) == sold and sold.status == "sold" and sold.price == 0.0
    assert changes_after(catalog, seq) == [(listing.id, "upsert"), (listing.id, "upsert")]
    with pytest.raises(InvalidField) as refused:
        writer.update(listing.id, {"price": "£1.234"})
    assert (refused.value.field, refused.value.reason) == ("price", "bad_price")
    with pytest.raises(InvalidField):
        writer.update(listing.id, {}, status="reserved")
    assert catalog.get_listing(listing.id) == sold and len(changes_after(catalog, seq)) == 2


def test_delete_removes_rows_and_files_and_logs_a_delete(writer, catalog, workspace):
    created = writer.create(FIELDS, [clean_upload(photo_bytes(), CONFIG), clean_upload(photo_bytes(), CONFIG)])
    assert image_ids_on_disk(workspace) == set(created.listing.image_ids)
    seq = catalog.last_change()
    writer.delete(created.listing.id)
    assert catalog.get_listing(created.listing.id) is None
    assert all(catalog.get_image(i) is None for i in created.listing.image_ids)
    assert image_ids_on_disk(workspace) == set()
    assert changes_after(catalog, seq) == [(created.listing.id, "delete")]
    with pytest.raises(ListingNotFound):
        writer.delete(created.listing.id)
    assert changes_after(catalog, seq) == [(created.listing.id, "delete")]


def test_photos_are_added_and_removed_with_their_files_and_log_rows(writer, catalog, workspace):
    listing = writer.create(FIELDS, seller="s1").listing
    seq = catalog.last_change()
    changed, image = writer.add_photo(listing.id, clean_upload(photo_bytes(), CONFIG), seller="s1")
    assert changed.image_ids == (image.id,) == catalog.get_listing(listing.id).image_ids
    assert catalog.image_path(image.id).is_file()
    with pytest.raises(PhotoNotFound):
        writer.remove_photo(listing.id, "not-a-photo", seller="s1")
    assert writer.remove_photo(listing.id, image.id, seller="s1").image_ids == ()
    assert catalog.get_image(image.id) is None and image_ids_on_disk(workspace) == set()
    assert changes_after(catalog, seq) == [(listing.id, "upsert"), (listing.id, "upsert")]


def test_an_eleventh_photo_is_refused_and_leaves_no_file_or_row(writer, catalog, workspace):
    photos = [clean_upload(photo_bytes(color=(i, 0, 0)), CONFIG) for i in range(MAX_PHOTOS)]
    with pytest.raises(TooManyPhotos):
        writer.create(FIELDS, [*photos, photos[0]])
    assert image_ids_on_disk(workspace) == set()
    listing = writer.create(FIELDS, photos).listing
    seq, files = catalog.last_change(), image_ids_on_disk(workspace)
    with pytest.raises(TooManyPhotos):  # refused inside the transaction, after the file was written
        writer.add_photo(listing.id, photos[0])
    assert image_ids_on_disk(workspace) == files == set(listing.image_ids)
    assert catalog.last_change() == seq and catalog.stats()["images"] == MAX_PHOTOS


def test_a_seller_changes_only_its_own_listings(writer, catalog):
    own = writer.create(FIELDS, seller="s1").listing
    seq = catalog.last_change()
    for listing_id in (own.id, "B1"):  # another seller's, and a batch-ingested one (no seller)
        with pytest.raises(NotTheSeller):
            writer.update(listing_id, {"price": "1"}, seller="s2")
        with pytest.raises(NotTheSeller):
            writer.delete(listing_id, seller="s2")
        with pytest.raises(NotTheSeller):
            writer.add_photo(listing_id, clean_upload(photo_bytes(), CONFIG), seller="s2")
    assert catalog.last_change() == seq and catalog.get_listing(own.id) == own
    assert writer.update("B1", {"price": "12"}).price == 12.0  # a caller without a seller may change any


def test_an_idempotent_create_is_written_once_and_a_reused_key_is_refused(writer, catalog, workspace):
    claim = IdempotencyClaim("key1", "retry-me", "hash-a")
    render = lambda listing, images: f'{{"id": "{listing.id}"}}'  # noqa: E731
    photo = clean_upload(photo_bytes(), CONFIG)
    first = writer.create(FIELDS, [photo], idempotency=claim, render=render)
    count, seq, files = catalog.count(), catalog.last_change(), image_ids_on_disk(workspace)
    again = writer.create(FIELDS, [photo], idempotency=claim, render=render)
    assert again.replayed is not None and again.replayed.listing_id == first.listing.id
    assert (again.replayed.status_code, again.replayed.body) == (201, f'{{"id": "{first.listing.id}"}}')
    assert (catalog.count(), catalog.last_change(), image_ids_on_disk(workspace)) == (count, seq, files)
    with pytest.raises(IdempotencyKeyReused):
        reused = IdempotencyClaim("key1", "retry-me", "hash-b")
        writer.create({**FIELDS, "price": "3"}, idempotency=reused, render=render)
    other_key = writer.create(FIELDS, idempotency=IdempotencyClaim("key2", "retry-me", "hash-a"), render=render)
    assert other_key.replayed is None and catalog.count() == count + 1  # keys are per API key


def test_concurrent_writers_with_their_own_engines_all_succeed(catalog, workspace):
    """Two writers (as two server processes would have) creating and editing at once: BEGIN IMMEDIATE makes
    them queue, none fails with a lock error, and every write is logged once."""
    seq = catalog.last_change()
    created: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        writer = ListingWriter(catalog, workspace, CONFIG)
        try:
            for n in range(8):
                claim = IdempotencyClaim(f"k{slot}", f"c{n}", "h")
                listing = writer.create(FIELDS, idempotency=claim, render=lambda x, _: x.id).listing
                writer.update(listing.id, {"price": str(n)})
                created[slot].append(listing.id)
        except BaseException as exc:  # noqa: BLE001 -- reported by the assertion below
            errors.append(exc)
        finally:
            writer.close()

    threads = [threading.Thread(target=work, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and all(len(ids) == 8 for ids in created)
    ids = created[0] + created[1]
    assert len(set(ids)) == 16 and len(catalog.get_listings(ids)) == 16
    assert sorted(changes_after(catalog, seq)) == sorted([(i, "upsert") for i in ids] * 2)
