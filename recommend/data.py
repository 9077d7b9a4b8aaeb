"""What the recommenders read: the engaged events as arrays, and the catalogue's listings as item arrays.

Impressions are not engagement: they are read only as per-listing aggregates (how often shown, when first
shown), for click-through rates and for when a listing first appeared. Every other event is weighted by its
type (`EVENT_WEIGHTS`) and by its age at the reference time (half-life `HALF_LIFE_DAYS`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select

from catalog import schema
from catalog.store import Catalog

# Confidence an event gives that the user wants the listing (ALS, profiles, affinities, co-visitation).
EVENT_WEIGHTS = {"view": 1.0, "click": 1.0, "save": 3.0, "contact_seller": 6.0, "purchase": 10.0}
# Graded relevance of a user's positive events on a listing (the learned blend's labels, the evaluation's qrels).
GRADES = {"view": 1, "click": 1, "save": 2, "contact_seller": 3, "purchase": 4}
ENGAGED_TYPES = tuple(EVENT_WEIGHTS)
TYPE_CODES = {name: code for code, name in enumerate(ENGAGED_TYPES)}
HALF_LIFE_DAYS = 30.0
PRICE_BANDS = 5  # price quantiles per top category; band -1: no price
DAY = 86400.0
_EPOCH = dt.datetime(1970, 1, 1)


def epoch_seconds(value: dt.datetime) -> float:
    """Seconds since 1970 of a UTC time (aware, or naive as the database stores it)."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return (value - _EPOCH).total_seconds()


def decay(ages_days: np.ndarray, half_life_days: float = HALF_LIFE_DAYS) -> np.ndarray:
    return np.power(0.5, np.maximum(ages_days, 0.0) / half_life_days)


@dataclass
class EventLog:
    """Engaged events (not impressions), oldest first, as parallel arrays."""

    users: np.ndarray  # str (n,)
    listings: np.ndarray  # str (n,)
    types: np.ndarray  # int8 (n,): index into ENGAGED_TYPES
    times: np.ndarray  # float64 (n,): seconds since 1970, UTC
    # per listing: how often it was shown and when first (impressions before the log's end)
    impressions: dict[str, int] = field(default_factory=dict)
    first_shown: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def weights(self, reference: float) -> np.ndarray:
        kinds = np.array([EVENT_WEIGHTS[t] for t in ENGAGED_TYPES])
        return kinds[self.types] * decay((reference - self.times) / DAY)

    def grades(self) -> np.ndarray:
        return np.array([GRADES[t] for t in ENGAGED_TYPES], np.int8)[self.types]

    def select(self, mask: np.ndarray, impressions: tuple[dict, dict] | None = None) -> EventLog:
        """The events of ``mask``, with these impression aggregates (default: the same as this log's)."""
        shown, first = impressions if impressions is not None else (self.impressions, self.first_shown)
        return EventLog(self.users[mask], self.listings[mask], self.types[mask], self.times[mask], shown, first)


def load_event_log(catalog: Catalog, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
                   users: list[str] | None = None, impressions: bool = True) -> EventLog:
    """Engaged events with ``since <= occurred_at < until`` (either bound optional; of ``users`` only when
    given), with the impressions' per-listing aggregates of every user before ``until`` (unless
    ``impressions`` is False)."""
    ev = schema.events
    bounds = []
    if since is not None:
        bounds.append(ev.c.occurred_at >= _naive(since))
    if until is not None:
        bounds.append(ev.c.occurred_at < _naive(until))
    engaged = (select(ev.c.user_id, ev.c.listing_id, ev.c.type, ev.c.occurred_at)
               .where(ev.c.type.in_(ENGAGED_TYPES), *bounds).order_by(ev.c.occurred_at, ev.c.event_id))
    if users is not None:
        engaged = engaged.where(ev.c.user_id.in_(users))
    with catalog.engine.connect() as conn:
        rows = conn.execute(engaged).all()
    log = EventLog(
        users=np.array([r[0] for r in rows], dtype=object),
        listings=np.array([r[1] for r in rows], dtype=object),
        types=np.array([TYPE_CODES[r[2]] for r in rows], np.int8),
        times=np.array([epoch_seconds(_as_datetime(r[3])) for r in rows], np.float64),
    )
    if impressions:
        log.impressions, log.first_shown = load_impressions(catalog, until)
    return log


def load_impressions(catalog: Catalog, until: dt.datetime | None = None) -> tuple[dict[str, int], dict[str, float]]:
    """Per listing: how often it was shown before ``until``, and when first (seconds since 1970)."""
    ev = schema.events
    query = (select(ev.c.listing_id, func.count(), func.min(ev.c.occurred_at))
             .where(ev.c.type == "impression").group_by(ev.c.listing_id))
    if until is not None:
        query = query.where(ev.c.occurred_at < _naive(until))
    with catalog.engine.connect() as conn:
        found = conn.execute(query).all()
    return ({r[0]: int(r[1]) for r in found}, {r[0]: epoch_seconds(_as_datetime(r[2])) for r in found})


def as_utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def log_end(catalog: Catalog) -> dt.datetime | None:
    """The time of the newest event (any type), UTC, or None without events."""
    with catalog.engine.connect() as conn:
        newest = conn.execute(select(func.max(schema.events.c.occurred_at))).scalar_one_or_none()
    return None if newest is None else _as_datetime(newest).replace(tzinfo=dt.timezone.utc)


@dataclass
class Items:
    """The catalogue's listings that have a vector in the shared text-image space, ordered by id."""

    ids: list[str]
    vectors: np.ndarray  # float32 (n, d), L2-normalised listing vectors (what the vector index holds)
    top_category: np.ndarray  # object (n,)
    category: np.ndarray  # object (n,): the full path
    town: np.ndarray  # object (n,): town, or "" when unknown
    county: np.ndarray  # object (n,)
    price: np.ndarray  # float64 (n,), NaN when unknown
    band: np.ndarray  # int8 (n,): price quantile within the top category, -1 without price
    created: np.ndarray  # float64 (n,): seconds since 1970 of created_at (NaN when unknown)
    has_image: np.ndarray  # bool (n,)
    active: np.ndarray  # bool (n,): status == "active" (sold listings are never recommended)
    row_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.row_of:
            self.row_of = {listing_id: row for row, listing_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, listing_ids) -> np.ndarray:
        """Rows of the ids (-1 for a listing that is not an item)."""
        return np.array([self.row_of.get(i, -1) for i in listing_ids], np.int64)


def price_bands(top_category: np.ndarray, price: np.ndarray, bands: int = PRICE_BANDS) -> np.ndarray:
    """Each listing's price quantile (0..bands-1) among the priced listings of its top category; -1 unpriced."""
    out = np.full(len(price), -1, np.int8)
    for name in np.unique(top_category):
        rows = np.flatnonzero((top_category == name) & np.isfinite(price))
        if not len(rows):
            continue
        edges = np.quantile(price[rows], np.linspace(0, 1, bands + 1)[1:-1])
        out[rows] = np.searchsorted(edges, price[rows], side="right")
    return out


def items_from_listings(listings, vectors: np.ndarray, has_image: np.ndarray | None = None) -> Items:
    """Items from ``catalog.models.Listing``s and their vectors (row i of ``vectors`` is listing i)."""
    price = np.array([math.nan if x.price is None else float(x.price) for x in listings], np.float64)
    top = np.array([x.top_category for x in listings], dtype=object)
    created = np.array([
        math.nan if x.created_at is None
        else epoch_seconds(dt.datetime.combine(x.created_at, dt.time()) if not isinstance(x.created_at, dt.datetime)
                           else x.created_at)
        for x in listings
    ])
    return Items(
        ids=[x.id for x in listings],
        vectors=np.ascontiguousarray(vectors, np.float32),
        top_category=top,
        category=np.array([x.category for x in listings], dtype=object),
        town=np.array([x.town or "" for x in listings], dtype=object),
        county=np.array([x.county or "" for x in listings], dtype=object),
        price=price,
        band=price_bands(top, price),
        created=created,
        has_image=np.array([bool(x.image_ids) for x in listings]) if has_image is None else has_image,
        active=np.array([x.status == "active" for x in listings]),
    )


def load_items(catalog: Catalog, fingerprint: str) -> Items:
    """The embedded listings of the catalogue (``encoders.embed`` vectors of the model ``fingerprint``)."""
    from encoders.embed import load_embeddings

    table = load_embeddings(catalog, fingerprint)
    listings = {x.id: x for x in catalog.get_listings(table.ids)}
    keep = [i for i, listing_id in enumerate(table.ids) if listing_id in listings]
    return items_from_listings([listings[table.ids[i]] for i in keep], table.listing[keep], table.has_image[keep])


def _naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _as_datetime(value) -> dt.datetime:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value
