"""Recommendations: "for you" (`GET /users/{id}/recommendations`) and "more like this"
(`GET /listings/{id}/similar`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.concurrency import run_in_threadpool

from api.deps import CatalogDep, StateDep
from api.recs_schemas import Recommendation, RecommendationsResponse, SimilarListing, SimilarResponse
from api.routes.search import listing_summary
from api.routes.users import UserId
from api.schemas import error_responses
from catalog.store import Catalog
from recommend.model import Filters
from recommend.serving import ServedRecommender, reason_text

router = APIRouter(tags=["recommendations"])

MAX_K = 100


async def get_recommender(state: StateDep) -> ServedRecommender:
    if state.recommender is None or state.recommender.model is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, state.recs_error or "no recommenders loaded; run "
                            "`marketsearch train-recs` and restart the service")
    return state.recommender


RecommenderDep = Annotated[ServedRecommender, Depends(get_recommender)]
K = Annotated[int, Query(ge=1, le=MAX_K, description=f"How many listings (1..{MAX_K}).")]


@router.get("/users/{user_id}/recommendations", responses=error_responses(422, 503))
async def recommendations(
    user_id: UserId,
    catalog: CatalogDep,
    served: RecommenderDep,
    k: K = 10,
    category: Annotated[str | None, Query(max_length=200, description="A top category or category path.")] = None,
    location: Annotated[str | None, Query(max_length=100, description="A town or county; also where a new "
                                                                        "visitor is.")] = None,
    max_price: Annotated[float | None, Query(ge=0, description="Highest price (GBP).")] = None,
) -> RecommendationsResponse:
    """Listings for this user, each with a short reason. An unknown user is a new visitor: popular and new
    listings (near `location` when given), not an error. Sold and deleted listings and what the user bought
    are never returned."""
    return await run_in_threadpool(_recommend, served, catalog, user_id, k, Filters(category, location, max_price))


def _recommend(served: ServedRecommender, catalog: Catalog, user_id: str, k: int, filters: Filters):
    served.refresh_user(catalog, user_id)
    hits, cold = served.recommend(user_id, k, filters)
    wanted = [h.listing_id for h in hits] + [h.reason.listing_id for h in hits if h.reason.listing_id]
    listings = {x.id: x for x in catalog.get_listings(list(dict.fromkeys(wanted)))}
    titles = {listing_id: x.title for listing_id, x in listings.items()}
    results = []
    for hit in hits:
        listing = listings.get(hit.listing_id)
        if listing is None or listing.status != "active":  # deleted or sold since the model was loaded
            continue
        results.append(Recommendation(
            rank=len(results) + 1, score=hit.score, reason=reason_text(hit.reason, titles),
            reason_kind=hit.reason.kind, because_listing_id=hit.reason.listing_id, listing=listing_summary(listing),
        ))
        if len(results) == k:
            break
    return RecommendationsResponse(user_id=user_id, cold_start=cold, results=results)


@router.get(
    "/listings/{listing_id}/similar",
    responses=error_responses(404, 422, 503, descriptions={404: "Unknown listing, or one not in the "
                                                                "recommenders yet (written seconds ago)."}),
)
async def similar(
    listing_id: Annotated[str, Path(min_length=1, max_length=200, description="Listing id.")],
    catalog: CatalogDep,
    served: RecommenderDep,
    k: K = 10,
) -> SimilarResponse:
    """Listings like this one: neighbours in the shared text-image space blended with co-visitation ("people
    who viewed this also viewed"). Sold and deleted listings are never returned."""
    return await run_in_threadpool(_similar, served, catalog, listing_id, k)


def _similar(served: ServedRecommender, catalog: Catalog, listing_id: str, k: int) -> SimilarResponse:
    if catalog.get_listing(listing_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no listing with id {listing_id!r}")
    try:
        found = served.model.similar(listing_id, 3 * k)
    except KeyError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"listing {listing_id!r} is not in the recommenders yet: a "
                            "listing written live joins them within seconds (MARKETSEARCH_LIVE_RECS_INTERVAL); "
                            "without live following, run `marketsearch train-recs`") from None
    listings = {x.id: x for x in catalog.get_listings([i for i, _ in found])}
    results = []
    for other, score in found:
        listing = listings.get(other)
        if listing is not None and listing.status == "active":
            results.append(SimilarListing(rank=len(results) + 1, score=score, listing=listing_summary(listing)))
        if len(results) == k:
            break
    return SimilarResponse(listing_id=listing_id, results=results)
