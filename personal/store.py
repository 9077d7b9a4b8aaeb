"""`EventStore`: users and their events in the catalogue database (tables `users` and `events`,
catalog/schema.py).

Writes are idempotent by event id and acknowledged only once committed. On SQLite every write transaction
starts with ``BEGIN IMMEDIATE``: it takes the write lock before reading which event ids are stored already, so
concurrent batches (threads of one server, or several server processes) never deadlock and count their
duplicates exactly. The store keeps its own engine on the catalogue's URL for that, leaving the catalogue's
transactions as they are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url

from catalog import schema
from catalog.store import Catalog, immediate_write_engine
from personal.events import Event, Rejection, is_valid_id, problem

CHUNK = 500  # ids per IN (...) query: well under every database's bound on bound parameters
MAX_PAGE = 500
DRIVER_INSERTS = True  # on SQLite, insert through the driver (_insert_sqlite); False: SQLAlchemy Core everywhere


@dataclass
class RecordReport:
    """What happened to a batch: ``stored`` + ``duplicates`` + ``len(rejected)`` == ``received``."""

    received: int
    stored: int = 0
    duplicates: int = 0  # already stored, or repeated earlier in the same batch
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class EventPage:
    events: list[Event]
    next_before: tuple[dt.datetime, str] | None  # pass as ``before`` for the next (older) page; None at the end


@dataclass
class UserDeletion:
    user_id: str
    events: int  # events erased
    user: bool  # whether the users row existed


class EventStore:
    """Users and events of one catalogue: ``EventStore(catalog)``."""

    def __init__(self, catalog: Catalog):
        self.url = catalog.url
        url = make_url(self.url)
        self._owns_engine = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
        if self._owns_engine:
            self.engine: Engine = immediate_write_engine(self.url)
        else:  # a server database, or an in-memory SQLite one (which only the catalogue's engine can see)
            self.engine = catalog.engine

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _writing(self):
        return self.engine.connect().execution_options(immediate=True)

    # --- writes -------------------------------------------------------------------------------------
    def record(self, events: Sequence[Event], *, now: dt.datetime | None = None) -> RecordReport:
        """Validate and store a batch in one transaction. Invalid events (``personal.events.problem``, or a
        listing the catalogue does not have) are rejected one by one with their index; the valid ones are
        stored unless their event id is stored already (a duplicate: retries are idempotent)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        report = RecordReport(received=len(events))
        valid: list[tuple[int, Event]] = []
        for index, item in enumerate(events):
            found = problem(item, now)
            if found is None:
                valid.append((index, item))
            else:
                report.rejected.append(Rejection(index, _id_or_none(item.event_id), *found))
        known = self._known_listings({item.listing_id for _, item in valid})
        unique: dict[str, Event] = {}
        for index, item in valid:
            if item.listing_id not in known:
                detail = f"no listing with id {item.listing_id!r} in the catalogue"
                report.rejected.append(Rejection(index, item.event_id, "unknown_listing", detail))
            elif item.event_id in unique:
                report.duplicates += 1
            else:
                unique[item.event_id] = item
        report.rejected.sort(key=lambda r: r.index)
        if not unique:
            return report
        with self._writing() as conn, conn.begin():
            stored = _stored_ids(conn, list(unique))
            new = [item for event_id, item in unique.items() if event_id not in stored]
            users = sorted({item.user_id for item in new})
            if new and DRIVER_INSERTS and conn.dialect.name == "sqlite":
                _insert_sqlite(conn, new, users, now)  # under SQLite's write lock: `stored` is exact
                inserted = len(new)
            else:
                _insert_ignoring_conflicts(conn, schema.users, [{"id": u, "created_at": _naive(now)} for u in users])
                inserted = _insert_ignoring_conflicts(conn, schema.events, [_event_row(item, now) for item in new])
        report.stored = inserted
        report.duplicates += len(unique) - inserted
        return report

    def delete_user(self, user_id: str) -> UserDeletion:
        """Erase the user's events and the user, in one transaction."""
        with self._writing() as conn, conn.begin():
            erased = conn.execute(delete(schema.events).where(schema.events.c.user_id == user_id)).rowcount
            user = conn.execute(delete(schema.users).where(schema.users.c.id == user_id)).rowcount
        return UserDeletion(user_id, erased, user > 0)

    # --- reads --------------------------------------------------------------------------------------
    def user_events(
        self, user_id: str, *, limit: int = 100, before: tuple[dt.datetime, str] | None = None
    ) -> EventPage:
        """The user's events, newest first (by ``occurred_at``, then event id), ``limit`` at most (1..500),
        older than ``before`` (a previous page's ``next_before``)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        ev = schema.events
        query = select(ev).where(ev.c.user_id == user_id)
        if before is not None:
            time, event_id = _naive(before[0]), before[1]
            query = query.where(or_(ev.c.occurred_at < time, and_(ev.c.occurred_at == time, ev.c.event_id < event_id)))
        query = query.order_by(ev.c.occurred_at.desc(), ev.c.event_id.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            found = [_event_from_row(row) for row in conn.execute(query)]
        page = found[:limit]
        more = len(found) > limit
        return EventPage(page, (page[-1].occurred_at, page[-1].event_id) if more else None)

    def iter_events(self, batch_size: int = 1000) -> Iterator[list[Event]]:
        """Every event, oldest first (``occurred_at``, then event id), in lists of ``batch_size``: keyset
        pagination, so memory stays constant whatever the log's size."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        ev = schema.events
        last: tuple[dt.datetime, str] | None = None
        while True:
            query = select(ev).order_by(ev.c.occurred_at, ev.c.event_id).limit(batch_size)
            if last is not None:
                query = query.where(
                    or_(ev.c.occurred_at > last[0], and_(ev.c.occurred_at == last[0], ev.c.event_id > last[1]))
                )
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            yield [_event_from_row(row) for row in rows]
            last = (rows[-1].occurred_at, rows[-1].event_id)

    def count(self, user_id: str | None = None) -> int:
        query = select(func.count()).select_from(schema.events)
        if user_id is not None:
            query = query.where(schema.events.c.user_id == user_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def user_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(schema.users)).scalar_one()

    def has_user(self, user_id: str) -> bool:
        return user_exists(self.engine, user_id)

    def _known_listings(self, listing_ids: set[str]) -> set[str]:
        ids = sorted(listing_ids)
        known: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                known.update(conn.execute(select(schema.listings.c.id).where(schema.listings.c.id.in_(chunk))).scalars())
        return known


def _stored_ids(conn: Connection, event_ids: list[str]) -> set[str]:
    stored: set[str] = set()
    for start in range(0, len(event_ids), CHUNK):
        chunk = event_ids[start : start + CHUNK]
        stored.update(conn.execute(select(schema.events.c.event_id).where(schema.events.c.event_id.in_(chunk))).scalars())
    return stored


_EVENT_COLUMNS = ("event_id", "user_id", "listing_id", "type", "query_id", "position", "occurred_at", "received_at")


def _insert_sqlite(conn: Connection, events: list[Event], users: list[str], now: dt.datetime) -> None:
    """The same rows as ``_insert_ignoring_conflicts`` writes, straight to the driver: SQLAlchemy's
    per-value bind processing was half of the time of a 1,000-event batch. Times are written in the text
    form SQLAlchemy's SQLite ``DateTime`` stores and reads (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC)."""
    received = _sqlite_time(now)
    conn.exec_driver_sql(
        f"INSERT INTO {schema.users.name} (id, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(user, received) for user in users],
    )
    conn.exec_driver_sql(
        f"INSERT INTO {schema.events.name} ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * 8)}) "
        "ON CONFLICT DO NOTHING",
        [
            (e.event_id, e.user_id, e.listing_id, e.type, e.query_id, e.position, _sqlite_time(e.occurred_at),
             _sqlite_time(e.received_at) if e.received_at is not None else received)
            for e in events
        ],  # fmt: skip
    )


def _sqlite_time(value: dt.datetime) -> str:
    return _naive(value).isoformat(sep=" ", timespec="microseconds")


def _insert_ignoring_conflicts(conn: Connection, table, rows: list[dict]) -> int:
    """Rows whose key is already stored are skipped, not an error: a concurrent writer on a server database
    (where ``_stored_ids`` ran without a write lock) cannot make the batch fail. Returns how many rows this
    statement inserted (``RETURNING`` the keys), so a batch racing its own retry counts each event once."""
    if not rows:
        return 0
    key = next(iter(table.primary_key.columns))
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        statement = insert(table).on_conflict_do_nothing().returning(key)
        return len(conn.execute(statement, rows).all())
    stored = set(conn.execute(select(key).where(key.in_([r[key.name] for r in rows]))).scalars())
    rows = [r for r in rows if r[key.name] not in stored]
    if rows:
        conn.execute(table.insert(), rows)
    return len(rows)


def _event_row(item: Event, now: dt.datetime) -> dict:
    return {
        "event_id": item.event_id,
        "user_id": item.user_id,
        "listing_id": item.listing_id,
        "type": item.type,
        "query_id": item.query_id,
        "position": item.position,
        "occurred_at": _naive(item.occurred_at),
        "received_at": _naive(item.received_at or now),
    }


def _event_from_row(row) -> Event:
    return Event(
        event_id=row.event_id,
        user_id=row.user_id,
        listing_id=row.listing_id,
        type=row.type,
        occurred_at=row.occurred_at.replace(tzinfo=dt.timezone.utc),
        query_id=row.query_id,
        position=row.position,
        received_at=row.received_at.replace(tzinfo=dt.timezone.utc),
    )


def _naive(value: dt.datetime) -> dt.datetime:
    """UTC without an offset: how the tables store times (the same on every database)."""
    if value.tzinfo is None:
        return value
    if value.tzinfo is not dt.timezone.utc:
        value = value.astimezone(dt.timezone.utc)
    return value.replace(tzinfo=None)


def _id_or_none(value: object) -> str | None:
    return value if is_valid_id(value) else None


def user_exists(engine: Engine, user_id: str) -> bool:
    """Whether the database holds the user (a users row: they sent events and were not erased since)."""
    with engine.connect() as conn:
        return conn.execute(select(schema.users.c.id).where(schema.users.c.id == user_id)).first() is not None
