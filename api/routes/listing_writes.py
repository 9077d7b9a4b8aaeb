"""Sellers' writes: create, edit, sell and delete listings, add and remove their photos (API key required).

Each write is answered once it is committed, with the change-log row the serving processes follow
(catalog/listing_writes.py). Fields are cleaned by ingest's rules, photos checked by the search routes' upload
checks (api/uploads.py) and cleaned as ingest cleans them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, HTTPException, Path, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from api.auth import ListingsKey, acting_seller
from api.config import Settings
from api.deps import ListingWriterDep, RateLimitsDep, SettingsDep
from api.listing_schemas import (
    CATEGORY_HELP,
    IDEMPOTENCY_KEY_PATTERN,
    LOCATION_HELP,
    MAX_CATEGORY_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_LOCATION_CHARS,
    MAX_PRICE_CHARS,
    MAX_TITLE_CHARS,
    PRICE_HELP,
    TITLE_HELP,
    ListingUpdate,
)
from api.routes.listings import ListingId, listing_public, stored_listing_public
from api.schemas import ListingPublic, error_responses
from api.uploads import ACCEPTED_FORMATS, open_upload, read_upload, refusal
from catalog.api_keys import ApiKey
from catalog.images import ImageRejected
from catalog.listing_writes import (
    MAX_PHOTOS,
    IdempotencyClaim,
    IdempotencyKeyReused,
    InvalidField,
    ListingNotFound,
    ListingWriter,
    NotTheSeller,
    Photo,
    PhotoNotFound,
    TooManyPhotos,
    clean_upload,
)

router = APIRouter(prefix="/listings", tags=["listings"])

ImageId = Annotated[str, Path(min_length=1, max_length=200, description="The photo's id (`photos/N/id`).")]
_DESCRIPTIONS = {
    404: "Unknown listing (or photo of the listing).",
    413: "A photo over the upload limit or with too many pixels, or a body over the limit.",
    415: "A photo that is not an image in an accepted format.",
    422: "A field breaking its cleaning rule (`loc` names it, `type` is the rule: bad_price, bad_category, "
    "missing_title), a bad photo, more than 10 photos, or an Idempotency-Key reused for another request.",
}
_WRITE_ERRORS = (401, 403, 404, 422, 429, 503)
_PHOTO_ERRORS = (*_WRITE_ERRORS, 413, 415)
_PHOTO_TYPES = ", ".join(f"image/{name.lower()}" for name in ACCEPTED_FORMATS)


def _photo_encoding(field: str) -> dict:
    return {"requestBody": {"content": {"multipart/form-data": {"encoding": {field: {"contentType": _PHOTO_TYPES}}}}}}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(*[c for c in _PHOTO_ERRORS if c != 404], descriptions=_DESCRIPTIONS),
    openapi_extra=_photo_encoding("photos"),
)
async def create_listing(
    request: Request,
    key: ListingsKey,
    writer: ListingWriterDep,
    limits: RateLimitsDep,
    settings: SettingsDep,
    title: Annotated[str, Form(max_length=MAX_TITLE_CHARS, description=TITLE_HELP + ".")],
    price: Annotated[str, Form(max_length=MAX_PRICE_CHARS, description=PRICE_HELP + ".")],
    category: Annotated[str, Form(max_length=MAX_CATEGORY_CHARS, description=CATEGORY_HELP + ".")],
    description: Annotated[str, Form(max_length=MAX_DESCRIPTION_CHARS, description="Description.")] = "",
    location: Annotated[str, Form(max_length=MAX_LOCATION_CHARS, description=LOCATION_HELP + ".")] = "",
    photos: Annotated[
        list[UploadFile] | None,
        File(description=f"Up to {MAX_PHOTOS} photos (JPEG, PNG, WEBP, GIF or BMP), in the order to show them."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Makes a retry safe: the same key with the same request returns the first answer (201, "
            "same listing, header `Idempotent-Replay: true`) and lists nothing twice; the same key with another "
            "request is a 422. Keys are per API key.",
        ),
    ] = None,
) -> ListingPublic:
    """List an item: its fields and up to 10 photos, cleaned as ingest cleans an export. 201 with the listing
    once it is committed; it is searchable as soon as the serving processes have read the change log."""
    fields = {"title": title, "description": description, "price": price, "category": category, "location": location}
    await _refuse_repeated_fields(request, list(fields))
    photos = photos or []
    if len(photos) > MAX_PHOTOS:
        raise _invalid("photos", "too_many_photos", f"a listing has at most {MAX_PHOTOS} photos, {len(photos)} sent")
    limits.check("writes", key.id)
    limits.check("photos", key.id, len(photos))
    uploads = [(await read_upload(photo, settings.max_upload_bytes), photo) for photo in photos]
    claim = None
    if idempotency_key is not None:
        claim = IdempotencyClaim(key.id, idempotency_key, _request_hash(fields, [data for data, _ in uploads]))
    return await run_in_threadpool(_create, writer, settings, key, fields, uploads, claim)


def _create(writer: ListingWriter, settings: Settings, key: ApiKey, fields, uploads, claim) -> ListingPublic | Response:
    try:
        if claim is not None and (stored := writer.stored_response(claim)) is not None:
            return _replayed(stored.body, stored.status_code)  # a retry: not even its photos are cleaned again
        cleaned = [
            _photo(writer, settings, data, upload, f"photo {n} ({upload.filename or 'unnamed'})")
            for n, (data, upload) in enumerate(uploads, 1)
        ]
        created = writer.create(
            fields,
            cleaned,
            seller=key.seller_id,
            idempotency=claim,
            render=lambda listing, images: _public(listing, images).model_dump_json(),
        )
    except IdempotencyKeyReused as exc:
        raise _invalid("Idempotency-Key", "idempotency_key_reused", str(exc), where="header") from None
    except InvalidField as exc:
        raise _invalid(exc.field, exc.reason, exc.detail) from None
    if created.replayed is not None:  # a concurrent retry committed first
        return _replayed(created.replayed.body, created.replayed.status_code)
    return _public(created.listing, created.images)


@router.patch("/{listing_id}", responses=error_responses(*_WRITE_ERRORS, 413, descriptions=_DESCRIPTIONS))
async def update_listing(
    listing_id: ListingId, body: ListingUpdate, key: ListingsKey, writer: ListingWriterDep, limits: RateLimitsDep
) -> ListingPublic:
    """Change a listing's fields (cleaned as ingest cleans them) or mark it `sold` (out of search at once)."""
    limits.check("writes", key.id)

    def update() -> ListingPublic:
        listing = writer.update(listing_id, body.field_changes(), status=body.status, seller=acting_seller(key))
        return stored_listing_public(listing, writer.catalog)

    return await run_in_threadpool(_answer, update)


@router.delete(
    "/{listing_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(*_WRITE_ERRORS, descriptions=_DESCRIPTIONS),
)
async def delete_listing(
    listing_id: ListingId, key: ListingsKey, writer: ListingWriterDep, limits: RateLimitsDep
) -> None:
    """Delete a listing and its photos: never shown again, by id or by search."""
    limits.check("writes", key.id)
    await run_in_threadpool(_answer, lambda: writer.delete(listing_id, seller=acting_seller(key)))


@router.post(
    "/{listing_id}/photos",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(*_PHOTO_ERRORS, descriptions=_DESCRIPTIONS),
    openapi_extra=_photo_encoding("photo"),
)
async def add_photo(
    listing_id: ListingId,
    photo: Annotated[UploadFile, File(description="The photo (JPEG, PNG, WEBP, GIF or BMP).")],
    key: ListingsKey,
    writer: ListingWriterDep,
    limits: RateLimitsDep,
    settings: SettingsDep,
) -> ListingPublic:
    """Add a photo to a listing (at most 10): 201 with the listing, the new photo last."""
    limits.check("writes", key.id)
    limits.check("photos", key.id)
    data = await read_upload(photo, settings.max_upload_bytes)

    def add() -> ListingPublic:
        cleaned = _photo(writer, settings, data, photo, "the photo")
        listing, _ = writer.add_photo(listing_id, cleaned, seller=acting_seller(key))
        return stored_listing_public(listing, writer.catalog)

    return await run_in_threadpool(_answer, add)


@router.delete(
    "/{listing_id}/photos/{image_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(*_WRITE_ERRORS, descriptions=_DESCRIPTIONS),
)
async def remove_photo(
    listing_id: ListingId, image_id: ImageId, key: ListingsKey, writer: ListingWriterDep, limits: RateLimitsDep
) -> None:
    """Remove one photo of a listing (its file is deleted once the change is committed)."""
    limits.check("writes", key.id)
    await run_in_threadpool(_answer, lambda: writer.remove_photo(listing_id, image_id, seller=acting_seller(key)))


def _answer(write):
    """Run one write, turning the writer's refusals into HTTP answers."""
    try:
        return write()
    except ListingNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except PhotoNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except NotTheSeller as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    except TooManyPhotos as exc:
        raise _invalid("photo", "too_many_photos", str(exc)) from None
    except InvalidField as exc:
        raise _invalid(exc.field, exc.reason, exc.detail) from None


def _photo(writer: ListingWriter, settings: Settings, data: bytes, upload: UploadFile, name: str) -> Photo:
    """An upload checked from its header as the search routes check one (same statuses and messages, naming the
    photo), then verified, decoded and cleaned once, as ingest cleans a photo."""
    try:
        open_upload(
            data, max_pixels=settings.max_image_pixels, config=writer.photo_config, content_type=upload.content_type
        ).close()
        try:
            return clean_upload(data, writer.photo_config)
        except ImageRejected as exc:  # truncated or corrupt data, and what ingest's stricter verify() finds
            raise refusal(exc, upload.content_type, settings.max_image_pixels) from None
    except HTTPException as exc:
        raise HTTPException(exc.status_code, f"{name}: {exc.detail}") from None


def _public(listing, images) -> ListingPublic:
    return listing_public(listing, {image.id: image for image in images})


def _replayed(body: str, status_code: int) -> Response:
    return Response(body, status_code=status_code, media_type="application/json", headers={"Idempotent-Replay": "true"})


def _request_hash(fields: dict[str, str], photos: list[bytes]) -> str:
    """What makes two creates the same request: their fields and their photos' bytes, in order."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for data in photos:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def _invalid(field: str, kind: str, message: str, where: str = "body") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": (where, field), "msg": message}])


async def _refuse_repeated_fields(request: Request, names: list[str]) -> None:
    """A form field sent twice is refused: the framework would silently keep the last value."""
    submitted = await request.form()
    repeated = [
        {"type": "value_error", "loc": ("body", name), "msg": f"the field {name!r} is given more than once"}
        for name in names
        if len(submitted.getlist(name)) > 1
    ]
    if repeated:
        raise RequestValidationError(repeated)
