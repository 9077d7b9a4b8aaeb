"""A seeded user simulator: realistic interaction logs for any catalogue, in the event format of the API.

Users with hidden tastes (personal/sim_world.py) arrive over the simulated period and come back in sessions.
A session follows one of the user's interests: it starts with a search (words a buyer would type, run through
the real search pipeline when the workspace has one) or by browsing the interest's category (newest first),
looks at one to three pages of 20, clicks what it examines and likes (personal/click_model.py), views, saves,
contacts sellers and buys; a bought listing is sold and leaves. Some listings appear during the period, and
some sessions return to a saved listing. The same seed gives the same events.

Only events leave the simulator (``Event``s, stored or written like any client's); its hidden state goes,
on request, to a separate diagnostics file.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from personal.click_model import PositionBasedModel
from personal.events import Event
from personal.sim_world import Interest, SimCatalog, Taste, attractiveness, buyer_query, draw_tastes, hidden_state

logger = logging.getLogger(__name__)

MAX_USERS = 1_000_000
MAX_DAYS = 366
DEFAULT_START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
# Share of sessions by hour of day (UTC): quiet at night, busiest in the evening.
HOURLY = np.array([1, 0.5, 0.3, 0.2, 0.2, 0.3, 0.8, 1.5, 2, 2.2, 2.3, 2.5, 3, 2.8, 2.5, 2.5, 2.7, 3, 3.6, 4.2, 4.5,
                   4, 3, 1.8])  # fmt: skip
SECOND = 1 / 86400  # in days


# A search: the listing ids ranked for (words, town filter, price cap). The pipeline is deterministic for one
# query, so results are cached: buyers type the same words often. A `ServedRanking` also carries the query id
# the pipeline served (and logged its features under); the events of that search then carry it too.
SearchFunction = Callable[[str, str | None, float | None], list[str]]


class ServedRanking(list):
    """Listing ids as a search served them, with that search's ``query_id`` (its feature-log key)."""

    def __init__(self, listing_ids, query_id: str):
        super().__init__(listing_ids)
        self.query_id = query_id


@dataclass(frozen=True)
class SimConfig:
    users: int = 1000
    days: int = 30
    seed: int = 0
    start: dt.datetime = DEFAULT_START  # UTC midnight of day 0
    page_size: int = 20
    new_listing_share: float = 0.2  # listings that appear during the period (the newest by created_at)
    initial_user_share: float = 0.5  # users there from day 0; the rest arrive over the period
    max_events: int = 5_000_000
    click_model: PositionBasedModel = field(default_factory=PositionBasedModel)
    # behaviour after a click, scaled by the listing's attractiveness to the user
    save_rate: float = 0.3
    contact_rate: float = 0.15
    purchase_rate: float = 0.45  # of contacts, scaled by how well the price fits
    next_page_rate: float = 0.4
    refine_rate: float = 0.35  # another search or browse in the same session
    revisit_rate: float = 0.3  # a session that starts by looking at a saved listing again

    def __post_init__(self) -> None:
        if not 1 <= self.users <= MAX_USERS:
            raise ValueError(f"users must be between 1 and {MAX_USERS:,}, got {self.users}")
        if not 1 <= self.days <= MAX_DAYS:
            raise ValueError(f"days must be between 1 and {MAX_DAYS}, got {self.days}")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(days=self.days)


@dataclass
class SimReport:
    users: int = 0
    sessions: int = 0
    searches: int = 0
    browses: int = 0
    events: Counter = field(default_factory=Counter)  # type -> count
    sold: int = 0
    released_during: int = 0
    truncated: bool = False
    seconds: float = 0.0

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


def round_price(value: float) -> float:
    """The round number a buyer types as a price cap: the next of 1, 2, 5, 10, 20, 50, ... at or above ``value``."""
    for step in (10.0 ** e * m for e in range(0, 8) for m in (1, 2, 5)):
        if step >= value:
            return step
    return float(np.ceil(value))


class Simulator:
    """``Simulator(catalog, config, search=None).run()`` yields each session's events, in session order."""

    def __init__(self, catalog: SimCatalog, config: SimConfig, search: SearchFunction | None = None):
        if len(catalog) == 0:
            raise ValueError("the catalogue has no listings to simulate users on")
        self.catalog = catalog
        self.config = config
        self.search = search
        self.rng = np.random.default_rng(config.seed)
        self.prefix = f"sim{config.seed}"
        n = len(catalog)
        catalog.quality = self.rng.lognormal(0.0, 0.8, n)
        self.medians = catalog.category_median_price()
        self.release_day = self._release_days()
        self.sold_day = np.full(n, np.inf)
        self.tastes = draw_tastes(catalog, config.users, config.days, self.rng, id_prefix=self.prefix,
                                  initial_share=config.initial_user_share)  # fmt: skip
        self.row_of = {listing_id: row for row, listing_id in enumerate(catalog.ids)}
        # browse pages: listings of a category, newest first (appearing during the period, then created_at)
        newest = np.lexsort((catalog.ids, -np.nan_to_num(catalog.created, nan=-1e9), -self.release_day))
        self.browse_order = {code: newest[catalog.top[newest] == code] for code in range(len(catalog.top_names))}
        self.report = SimReport(users=config.users, released_during=int((self.release_day > 0).sum()))
        self._event_number = 0

    def _release_days(self) -> np.ndarray:
        """Day each listing appears: 0 for most; the newest ``new_listing_share`` (by created_at) spread over
        the period in created_at order."""
        n = len(self.catalog)
        late = int(round(self.config.new_listing_share * n)) if n > 1 else 0
        order = np.lexsort((self.rng.random(n), np.nan_to_num(self.catalog.created, nan=-1e9)))
        days = np.zeros(n)
        if late:
            days[order[n - late :]] = np.sort(self.rng.uniform(0, self.config.days, late))
        return days

    # --- the timeline -------------------------------------------------------------------------------
    def schedule(self) -> list[tuple[float, int]]:
        """(day, user index) of every session, in time order: a user's first session at arrival, then a
        Poisson process at the user's own rate, at hours drawn from ``HOURLY``."""
        days = self.config.days
        sessions = []
        hours = HOURLY / HOURLY.sum()
        for index, taste in enumerate(self.tastes):
            span = days - taste.arrives_at
            count = int(self.rng.poisson(taste.sessions_per_day * span))
            starts = [taste.arrives_at] + list(self.rng.uniform(taste.arrives_at, days, count))
            for start in starts:
                day = np.floor(start) + (self.rng.choice(24, p=hours) + self.rng.random()) / 24
                sessions.append((float(min(max(day, taste.arrives_at), days - 60 * SECOND)), index))
        sessions.sort()
        return sessions

    def run(self, progress: bool = False) -> Iterator[list[Event]]:
        started = time.perf_counter()
        schedule = self.schedule()
        for day, index in tqdm(schedule, desc="simulate", unit=" sessions", disable=not progress):
            if self.report.total_events >= self.config.max_events:
                self.report.truncated = True
                logger.warning("stopped at --max-events %d", self.config.max_events)
                break
            self.report.sessions += 1
            events = self._session(self.tastes[index], day)
            for item in events:
                self.report.events[item.type] += 1
            yield events
        self.report.sold = int(np.isfinite(self.sold_day).sum())
        self.report.seconds = time.perf_counter() - started

    def hidden_state(self) -> dict:
        return hidden_state(self.catalog, self.tastes, self.release_day, self.sold_day)

    # --- one session --------------------------------------------------------------------------------
    def _available(self, rows: np.ndarray, day: float) -> np.ndarray:
        return rows[(self.release_day[rows] <= day) & (self.sold_day[rows] > day)]

    def _session(self, taste: Taste, day: float) -> list[Event]:
        rng, config = self.rng, self.config
        events: list[Event] = []
        clock = [day]

        def emit(kind: str, row: int, *, query_id=None, position=None, after: float = 0.0) -> float:
            clock[0] += after
            self._event_number += 1
            occurred = config.start + dt.timedelta(days=clock[0])
            events.append(
                Event(
                    event_id=f"{self.prefix}-{self._event_number:010d}",
                    user_id=taste.user_id,
                    listing_id=self.catalog.ids[row],
                    type=kind,
                    occurred_at=occurred,
                    query_id=query_id,
                    position=position,
                    received_at=occurred + dt.timedelta(seconds=float(rng.uniform(0.05, 2.0))),
                )
            )
            return clock[0]

        if taste.saved and rng.random() < config.revisit_rate:
            row = taste.saved[int(rng.integers(len(taste.saved)))]
            if self._available(np.array([row]), clock[0]).size:
                interest = max(taste.interests, key=lambda i: i.sub == self.catalog.sub[row])
                attr = float(attractiveness(self.catalog, self.medians, taste, interest, np.array([row]))[0])
                emit("view", row, after=rng.uniform(0, 30) * SECOND)
                if self._follow_up(emit, taste, interest, row, attr, boost=2.0):
                    return events
        interest = self._pick_interest(taste)
        for _ in range(3):
            done = self._look(emit, taste, interest, clock)
            if done or rng.random() >= config.refine_rate:
                break
            if rng.random() < 0.3:
                interest = self._pick_interest(taste)
        return events

    def _pick_interest(self, taste: Taste) -> Interest:
        weights = np.array([i.weight for i in taste.interests])
        return taste.interests[int(self.rng.choice(len(weights), p=weights / weights.sum()))]

    def _look(self, emit, taste: Taste, interest: Interest, clock: list[float]) -> bool:
        """One search or category browse, its pages, and what the user does with them; True once bought."""
        rng, config, catalog = self.rng, self.config, self.catalog
        query_id = None
        if self.search is not None and rng.random() < taste.search_share:
            words = buyer_query(catalog, interest, rng)
            town = None
            if taste.home_town >= 0 and rng.random() < 0.3 * taste.locality:
                town = catalog.place_names[taste.home_town].split(":", 1)[1]
            cap = None
            if rng.random() < 0.2:
                cap = round_price(self.medians[interest.top] * taste.budget * 1.5)
            found = self.search(words, town, cap)
            ranked = np.array([self.row_of[i] for i in found if i in self.row_of], dtype=np.int64)
            query_id = rng.bytes(16).hex()
            query_id = getattr(found, "query_id", None) or query_id
            self.report.searches += 1
        else:
            ranked = self.browse_order.get(interest.top, np.zeros(0, dtype=np.int64))
            self.report.browses += 1
        shown_all = self._available(ranked, clock[0])
        size = config.page_size
        for page in range(taste.patience):
            shown = shown_all[page * size : (page + 1) * size]
            if not shown.size:
                return False
            first_rank = page * size + 1
            emit_time = rng.uniform(1, 4) * SECOND
            for offset, row in enumerate(shown):
                emit("impression", int(row), query_id=query_id, position=first_rank + offset, after=emit_time)
                emit_time = 0.0
            attr = attractiveness(catalog, self.medians, taste, interest, shown)
            clicked = config.click_model.clicks(attr, np.arange(1, len(shown) + 1), rng)
            for offset in np.flatnonzero(clicked):
                row = int(shown[offset])
                position = first_rank + int(offset)
                emit("click", row, query_id=query_id, position=position, after=rng.uniform(2, 20) * SECOND)
                emit("view", row, query_id=query_id, after=rng.uniform(0.3, 2) * SECOND)
                if self._follow_up(emit, taste, interest, row, float(attr[offset])):
                    return True
            if rng.random() >= config.next_page_rate:
                return False
        return False

    def _follow_up(self, emit, taste: Taste, interest: Interest, row: int, attr: float, boost: float = 1.0) -> bool:
        """Save, contact the seller, buy; True once bought (the listing is then sold)."""
        rng, config = self.rng, self.config
        if row not in taste.saved and rng.random() < config.save_rate * attr:
            emit("save", row, after=rng.uniform(5, 60) * SECOND)
            taste.saved.append(row)
        if rng.random() < min(1.0, config.contact_rate * attr * boost):
            contacted_at = emit("contact_seller", row, after=rng.uniform(20, 300) * SECOND)
            # a listing someone has already agreed to buy is gone (it stays listed until the sale is done)
            if np.isinf(self.sold_day[row]) and rng.random() < min(1.0, config.purchase_rate * (0.5 + attr)):
                # the deal is made later, after talking to the seller, but within the simulated period
                delay = min(rng.uniform(0.5, 36) / 24, max(SECOND, config.days - contacted_at - SECOND))
                self.sold_day[row] = emit("purchase", row, after=delay)
                if row in taste.saved:
                    taste.saved.remove(row)
                interest.weight *= 0.2  # the need is met, mostly
                return True
        return False


class PipelineSearch:
    """The simulated users' search: ``search.pipeline.Searcher`` (re-ranked when it has a re-ranker), each
    distinct (words, town, price cap) run once and its ranking kept in ``cache`` as a `ServedRanking`: the
    events of every search with those words carry the query id of that run, so a searcher with a feature
    logger gives feature-log rows that the events label (users who typed the same words share the rows;
    their events tell them apart)."""

    def __init__(self, searcher, k: int = 100):
        self.searcher = searcher
        self.k = k
        self.cache: dict[tuple[str, str | None, float | None], list[str]] = {}

    def __call__(self, words: str, town: str | None, max_price: float | None) -> ServedRanking:
        from search.filters import SearchFilters

        key = (words, town, max_price)
        if key not in self.cache:
            filters = SearchFilters(location=town, max_price=max_price)
            result = self.searcher.search(text=words, k=self.k, filters=filters)
            self.cache[key] = ServedRanking([hit.listing_id for hit in result.hits], result.query_id)
        return self.cache[key]


@dataclass
class StoreTotals:
    stored: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count (none expected: a simulator bug)


def store_events(store, batches: Iterator[list[Event]], batch_size: int = 1000) -> StoreTotals:
    """Record the simulated events through ``EventStore.record`` (the checks every client's events get), in
    batches of ``batch_size``."""
    totals = StoreTotals()
    pending: list[Event] = []

    def flush() -> None:
        report = store.record(pending)
        totals.stored += report.stored
        totals.duplicates += report.duplicates
        totals.rejected.update(r.reason for r in report.rejected)
        pending.clear()

    for events in batches:
        pending.extend(events)
        while len(pending) >= batch_size:
            rest = pending[batch_size:]
            del pending[batch_size:]
            flush()
            pending.extend(rest)
    if pending:
        flush()
    return totals
