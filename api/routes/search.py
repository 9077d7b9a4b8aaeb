"""Text, photo and photo-plus-words search."""

from __future__ import annotations

import math
import time
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BeforeValidator, ValidationError

from api.deps import SearchServices, SearchServicesDep
from api.schemas import (
    MAX_FILTER_CHARS,
    MAX_K,
    MAX_OFFSET,
    MAX_PRICE,
    MAX_QUERY_CHARS,
    CategoryProbability,
    ImageSearchForm,
    ListingSummary,
    SearchFiltersIn,
    SearchHit,
    SearchOptions,
    SearchResponse,
    SortOrder,
    TextSearchRequest,
    error_responses,
)
from api.uploads import ACCEPTED_FORMATS, decode_image, read_upload
from catalog.models import Listing
from catalog.store import Catalog
from personal.events import ID_PATTERN
from ranking.types import ListingCard
from recommend.serving import ServedRecommender
from search.filters import SearchFilters
from search.listing_table import listing_card
from search.pipeline import Searcher, SearchResult, UserColumns

router = APIRouter(prefix="/search", tags=["search"])

# Each hit links to its listing (OpenAPI links: clients and stateful schemathesis runs follow them).
_LISTING_LINK = {
    "listing": {
        "operationRef": "#/paths/~1listings~1{listing_id}/get",
        "parameters": {"listing_id": "$response.body#/hits/0/listing/id"},
        "description": "The first hit's listing (any hit: `hits/N/listing/id`).",
    }
}
_TEXT_RESPONSES = {200: {"links": _LISTING_LINK}, **error_responses(413, 422, 503)}
_IMAGE_RESPONSES = {200: {"links": _LISTING_LINK}, **error_responses(413, 415, 422, 503)}


# The search routes are ``async def`` and hand all blocking work (decode, pipeline, catalogue lookup) to the
# thread pool in one call: a plain ``def`` route costs a second hop, because FastAPI then also validates the
# returned model in the thread pool. Each hop is a thread wake-up on a busy 2-core machine.


@router.post("/text", response_model=SearchResponse, responses=_TEXT_RESPONSES)
async def search_text(body: TextSearchRequest, services: SearchServicesDep) -> Response:
    """Search by words, with filters and sorting; ranked for `user_id` when the recommenders know them."""
    return await run_in_threadpool(_text_search, body, services)


def _text_search(body: TextSearchRequest, services: SearchServices) -> Response:
    start = time.perf_counter()
    searcher, catalog, settings = services.searcher, services.catalog, services.settings
    user = _user_columns(services.recommender, searcher, catalog, body.user_id)
    result = _search(searcher, body.query, None, body, body.filters, settings.default_k, settings.rerank_default,
                     user)
    return _response(result, "text", body.offset or 0, catalog, start, {})


def _user_columns(recommender: ServedRecommender | None, searcher: Searcher, catalog: Catalog,
                  user_id: str | None) -> UserColumns | None:
    """The user's columns for the personal ranker, or None (no user, no personal ranker, no history): then the
    search is ranked exactly as without a user."""
    if not user_id or searcher.personal_ranker is None or recommender is None or recommender.model is None:
        return None
    recommender.refresh_user(catalog, user_id)
    return recommender.user_columns(user_id)


def _form_null(value: object) -> object:
    """Multipart has no null: the schema's nullable number and boolean fields take ``null`` (what a browser's
    ``FormData.append(name, null)`` and schema-driven clients send) or an empty value as "not given"."""
    return None if isinstance(value, str) and value.strip() in ("", "null") else value


FormNull = BeforeValidator(_form_null)


FORM_FIELDS = ("text", "k", "offset", "sort", "rerank", "category", "min_price", "max_price", "location", "user_id")


async def image_search_form(
    request: Request,
    text: Annotated[
        str | None,
        Form(max_length=MAX_QUERY_CHARS, description='Optional words with the photo ("in red"), up to 512 chars.'),
    ] = None,
    k: Annotated[int | None, Form(ge=1, le=MAX_K, description="Number of results (1..100)."), FormNull] = None,
    offset: Annotated[
        int | None,
        Form(ge=0, le=MAX_OFFSET, description="Results to skip, for the next page (0..1000; default 0)."),
        FormNull,
    ] = None,
    sort: Annotated[SortOrder, Form(description="relevance, price_asc, price_desc or newest.")] = "relevance",
    rerank: Annotated[bool | None, Form(description="Use the learned re-ranker."), FormNull] = None,
    category: Annotated[
        str | None, Form(max_length=MAX_FILTER_CHARS, description='Top-level category or a prefix of "A / B / C".')
    ] = None,
    min_price: Annotated[float | None, Form(ge=0, le=MAX_PRICE, description="Lowest price in GBP."), FormNull] = None,
    max_price: Annotated[float | None, Form(ge=0, le=MAX_PRICE, description="Highest price in GBP."), FormNull] = None,
    location: Annotated[str | None, Form(max_length=MAX_FILTER_CHARS, description="Town or county.")] = None,
    user_id: Annotated[str | None, Form(pattern=ID_PATTERN, max_length=64, description="The buyer's id: ranked for "
                                        "them when the recommenders know them.")] = None,
) -> ImageSearchForm:
    """The form fields next to the photo, declared one by one so that they appear in the OpenAPI docs,
    then validated together (inverted price range, non-finite prices, text limits) like the JSON body.
    Form values are strings, so ``k=10``, ``rerank=true`` and ``min_price=5.5`` are parsed here. A field sent
    twice is refused: the framework would silently keep the last value (the form is already parsed and cached,
    so reading it here costs nothing)."""
    submitted = await request.form()
    repeated = [
        {"type": "value_error", "loc": ("body", name), "msg": f"the field {name!r} is given more than once"}
        for name in FORM_FIELDS + ("file",)
        if len(submitted.getlist(name)) > 1
    ]
    if repeated:
        raise RequestValidationError(repeated)
    fields = dict(
        text=text,
        k=k,
        offset=offset,
        sort=sort,
        rerank=rerank,
        category=category,
        min_price=min_price,
        max_price=max_price,
        location=location,
        user_id=user_id or None,
    )
    try:
        return ImageSearchForm(**fields)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None


# The photo part's accepted types (the bytes are sniffed; the declared type is ignored, see api.uploads).
_PHOTO_ENCODING = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "encoding": {"file": {"contentType": ", ".join(f"image/{name.lower()}" for name in ACCEPTED_FORMATS)}}
            }
        }
    }
}


@router.post("/image", response_model=SearchResponse, responses=_IMAGE_RESPONSES, openapi_extra=_PHOTO_ENCODING)
async def search_image(
    file: Annotated[UploadFile, File(description="The photo (JPEG, PNG, WEBP, GIF or BMP).")],
    form: Annotated[ImageSearchForm, Depends(image_search_form)],
    services: SearchServicesDep,
) -> Response:
    """Search by a photo, optionally with words that go with it ("in red"); same options as text search."""
    start = time.perf_counter()
    data = await read_upload(file, services.settings.max_upload_bytes)
    return await run_in_threadpool(_image_search, data, file.content_type, form, services, start)


def _image_search(
    data: bytes, content_type: str | None, form: ImageSearchForm, services: SearchServices, start: float
) -> Response:
    searcher, catalog, settings = services.searcher, services.catalog, services.settings
    image = decode_image(
        data, max_pixels=settings.max_image_pixels, config=searcher.photo_config, content_type=content_type
    )
    service_timings = {"decode": _ms_since(start)}
    user = _user_columns(services.recommender, searcher, catalog, form.user_id)
    result = _search(searcher, form.text, image, form, form.filters(), settings.default_k, settings.rerank_default,
                     user)
    query_type = "image+text" if form.text else "image"
    return _response(result, query_type, form.offset or 0, catalog, start, service_timings)


def _search(
    searcher: Searcher,
    text: str | None,
    image: Image.Image | None,
    options: SearchOptions,
    filters: SearchFiltersIn,
    default_k: int,
    rerank_default: bool,
    user_columns: UserColumns | None = None,
) -> SearchResult:
    try:
        return searcher.search(
            text=text,
            image=image,
            k=options.k or default_k,
            offset=options.offset or 0,
            filters=SearchFilters(**filters.model_dump()),
            sort=options.sort,
            rerank=rerank_default if options.rerank is None else options.rerank,
            user_columns=user_columns,
        )
    except ValueError as exc:  # the pipeline's own input checks (the schemas should have caught these)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


def _response(
    result: SearchResult,
    query_type: str,
    offset: int,
    catalog: Catalog,
    start: float,
    service_timings: dict[str, float],
) -> Response:
    """The answer, serialised once (the route returns these bytes; FastAPI does not validate them again)."""
    hydrate_start = time.perf_counter()
    cards = {hit.listing_id: hit.card for hit in result.hits}
    if all(card is not None for card in cards.values()):
        # The database decides, not the index: a listing deleted or sold before this request is never shown,
        # even by a process whose follower has not applied that change yet. The listings themselves come from
        # the searched snapshot: one read of the page's ids and statuses, no listing rows.
        active = catalog.active_among(list(cards))
    else:  # a pipeline whose table holds no cards (built from columns alone): the catalogue's listings
        listings = catalog.get_listings(list(cards))
        active = {listing.id for listing in listings if listing.status == "active"}
        cards = {listing.id: listing_card(listing) for listing in listings}
    hits = [
        SearchHit(
            rank=hit.rank,
            score=_finite(hit.score),
            scores={name: value for name, value in hit.scores.items() if math.isfinite(value)},
            listing=card_summary(hit.listing_id, cards[hit.listing_id]),
        )
        for hit in result.hits
        if hit.listing_id in active
    ]
    timings = {**result.timings_ms, **service_timings, "hydrate": _ms_since(hydrate_start)}
    timings["service_total"] = _ms_since(start)
    response = SearchResponse(
        query_id=result.query_id,
        query_type=query_type,
        offset=offset,
        count=len(hits),
        hits=hits,
        total_candidates=result.total_candidates,
        predicted_category=result.predicted_category,
        category_probs=[CategoryProbability(category=c, probability=p) for c, p in result.category_probs.items()],
        reranked=result.reranked,
        personalised=result.personalised,
        timings_ms={name: round(value, 3) for name, value in timings.items()},
    )
    return Response(response.model_dump_json(), media_type="application/json")


def listing_summary(listing: Listing) -> ListingSummary:
    return card_summary(listing.id, listing_card(listing))


def card_summary(listing_id: str, card: ListingCard) -> ListingSummary:
    return ListingSummary(
        id=listing_id,
        title=card.title,
        price=card.price,
        category=card.category,
        top_category=card.top_category,
        location=card.location,
        thumbnail_url=image_url(card.thumbnail_image_id) if card.thumbnail_image_id else None,
        url=listing_url(listing_id),
    )


def listing_url(listing_id: str) -> str:
    return f"/listings/{quote(listing_id, safe='')}"


def image_url(image_id: str) -> str:
    return f"/images/{quote(image_id, safe='')}"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
