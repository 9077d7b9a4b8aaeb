"""The catalogue's plain records: a listing and one of its cleaned photos."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Listing:
    """One cleaned product listing.

    `category` is the full path ("A / B / C"), `category_levels` its parts and `top_category` the first
    part, which is the class label. `price` is in GBP (0.0 for free items, None when unknown).
    `image_ids` lists the listing's cleaned photos in export order; empty for a text-only listing.
    `status` is `active` (searchable) or `sold` (readable by id, never searched); `seller_id` names who may
    change it through the API (None for a listing from a batch ingest).
    """

    id: str
    title: str
    description: str
    price: float | None
    category: str
    category_levels: tuple[str, ...]
    top_category: str
    town: str | None
    county: str | None
    location: str
    created_at: datetime.date | None
    image_ids: tuple[str, ...] = field(default_factory=tuple)
    status: str = "active"
    seller_id: str | None = None

    @property
    def text(self) -> str:
        """Title and description joined: the text the encoders and BM25 see."""
        return f"{self.title}. {self.description}" if self.description else self.title


@dataclass(frozen=True)
class Image:
    """One cleaned photo. `path` is relative to the catalogue root (e.g. "images/<id>.jpg");
    `Catalog.image_path(id)` resolves it. `width`/`height` are those of the cleaned file."""

    id: str
    listing_id: str
    path: str
    width: int
    height: int
    created_at: datetime.date | None
