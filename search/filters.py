"""Structured filters (category, price range, location) evaluated as boolean masks over a ListingTable."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ranking.types import ListingTable


@dataclass(frozen=True)
class SearchFilters:
    category: str | None = None  # top-level category, or a prefix of the full category path
    min_price: float | None = None
    max_price: float | None = None
    location: str | None = None  # town or county, case-insensitive

    def __post_init__(self) -> None:
        for name in ("min_price", "max_price"):
            value = getattr(self, name)
            if value is not None and (math.isnan(value) or value < 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError(
                f"min_price ({self.min_price}) is above max_price ({self.max_price}); swap them or drop one"
            )

    @property
    def active(self) -> bool:
        return any(v not in (None, "") for v in (self.category, self.min_price, self.max_price, self.location))


def _norm(text: str | None) -> str:
    return " ".join((text or "").split()).casefold()


class FilterMasks:
    """Pre-computed columns so that one filter evaluation is a few vectorised numpy operations."""

    def __init__(self, listings: ListingTable) -> None:
        self._n = len(listings)
        self._price = listings.price.astype(np.float64)
        paths = [_norm(c) for c in listings.categories]
        self._path_values, self._path_codes = np.unique(np.array(paths, dtype=object), return_inverse=True)
        places = [_norm(t) for t in listings.towns] + [_norm(c) for c in listings.counties]
        self._place_values, place_codes = np.unique(np.array(places, dtype=object), return_inverse=True)
        self._town_codes = place_codes[: self._n]
        self._county_codes = place_codes[self._n :]

    def mask(self, filters: SearchFilters) -> np.ndarray:
        """Boolean (n,) array: True where the listing satisfies every active filter."""
        keep = np.ones(self._n, dtype=bool)
        if filters.category:
            wanted = _norm(filters.category)
            matching = [
                code
                for code, path in enumerate(self._path_values)
                if path == wanted or path.startswith(wanted + " / ")
            ]
            keep &= np.isin(self._path_codes, matching)
        if filters.min_price is not None:
            keep &= self._price >= filters.min_price  # unknown (nan) prices never satisfy a price filter
        if filters.max_price is not None:
            keep &= self._price <= filters.max_price
        if filters.location:
            wanted = _norm(filters.location)
            codes = np.flatnonzero(self._place_values == wanted)
            keep &= np.isin(self._town_codes, codes) | np.isin(self._county_codes, codes)
        return keep
