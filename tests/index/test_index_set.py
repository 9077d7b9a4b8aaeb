"""The workspace's index set: vector index + BM25 published as one version behind one pointer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from core.workspace import Workspace
from index.bm25 import BM25Index
from index.index_set import load_index_set
from index.storage import CURRENT, IndexLoadError
from index.update import update_indexes


class Killed(BaseException):
    """Stands in for the process dying (not an Exception, so nothing may swallow it)."""


@pytest.fixture
def workspace(indexed_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(indexed_workspace.root, root)
    return Workspace.at(root)


def test_a_crash_while_writing_bm25_keeps_the_previous_set(workspace, monkeypatch):
    from tests.reliability.artefact_checks import add_listing_like, catalogue_ids

    before = load_index_set(workspace.index_dir)
    added = add_listing_like(workspace, sorted(catalogue_ids(workspace))[0])

    def killed(self, folder):
        raise Killed("killed after the vector index was written, before BM25")

    monkeypatch.setattr(BM25Index, "write_to", killed)
    with pytest.raises(Killed):
        update_indexes(workspace, rebuild=True)
    monkeypatch.undo()

    after = load_index_set(workspace.index_dir)
    assert after.version == before.version and added not in after.vector
    assert set(after.vector.listing_ids) == set(after.bm25.listing_ids)

    report = update_indexes(workspace)
    published = load_index_set(workspace.index_dir)
    assert report.published and published.version == report.index_set != before.version
    assert added in published.vector and added in published.bm25
    assert published.manifest["embeddings"]["count"] == len(published.vector)
    versions = sorted(p.name for p in workspace.index_dir.iterdir() if p.name != CURRENT)
    assert versions == sorted([before.version, published.version])  # current + previous kept


def test_a_corrupt_file_anywhere_in_the_set_is_refused(workspace):
    folder = workspace.index_dir / load_index_set(workspace.index_dir).version / "bm25"
    target = sorted(p for p in folder.iterdir() if p.name != "manifest.json")[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match=r"is corrupt: sha256 .*`marketsearch index --rebuild`"):
        load_index_set(workspace.index_dir)


def test_the_layout_before_index_sets_is_refused_then_replaced(workspace):
    from search.pipeline import Searcher

    current = load_index_set(workspace.index_dir)
    shutil.rmtree(workspace.index_dir)
    current.vector.save(workspace.index_dir / "vector")  # what older versions wrote: two pointers
    current.bm25.save(workspace.index_dir / "bm25")

    with pytest.raises(IndexLoadError, match=r"old layout.*`marketsearch index --rebuild`"):
        load_index_set(workspace.index_dir)
    with pytest.raises(IndexLoadError, match="marketsearch index --rebuild"):
        Searcher.from_workspace(workspace, load_ranker=False)

    report = update_indexes(workspace, rebuild=True)
    assert report.published and report.mode == "built"
    assert sorted(p.name for p in workspace.index_dir.iterdir()) == sorted([CURRENT, report.index_set])
    assert Searcher.from_workspace(workspace, load_ranker=False).index_version == report.index_set


def test_the_set_holds_a_photo_index_of_the_listings_with_a_photo_vector(workspace):
    from catalog.store import Catalog
    from encoders.bundle import MultiModalModel
    from encoders.embed import load_embeddings, model_photo_dim
    from index.index_set import publish_index_set
    from tests.reliability.artefact_checks import add_listing_like

    model = MultiModalModel.load(workspace.model_dir)
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        table = load_embeddings(catalog, model.fingerprint, photo_dim=model_photo_dim(model))
    with_photo = [i for i, present in zip(table.ids, table.has_photo.tolist()) if present]
    assert 0 < len(with_photo) < len(table)  # the demo has text-only listings
    current = load_index_set(workspace.index_dir)
    assert sorted(current.photo.listing_ids) == sorted(with_photo)
    assert current.photo.dimension == model_photo_dim(model) == current.manifest["photo"]["dimension"]
    for listing_id in with_photo[:5]:  # each listing's own photo vector finds it first
        row = table.row_of[listing_id]
        _, ids = current.photo.search(table.photo[row : row + 1].astype(np.float32), 1)
        assert ids[0] == [listing_id]

    # a set published before photo indexes existed gets one from the next `marketsearch index`
    publish_index_set(workspace.index_dir, current.vector, current.bm25, embeddings=current.manifest["embeddings"],
                      text_digest=current.manifest["text_digest"], checkpoint=current.checkpoint)
    assert load_index_set(workspace.index_dir).photo is None
    report = update_indexes(workspace)
    assert report.published and report.photo_count == len(with_photo)
    assert load_index_set(workspace.index_dir).photo is not None

    # incremental: a new listing with a photo vector joins the photo index, and nothing else moves
    added = add_listing_like(workspace, with_photo[0])
    report = update_indexes(workspace)
    photo = load_index_set(workspace.index_dir).photo
    assert report.photo_count == len(with_photo) + 1 and added in photo
    assert {i: photo.faiss_id(i) for i in with_photo} == {i: current.photo.faiss_id(i) for i in with_photo}
