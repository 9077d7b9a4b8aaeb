"""The catalogue's error for people: kept apart from ``catalog.store`` so the CLI can catch it without
importing SQLAlchemy."""

from __future__ import annotations


class CatalogError(Exception):
    """The catalogue database cannot be used: not an SQLite file, damaged, or not this code's schema.

    The message is one line naming the database and the problem; what to run about it depends on the
    caller (the CLI and the service add it)."""

    def __init__(self, database: str, problem: str) -> None:
        super().__init__(f"{database} cannot be used: {problem}")
        self.database = database
        self.problem = problem
