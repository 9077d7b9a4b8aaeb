"""The top-level categories (for the filter select on the page)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CatalogDep
from api.schemas import CategoriesResponse, error_responses

router = APIRouter(prefix="/categories", tags=["listings"])


@router.get("", responses=error_responses(503))
def list_categories(catalog: CatalogDep) -> CategoriesResponse:
    categories = catalog.categories()
    return CategoriesResponse(data=categories, count=len(categories))
