"""The top-level categories (for the filter select on the page)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CatalogDep
from api.schemas import CategoriesResponse

router = APIRouter(prefix="/categories", tags=["listings"])


@router.get("")
def list_categories(catalog: CatalogDep) -> CategoriesResponse:
    categories = catalog.categories()
    return CategoriesResponse(data=categories, count=len(categories))
