"""`marketsearch catalog copy --to URL`: a workspace's catalogue (listings, photos' rows, change log, users and
events, keys, embeddings) copied into another database, SQLite or PostgreSQL, which the workspace then uses."""

from __future__ import annotations

import shutil

import numpy as np
from sqlalchemy import func, select
from typer.testing import CliRunner

from catalog import schema
from catalog.store import Catalog
from core.workspace import Workspace
from encoders.embed import listing_embeddings, listing_photo_vectors, load_embeddings
from index.update import read_model_fingerprint
from marketsearch.cli import app
from tests.catalog.test_store import make_listing


def _rows(catalog: Catalog) -> dict[str, int]:
    tables = [*schema.metadata.sorted_tables, listing_embeddings, listing_photo_vectors]
    with catalog.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in tables
                if t is not schema.meta}


def test_copy_moves_every_row_and_the_workspace_follows(trained_workspace, database_url, tmp_path):
    workspace = Workspace.at(shutil.copytree(trained_workspace.root, tmp_path / "ws"))
    with Catalog(workspace.db_url, root=workspace.root) as source:
        source.upsert_listings([make_listing("logged")])  # a change-log row to carry over
        before, listings, head = _rows(source), source.get_listings(source.listing_ids()), source.last_change()
        fingerprint = read_model_fingerprint(workspace.model_dir)
        vectors = load_embeddings(source, fingerprint)
    assert before["listings"] and before["listing_embeddings"] and before["listing_changes"]

    result = CliRunner().invoke(app, ["catalog", "copy", "--to", database_url, "-w", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert workspace.db_url == database_url  # recorded in database.url

    with Catalog(workspace.db_url, root=workspace.root) as target:
        assert _rows(target) == before
        assert target.get_listings(target.listing_ids()) == listings
        copied = load_embeddings(target, fingerprint)
        assert copied.ids == vectors.ids and np.array_equal(copied.listing, vectors.listing)
        assert target.last_change() == head
        target.upsert_listings([make_listing("after-copy")])  # the log's sequence continues past the copy
        assert target.changes_since(head) == [(head + 1, "after-copy", "upsert")]

    again = CliRunner().invoke(app, ["catalog", "copy", "--to", database_url, "-w", str(workspace.root)])
    assert again.exit_code == 2 and "same database" in again.output
    other = Workspace.at(shutil.copytree(trained_workspace.root, tmp_path / "other"))
    into_full = CliRunner().invoke(app, ["catalog", "copy", "--to", database_url, "-w", str(other.root)])
    assert into_full.exit_code == 2 and "already holds rows" in into_full.output
    assert other.uses_own_sqlite  # a failed copy does not switch the workspace
