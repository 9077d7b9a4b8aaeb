"""The served recommenders following the live catalogue: listings created, edited, sold or deleted since the
recommenders were loaded are recommended (or not) within seconds, without `train-recs` or a restart.

`follow_catalogue` brings a `Recommender`'s items to the search side's view of the catalogue (a
`search.snapshot.SearchSnapshot`: the index set plus the live follower's delta), as `recommend.folder.load` would
if the service started now: a listing it does not know is appended with no engagement signal (no ALS factors,
co-visitation or popularity; never shown, so new), an active one it knows takes its current record and vector,
and one the snapshot no longer holds (sold or deleted) stops being recommended. Rows are only ever appended, so
the row numbers held by user profiles keep meaning the same listing. The candidate search of the appended rows
is exact (`recommend.retrieval.ListingIndex.with_tail`); the trained blend and signals are shared, not copied.

`RecsFollower` is the thread that applies it to a `recommend.serving.ServedRecommender` whenever the searcher
publishes a new snapshot (at most every ``interval`` s).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import numpy as np
import scipy.sparse as sp

from recommend.data import DAY, Items, price_bands
from recommend.model import Recommender

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0


def follow_catalogue(model: Recommender, snapshot) -> Recommender:
    """A new `Recommender` whose items are ``model``'s brought to ``snapshot``; ``model`` is left as it was."""
    table = snapshot.listings
    rows = np.flatnonzero(snapshot.live & (snapshot.embedding_row >= 0))
    ids = [table.ids[r] for r in rows]
    items = model.items
    n = len(items)
    at = items.rows(ids)
    new = at < 0
    m = int(new.sum())
    at[new] = n + np.arange(m)

    def grown(values: np.ndarray, fill) -> np.ndarray:
        return np.concatenate([values, np.full((m, *values.shape[1:]), fill, values.dtype)])

    vectors = grown(items.vectors, 0.0)
    vectors[at] = snapshot.gather("listing", snapshot.embedding_row[rows])
    has_image = grown(items.has_image, False)
    has_image[at] = snapshot.gather("has_image", snapshot.embedding_row[rows])
    category = grown(items.category, "")
    category[at] = [table.categories[r] for r in rows]
    top_category = grown(items.top_category, "")
    top_category[at] = [table.cards[r].top_category if table.cards is not None else table.categories[r].split(" / ")[0]
                        for r in rows]
    town, county = grown(items.town, ""), grown(items.county, "")
    town[at] = [table.towns[r] for r in rows]
    county[at] = [table.counties[r] for r in rows]
    price = grown(items.price, np.nan)
    price[at] = table.price[rows].astype(np.float64)
    created = grown(items.created, np.nan)
    created[at[new]] = table.created_days[rows[new]].astype(np.float64) * DAY  # a known listing keeps its time
    active = np.zeros(n + m, bool)  # what the snapshot does not hold is sold or deleted
    active[at] = True
    band = grown(items.band, -1)
    moved = new.copy()  # bands stay as trained except where the price or the category changed
    known = at[~new]
    moved[~new] = (price[known] != items.price[known]) | (top_category[known] != items.top_category[known])
    band[at[moved]] = price_bands(top_category, price)[at[moved]]
    followed = Items(ids=items.ids + [ids[i] for i in np.flatnonzero(new)], vectors=vectors,
                     top_category=top_category, category=category, town=town, county=county, price=price,
                     band=band, created=created, has_image=has_image, active=active)

    factors = model.item_factors
    covisit = model.covisit
    result = dataclasses.replace(
        model,
        items=followed,
        item_factors=None if factors is None else grown(factors, 0.0),
        covisit=sp.csr_matrix((covisit.data, covisit.indices, grown(covisit.indptr, covisit.indptr[-1])),
                              shape=(n + m, n + m)),
        pop=grown(model.pop, 0.0), engaged=grown(model.engaged, 0), clicks=grown(model.clicks, 0),
        impressions=grown(model.impressions, 0), first_shown=grown(model.first_shown, np.nan),
        sold=grown(model.sold, False),
    )
    # the indexes keep their rows (an edited listing keeps its indexed vector there until the vector index is
    # rebuilt); the appended rows are searched exactly until they grow too many (`ListingIndex.extended`)
    return result.use_indexes(model.vector_index.extended(vectors), model.factor_index)


class RecsFollower:
    """Applies `follow_catalogue` to ``served`` whenever ``searcher`` publishes a new snapshot (every
    ``interval`` s at most), in a background thread."""

    def __init__(self, served, searcher, *, interval: float = DEFAULT_INTERVAL_S):
        self.served = served
        self.searcher = searcher
        self.interval = interval
        self._followed: object | None = None  # the snapshot applied last
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_seconds: float | None = None

    def start(self) -> RecsFollower:
        self._thread = threading.Thread(target=self._loop, name="recs-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
                self.last_error = None
            except Exception as error:  # noqa: BLE001 -- the recommenders loaded last keep serving
                self.last_error = f"{type(error).__name__}: {error}"
                logger.exception("recs follower: could not apply the catalogue's changes")

    def status(self) -> dict:
        model = self.served.model
        return {"items": None if model is None else len(model.items),
                "applied_seq": None if self._followed is None else self._followed.applied_seq,
                "seconds": None if self.last_seconds is None else round(self.last_seconds, 3),
                "error": self.last_error}

    def step(self) -> bool:
        """Apply the searcher's snapshot when it is not the one applied last; whether it applied one."""
        snapshot = self.searcher.snapshot
        model = self.served.model
        if model is None or snapshot is self._followed:
            return False
        started = time.perf_counter()
        self.served.model = follow_catalogue(model, snapshot)
        self._followed = snapshot
        self.last_seconds = time.perf_counter() - started
        logger.debug("recs follower: %d items after %.3f s", len(self.served.model.items), self.last_seconds)
        return True
