"""Dependencies shared by the routes: settings, the catalogue, the search pipeline and the event store.

The getters are ``async def`` although they do not await: FastAPI runs plain ``def`` dependencies in
the thread pool, one hop each, which cost several milliseconds per request on a busy 2-core machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from weakref import WeakKeyDictionary

from fastapi import Depends, HTTPException, Request, status

from api.config import Settings
from api.rate_limits import RateLimits
from api.state import ServiceState
from catalog.images import load_config
from catalog.listing_writes import ListingWriter
from catalog.store import Catalog
from personal.store import EventStore
from recommend.serving import ServedRecommender
from search.pipeline import Searcher


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_app_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


async def get_catalog(state: Annotated[ServiceState, Depends(get_state)]) -> Catalog:
    return _catalog(state)


async def get_searcher(state: Annotated[ServiceState, Depends(get_state)]) -> Searcher:
    return _searcher(state)


def _catalog(state: ServiceState) -> Catalog:
    if state.catalog is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, state.catalog_error or "catalogue not loaded")
    return state.catalog


def _searcher(state: ServiceState) -> Searcher:
    if state.searcher is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, state.searcher_error or "search not loaded")
    return state.searcher


@dataclass(frozen=True)
class SearchServices:
    """What a search request uses, resolved as one dependency: each dependency FastAPI solves costs the request
    tens of microseconds, and the search routes needed five (state, searcher, catalogue, settings, recommenders)."""

    searcher: Searcher
    catalog: Catalog
    settings: Settings
    recommender: ServedRecommender | None


async def get_search_services(request: Request) -> SearchServices:
    state: ServiceState = request.app.state.service
    return SearchServices(_searcher(state), _catalog(state), state.settings, state.recommender)


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
SearcherDep = Annotated[Searcher, Depends(get_searcher)]
SearchServicesDep = Annotated[SearchServices, Depends(get_search_services)]


# One EventStore (its own engine, personal/store.py) per open catalogue, made on first use.
_event_stores: WeakKeyDictionary[Catalog, EventStore] = WeakKeyDictionary()


async def get_event_store(catalog: Annotated[Catalog, Depends(get_catalog)]) -> EventStore:
    store = _event_stores.get(catalog)
    if store is None:
        store = _event_stores[catalog] = EventStore(catalog)
    return store


EventStoreDep = Annotated[EventStore, Depends(get_event_store)]


# One ListingWriter (its own engine for BEGIN IMMEDIATE writes, catalog/listing_writes.py) per open catalogue.
_listing_writers: WeakKeyDictionary[Catalog, ListingWriter] = WeakKeyDictionary()


async def get_listing_writer(
    catalog: Annotated[Catalog, Depends(get_catalog)], state: Annotated[ServiceState, Depends(get_state)]
) -> ListingWriter:
    writer = _listing_writers.get(catalog)
    if writer is None:
        photo_config = load_config(state.workspace.photo_config_path)  # how ingest cleaned the catalogue's photos
        writer = _listing_writers[catalog] = ListingWriter(catalog, state.workspace, photo_config)
    return writer


ListingWriterDep = Annotated[ListingWriter, Depends(get_listing_writer)]


async def get_rate_limits(request: Request) -> RateLimits:
    return request.app.state.rate_limits


RateLimitsDep = Annotated[RateLimits, Depends(get_rate_limits)]
