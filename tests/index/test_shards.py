"""A sharded IVF build (train once, fill shards, merge) searches exactly like a single-process build."""

import faiss
import numpy as np
import pytest

from index import ivf
from index.shards import add_in_shards, deserialize, fill_shard, ray_map, serialize, shard_slices
from index.synthetic import clustered_vectors


def _build_both(codec, shards, map_shards=map):
    vectors = clustered_vectors(6000, 32, n_clusters=40, seed=1)
    faiss_ids = np.arange(1000, 1000 + len(vectors), dtype=np.int64)
    trained = ivf.train_index(vectors, nlist=64, codec=codec, seed=0)
    single = deserialize(serialize(trained))
    ivf.set_direct_map(single)
    single.add_with_ids(vectors, faiss_ids)
    sharded = add_in_shards(trained, vectors, faiss_ids, shards=shards, map_shards=map_shards)
    return vectors, single, sharded


@pytest.mark.parametrize("codec", [None, "sq8", "pq"])
def test_shards_merged_in_order_search_exactly_like_one_build(codec):
    vectors, single, sharded = _build_both(codec, shards=3)
    assert sharded.ntotal == single.ntotal == len(vectors)
    queries = vectors[::97] + 0.01
    for nprobe in (1, 8, 64):
        expected = ivf.search(single, queries, 10, nprobe)
        got = ivf.search(sharded, queries, 10, nprobe)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
    # the direct map was rebuilt after the merge: vectors read back by id
    np.testing.assert_array_equal(sharded.reconstruct_batch(np.array([1000, 6999])),
                                  single.reconstruct_batch(np.array([1000, 6999])))


def test_a_shard_holds_only_its_slice():
    vectors = clustered_vectors(2000, 16, n_clusters=10, seed=2)
    trained = ivf.train_index(vectors, nlist=16, seed=0)
    shard = deserialize(fill_shard(serialize(trained), vectors[:500], np.arange(500)))
    assert shard.ntotal == 500 and trained.ntotal == 0


def test_shard_slices_cover_everything_once():
    slices = shard_slices(10, 3)
    assert [list(range(10))[s] for s in slices] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert shard_slices(2, 5) == [slice(0, 1), slice(1, 2)]
    with pytest.raises(ValueError):
        shard_slices(10, 0)


def test_shards_filled_by_ray_tasks_search_exactly_like_one_build(ray_cluster):
    _, single, sharded = _build_both(None, shards=4, map_shards=ray_map())
    queries = clustered_vectors(50, 32, n_clusters=40, seed=9)
    np.testing.assert_array_equal(ivf.search(sharded, queries, 10, 8)[1], ivf.search(single, queries, 10, 8)[1])
    assert isinstance(sharded, faiss.Index)


def test_index_rebuilt_on_ray_searches_like_the_single_process_rebuild(indexed_workspace, ray_cluster, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from core.workspace import Workspace
    from index.index_set import load_index_set
    from marketsearch.cli import app

    results = {}
    for name, extra in (("single", []), ("ray", ["--ray", "auto", "--shards", "3"])):
        root = tmp_path / name
        shutil.copytree(indexed_workspace.root, root)
        outcome = CliRunner().invoke(app, ["index", "-w", str(root), "--rebuild", "--nlist", "8", "--json", *extra])
        assert outcome.exit_code == 0, outcome.output
        assert ("in 3 shards on Ray" in outcome.output) == (name == "ray")
        vector = load_index_set(Workspace.at(root).index_dir).vector
        queries = vector.vectors(vector.listing_ids[::25])
        results[name] = (vector.nprobe, vector.search(queries, 10))
    assert results["ray"][0] == results["single"][0]  # the same calibration
    np.testing.assert_array_equal(results["ray"][1][0], results["single"][1][0])
    assert results["ray"][1][1] == results["single"][1][1]
