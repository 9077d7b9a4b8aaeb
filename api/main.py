"""The FastAPI application: ``create_app(settings)`` builds it, the lifespan loads the artefacts once."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.config import Settings, get_settings
from api.limits import BodySizeLimitMiddleware
from api.rate_limits import Rate, RateLimits
from api.routes import ROUTERS, api_router
from api.routes.pages import STATIC_DIR
from api.state import ServiceState, load_state, public_text, unusable_catalogue
from catalog.errors import CatalogError
from catalog.listing_writes import MAX_PHOTOS
from index.vector_index import VectorIndex

logger = logging.getLogger(__name__)

UPLOAD_PATHS = ("/search/image",)
EVENT_PATHS = ("/events",)
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries, headers and the small form fields next to the photo
# POST /listings (a listing's fields and up to MAX_PHOTOS photos) and POST /listings/{id}/photos (one photo)
NEW_LISTING_PATH = "/listings"
ADDED_PHOTO_PATH = re.compile(r"^/listings/[^/]+/photos$")


def create_app(settings: Settings | None = None, *, state: ServiceState | None = None) -> FastAPI:
    """Build the service. ``state`` skips loading (tests hand in prepared artefacts)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state is None:
            _set_torch_threads(settings.torch_threads)
        loaded = state or await run_in_threadpool(load_state, settings)
        app.state.service = loaded
        try:
            yield
        finally:
            if state is None:
                loaded.close()

    # /docs and /redoc with Swagger UI and ReDoc served from the fastapi-offline package (under
    # /static-offline-docs), not from a CDN: the docs work on a machine without internet access.
    app = FastAPIOffline(
        title="marketsearch",
        summary="Multi-modal search over a second-hand marketplace: words, photos, or both.",
        version="0.1.0",
        lifespan=lifespan,
    )
    if state is not None:
        app.state.service = state  # also usable without running the lifespan
    app.state.rate_limits = rate_limits(settings)
    app.include_router(api_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def body_limit(path: str) -> int:
        if path in UPLOAD_PATHS or ADDED_PHOTO_PATH.match(path):
            return settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        if path == NEW_LISTING_PATH:
            return MAX_PHOTOS * settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        if path in EVENT_PATHS:
            return settings.max_events_bytes
        return settings.max_json_bytes

    app.add_middleware(BodySizeLimitMiddleware, limit_for_path=body_limit)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["*"],
        )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(CatalogError, _catalogue_unusable)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


def rate_limits(settings: Settings) -> RateLimits:
    """The per-key buckets of this process (api/rate_limits.py), at the settings' rates."""
    return RateLimits(
        {
            "writes": Rate(settings.write_rate_per_minute, settings.write_burst),
            "photos": Rate(settings.photo_rate_per_minute, settings.photo_burst),
            "events": Rate(settings.event_rate_per_minute, settings.event_burst),
        }
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Every 422 in FastAPI's list shape (the one the schema documents), and no 400s.

    A 422 raised with a message (an empty or corrupt upload, the pipeline refusing a query) becomes one
    ``value_error`` item. The routes raise no 400 of their own: a 400 is the framework failing to parse the
    body (JSON that is not UTF-8, nested too deeply or with a number too long to convert; multipart without a
    boundary), which the docs and the schema call 422 like any other invalid request."""
    if exc.status_code == 422 and isinstance(exc.detail, str):
        error = {"type": "value_error", "loc": ("body",), "msg": exc.detail}
    elif exc.status_code == 400:
        cause = exc.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc.detail)
        error = {"type": "body_invalid", "loc": ("body",), "msg": f"the request body could not be parsed ({reason})"}
    elif exc.status_code == 405:
        return await http_exception_handler(request, StarletteHTTPException(405, exc.detail, _allow(request)))
    else:
        return await http_exception_handler(request, exc)
    return await _validation_error(request, RequestValidationError([error]))


def _allow(request: Request) -> dict[str, str]:
    """``Allow`` for a 405: the methods of every route of the path. Starlette names only the first route's, and
    a path with several routes (GET, PATCH and DELETE /listings/{id}, in two routers) has one route per method."""
    methods: set[str] = set()
    for route in (route for router in ROUTERS for route in router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= route.methods
    return {"Allow": ", ".join(sorted(methods))}


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, made safe to serialise: the offending input is echoed only when it is short
    and finite (a NaN price or a 60 kB string would otherwise break or bloat the response)."""
    errors = []
    for error in exc.errors():
        item = {
            "type": error.get("type"),
            "loc": [_utf8_safe(part) for part in error.get("loc", ())],
            "msg": _utf8_safe(error.get("msg")),
        }
        value = error.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            item["input"] = str(value)
        elif isinstance(value, str | int | float | bool) and len(str(value)) <= 200:
            item["input"] = _utf8_safe(value)
        errors.append(item)
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def _set_torch_threads(threads: int) -> None:
    # One query is a small batch: a thread pool per call costs more than it saves on a few shared cores,
    # and concurrent requests already use the other cores. torch gets the same budget where it is loaded
    # (api.state._torch_model), ONNX Runtime per session.
    VectorIndex.set_search_threads(threads)  # in the request threads too, not only this one
    logger.info("models and faiss use %d intra-op thread(s) per call", threads)


def _utf8_safe(value):
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


async def _catalogue_unusable(request: Request, exc: CatalogError) -> JSONResponse:
    """Damage in the catalogue met by a request (the start-up reads only part of it): 503 naming the file and
    the fix, and one log line, not a traceback per request."""
    workspace = request.app.state.service.workspace
    message = unusable_catalogue(exc, workspace)
    logger.error("%s %s: %s", request.method, request.url.path, message)
    return JSONResponse(status_code=503, content={"detail": public_text(message, workspace.root)})


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        status_code=500, content={"detail": f"internal error ({type(exc).__name__}); see the service log"}
    )
