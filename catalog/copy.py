"""Copy a catalogue database into another one (an SQLite workspace onto PostgreSQL, say), in one transaction.

The target is opened as a `Catalog` first, so it gets this code's schema and version (the source is opened the
same way, so an older one is migrated first); the tables of the other ``metadatas`` (the embeddings of
encoders/embed.py: a layer above, so the caller passes them) are created as declared. Rows are read and
written through the declared tables, so types convert between back-ends (dates, JSON text, blobs). On
PostgreSQL the sequences behind integer keys (the change log's ``seq``) are moved past the copied rows, or
the next write would collide with a copied seq.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import MetaData, Table, func, inspect, select, text

from catalog import schema
from catalog.errors import CatalogError
from catalog.store import Catalog

BATCH_ROWS = 1000


def copy_database(source_url: str, target_url: str, metadatas: Sequence[MetaData] = ()) -> dict[str, int]:
    """Copy every table of the catalogue schema and of ``metadatas`` that the source holds into the target,
    which must hold no rows in them; returns rows copied per table. All or nothing."""
    with Catalog(source_url) as source, Catalog(target_url) as target:
        if source.engine.url == target.engine.url:
            raise ValueError("the source and the target are the same database")
        source_tables = set(inspect(source.engine).get_table_names())
        tables = [t for t in _tables([schema.metadata, *metadatas]) if t.name in source_tables and t is not schema.meta]
        for extra in metadatas:
            extra.create_all(target.engine, tables=[t for t in tables if t.metadata is extra])
        counts = {}
        with source.engine.connect() as reading, target.engine.begin() as writing:
            for table in tables:
                if writing.execute(select(func.count()).select_from(table)).scalar_one():
                    raise CatalogError(target.engine.url.render_as_string(hide_password=True),
                                       f"its table {table.name} already holds rows; copy into an empty database")
                counts[table.name] = 0
                result = reading.execution_options(yield_per=BATCH_ROWS).execute(select(table))
                for rows in result.partitions():
                    writing.execute(table.insert(), [row._asdict() for row in rows])
                    counts[table.name] += len(rows)
                if writing.dialect.name == "postgresql":
                    _move_sequence_past_rows(writing, table)
        return counts


def _tables(metadatas: Sequence[MetaData]) -> list[Table]:
    """Every table, parents before the tables that refer to them."""
    return [table for metadata in metadatas for table in metadata.sorted_tables]


def _move_sequence_past_rows(conn, table: Table) -> None:
    column = table.autoincrement_column
    if column is None:
        return
    newest = conn.execute(select(func.max(column))).scalar_one()
    if newest is not None:
        conn.execute(text("SELECT setval(pg_get_serial_sequence(:table, :column), :value)"),
                     {"table": table.name, "column": column.name, "value": newest})
