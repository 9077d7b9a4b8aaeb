"""The live catalogue on the serving side: the change-log follower, snapshots, tombstones, replay, compaction.

Writes go through `Catalog` methods, exactly what the write routes do. The follower is stepped with `poll()`
(or its thread is waited on with a bounded poll loop), so nothing here depends on timing.
"""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from catalog.images import clean_image, load_config
from catalog.models import Image, Listing
from catalog.store import Catalog, image_row
from core.workspace import Workspace
from encoders.embed import embed_catalog, load_embeddings, model_photo_dim
from index.compaction import compact
from index.update import update_indexes
from search.live import LiveFollower
from search.pipeline import Searcher

NEW_ID = "live-0001"
WORD = "zorblaxian"  # in no demo listing


@pytest.fixture
def workspace(indexed_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(indexed_workspace.root, root)
    return Workspace.at(root)


@pytest.fixture
def live(workspace):
    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    follower = LiveFollower(searcher, workspace, compaction=False)
    yield searcher, follower
    follower.stop()


def _new_photo(workspace: Workspace, tmp_path, seed: int = 7) -> Image:
    """A photo no demo listing has (seeded shapes), cleaned like ingest cleans one."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((300, 400, 3), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 250), rng.integers(0, 350)
        pixels[y : y + 50, x : x + 50] = rng.integers(0, 256, 3)
    source = tmp_path / f"upload-{seed}.png"
    PILImage.fromarray(pixels).save(source)
    image_id = f"live-photo-{seed}"
    cleaned = clean_image(source, workspace.images_dir / f"{image_id}.jpg", load_config(workspace.photo_config_path))
    return Image(image_id, NEW_ID, f"images/{image_id}.jpg", cleaned.width, cleaned.height, datetime.date(2024, 5, 1))


def _create(catalog: Catalog, photo: Image | None, title: str = f"{WORD} garden chair") -> Listing:
    listing = Listing(
        id=NEW_ID, title=title, description="A sturdy wooden chair for the garden, hardly used.", price=25.0,
        category="Home & Garden / Garden / Furniture", category_levels=("Home & Garden", "Garden", "Furniture"),
        top_category="Home & Garden", town="Leeds", county="West Yorkshire", location="Leeds, West Yorkshire",
        created_at=datetime.date(2024, 5, 1), image_ids=(photo.id,) if photo else (), seller_id="s1",
    )
    catalog.write_batch([listing], [image_row(photo)] if photo else [])
    return listing


def _ids(result) -> list[str]:
    return [hit.listing_id for hit in result.hits]


def test_a_created_listing_is_found_by_text_and_photo_once_applied(live, workspace, tmp_path):
    searcher, follower = live
    photo = _new_photo(workspace, tmp_path)
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        _create(catalog, photo)
    assert NEW_ID not in _ids(searcher.search(WORD, k=100, rerank=False))
    assert follower.poll() >= 1
    assert _ids(searcher.search(WORD, k=5, rerank=False))[0] == NEW_ID
    with PILImage.open(workspace.images_dir / f"{photo.id}.jpg") as query:
        candidates = searcher.candidates(searcher.query_context(image=query.convert("RGB")))
    assert candidates.listing_ids[int(np.nanargmin(candidates.vector_rank))] == NEW_ID
    row = candidates.listing_ids.index(NEW_ID)
    # the delta carries its photo vector for the re-ranker (not 1: the query photo is the stored JPEG re-encoded,
    # which moves a few pixels across the colour signature's bins)
    assert candidates.photo_sim[row] > 0.99
    # and the photo retriever searches the delta's photo vectors: its own photo puts it first
    assert candidates.photo_rank[row] == 1


def test_compaction_moves_a_created_listing_into_the_photo_index(live, workspace, tmp_path):
    searcher, follower = live
    photo = _new_photo(workspace, tmp_path)
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        _create(catalog, photo)
    follower.poll()
    assert NEW_ID not in searcher.photo_index
    assert compact(workspace, searcher.model).published
    follower.poll()  # loads the new set: the listing has left the delta for the main photo index
    assert len(searcher.snapshot.delta) == 0 and NEW_ID in searcher.photo_index
    with PILImage.open(workspace.images_dir / f"{photo.id}.jpg") as query:
        candidates = searcher.candidates(searcher.query_context(image=query.convert("RGB")))
    assert candidates.photo_rank[candidates.listing_ids.index(NEW_ID)] == 1


def test_live_and_batch_vectors_are_equal(live, workspace, tmp_path):
    searcher, follower = live
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        _create(catalog, _new_photo(workspace, tmp_path))
        follower.poll()
        delta = searcher.snapshot.delta.embeddings
        row = delta.row_of[NEW_ID]
        embed_catalog(searcher.model, catalog, progress=False)  # the batch path, `marketsearch embed`
        batch = load_embeddings(catalog, searcher.model.fingerprint)
    batch_row = batch.row_of[NEW_ID]
    for column in ("text", "image", "listing"):
        assert np.abs(getattr(delta, column)[row] - getattr(batch, column)[batch_row]).max() <= 1e-6, column
    assert np.abs(delta.photo[row].astype(np.float32) - batch.photo[batch_row].astype(np.float32)).max() <= 1e-3
    assert delta.photo.shape[1] == batch.photo.shape[1] == model_photo_dim(searcher.model)  # backbone + colour


def test_a_preloaded_catalogue_encoder_is_loaded_once_after_start_without_any_write(workspace):
    """``preload_encoder``: the first write does not wait for the encoder; it is loaded in the background once."""
    from encoders.bundle import MultiModalModel

    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    loads = []
    follower = LiveFollower(searcher, workspace, compaction=False, preload_encoder=True,
                            load_encoder=lambda: loads.append(1) or MultiModalModel.load(workspace.model_dir))
    follower.start()
    try:
        deadline = time.monotonic() + 120
        while not follower.encoder_loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        assert follower.encoder_loaded and loads == [1]
        assert follower.encoder is not searcher.model and loads == [1]
    finally:
        follower.stop()


def test_a_deferred_catalogue_encoder_is_loaded_once_by_the_first_listing_to_encode(workspace, tmp_path):
    """The service hands the follower a loader (its queries may be encoded by int8 graphs, listings never are):
    nothing is loaded at start nor for a sale, and the vectors of the loaded model equal the batch path's."""
    from encoders.bundle import MultiModalModel

    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    loads = []
    follower = LiveFollower(searcher, workspace, compaction=False,
                            load_encoder=lambda: loads.append(1) or MultiModalModel.load(workspace.model_dir))
    try:
        with Catalog(workspace.db_url, root=workspace.root) as catalog:
            follower.poll()
            sold = next(batch for batch in catalog.iter_listings(batch_size=5))[0]
            catalog.upsert_listings([dataclasses.replace(sold, status="sold")])
            follower.poll()
            assert loads == [] and not follower.encoder_loaded  # a tombstone needs no encoder
            _create(catalog, _new_photo(workspace, tmp_path))
            follower.poll()
            assert loads == [1] and follower.encoder is not searcher.model
            catalog.upsert_listings([dataclasses.replace(catalog.get_listing(NEW_ID), title="quuxified lawn bench")])
            follower.poll()
            assert loads == [1]
            delta = searcher.snapshot.delta.embeddings
            embed_catalog(searcher.model, catalog, progress=False)
            batch = load_embeddings(catalog, searcher.model.fingerprint)
    finally:
        follower.stop()
    for column in ("text", "image", "listing"):
        assert np.abs(getattr(delta, column)[delta.row_of[NEW_ID]] - getattr(batch, column)[batch.row_of[NEW_ID]]
                      ).max() <= 1e-6, column


def test_an_edited_title_changes_what_finds_it(live, workspace):
    searcher, follower = live
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        listing = _create(catalog, None)
        follower.poll()
        assert _ids(searcher.search(WORD, k=3, rerank=False))[0] == NEW_ID
        catalog.upsert_listings([dataclasses.replace(listing, title="quuxified lawn bench")])
        follower.poll()
    assert _bm25_ranking(searcher, WORD) == []  # no listing has the old word any more
    assert _bm25_ranking(searcher, "quuxified") == [NEW_ID]
    assert NEW_ID not in _ids(searcher.search(WORD, k=3, rerank=False))


def _bm25_ranking(searcher, text: str) -> list[str]:
    candidates = searcher.candidates(searcher.query_context(text))
    ranked = [(rank, i) for i, rank in zip(candidates.listing_ids, candidates.bm25_rank) if not np.isnan(rank)]
    return [i for _, i in sorted(ranked)]


def test_sold_and_deleted_listings_are_never_candidates(live, workspace):
    searcher, follower = live
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        sold, deleted = catalog.get_listings(searcher.listings.ids[:2])
        before = {x.id: searcher.search(x.title, k=10, rerank=False) for x in (sold, deleted)}
        assert all(x in _ids(before[x]) for x in before)  # found before
        catalog.upsert_listings([dataclasses.replace(sold, status="sold")])
        assert catalog.delete_listing(deleted.id)
        follower.poll()
    gone = {sold.id, deleted.id}
    for listing in (sold, deleted):
        for query in ({"text": listing.title}, {"text": listing.title.split()[0]}):
            result = searcher.search(**query, k=100, rerank=False)
            assert not gone & set(_ids(result))
        from search.filters import SearchFilters
        filtered = searcher.search(listing.title, k=100, rerank=False,
                                   filters=SearchFilters(category=listing.top_category))
        assert not gone & set(_ids(filtered))
    assert not gone & set(searcher.candidates(searcher.query_context("chair"), depth=1000).listing_ids)


@pytest.mark.parametrize("reindex", [False, True], ids=["served-set", "after-marketsearch-index"])
def test_a_listing_deleted_from_the_catalogue_does_not_break_search(workspace, reindex):
    """The known bug: the index set still holds a listing the catalogue no longer has (deleted before the
    service loaded, or before `marketsearch index` ran without `embed`): search raised KeyError."""
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        victim = catalog.get_listing(catalog.listing_ids()[0])
        assert catalog.delete_listing(victim.id)
    if reindex:
        update_indexes(workspace)
    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    result = searcher.search(victim.title, k=100, rerank=False)
    assert result.hits and victim.id not in _ids(result)


def test_a_sold_listing_is_not_indexed_by_marketsearch_index(workspace):
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        sold = catalog.get_listing(catalog.listing_ids()[0])
        catalog.upsert_listings([dataclasses.replace(sold, status="sold")])
    report = update_indexes(workspace)
    searcher = Searcher.from_workspace(workspace, load_ranker=False)
    assert sold.id not in searcher.vector_index and sold.id not in searcher.bm25
    assert report.checkpoint > 0 and searcher.snapshot.main.checkpoint == report.checkpoint


def test_a_restarted_process_replays_the_log_past_the_checkpoint(workspace):
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        _create(catalog, None)
        head = catalog.last_change()
    searcher = Searcher.from_workspace(workspace, load_ranker=False)  # a fresh process: set as published
    assert searcher.applied_seq < head
    follower = LiveFollower(searcher, workspace, compaction=False)
    try:
        assert follower.catch_up() == head
        assert _ids(searcher.search(WORD, k=3, rerank=False))[0] == NEW_ID
        assert follower.poll() == 0  # replay is idempotent: nothing left to apply
    finally:
        follower.stop()


def test_compaction_publishes_a_set_and_every_follower_converges(workspace):
    searchers = [Searcher.from_workspace(workspace, load_ranker=False) for _ in range(2)]
    followers = [LiveFollower(s, workspace, compaction=False) for s in searchers]
    try:
        with Catalog(workspace.db_url, root=workspace.root) as catalog:
            _create(catalog, None)
            gone = catalog.listing_ids()[0]
            catalog.delete_listing(gone)
            head = catalog.last_change()
        for follower in followers:
            follower.poll()
        assert all(s.applied_seq == head and len(s.snapshot.delta) == 1 for s in searchers)
        before = searchers[0].index_version
        report = compact(workspace, searchers[0].model)
        assert report.published and report.checkpoint == head
        for searcher, follower in zip(searchers, followers):
            follower.poll()  # sees CURRENT change, loads the new set, keeps only the log past its checkpoint
            assert searcher.index_version == report.index_set != before
            assert len(searcher.snapshot.delta) == 0 and not searcher.snapshot.delta.dead
            assert NEW_ID in searcher.vector_index and gone not in searcher.vector_index
            assert _ids(searcher.search(WORD, k=3, rerank=False))[0] == NEW_ID
    finally:
        for follower in followers:
            follower.stop()


def test_the_follower_thread_converges_and_reports_itself(live, workspace):
    searcher, follower = live
    follower.poll_interval = 0.05
    follower.start()
    with Catalog(workspace.db_url, root=workspace.root) as catalog:
        _create(catalog, None)
        head = catalog.last_change()
    deadline = time.monotonic() + 120  # a hang guard, not a timed assertion
    while searcher.applied_seq < head and time.monotonic() < deadline:
        time.sleep(0.05)
    status = follower.status()
    assert status["applied_seq"] == head and status["lag"] == 0 and status["delta_listings"] == 1
    assert status["error"] is None
