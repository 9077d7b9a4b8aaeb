"""Schema migrations of the catalogue database: each step brings version N to N + 1 in place.

Steps are idempotent (a step interrupted half-way, or run by two processes at once, is simply run again), so a
catalogue built by older code is upgraded when it is opened, without re-ingest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import inspect, select, text, update
from sqlalchemy.engine import Connection

from catalog import schema
from catalog.errors import CatalogError

logger = logging.getLogger(__name__)


def _add_users_and_events(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.users, schema.events], checkfirst=True)


def _add_live_catalogue(conn: Connection) -> None:
    present = {column["name"] for column in inspect(conn).get_columns(schema.listings.name)}
    added = {
        "status": "VARCHAR(16) NOT NULL DEFAULT 'active'",
        "seller_id": "VARCHAR(64)",
        "updated_at": "TIMESTAMP",
    }
    for name, definition in added.items():
        if name not in present:
            conn.execute(text(f"ALTER TABLE {schema.listings.name} ADD COLUMN {name} {definition}"))
    tables = [schema.listing_changes, schema.api_keys, schema.idempotency_keys]
    schema.metadata.create_all(conn, tables=tables, checkfirst=True)


# version found -> the step that brings it to version + 1
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _add_users_and_events,
    2: _add_live_catalogue,
}


def stored_version(conn: Connection) -> str | None:
    """The schema version recorded in the database, or None for a database without a catalogue yet."""
    if not inspect(conn).has_table(schema.meta.name):
        return None
    return conn.execute(
        select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
    ).scalar_one_or_none()


def prepare_schema(conn: Connection, name: str) -> None:
    """Create the schema in a new database, migrate an older one to ``schema.SCHEMA_VERSION``, refuse a newer
    or unknown one with a ``CatalogError`` (``name``: the database as people know it) that says what to do."""
    found = stored_version(conn)
    if found is None:
        schema.metadata.create_all(conn)
        conn.execute(schema.meta.insert(), {"key": "schema_version", "value": str(schema.SCHEMA_VERSION)})
        return
    if found == str(schema.SCHEMA_VERSION):
        return
    version = int(found) if found.isdigit() else None
    if version is None or version > schema.SCHEMA_VERSION or any(
        step not in MIGRATIONS for step in range(version, schema.SCHEMA_VERSION)
    ):
        raise CatalogError(
            name,
            f"it has catalogue schema version {found}, this code reads version {schema.SCHEMA_VERSION} and "
            f"migrates versions {min(MIGRATIONS)}..{schema.SCHEMA_VERSION - 1}; use the code that wrote it, or "
            "re-ingest into a fresh workspace",
        )
    for step in range(version, schema.SCHEMA_VERSION):
        MIGRATIONS[step](conn)
        conn.execute(
            update(schema.meta).where(schema.meta.c.key == "schema_version").values(value=str(step + 1))
        )
        logger.info("catalogue schema migrated from version %d to %d (%s)", step, step + 1, MIGRATIONS[step].__name__)
