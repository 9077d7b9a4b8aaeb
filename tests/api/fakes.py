"""A tiny catalogue and a stand-in searcher, for API tests that must not depend on the real pipeline.

Only used where a controllable searcher is the point (the pipeline raising, a searcher that records
what the route passed it); the happy paths run against the real demo pipeline.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

from PIL import Image as PILImage

from catalog.images import ImageCleaningConfig
from catalog.models import Image, Listing
from catalog.store import Catalog
from search.pipeline import Hit, SearchResult


def tiny_catalog(root: Path, url: str | None = None) -> Catalog:
    """Three listings (two with a photo file on disk, one text-only) in a fresh database: ``url``, or an SQLite
    file in ``root``."""
    catalog = Catalog(url or root / "catalog.db", root=root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = [
        ("L1", "Red mountain bike", 120.0, "Sports / Cycling / Bikes", "Bristol", "Avon", ("I1",)),
        ("L2", "Oak dining table", 80.0, "Home / Furniture / Tables", "Leeds", "West Yorkshire", ("I2",)),
        ("L3", "Free sofa", 0.0, "Home / Furniture / Sofas", "Leeds", "West Yorkshire", ()),
    ]
    listings, images = [], []
    for listing_id, title, price, category, town, county, image_ids in rows:
        levels = tuple(category.split(" / "))
        listings.append(
            Listing(
                listing_id,
                title,
                f"{title}, good condition",
                price,
                category,
                levels,
                levels[0],
                town,
                county,
                f"{town}, {county}",
                dt.date(2024, 1, 2),
                image_ids,
            )
        )
        for image_id in image_ids:
            PILImage.new("RGB", (32, 32), (200, 30, 30)).save(root / "images" / f"{image_id}.jpg")
            images.append(Image(image_id, listing_id, f"images/{image_id}.jpg", 32, 32, None))
    catalog.upsert_listings(listings)
    catalog.upsert_images(images)
    return catalog


class RecordingSearcher:
    """Returns the catalogue's listings in a fixed order and records every call."""

    def __init__(self, listing_ids: list[str], error: Exception | None = None) -> None:
        self.listing_ids = listing_ids
        self.error = error
        self.calls: list[dict] = []
        # just enough of the real Searcher's attributes for GET /health
        self.model = SimpleNamespace(
            fingerprint="f" * 64,
            embed_dim=4,
            labels=SimpleNamespace(classes=["Home", "Sports"]),
            backbones={},
            info={},
            text_tower=SimpleNamespace(backbone=SimpleNamespace(runtime="torch", precision="fp32")),
            image_tower=SimpleNamespace(backbone=SimpleNamespace(runtime="torch", precision="fp32")),
        )
        self.vector_index = SimpleNamespace(manifest={"count": len(listing_ids), "nlist": 1, "nprobe": 1})
        self.photo_index = None  # a set published without one
        self.index_version = "v-20261121T110000-1a2b3c"
        self.bm25 = listing_ids
        self.ranker = None
        self.personal_ranker = None
        self.photo_config = ImageCleaningConfig()

    def search(
        self, text=None, image=None, *, k=20, offset=0, filters=None, sort="relevance", rerank=True, user_columns=None
    ) -> SearchResult:
        self.calls.append(dict(text=text, image=image, k=k, offset=offset, filters=filters, sort=sort, rerank=rerank,
                               user_columns=user_columns))
        if self.error is not None:
            raise self.error
        page = self.listing_ids[offset : offset + k]
        hits = [Hit(i, rank, 1.0 / rank, {"rrf": 1.0 / rank}) for rank, i in enumerate(page, offset + 1)]
        return SearchResult(
            "q" * 32,
            hits,
            len(self.listing_ids),
            "Home",
            {"Home": 0.7, "Sports": 0.3},
            False,
            {"encode": 1.0, "total": 2.0},
        )
