"""Listing details."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status

from api.deps import CatalogDep
from api.routes.search import image_url
from api.schemas import ListingPublic, PhotoPublic, error_responses
from catalog.models import Image, Listing
from catalog.store import Catalog

router = APIRouter(prefix="/listings", tags=["listings"])

ListingId = Annotated[str, Path(min_length=1, max_length=200, description="Listing id.")]


_PHOTO_LINK = {
    "photo": {
        "operationRef": "#/paths/~1images~1{image_id}/get",
        "parameters": {"image_id": "$response.body#/photos/0/id"},
        "description": "The listing's first photo (any photo: `photos/N/id`).",
    }
}


@router.get(
    "/{listing_id}",
    responses={
        200: {"links": _PHOTO_LINK},
        **error_responses(404, 422, 503, descriptions={404: "Unknown listing."}),
    },
)
def get_listing(listing_id: ListingId, catalog: CatalogDep) -> ListingPublic:
    """A listing with its full description, its status and the URLs of its cleaned photos."""
    listing = catalog.get_listing(listing_id)
    if listing is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no listing with id {listing_id!r}")
    return stored_listing_public(listing, catalog)


def stored_listing_public(listing: Listing, catalog: Catalog) -> ListingPublic:
    """``listing_public`` with the photos' records read from ``catalog``."""
    return listing_public(listing, {image_id: catalog.get_image(image_id) for image_id in listing.image_ids})


def listing_public(listing: Listing, images: Mapping[str, Image | None]) -> ListingPublic:
    """What the API shows of a listing; ``images``: its photos' records by id (None for one not found)."""
    photos = []
    for image_id in listing.image_ids:
        image = images.get(image_id)
        photos.append(
            PhotoPublic(
                id=image_id,
                url=image_url(image_id),
                width=image.width if image else None,
                height=image.height if image else None,
            )
        )
    return ListingPublic(
        id=listing.id,
        title=listing.title,
        description=listing.description,
        price=listing.price,
        category=listing.category,
        category_levels=list(listing.category_levels),
        top_category=listing.top_category,
        town=listing.town,
        county=listing.county,
        location=listing.location,
        created_at=listing.created_at.isoformat() if listing.created_at else None,
        photos=photos,
        status=listing.status,
        seller_id=listing.seller_id,
    )
