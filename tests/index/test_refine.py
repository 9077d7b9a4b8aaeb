"""A compressed (SQ8 or PQ) index re-scores its candidates with the exact vectors: recall recovers, and every
path keeps them."""

import numpy as np
import pytest

from index import vector_index as vi_module
from index.ivf import exact_search, recall_at_k
from index.refine import ExactVectors, refine
from index.synthetic import clustered_vectors, perturbed_queries
from index.vector_index import VectorIndex

FP = "f" * 64


@pytest.fixture(scope="module")
def data():
    vectors = clustered_vectors(12_000, 64, n_clusters=60, seed=3)
    ids = [f"L{i}" for i in range(len(vectors))]
    return vectors, ids, perturbed_queries(vectors, 200, seed=4)


def _recall(index, vectors, queries):
    _, exact = exact_search(vectors, np.arange(len(vectors)), queries, 10)
    _, found = index.search(queries, 10)
    return recall_at_k(np.array([[int(i[1:]) for i in row] for row in found]), exact)


def test_exact_vectors_lookup_update_and_remove():
    exact = ExactVectors(np.array([5, 1, 9]), np.eye(3, dtype=np.float32))
    vectors, found = exact.lookup(np.array([[9, -1], [1, 7]]))
    assert found.tolist() == [[True, False], [True, False]]
    np.testing.assert_array_equal(vectors[0, 0], [0, 0, 1]) and np.testing.assert_array_equal(vectors[1, 0], [0, 1, 0])
    changed = exact.updated(np.array([1, 12]), np.ones((2, 3), dtype=np.float32)).without(np.array([5]))
    assert changed.faiss_ids.tolist() == [1, 9, 12] and len(exact) == 3  # the original is unchanged
    np.testing.assert_array_equal(changed.lookup(np.array([1]))[0], [[1, 1, 1]])


def test_refine_orders_by_exact_scores_and_pads_unknown_ids():
    exact = ExactVectors(np.array([0, 1, 2]), np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32))
    scores, ids = refine(np.array([[0, 1]], dtype=np.float32), np.array([[0, 1, 2, 77]]), exact, k=4)
    assert ids.tolist() == [[2, 1, 0, -1]]
    np.testing.assert_allclose(scores[0, :3], [1.0, 0.8, 0.0])


@pytest.mark.parametrize(("codec", "codes", "factor"), [("sq8", "SQ8", 10), ("pq", "PQ16x8", 20)])
def test_a_compressed_index_with_refine_recovers_the_recall_its_codes_lose(data, tmp_path, codec, codes, factor):
    vectors, ids, queries = data
    index = VectorIndex.build(vectors, ids, FP, nlist=64, codec=codec, calibration_queries=queries)
    assert index.manifest["index_type"] == f"IVF64,{codes}" and index.manifest["refine"]["factor"] == factor
    assert index.manifest["calibration"]["recall"] >= 0.95
    assert _recall(index, vectors, queries) >= 0.95
    codes_only = _recall_without_refine(index, vectors, queries)
    assert codes_only < _recall(index, vectors, queries)  # what the exact re-scoring wins
    np.testing.assert_array_equal(index.vectors(["L7"]), vectors[7:8])  # the exact vector, not decoded codes
    index.save(tmp_path / "vi")
    loaded = VectorIndex.load(tmp_path / "vi")
    assert isinstance(loaded.exact.vectors, np.memmap)  # on disk, paged in as candidates need it
    assert loaded.codec == codec and loaded.search(queries[:20], 10)[1] == index.search(queries[:20], 10)[1]


def _recall_without_refine(index, vectors, queries):
    exact, index.exact = index.exact, None
    try:
        return _recall(index, vectors, queries)
    finally:
        index.exact = exact


@pytest.mark.parametrize("codec", ["sq8", "pq"])
def test_updates_and_filters_of_a_compressed_index_use_the_exact_vectors(data, codec):
    vectors, ids, queries = data
    index = VectorIndex.build(vectors[:6000], ids[:6000], FP, nlist=32, codec=codec)
    index.add(vectors[6000:6100], ids[6000:6100])
    index.remove(["L1", "L2"])
    index.update(vectors[6100:6101], ["L3"])  # L3 now holds L6100's vector
    np.testing.assert_array_equal(index.vectors(["L3", "L6050"]), vectors[[6100, 6050]])
    assert "L1" not in index.search(vectors[1:2], 5)[1][0]
    assert index.search(vectors[6050:6051], 1)[1] == [["L6050"]]
    scores, found = index.search(vectors[6100:6101], 3, allowed_ids=["L3", "L10", "L11"])
    assert found[0][0] == "L3" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_sq8_is_chosen_from_the_size_threshold_and_kept_by_a_rebuild(data, monkeypatch):
    vectors, ids, _ = data
    monkeypatch.setattr(vi_module, "COMPRESS_ABOVE", 10_000)
    large = VectorIndex.build(vectors, ids, FP, nlist=32)
    assert large.manifest["index_type"] == "IVF32,SQ8" and large.codec == "sq8"
    assert VectorIndex.build(vectors[:9000], ids[:9000], FP, nlist=32).manifest["index_type"] == "IVF32,Flat"
    assert VectorIndex.build(vectors, ids, FP, nlist=32, codec=None).manifest["index_type"] == "IVF32,Flat"
    assert large.rebuild(vectors, ids, nlist=32).codec == "sq8"
    assert large.rebuild(vectors, ids, nlist=32, codec="pq").manifest["index_type"] == "IVF32,PQ16x8"
