"""`Catalog`: the repository over the catalogue database (SQLite file by default, any SQLAlchemy URL)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sqlalchemy import Engine, bindparam, create_engine, delete, event, func, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError

from catalog import schema
from catalog.change_log import LogHead
from catalog.errors import CatalogError
from catalog.migrations import prepare_schema
from catalog.models import Image, Listing

logger = logging.getLogger(__name__)

# Built once: a search reads the page's statuses with it on every request (building the statement cost as much as
# running it; the expanding parameter keeps one cached compilation for any number of ids).
_ACTIVE_AMONG = select(schema.listings.c.id).where(schema.listings.c.id.in_(bindparam("ids", expanding=True)),
                                                   schema.listings.c.status == "active")

_LISTING_COLUMNS = [c.name for c in schema.listings.columns]


def to_db_url(url_or_path: str | os.PathLike) -> str:
    """A SQLAlchemy URL for a URL or a plain file path (which means an SQLite file)."""
    text = os.fspath(url_or_path)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _listing_row(listing: Listing) -> dict:
    return {
        "id": listing.id,
        "title": listing.title,
        "description": listing.description,
        "price": listing.price,
        "category": listing.category,
        "category_levels": json.dumps(list(listing.category_levels), ensure_ascii=False),
        "top_category": listing.top_category,
        "town": listing.town,
        "county": listing.county,
        "location": listing.location,
        "created_at": listing.created_at,
        "image_ids": json.dumps(list(listing.image_ids)),
        "status": listing.status,
        "seller_id": listing.seller_id,
        "updated_at": _utc_now(),
    }


def _listing_from_row(row) -> Listing:
    return Listing(
        id=row.id,
        title=row.title,
        description=row.description,
        price=row.price,
        category=row.category,
        category_levels=tuple(json.loads(row.category_levels)),
        top_category=row.top_category,
        town=row.town,
        county=row.county,
        location=row.location,
        created_at=row.created_at,
        image_ids=tuple(json.loads(row.image_ids)),
        status=row.status,
        seller_id=row.seller_id,
    )


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def record_changes(conn: Connection, listing_ids: Iterable[str], op: str) -> None:
    """Append one change-log row per listing (schema.listing_changes), inside the caller's transaction: every
    write to a listing or its photos calls it, so the log is complete by construction."""
    if op not in ("upsert", "delete"):
        raise ValueError(f"op must be 'upsert' or 'delete', got {op!r}")
    now = _utc_now()
    rows = [{"listing_id": listing_id, "op": op, "changed_at": now} for listing_id in dict.fromkeys(listing_ids)]
    if rows:
        if conn.dialect.name == "postgresql":
            # hold a transaction id before taking a seq, so that a reader of `Catalog.log_head` sees this writer
            # in flight for as long as its seq may still become visible (catalog/change_log.py)
            conn.execute(select(func.pg_current_xact_id()))
        conn.execute(schema.listing_changes.insert(), rows)


def image_row(image: Image, extra: dict | None = None) -> dict:
    row = {
        "id": image.id,
        "listing_id": image.listing_id,
        "path": image.path,
        "width": image.width,
        "height": image.height,
        "created_at": image.created_at,
        "source_key": None,
        "source_width": None,
        "source_height": None,
    }
    if extra:
        row.update(extra)
    return row


def _upsert(conn: Connection, table, rows: list[dict]) -> None:
    """Insert or replace rows by primary key, with the dialect's native upsert where there is one."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        stmt = insert(table)
        keys = [c.name for c in table.primary_key.columns]
        updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates), rows)
        return
    key = next(iter(table.primary_key.columns))
    conn.execute(delete(table).where(key.in_([r[key.name] for r in rows])))
    conn.execute(table.insert(), rows)


class Catalog:
    """The catalogue's listings and cleaned images in one database.

    `Catalog("workspace/catalog.db")` or `Catalog("sqlite:///...")` or a server URL. Image paths are stored
    relative to `root` (default: the SQLite file's folder, else the current directory) so a workspace
    folder can be copied or moved. Every write runs in one transaction.

    A database that cannot be used raises `CatalogError` (one line), on opening or from whichever query
    meets the damage: a file that is not SQLite, a damaged one, or tables of another schema. Opening
    creates the schema only in an empty database (or, on a server, one without any catalogue table).
    """

    def __init__(self, url_or_path: str | os.PathLike, *, root: str | os.PathLike | None = None):
        self.url = to_db_url(url_or_path)
        sqlite_file = _sqlite_file(self.url)
        if sqlite_file is not None:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(root) if root is not None else (sqlite_file.parent if sqlite_file else Path.cwd())
        self.engine: Engine = create_engine(self.url)
        name = str(sqlite_file) if sqlite_file else self.engine.url.render_as_string(hide_password=True)
        event.listen(self.engine, "handle_error", _damage_as_catalog_error(name))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            self._refuse_foreign_schema(name, only_catalogue=sqlite_file is not None)
            self._prepare_schema(name)
            self._check_tables(name)
        except BaseException:
            self.engine.dispose()
            raise

    def _refuse_foreign_schema(self, name: str, *, only_catalogue: bool) -> None:
        """Refuse a database holding some other application's schema before anything is written into it.

        ``only_catalogue``: the database is ours alone (an SQLite file), so other tables mean it is not a
        catalogue; a server database may hold other applications' tables next to ours."""
        present = set(inspect(self.engine).get_table_names())
        # every catalogue records its schema version in `meta` from its first transaction on
        if only_catalogue and present and schema.meta.name not in present:
            found = ", ".join(sorted(present)[:5])
            raise CatalogError(name, f"it holds other tables ({found}), not a marketsearch catalogue")

    def _prepare_schema(self, name: str) -> None:
        """Create, migrate (catalog/migrations.py) or refuse the schema. Processes opening one database at
        once (`serve --workers N`) may race on a step; the loser finds the schema done on its next try."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    prepare_schema(conn, name)
                return
            except DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _check_tables(self, name: str) -> None:
        """Every table and column of this code's schema is there (a damaged or hand-edited file is refused)."""
        inspector = inspect(self.engine)
        present = set(inspector.get_table_names())
        for table_name, table in schema.metadata.tables.items():
            if table_name not in present:
                raise CatalogError(name, f"the table {table_name} is missing")
            columns = {column["name"] for column in inspector.get_columns(table_name)}
            missing = [column.name for column in table.columns if column.name not in columns]
            if missing:
                named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                raise CatalogError(name, f"the table {table_name} lacks the column(s) {named}")

    def __repr__(self) -> str:
        return f"Catalog({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writes -------------------------------------------------------------------------------------
    # Every write appends to the change log (`record_changes`) in its own transaction.
    def upsert_listings(self, listings: Iterable[Listing]) -> int:
        rows = [_listing_row(x) for x in listings]
        with self.engine.begin() as conn:
            _upsert(conn, schema.listings, rows)
            record_changes(conn, (r["id"] for r in rows), "upsert")
        return len(rows)

    def upsert_images(self, images: Iterable[Image]) -> int:
        rows = [image_row(x) for x in images]
        with self.engine.begin() as conn:
            _upsert(conn, schema.images, rows)
            record_changes(conn, (r["listing_id"] for r in rows), "upsert")
        return len(rows)

    def write_batch(self, listings: Sequence[Listing], image_rows: Sequence[dict]) -> None:
        """Upsert listings together with their image rows in one transaction (what ingest uses).

        Image rows of these listings that are no longer in their `image_ids` are removed, so a re-ingest
        of a changed export leaves no stale photos behind.
        """
        listing_rows = [_listing_row(x) for x in listings]
        keep = {image_id for x in listings for image_id in x.image_ids}
        with self.engine.begin() as conn:
            _upsert(conn, schema.listings, listing_rows)
            ids = [x.id for x in listings]
            for chunk in _chunks(ids, 500):
                stale = conn.execute(select(schema.images.c.id).where(schema.images.c.listing_id.in_(chunk))).scalars()
                stale_ids = [i for i in stale if i not in keep]
                if stale_ids:
                    conn.execute(delete(schema.images).where(schema.images.c.id.in_(stale_ids)))
            _upsert(conn, schema.images, list(image_rows))
            record_changes(conn, ids, "upsert")

    def delete_listing(self, listing_id: str) -> bool:
        with self.engine.begin() as conn:
            conn.execute(delete(schema.images).where(schema.images.c.listing_id == listing_id))
            result = conn.execute(delete(schema.listings).where(schema.listings.c.id == listing_id))
            if result.rowcount > 0:
                record_changes(conn, [listing_id], "delete")
        return result.rowcount > 0

    # --- change log ---------------------------------------------------------------------------------
    def last_change(self) -> int:
        """The sequence number of the newest change-log row (0 for an empty log)."""
        return self.log_head().seq

    def log_head(self) -> LogHead:
        """The newest change-log seq and, on PostgreSQL, the write transactions in flight when it was read
        (one statement, one snapshot): a seq below the head may still appear until they have finished."""
        newest = select(func.coalesce(func.max(schema.listing_changes.c.seq), 0)).scalar_subquery()
        with self.engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                return LogHead(conn.execute(select(newest)).scalar_one())
            in_flight = text("ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot())::text)")
            seq, xids = conn.execute(select(newest, in_flight)).one()
        return LogHead(seq, frozenset(int(x) for x in xids))

    def settled_change(self, timeout: float = 300.0) -> int:
        """The newest change-log seq up to which every change is visible: the head, once every write transaction
        in flight when it was read has finished (at once on SQLite). A checkpoint must be settled: a reader
        starting past it would miss a lower seq committed later. CatalogError after ``timeout`` seconds."""
        head = self.log_head()
        deadline = time.monotonic() + timeout
        while head.in_flight & self.log_head().in_flight:
            if time.monotonic() >= deadline:
                raise CatalogError(self.engine.url.render_as_string(hide_password=True),
                                   f"write transactions {sorted(head.in_flight)} have been in flight for over "
                                   f"{timeout:.0f}s; the change-log checkpoint cannot be read until they finish")
            time.sleep(0.02)
        return head.seq

    def changes_since(self, seq: int, limit: int = 1000) -> list[tuple[int, str, str]]:
        """Change-log rows after ``seq``, oldest first: (seq, listing_id, op)."""
        log = schema.listing_changes
        query = select(log.c.seq, log.c.listing_id, log.c.op).where(log.c.seq > seq).order_by(log.c.seq).limit(limit)
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def changes_in(self, seqs: Sequence[int]) -> list[tuple[int, str, str]]:
        """The change-log rows with these seqs that are visible (committed), oldest first."""
        log = schema.listing_changes
        rows = []
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(seqs)), 500):
                query = select(log.c.seq, log.c.listing_id, log.c.op).where(log.c.seq.in_(chunk))
                rows += [tuple(row) for row in conn.execute(query)]
        return sorted(rows)

    # --- reads --------------------------------------------------------------------------------------
    def get_listing(self, listing_id: str) -> Listing | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.listings).where(schema.listings.c.id == listing_id)).first()
        return _listing_from_row(row) if row is not None else None

    def get_listings(self, ids: Sequence[str]) -> list[Listing]:
        """Listings in the order of `ids`; unknown ids are skipped."""
        found: dict[str, Listing] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids)), 500):
                for row in conn.execute(select(schema.listings).where(schema.listings.c.id.in_(chunk))):
                    found[row.id] = _listing_from_row(row)
        return [found[i] for i in ids if i in found]

    def active_among(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that are listings with status ``active`` (not sold, not deleted): one primary-key
        read of the id and status columns, for serving a page of hits held in memory."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids)), 500):
                found.update(conn.execute(_ACTIVE_AMONG, {"ids": chunk}).scalars())
        return found

    def iter_listings(self, batch_size: int = 500) -> Iterator[list[Listing]]:
        """All listings ordered by id, in lists of `batch_size` (keyset pagination, constant memory)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        last: str | None = None
        while True:
            query = select(schema.listings).order_by(schema.listings.c.id).limit(batch_size)
            if last is not None:
                query = query.where(schema.listings.c.id > last)
            with self.engine.connect() as conn:
                batch = [_listing_from_row(r) for r in conn.execute(query)]
            if not batch:
                return
            yield batch
            last = batch[-1].id

    def listing_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(schema.listings.c.id).order_by(schema.listings.c.id)).scalars())

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(schema.listings)).scalar_one()

    def get_image(self, image_id: str) -> Image | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.images).where(schema.images.c.id == image_id)).first()
        if row is None:
            return None
        return Image(row.id, row.listing_id, row.path, row.width, row.height, row.created_at)

    def images_of(self, listing_id: str) -> list[Image]:
        listing = self.get_listing(listing_id)
        if listing is None:
            return []
        return [img for i in listing.image_ids if (img := self.get_image(i)) is not None]

    def image_path(self, image_id: str) -> Path | None:
        """The cleaned image file on disk, or None for an unknown image id."""
        with self.engine.connect() as conn:
            path = conn.execute(select(schema.images.c.path).where(schema.images.c.id == image_id)).scalar_one_or_none()
        return (self.root / path) if path is not None else None

    def categories(self) -> list[str]:
        """Top-level categories present, sorted."""
        with self.engine.connect() as conn:
            query = select(schema.listings.c.top_category).distinct().order_by(schema.listings.c.top_category)
            return list(conn.execute(query).scalars())

    def stats(self) -> dict:
        """Counts for summaries: listings, images, per_category, text_only, free, priced, price range."""
        ls, im = schema.listings, schema.images
        with self.engine.connect() as conn:
            n_listings = conn.execute(select(func.count()).select_from(ls)).scalar_one()
            n_images = conn.execute(select(func.count()).select_from(im)).scalar_one()
            per_category = dict(
                conn.execute(
                    select(ls.c.top_category, func.count()).group_by(ls.c.top_category).order_by(ls.c.top_category)
                ).all()
            )
            text_only = conn.execute(select(func.count()).select_from(ls).where(ls.c.image_ids == "[]")).scalar_one()
            free = conn.execute(select(func.count()).select_from(ls).where(ls.c.price == 0)).scalar_one()
            no_price = conn.execute(select(func.count()).select_from(ls).where(ls.c.price.is_(None))).scalar_one()
            price_min, price_max = conn.execute(select(func.min(ls.c.price), func.max(ls.c.price))).one()
            first, last = conn.execute(select(func.min(ls.c.created_at), func.max(ls.c.created_at))).one()
        return {
            "listings": n_listings,
            "images": n_images,
            "categories": len(per_category),
            "per_category": per_category,
            "text_only": text_only,
            "free": free,
            "no_price": no_price,
            "price_min": price_min,
            "price_max": price_max,
            "created_first": first.isoformat() if isinstance(first, datetime.date) else first,
            "created_last": last.isoformat() if isinstance(last, datetime.date) else last,
        }


def _damage_as_catalog_error(name: str):
    """A ``handle_error`` listener: SQLite's "file is not a database" and "database disk image is malformed"
    (wherever a query meets them, opening included) become one-line ``CatalogError``s."""

    def listener(context: ExceptionContext) -> CatalogError | None:
        error = context.original_exception
        code = getattr(error, "sqlite_errorname", "")
        if code == "SQLITE_NOTADB":
            return CatalogError(name, "the file is not an SQLite database")
        if code.startswith("SQLITE_CORRUPT"):
            return CatalogError(name, f"the file is damaged ({error})")
        return None

    return listener


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # A committed transaction survives power loss: synchronous=FULL syncs the journal and the database file
    # at every commit (NORMAL may lose the last commits, or worse in rollback-journal mode). The rollback
    # journal (not WAL) keeps the database one self-contained file, so a workspace folder can be copied
    # safely; busy_timeout lets a reader wait for a writer instead of failing.
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.close()


def immediate_write_engine(url: str) -> Engine:
    """An engine of its own on an SQLite file for read-then-write transactions: a connection with the
    execution option ``immediate=True`` starts its transaction with ``BEGIN IMMEDIATE``, taking the write lock
    before it reads, so concurrent writers (threads, or `serve --workers N` processes) queue instead of
    deadlocking on a lock upgrade (the SQLAlchemy documentation's recipe for pysqlite). The catalogue's
    pragmas (busy_timeout, synchronous=FULL) apply."""
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_driver_transactions_off)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_driver_transactions_off(dbapi_connection, record) -> None:
    # The driver's own transaction handling off, so that the "begin" event decides how a transaction starts.
    dbapi_connection.isolation_level = None
    _sqlite_pragmas(dbapi_connection, record)


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("immediate") else "BEGIN")


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
