"""`marketsearch index` / `update_indexes` on the trained demo workspace (real catalogue + embeddings)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from core.workspace import Workspace
from index.index_set import load_index_set
from index.update import read_model_fingerprint, update_indexes
from marketsearch.cli import app


@pytest.fixture
def workspace(trained_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace.root, root)
    return Workspace.at(root)


def test_index_command_builds_then_updates_incrementally(workspace):
    from catalog.store import Catalog
    from encoders.embed import load_embeddings

    runner = CliRunner()
    result = runner.invoke(app, ["index", "--workspace", str(workspace.root), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    fingerprint = read_model_fingerprint(workspace.model_dir)
    catalog = Catalog(workspace.db_url, root=workspace.root)
    table = load_embeddings(catalog, fingerprint)
    assert report["mode"] == "built" and report["index_type"] == "IDMap2,Flat"  # demo catalogue < 10k
    assert report["vector_count"] == len(table) and report["bm25_count"] == catalog.count()

    index_set = load_index_set(workspace.index_dir, expected_fingerprint=fingerprint)
    assert index_set.version == report["index_set"] and report["published"]
    _, found = index_set.vector.search(table.listing[:5], 1)
    assert [row[0] for row in found] == table.ids[:5]
    listing = catalog.get_listing(table.ids[3])
    assert table.ids[3] in index_set.bm25.search(listing.title, 10)[1]
    assert "published" in runner.invoke(app, ["index", "--workspace", str(workspace.root), "--rebuild"]).output

    # Nothing changed: nothing is published, the current set stays.
    current = load_index_set(workspace.index_dir).version
    versions = sorted(p.name for p in workspace.index_dir.iterdir())
    again = update_indexes(workspace)
    assert again.mode == "updated" and again.added == again.removed == again.updated == 0
    assert (again.published, again.index_set) == (False, current)
    assert sorted(p.name for p in workspace.index_dir.iterdir()) == versions

    # A deleted listing leaves both indexes on the next run.
    assert catalog.delete_listing(table.ids[0])
    catalog.close()
    after = update_indexes(workspace)
    assert (after.mode, after.removed, after.added) == ("updated", 1, 0)
    reloaded = load_index_set(workspace.index_dir, expected_fingerprint=fingerprint)
    assert reloaded.version == after.index_set != current
    assert table.ids[0] not in reloaded.vector and len(reloaded.vector) == len(table) - 1
    assert table.ids[0] not in reloaded.bm25


def test_rebuild_with_ivf_keeps_ids_and_calibrates_on_text_queries(workspace):
    built = update_indexes(workspace)
    before = load_index_set(workspace.index_dir).vector
    rebuilt = update_indexes(workspace, rebuild=True, nlist=8)
    assert (rebuilt.mode, rebuilt.index_type, rebuilt.nlist) == ("rebuilt", "IVF8,Flat", 8)
    assert rebuilt.vector_count == built.vector_count and rebuilt.recall_at_10 >= 0.95
    after = load_index_set(workspace.index_dir).vector
    assert after.manifest["calibration"]["source"] == "calibration queries"
    assert all(after.faiss_id(i) == before.faiss_id(i) for i in before.listing_ids)
    # Filtered search on the real index keeps its guarantee.
    allowed = before.listing_ids[::50]
    queries = np.random.default_rng(0).standard_normal((3, after.dimension)).astype(np.float32)
    _, found = after.search(queries, 10, allowed_ids=allowed)
    assert all(len(row) == min(10, len(allowed)) and set(row) <= set(allowed) for row in found)


def test_index_command_errors_are_clear(tmp_path):
    result = CliRunner().invoke(app, ["index", "--workspace", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no model bundle" in result.output and "marketsearch train" in result.output
