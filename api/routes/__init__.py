"""One router per concern; ``api.routes.api_router`` gathers them."""

from fastapi import APIRouter

from api.routes import (
    categories,
    events,
    health,
    images,
    listing_writes,
    listings,
    pages,
    recommendations,
    search,
    users,
)

ROUTERS = (
    search.router,
    listings.router,
    listing_writes.router,
    images.router,
    categories.router,
    events.router,
    users.router,
    recommendations.router,
    health.router,
    pages.router,
)

api_router = APIRouter()
for router in ROUTERS:
    api_router.include_router(router)
