"""The synthetic benchmark workspace (bench.synthetic_catalog) as a live follower and a compaction see it: up to
date, so a serving process starts with nothing to replay and a compaction encodes nothing."""

from __future__ import annotations

from bench.synthetic_catalog import BuildConfig, build_bench_workspace
from catalog.store import Catalog
from core.workspace import Workspace
from encoders.bundle import MultiModalModel
from encoders.embed import embed_catalog
from index.index_set import load_index_set
from search.live import LiveFollower
from search.pipeline import Searcher


def test_a_replicated_workspace_leaves_the_follower_and_embed_nothing_to_do(indexed_workspace, tmp_path):
    with Catalog(indexed_workspace.db_url, root=indexed_workspace.root) as catalog:
        n_base = len(catalog.listing_ids())
    target = Workspace.at(tmp_path / "bench")
    build_bench_workspace(BuildConfig(base=indexed_workspace.root, target=target.root, listings=2 * n_base + 3,
                                      batch_size=97))

    with Catalog(target.db_url, root=target.root) as catalog:
        head = catalog.last_change()
        assert len(catalog.listing_ids()) == 2 * n_base + 3
    # the published set reflects the whole log: a follower has nothing to replay (it encoded every replica before)
    assert load_index_set(target.index_dir).checkpoint == head
    searcher = Searcher.from_workspace(target, load_ranker=False)
    follower = LiveFollower(searcher, target, compaction=False)
    try:
        assert follower.poll() == 0
        assert len(searcher.snapshot.delta) == 0 and not searcher.snapshot.delta.dead
    finally:
        follower.stop()
    # the stored vectors carry the content hashes `embed` computes: a compaction encodes nothing
    with Catalog(target.db_url, root=target.root) as catalog:
        stats = embed_catalog(MultiModalModel.load(target.model_dir), catalog, progress=False)
    assert stats.encoded == 0 and stats.up_to_date == 2 * n_base + 3
