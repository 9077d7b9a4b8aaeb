"""`marketsearch index` / `update_indexes` on the trained demo workspace (real catalogue + embeddings)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from core.workspace import Workspace
from index.bm25 import BM25Index
from index.update import bm25_dir, read_model_fingerprint, update_indexes, vector_index_dir
from index.vector_index import VectorIndex
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

    vector_index = VectorIndex.load(vector_index_dir(workspace), expected_fingerprint=fingerprint)
    _, found = vector_index.search(table.listing[:5], 1)
    assert [row[0] for row in found] == table.ids[:5]
    listing = catalog.get_listing(table.ids[3])
    bm25 = BM25Index.load(bm25_dir(workspace))
    assert table.ids[3] in bm25.search(listing.title, 10)[1]

    # Nothing changed: nothing is rewritten.
    again = update_indexes(workspace)
    assert again.mode == "updated" and again.added == again.removed == again.updated == 0

    # A deleted listing leaves both indexes on the next run.
    assert catalog.delete_listing(table.ids[0])
    catalog.close()
    after = update_indexes(workspace)
    assert (after.mode, after.removed, after.added) == ("updated", 1, 0)
    reloaded = VectorIndex.load(vector_index_dir(workspace), expected_fingerprint=fingerprint)
    assert table.ids[0] not in reloaded and len(reloaded) == len(table) - 1
    assert table.ids[0] not in BM25Index.load(bm25_dir(workspace))


def test_rebuild_with_ivf_keeps_ids_and_calibrates_on_text_queries(workspace):
    built = update_indexes(workspace)
    before = VectorIndex.load(vector_index_dir(workspace))
    rebuilt = update_indexes(workspace, rebuild=True, nlist=8)
    assert (rebuilt.mode, rebuilt.index_type, rebuilt.nlist) == ("rebuilt", "IVF8,Flat", 8)
    assert rebuilt.vector_count == built.vector_count and rebuilt.recall_at_10 >= 0.95
    after = VectorIndex.load(vector_index_dir(workspace))
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
