"""The live catalogue's writes (the API's listing routes): create, edit, sell, delete a listing, add and remove
photos.

One code path with ingest: fields are cleaned by `catalog.export.clean_product_fields` (a bad field raises
the ingest rule's reason) and photos by `catalog.images.clean_photo` (the same JPEG bytes ingest stores for
the same photo). Every write is one transaction that also appends to the change log (`record_changes`), so
the serving processes tailing the log see exactly the committed changes. Photo files are written
atomically before the transaction that references them commits, and removed again when it does not; a
removed photo's file is deleted only after its row is gone. Nothing half-written is ever referenced: a
crash can leave at most an unreferenced file.

On SQLite every transaction starts with ``BEGIN IMMEDIATE`` (`catalog.store.immediate_write_engine`): it
reads (the listing's owner, its photo count, an idempotency key) and then writes, and concurrent writers,
threads or `serve --workers N` processes, queue for the lock instead of deadlocking.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError

from catalog import schema
from catalog.export import clean_product_fields
from catalog.images import CleanedImage, ImageCleaningConfig, clean_photo
from catalog.labels import LabelEncoder
from catalog.models import Image, Listing
from catalog.parsing import FieldError
from catalog.store import Catalog, _listing_from_row, _listing_row, image_row, immediate_write_engine, record_changes
from core.files import write_atomic
from core.workspace import Workspace

MAX_PHOTOS = 10
# The fields a seller sends, and the export column whose cleaning rule each one goes through.
COLUMN_OF_FIELD = {
    "title": "product_name",
    "description": "product_description",
    "price": "price",
    "category": "category",
    "location": "location",
}
_FIELD_OF_COLUMN = {column: name for name, column in COLUMN_OF_FIELD.items()}


class ListingWriteError(Exception):
    """A write that was refused; nothing was written."""


class InvalidField(ListingWriteError):
    """A field breaks ingest's cleaning rule: ``reason`` is the rule's quarantine reason (bad_price, ...)."""

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(f"{field}: {detail}")
        self.field, self.reason, self.detail = field, reason, detail


class ListingNotFound(ListingWriteError):
    pass


class PhotoNotFound(ListingWriteError):
    pass


class TooManyPhotos(ListingWriteError):
    pass


class NotTheSeller(ListingWriteError):
    """The caller may change only its own seller's listings."""


class IdempotencyKeyReused(ListingWriteError):
    """An idempotency key sent again with a different request."""


@dataclass(frozen=True)
class Photo:
    """An uploaded photo cleaned as ingest cleans one: the JPEG to store and its record."""

    data: bytes
    cleaned: CleanedImage


@dataclass(frozen=True)
class IdempotencyClaim:
    """A create's ``Idempotency-Key``: per API key, with a hash of the request it first came with."""

    api_key_id: str
    key: str
    request_hash: str


@dataclass(frozen=True)
class StoredResponse:
    """The answer a create first gave, kept with its idempotency key."""

    listing_id: str
    status_code: int
    body: str


@dataclass(frozen=True)
class Created:
    listing: Listing
    images: list[Image]
    replayed: StoredResponse | None = None  # set when the idempotency key had been used for this request


def clean_fields(fields: Mapping[str, str]) -> dict[str, object]:
    """Cleaned `Listing` fields of a seller's raw fields (``COLUMN_OF_FIELD``'s names), by ingest's rules.
    Raises InvalidField naming the first bad field."""
    unknown = sorted(set(fields) - set(COLUMN_OF_FIELD))
    if unknown:
        raise ValueError(f"unknown listing field(s) {unknown}; expected some of {list(COLUMN_OF_FIELD)}")
    try:
        return clean_product_fields({COLUMN_OF_FIELD[name]: value for name, value in fields.items()})
    except FieldError as exc:
        raise InvalidField(_FIELD_OF_COLUMN[exc.column], exc.reason, str(exc)) from None


def clean_upload(data: bytes, config: ImageCleaningConfig) -> Photo:
    """An uploaded photo's bytes cleaned for the catalogue. Raises `catalog.images.ImageRejected`."""
    return Photo(*clean_photo(data, config))


class ListingWriter:
    """Writes listings of one workspace's catalogue: ``ListingWriter(catalog, workspace, photo_config)``.

    ``seller`` (every write): the caller's seller id, or None for a caller that may change any listing. A
    listing created with a seller belongs to it; another seller's write is refused with NotTheSeller.
    """

    def __init__(self, catalog: Catalog, workspace: Workspace, photo_config: ImageCleaningConfig):
        self.catalog = catalog
        self.workspace = workspace
        self.photo_config = photo_config
        url = make_url(catalog.url)
        self._owns_engine = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        self.engine = immediate_write_engine(catalog.url) if self._owns_engine else catalog.engine

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # --- writes -------------------------------------------------------------------------------------
    def create(
        self,
        fields: Mapping[str, str],
        photos: Sequence[Photo] = (),
        *,
        seller: str | None = None,
        idempotency: IdempotencyClaim | None = None,
        render: Callable[[Listing, list[Image]], str] | None = None,
    ) -> Created:
        """A new active listing (server-side ids) with up to `MAX_PHOTOS` photos, in one transaction.

        Fields left out are empty, which the cleaning rules refuse for title, price and category. With
        ``idempotency``, ``render(listing, images)`` gives the response body stored with the key in the same
        transaction; a key already used for the same request returns that first answer (``replayed``) and
        writes nothing, one used for another request raises IdempotencyKeyReused."""
        if len(photos) > MAX_PHOTOS:
            raise TooManyPhotos(f"a listing has at most {MAX_PHOTOS} photos, {len(photos)} were sent")
        if idempotency is not None and render is None:
            raise ValueError("an idempotent create needs render= to store its response")
        cleaned = clean_fields({name: fields.get(name, "") for name in COLUMN_OF_FIELD} | dict(fields))
        today = _utc_now().date()
        images = [self._image(uuid.uuid4().hex, "", photo, today) for photo in photos]
        listing = Listing(
            id=uuid.uuid4().hex,
            created_at=today,
            image_ids=tuple(image.id for image in images),
            seller_id=seller,
            **cleaned,
        )
        images = [dataclasses.replace(image, listing_id=listing.id) for image in images]
        with self._photo_files(zip(images, photos, strict=True)) as keep:
            if idempotency is not None:
                try:
                    return self._create_once(listing, images, photos, idempotency, render, keep)
                except IntegrityError:  # a concurrent retry committed the key first (server databases)
                    stored = self.stored_response(idempotency)
                    if stored is None:
                        raise
                    return self._replay(stored)
            with self._transaction() as conn:
                self._insert(conn, listing, images, photos)
            keep()
        return Created(listing, images)

    def _create_once(self, listing, images, photos, claim, render, keep) -> Created:
        with self._transaction() as conn:
            stored = _stored_response(conn, claim)
            if stored is not None:
                return self._replay(stored)
            self._insert(conn, listing, images, photos)
            body = render(listing, images)
            conn.execute(
                schema.idempotency_keys.insert(),
                {
                    "api_key_id": claim.api_key_id,
                    "key": claim.key,
                    "request_hash": claim.request_hash,
                    "listing_id": listing.id,
                    "status_code": 201,
                    "response": body,
                    "created_at": _utc_now(),
                },
            )
        keep()
        return Created(listing, images)

    def _replay(self, stored: StoredResponse) -> Created:
        listing = self.catalog.get_listing(stored.listing_id)
        return Created(listing, [], replayed=stored)

    def stored_response(self, claim: IdempotencyClaim) -> StoredResponse | None:
        """The first answer to this idempotency key, when it was used (IdempotencyKeyReused when it was used
        for another request): a retry is answered without cleaning its photos again."""
        with self.engine.connect() as conn:
            return _stored_response(conn, claim)

    def update(
        self, listing_id: str, changes: Mapping[str, str], *, status: str | None = None, seller: str | None = None
    ) -> Listing:
        """Change some fields (cleaned by ingest's rules) and/or the status (`active` or `sold`)."""
        if status is not None and status not in schema.LISTING_STATUSES:
            raise InvalidField("status", "bad_status", f"status must be one of {list(schema.LISTING_STATUSES)}")
        cleaned = clean_fields(changes)
        with self._transaction() as conn:
            listing = self._own_listing(conn, listing_id, seller)
            changed = dataclasses.replace(listing, **cleaned, status=status or listing.status)
            _rewrite(conn, changed)
            record_changes(conn, [listing_id], "upsert")
            self._remember_category(changed.top_category)
        return changed

    def delete(self, listing_id: str, *, seller: str | None = None) -> None:
        """Delete a listing and its photos (the files once the rows are gone)."""
        with self._transaction() as conn:
            listing = self._own_listing(conn, listing_id, seller)
            conn.execute(delete(schema.images).where(schema.images.c.listing_id == listing_id))
            conn.execute(delete(schema.listings).where(schema.listings.c.id == listing_id))
            record_changes(conn, [listing_id], "delete")
        for image_id in listing.image_ids:
            self._photo_path(image_id).unlink(missing_ok=True)

    def add_photo(self, listing_id: str, photo: Photo, *, seller: str | None = None) -> tuple[Listing, Image]:
        """Append a photo (at most `MAX_PHOTOS` per listing)."""
        image = self._image(uuid.uuid4().hex, listing_id, photo, _utc_now().date())
        with self._photo_files([(image, photo)]) as keep:
            with self._transaction() as conn:
                listing = self._own_listing(conn, listing_id, seller)
                if len(listing.image_ids) >= MAX_PHOTOS:
                    raise TooManyPhotos(f"the listing has {MAX_PHOTOS} photos already, the most it may have")
                changed = dataclasses.replace(listing, image_ids=(*listing.image_ids, image.id))
                conn.execute(schema.images.insert(), [_image_row(image, photo)])
                _rewrite(conn, changed)
                record_changes(conn, [listing_id], "upsert")
            keep()
        return changed, image

    def remove_photo(self, listing_id: str, image_id: str, *, seller: str | None = None) -> Listing:
        with self._transaction() as conn:
            listing = self._own_listing(conn, listing_id, seller)
            if image_id not in listing.image_ids:
                raise PhotoNotFound(f"listing {listing_id!r} has no photo {image_id!r}")
            changed = dataclasses.replace(listing, image_ids=tuple(i for i in listing.image_ids if i != image_id))
            conn.execute(delete(schema.images).where(schema.images.c.id == image_id))
            _rewrite(conn, changed)
            record_changes(conn, [listing_id], "upsert")
        self._photo_path(image_id).unlink(missing_ok=True)
        return changed

    # --- helpers ------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(immediate=True) as conn, conn.begin():
            yield conn

    def _own_listing(self, conn: Connection, listing_id: str, seller: str | None) -> Listing:
        query = select(schema.listings).where(schema.listings.c.id == listing_id).with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise ListingNotFound(f"no listing with id {listing_id!r}")
        listing = _listing_from_row(row)
        if seller is not None and listing.seller_id != seller:
            raise NotTheSeller(f"listing {listing_id!r} belongs to another seller; a seller's key changes its own only")
        return listing

    def _insert(self, conn: Connection, listing: Listing, images: list[Image], photos: Sequence[Photo]) -> None:
        conn.execute(schema.listings.insert(), [_listing_row(listing)])
        if images:
            conn.execute(schema.images.insert(), [_image_row(i, p) for i, p in zip(images, photos, strict=True)])
        record_changes(conn, [listing.id], "upsert")
        self._remember_category(listing.top_category)

    def _remember_category(self, top_category: str) -> None:
        """A new top-level category is appended to labels.json, as ingest does. Called inside the write
        transaction, whose lock (SQLite) keeps two processes from appending at once; a transaction that then
        fails leaves an unused class, which is harmless (classes are only ever appended)."""
        path = self.workspace.labels_path
        labels = LabelEncoder.from_json(path) if path.is_file() else LabelEncoder()
        if top_category not in labels:
            labels.extend([top_category]).to_json(path)

    def _image(self, image_id: str, listing_id: str, photo: Photo, today: dt.date) -> Image:
        path = self._photo_path(image_id)
        try:
            relative = path.resolve().relative_to(self.catalog.root.resolve()).as_posix()
        except ValueError:
            relative = str(path.resolve())
        return Image(image_id, listing_id, relative, photo.cleaned.width, photo.cleaned.height, today)

    def _photo_path(self, image_id: str) -> Path:
        return self.workspace.images_dir / f"{image_id}.jpg"

    @contextmanager
    def _photo_files(self, pairs) -> Iterator[Callable[[], None]]:
        """Write the photos' files (each atomically) before the transaction; unless ``keep()`` is called once it
        has committed, remove them again on the way out."""
        written: list[Path] = []
        kept = False

        def keep() -> None:
            nonlocal kept
            kept = True

        try:
            for image, photo in pairs:
                path = self._photo_path(image.id)
                write_atomic(path, lambda tmp, data=photo.data: tmp.write_bytes(data))
                written.append(path)
            yield keep
        finally:
            if not kept:
                for path in written:
                    path.unlink(missing_ok=True)


def _image_row(image: Image, photo: Photo) -> dict:
    cleaned = photo.cleaned
    source = {"source_key": cleaned.source_key, "source_width": cleaned.source_width}
    return image_row(image, {**source, "source_height": cleaned.source_height})


def _rewrite(conn: Connection, listing: Listing) -> None:
    conn.execute(update(schema.listings).where(schema.listings.c.id == listing.id).values(_listing_row(listing)))


def _stored_response(conn: Connection, claim: IdempotencyClaim) -> StoredResponse | None:
    keys = schema.idempotency_keys
    row = conn.execute(
        select(keys).where(keys.c.api_key_id == claim.api_key_id, keys.c.key == claim.key)
    ).first()
    if row is None:
        return None
    if row.request_hash != claim.request_hash:
        raise IdempotencyKeyReused(
            f"the Idempotency-Key {claim.key!r} was used for another request (listing {row.listing_id}); "
            "use a new key for a new listing"
        )
    return StoredResponse(row.listing_id, row.status_code, row.response)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
