"""Build the in-memory ListingTable from the catalogue (searchable listings only) or from listing records."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

import numpy as np

from catalog.labels import LabelEncoder
from catalog.models import Listing
from catalog.store import Catalog
from ranking.types import ListingCard, ListingTable

logger = logging.getLogger(__name__)

_EPOCH = dt.date(1970, 1, 1)


def build_listing_table(catalog: Catalog, labels: LabelEncoder, batch_size: int = 2000) -> ListingTable:
    """The catalogue's active listings, ordered by id (a sold listing is never searched)."""
    return listing_columns(
        (listing for batch in catalog.iter_listings(batch_size=batch_size) for listing in batch
         if listing.status == "active"),
        labels,
    )


def listing_columns(listings: Iterable[Listing], labels: LabelEncoder | None,
                    median_price: dict[int, float] | None = None) -> ListingTable:
    """A ListingTable of ``listings`` in their order. ``median_price`` (top-category index -> median) gives the
    category medians to use (a live delta takes the main table's), else they are computed over these rows."""
    ids, titles, categories, towns, counties = [], [], [], [], []
    top_index, price, photos, desc_len, created, cards = [], [], [], [], [], []
    known = set(labels.classes) if labels is not None else set()
    for listing in listings:
        ids.append(listing.id)
        titles.append(listing.title)
        categories.append(listing.category)
        towns.append(listing.town or "")
        counties.append(listing.county or "")
        top_index.append(labels.encode(listing.top_category) if listing.top_category in known else -1)
        price.append(np.nan if listing.price is None else listing.price)
        photos.append(len(listing.image_ids))
        desc_len.append(len(listing.description or ""))
        created.append(np.nan if listing.created_at is None else (listing.created_at - _EPOCH).days)
        cards.append(listing_card(listing))
    top = np.asarray(top_index, dtype=np.int64)
    prices = np.asarray(price, dtype=np.float32)
    if median_price is None:
        medians = _category_medians(top, prices)
    else:
        medians = np.array([median_price.get(code, np.nan) for code in top.tolist()], dtype=np.float32)
    return ListingTable(
        ids=ids,
        titles=titles,
        categories=categories,
        top_category_index=top,
        price=prices,
        category_median_price=medians,
        towns=towns,
        counties=counties,
        photo_count=np.asarray(photos, dtype=np.int32),
        description_length=np.asarray(desc_len, dtype=np.int32),
        created_days=np.asarray(created, dtype=np.float32),
        cards=cards,
    )


def listing_card(listing: Listing) -> ListingCard:
    return ListingCard(listing.title, listing.price, listing.category, listing.top_category, listing.location,
                       listing.image_ids[0] if listing.image_ids else None)


def _category_medians(top: np.ndarray, prices: np.ndarray) -> np.ndarray:
    medians = np.full(len(prices), np.nan, dtype=np.float32)
    for code in np.unique(top):
        rows = top == code
        known = prices[rows][~np.isnan(prices[rows])]
        if known.size:
            medians[rows] = np.median(known)
    return medians
