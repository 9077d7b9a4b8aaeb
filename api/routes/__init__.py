"""One router per concern; ``api.routes.api_router`` gathers them."""

from fastapi import APIRouter

from api.routes import categories, events, health, images, listing_writes, listings, pages, search, users

api_router = APIRouter()
api_router.include_router(search.router)
api_router.include_router(listings.router)
api_router.include_router(listing_writes.router)
api_router.include_router(images.router)
api_router.include_router(categories.router)
api_router.include_router(events.router)
api_router.include_router(users.router)
api_router.include_router(health.router)
api_router.include_router(pages.router)
