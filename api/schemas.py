"""Request and response models of the HTTP API (what leaves the service is decided here)."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

from personal.events import ID_PATTERN

MAX_QUERY_CHARS = 512
MAX_K = 100
MAX_OFFSET = 1000
MAX_FILTER_CHARS = 200
MAX_PRICE = 1e9


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains invalid Unicode (a lone surrogate escape); send UTF-8 text") from None
    return value


# Letters, marks, numbers, punctuation and symbols; not separators (Z*) nor control, format, private-use,
# surrogate or unassigned code points (C*): zero-width spaces, NUL, bidi marks and the like.
_VISIBLE_CATEGORIES = frozenset("LMNPS")


def _json_integer(value: object) -> object:
    """JSON Schema's integer: ``10`` and ``10.0``, but not ``true`` nor ``"10"`` (lax pydantic takes both)."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer, not a boolean or a string")
    return value


JsonInteger = BeforeValidator(_json_integer)
ValidUnicode = AfterValidator(_valid_unicode)


def has_visible_character(value: str) -> bool:
    return any(unicodedata.category(char)[0] in _VISIBLE_CATEGORIES for char in value)


def _has_visible_character(value: str) -> str:
    if value and not has_visible_character(value):
        raise ValueError(
            "the text has no visible characters (only spaces, zero-width, control or format characters); "
            "type some words"
        )
    return value


SortOrder = Literal["relevance", "price_asc", "price_desc", "newest"]
QueryText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS),
    AfterValidator(_valid_unicode),
    AfterValidator(_has_visible_character),
]
OptionalText = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=MAX_FILTER_CHARS), AfterValidator(_valid_unicode)
]
# Strict: JSON `false` is not a price, `true` is not a `k` (pydantic's lax mode would take them as 0 and 1);
# an integer is still a price. Multipart form fields arrive as strings and are parsed before these models.
Price = Annotated[float, Field(ge=0, le=MAX_PRICE, allow_inf_nan=False, strict=True)]


class SearchFiltersIn(BaseModel):
    """Structured filters; every field is optional and blank strings mean "no filter"."""

    model_config = ConfigDict(extra="forbid")

    category: OptionalText | None = Field(None, description='Top-level category or a prefix of "A / B / C".')
    min_price: Price | None = Field(None, description="Lowest price in GBP (inclusive).")
    max_price: Price | None = Field(None, description="Highest price in GBP (inclusive).")
    location: OptionalText | None = Field(None, description="Town or county, case-insensitive.")

    @model_validator(mode="after")
    def _check(self) -> SearchFiltersIn:
        self.category = self.category or None
        self.location = self.location or None
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError(
                f"min_price ({self.min_price:g}) is above max_price ({self.max_price:g}); swap them or drop one"
            )
        return self


class SearchOptions(BaseModel):
    """Options shared by text and image search."""

    model_config = ConfigDict(extra="forbid")

    k: Annotated[int, Field(ge=1, le=MAX_K), JsonInteger] | None = Field(
        None, description="Number of results (1..100; default from settings)."
    )
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET), JsonInteger] | None = Field(
        None,
        description="Results to skip, for the next page (0..1000; default 0). Pages of one query with the same k "
        "come from one ranking; past total_candidates a page is empty.",
    )
    sort: SortOrder = Field("relevance", description="relevance, price_asc, price_desc or newest.")
    rerank: StrictBool | None = Field(None, description="Use the learned re-ranker (default from settings).")
    user_id: Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=64)] | None = Field(
        None, description="The buyer's id (as their events carry it): a user with history gets the personal "
        "ranking (`marketsearch train-recs`); no user, or one without history, gets the same ranking as without it."
    )


class TextSearchRequest(SearchOptions):
    query: QueryText = Field(
        description="What the buyer typed (1..512 characters, at least one of them visible: not only spaces, "
        "zero-width, control or format characters)."
    )
    filters: SearchFiltersIn = Field(default_factory=SearchFiltersIn)


class ImageSearchForm(SearchOptions):
    """Form fields sent with the photo (multipart/form-data); filters are flat fields here."""

    model_config = ConfigDict(extra="ignore")  # the multipart body also carries the file itself

    text: (
        Annotated[
            str,
            StringConstraints(strip_whitespace=True, max_length=MAX_QUERY_CHARS),
            AfterValidator(_valid_unicode),
            AfterValidator(_has_visible_character),
        ]
        | None
    ) = Field(None, description='Optional words that go with the photo ("in red").')
    category: OptionalText | None = None
    min_price: Price | None = None
    max_price: Price | None = None
    location: OptionalText | None = None

    @model_validator(mode="after")
    def _check(self) -> ImageSearchForm:
        self.text = self.text or None
        self.filters()  # raises the same inverted-range error as the JSON body
        return self

    def filters(self) -> SearchFiltersIn:
        return SearchFiltersIn(
            category=self.category, min_price=self.min_price, max_price=self.max_price, location=self.location
        )


class ListingSummary(BaseModel):
    id: str
    title: str
    price: float | None
    category: str
    top_category: str
    location: str
    thumbnail_url: str | None = Field(description="URL of the first cleaned photo, null for text-only listings.")
    url: str = Field(description="API URL of the full listing.")


class SearchHit(BaseModel):
    rank: int
    score: float
    scores: dict[str, float] = Field(
        description="Per-stage scores that exist for this hit: vector, bm25, photo, rrf, rerank.")
    listing: ListingSummary


class CategoryProbability(BaseModel):
    category: str
    probability: float


class SearchResponse(BaseModel):
    query_id: str
    query_type: Literal["text", "image", "image+text"]
    offset: int = Field(description="Results skipped before the first hit (the request's offset, 0 by default).")
    count: int
    hits: list[SearchHit]
    total_candidates: int
    predicted_category: str | None
    category_probs: list[CategoryProbability] = Field(description="Top-level categories, most likely first.")
    reranked: bool
    personalised: bool = Field(False, description="Ranked for the request's user_id by the personal ranker.")
    timings_ms: dict[str, float] = Field(
        description="Pipeline stages (encode, vector, bm25, photo, fuse, rerank, total) plus service stages "
        "(decode for photos, hydrate, service_total)."
    )


class PhotoPublic(BaseModel):
    id: str
    url: str
    width: int | None = None
    height: int | None = None


class ListingPublic(BaseModel):
    id: str
    title: str
    description: str
    price: float | None
    category: str
    category_levels: list[str]
    top_category: str
    town: str | None
    county: str | None
    location: str
    created_at: str | None
    photos: list[PhotoPublic]
    status: Literal["active", "sold"] = Field(
        description="`active` (searchable) or `sold` (shown by its id, never searched)."
    )
    seller_id: str | None = Field(
        None, description="The seller whose key created the listing; null for a listing from a batch ingest."
    )


class CategoriesResponse(BaseModel):
    data: list[str]
    count: int


class ModelInfo(BaseModel):
    fingerprint: str
    embed_dim: int
    num_classes: int
    text_runtime: str = Field("torch", description="Where queries are encoded: onnxruntime or torch.")
    text_runtime_error: str | None = Field(None, description="Why ONNX Runtime was asked for but not used.")
    text_precision: str = Field("fp32", description="fp32 or int8 (the served ONNX graph's).")
    image_runtime: str = Field("torch", description="Where query photos are encoded: onnxruntime or torch.")
    image_runtime_error: str | None = Field(None, description="Why ONNX Runtime was asked for but not used.")
    image_precision: str = Field("fp32", description="fp32 or int8 (the served ONNX graph's).")
    runtime_notes: dict[str, str] = Field(
        default_factory=dict, description="Per tower, why its fp32 graph is served rather than int8 (quality gate, "
        "settings) or how its graph was made.")
    details: dict[str, Any] = Field(default_factory=dict, description="Backbones and provenance of the bundle.")


class RankerInfo(BaseModel):
    loaded: bool
    error: str | None = Field(None, description="Why a trained re-ranker could not be loaded (search still works).")
    details: dict[str, Any] = Field(default_factory=dict)


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = Field(None, description="Why search is unavailable and which command fixes it.")
    workspace: str = Field(description="The workspace folder's name (no absolute server path is ever shown).")
    listings: int | None = Field(None, description="Listings in the catalogue database.")
    model: ModelInfo | None = None
    index: dict[str, Any] | None = Field(
        None, description="Vector index manifest (counts, nlist, nprobe, ...), index_set (the version served) and "
        "photo (the photo index's manifest; null in a set without one)."
    )
    bm25_documents: int | None = None
    ranker: RankerInfo | None = None
    live: dict[str, Any] | None = Field(
        None,
        description="The change-log follower of the process that answered (pid): applied_seq, settled_seq "
        "(every change up to it applied), in_flight_writes (PostgreSQL), head_seq, lag (head - applied), "
        "delta_listings, tombstones, index_set and its checkpoint, last_compaction, error, encoder_loaded (the "
        "catalogue encoder for new listings, loaded in the background after start), recs (the recommenders' follower, "
        "with recommenders loaded: items, the applied_seq it brought in, seconds that took, error); null when not "
        "following.",
    )


class ErrorResponse(BaseModel):
    detail: str


class ValidationErrorItem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = Field(None, description="The offending value, echoed only when short and JSON-safe.")


class ValidationErrorResponse(BaseModel):
    """Every 422: invalid parameters, an unparsable body or the pipeline refusing a query."""

    detail: list[ValidationErrorItem]


_ERROR_DESCRIPTIONS = {
    401: "No API key, or an unknown or revoked one (`WWW-Authenticate` says so); create one with "
    "`marketsearch keys create`.",
    403: "The API key's scope does not cover this route, or a seller's key acts on another seller's listing.",
    429: "The API key is over its rate limit; `Retry-After` gives the seconds to wait.",
    404: "Unknown listing or image (the detail says which).",
    413: "Body over the limit, file over the upload limit, or an image with too many pixels.",
    415: "The file is not an image in an accepted format.",
    422: "Invalid parameters or an unparsable body (the detail says which and why).",
    503: "The workspace lacks the catalogue, model or index; the detail names the command that builds them.",
}


def error_responses(*statuses: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route can answer, each with its body model
    (``descriptions`` overrides the generic description of a status)."""
    descriptions = {**_ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {
        code: {"model": ValidationErrorResponse if code == 422 else ErrorResponse, "description": descriptions[code]}
        for code in statuses
    }
