"""A catalogue written by older code is brought up to the current schema when it is opened, without re-ingest."""

import pytest
from sqlalchemy import create_engine, insert, inspect, select, text, update

from catalog import schema
from catalog.errors import CatalogError
from catalog.store import Catalog
from tests.catalog.test_store import make_listing

VERSION_1_TABLES = [schema.listings, schema.images, schema.meta]  # the whole schema of version 1
VERSION_3_LISTING_COLUMNS = ("status", "seller_id", "updated_at")  # what version 3 added to `listings`


def _version_1_catalogue(path) -> None:
    """What the code before the users and events tables wrote: three tables, version 1, one listing."""
    engine = create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine, tables=VERSION_1_TABLES)
    with Catalog(path.parent / "scratch.db") as scratch:  # a listing row as the store writes it
        scratch.upsert_listings([make_listing("a")])
        with scratch.engine.connect() as conn:
            row = dict(conn.execute(select(schema.listings)).one()._mapping)
    with engine.begin() as conn:
        for column in VERSION_3_LISTING_COLUMNS:
            conn.execute(text(f"ALTER TABLE listings DROP COLUMN {column}"))
            del row[column]
        conn.execute(text("INSERT INTO listings VALUES (" + ", ".join(f":{c}" for c in row) + ")"), row)
        conn.execute(insert(schema.meta), [{"key": "schema_version", "value": "1"}])
    engine.dispose()


def _tables_and_version(path) -> tuple[set[str], str]:
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        version = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).scalar_one()
    engine.dispose()
    return tables, version


def test_a_version_1_catalogue_gains_users_and_events_and_keeps_its_listings(tmp_path):
    path = tmp_path / "catalog.db"
    _version_1_catalogue(path)
    assert _tables_and_version(path) == ({"listings", "images", "catalog_meta"}, "1")

    with Catalog(path) as catalog:
        assert catalog.listing_ids() == ["a"]
        assert catalog.get_listing("a").title == "Title a"

    tables, version = _tables_and_version(path)
    assert {"users", "events", "listing_changes", "api_keys", "idempotency_keys"} <= tables
    assert version == str(schema.SCHEMA_VERSION) == "3"
    with Catalog(path) as catalog:  # opening a current catalogue again changes nothing
        assert catalog.listing_ids() == ["a"]
        listing = catalog.get_listing("a")
        assert (listing.status, listing.seller_id) == ("active", None)  # what every listing was before
    assert _tables_and_version(path) == (tables, "3")


def test_an_interrupted_migration_is_completed_on_the_next_open(tmp_path):
    path = tmp_path / "catalog.db"
    _version_1_catalogue(path)
    engine = create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine, tables=[schema.users])  # the step got half-way: one table, version 1
    engine.dispose()

    with Catalog(path) as catalog:
        assert catalog.listing_ids() == ["a"]
    tables, version = _tables_and_version(path)
    assert {"users", "events"} <= tables and version == "3"


@pytest.mark.parametrize("stored", ["4", "0", "two"])
def test_a_version_it_cannot_migrate_is_refused_with_what_to_do(tmp_path, stored):
    path = tmp_path / "catalog.db"
    Catalog(path).close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(update(schema.meta).where(schema.meta.c.key == "schema_version").values(value=stored))
    engine.dispose()
    with pytest.raises(CatalogError, match=f"schema version {stored}, this code reads version 3"):
        Catalog(path)
