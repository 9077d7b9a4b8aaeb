"""Catalogue database files that cannot be used, for the store, CLI and service tests."""

from __future__ import annotations

import datetime
import sqlite3
from pathlib import Path

from catalog.models import Listing
from catalog.store import Catalog

PAGE = 4096  # SQLite's default page size


def good_database(path: Path, listings: int = 400) -> bytes:
    """A catalogue of ``listings`` small listings at ``path``; returns its bytes."""
    with Catalog(path) as catalog:
        catalog.upsert_listings(
            Listing(f"L{i:04d}", f"Title {i}", "desc " * 20, 10.0, "Home / Sofas", ("Home", "Sofas"), "Home", "Leeds",
                    "West Yorkshire", "Leeds, West Yorkshire", datetime.date(2022, 2, 1), ())
            for i in range(listings)
        )  # fmt: skip
    return path.read_bytes()


def _sqlite_with(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    with connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


def damage_pages(path: Path, first_page: int = 8) -> None:
    """Overwrite the database's pages from ``first_page`` up to the last one with garbage: the schema pages
    stay intact, so the file opens, and the first query reading the listings meets the damage."""
    data = bytearray(path.read_bytes())
    end = len(data) - PAGE
    assert end > first_page * PAGE, "the database is too small to damage past its schema pages"
    data[first_page * PAGE : end] = (bytes(range(256)) * (end // 256 + 1))[: end - first_page * PAGE]
    path.write_bytes(bytes(data))


# Files that fail on opening: name -> function writing such a file at the given path.
UNUSABLE = {
    "random bytes": lambda path: path.write_bytes(bytes(range(256)) * 64),
    "truncated": lambda path: path.write_bytes(good_database(path)[: 2 * PAGE]),
    "a CSV file": lambda path: path.write_text("id,title\nL1,bike\n"),
    "wrong columns": lambda path: _sqlite_with(path, "CREATE TABLE listings (id TEXT PRIMARY KEY, name TEXT)"),
    "another application's database": lambda path: _sqlite_with(path, "CREATE TABLE users (id INTEGER)"),
}
