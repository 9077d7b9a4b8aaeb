"""Request and response models of the recommendation routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas import ListingSummary


class Recommendation(BaseModel):
    rank: int
    score: float = Field(description="The learned blend's score (higher is better; comparable within one answer).")
    reason: str = Field(description="Why, in words: `because you viewed …`, `popular near Leeds`, `new listing`.")
    reason_kind: Literal["history", "category", "popular_near", "new_near", "new", "popular"]
    because_listing_id: str | None = Field(None, description="The listing of the user's history behind a "
                                                             "`history` reason.")
    listing: ListingSummary


class RecommendationsResponse(BaseModel):
    user_id: str
    cold_start: bool = Field(description="True for a user the recommenders know nothing of yet: popular and new "
                                         "listings (near `location` when given).")
    results: list[Recommendation]


class SimilarListing(BaseModel):
    rank: int
    score: float = Field(description="Reciprocal-rank fusion of the shared-space neighbours and co-visitation.")
    listing: ListingSummary


class SimilarResponse(BaseModel):
    listing_id: str
    results: list[SimilarListing]
