"""VectorIndex: id map, filter guarantees, persistence, manifest checks and atomic saves."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import ivf, storage
from index.storage import IndexLoadError
from index.synthetic import clustered_vectors, perturbed_queries
from index.vector_index import VectorIndex
from tests.index.reference import brute_force


def test_build_chooses_ivf_and_calibrates_nprobe(built_index, clustered):
    vectors, listing_ids, queries = clustered
    manifest = built_index.manifest
    assert manifest["index_type"] == f"IVF{ivf.choose_nlist(len(vectors))},Flat"
    assert 1 <= built_index.nprobe < built_index.nlist
    assert manifest["calibration"]["recall"] >= 0.95
    assert manifest["calibration"]["source"] == "calibration queries"
    assert manifest["count"] == len(vectors) and manifest["dimension"] == vectors.shape[1]
    # Recall@10 on held-out queries against numpy brute force.
    fresh = perturbed_queries(vectors, 200, seed=5)
    _, found = built_index.search(fresh, 10)
    reference = brute_force(vectors, fresh, 10)
    hits = sum(len(set(row) & {listing_ids[i] for i in ref}) for row, ref in zip(found, reference))
    assert hits / reference.size >= 0.93


def test_small_catalogue_gets_exact_flat_index():
    vectors = clustered_vectors(500, 16, seed=3)
    ids = [f"s{i}" for i in range(500)]
    vi = VectorIndex.build(vectors, ids, "model-a")
    assert vi.nlist == 0 and vi.manifest["index_type"] == "IDMap2,Flat"
    scores, found = vi.search(vectors[:20], 7)
    reference = brute_force(vectors, vectors[:20], 7)
    assert found == [[ids[i] for i in row] for row in reference]
    assert scores.shape == (20, 7) and scores.dtype == np.float32
    # k larger than the catalogue: every listing, once.
    _, everything = vi.search(vectors[:1], 1000)
    assert sorted(everything[0]) == sorted(ids)


def test_id_map_after_add_remove_update(ivf_index, clustered):
    vectors, listing_ids, _ = clustered
    vi = ivf_index
    count = len(vi)
    first_free = vi.next_faiss_id

    removed = listing_ids[:5]
    assert vi.remove(removed + ["not-indexed"]) == 5
    assert len(vi) == count - 5
    _, found = vi.search(vectors[:5], 10)
    assert not set(removed) & {i for row in found for i in row}
    assert vi.remove(removed) == 0  # removing twice is a no-op

    new_vectors = clustered_vectors(3, vectors.shape[1], seed=42)
    vi.add(new_vectors, ["new-1", "new-2", "new-3"])
    assert len(vi) == count - 2
    assert [vi.faiss_id(i) for i in ["new-1", "new-2", "new-3"]] == [first_free, first_free + 1, first_free + 2]
    _, found = vi.search(new_vectors, 1)
    assert found == [["new-1"], ["new-2"], ["new-3"]]
    with pytest.raises(ValueError, match="already indexed.*use update"):
        vi.add(new_vectors[:1], ["new-1"])

    # Update moves listing-00100 onto listing-00200's vector; it keeps its FAISS id.
    kept_id = vi.faiss_id("listing-00100")
    vi.update(vectors[200:201], ["listing-00100"])
    assert vi.faiss_id("listing-00100") == kept_id and len(vi) == count - 2
    scores, found = vi.search(vectors[200:201], 2)
    assert set(found[0]) == {"listing-00100", "listing-00200"}
    np.testing.assert_allclose(scores[0], [1.0, 1.0], atol=1e-5)
    # A removed listing that comes back gets a fresh FAISS id: ids are never reused.
    vi.update(vectors[:1], [listing_ids[0]])
    assert vi.faiss_id(listing_ids[0]) == first_free + 3
    assert vi.listing_id(first_free + 3) == listing_ids[0]


@pytest.fixture(params=["auto", "selector-only"])
def strategy(request, monkeypatch):
    """auto: sparse filters use exact search over the allowed vectors; selector-only: always the FAISS
    id selector over the probed lists, widening to all lists when they come back short."""
    if request.param == "selector-only":
        monkeypatch.setattr(VectorIndex, "_subset_search_limit", lambda self: 0)
    return request.param


@pytest.mark.parametrize("n_allowed", [1, 3, 10, 57, 2_000, 8_000])
def test_filtered_search_never_leaves_allowed_set_and_returns_k(built_index, clustered, n_allowed, strategy):
    vectors, listing_ids, queries = clustered
    rng = np.random.default_rng(n_allowed)
    allowed_rows = np.sort(rng.choice(len(vectors), n_allowed, replace=False))
    allowed = {listing_ids[i] for i in allowed_rows}
    scores, found = built_index.search(queries[:50], 10, allowed_ids=allowed)
    want = min(10, n_allowed)
    assert scores.shape == (50, want)
    for row in found:
        assert len(row) == want and len(set(row)) == want
        assert set(row) <= allowed
    if n_allowed <= 57:  # sparse filters land outside the probed lists: answered by the exhaustive scan
        reference = brute_force(vectors, queries[:50], 10, allowed=allowed_rows)
        assert found == [[listing_ids[i] for i in row] for row in reference]


def test_filter_whose_listings_live_only_in_unprobed_lists(built_index, clustered, strategy):
    vectors, listing_ids, queries = clustered
    query = queries[:1]
    inverted = ivf.ivf_of(built_index.index)
    _, probed = inverted.quantizer.search(query, built_index.nprobe)
    _, lists = inverted.quantizer.search(vectors, 1)
    # The 30 listings least similar to the query, none of them in a probed list.
    order = np.argsort(vectors @ query[0])
    far = [i for i in order if lists[i, 0] not in set(probed[0])][:30]
    allowed = {listing_ids[i] for i in far}
    _, found = built_index.search(query, 10, allowed_ids=allowed)
    reference = brute_force(vectors, query, 10, allowed=np.array(far))
    assert found[0] == [listing_ids[i] for i in reference[0]]


def test_filtered_search_with_l2_metric_and_stored_vectors(clustered):
    vectors, listing_ids, queries = clustered
    vi = VectorIndex.build(vectors, listing_ids, "model-a", metric="l2", calibration_queries=queries)
    np.testing.assert_array_equal(vi.vectors(listing_ids[10:13]), vectors[10:13])
    with pytest.raises(KeyError, match="not indexed"):
        vi.vectors(["nope"])
    allowed_rows = np.arange(0, 20_000, 400)
    scores, found = vi.search(queries[:10], 5, allowed_ids=[listing_ids[i] for i in allowed_rows])
    distances = ((queries[:10, None, :] - vectors[None, allowed_rows, :]) ** 2).sum(-1)
    reference = allowed_rows[np.argsort(distances, axis=1)[:, :5]]
    assert found == [[listing_ids[i] for i in row] for row in reference]
    np.testing.assert_allclose(scores, np.sort(distances, axis=1)[:, :5], atol=1e-4)  # squared L2, ascending


def test_filter_edge_cases(built_index, clustered):
    vectors, listing_ids, queries = clustered
    scores, found = built_index.search(queries[:4], 10, allowed_ids=[])
    assert scores.shape == (4, 0) and found == [[], [], [], []]
    _, found = built_index.search(queries[:2], 10, allowed_ids=["unknown-1", listing_ids[7], "unknown-2"])
    assert found == [[listing_ids[7]], [listing_ids[7]]]
    with pytest.raises(ValueError, match="not a single string"):
        built_index.search(queries[:1], 10, allowed_ids=listing_ids[7])


def test_search_rejects_bad_queries(built_index):
    with pytest.raises(ValueError, match="dimension 5 but the index holds 32"):
        built_index.search(np.zeros((1, 5), np.float32), 3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        built_index.search(np.zeros((1, 32), np.float32), 0)
    with pytest.raises(ValueError, match="NaN"):
        built_index.search(np.full((1, 32), np.nan, np.float32), 3)
    # A single 1-D query vector is accepted as one row.
    scores, found = built_index.search(np.ones(32, np.float32) / np.sqrt(32), 3)
    assert scores.shape == (1, 3) and len(found[0]) == 3


def test_build_rejects_mismatched_ids(clustered):
    vectors, listing_ids, _ = clustered
    with pytest.raises(ValueError, match="got 100 vectors but 99 listing ids"):
        VectorIndex.build(vectors[:100], listing_ids[:99], "model-a")
    with pytest.raises(ValueError, match="duplicate listing ids"):
        VectorIndex.build(vectors[:3], ["a", "b", "a"], "model-a")
    with pytest.raises(ValueError, match="model_fingerprint is required"):
        VectorIndex.build(vectors[:3], ["a", "b", "c"], "")


def test_save_load_round_trip(built_index, clustered, tmp_path):
    _, _, queries = clustered
    built_index.save(tmp_path / "vector")
    loaded = VectorIndex.load(tmp_path / "vector", expected_fingerprint="model-a", expected_dimension=32)
    assert loaded.manifest == {**built_index.manifest, "saved_at": loaded.manifest["saved_at"]}
    expected_scores, expected_ids = built_index.search(queries[:20], 10)
    scores, found = loaded.search(queries[:20], 10)
    assert found == expected_ids
    np.testing.assert_array_equal(scores, expected_scores)
    folder = tmp_path / "vector" / storage.current_version(tmp_path / "vector")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"index.faiss", "id_map.json"}
    assert manifest["faiss_version"] == faiss.__version__ and manifest["nprobe"] == built_index.nprobe


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_a_memory_mapped_load_searches_the_same_from_the_file_pages(kind, built_index, clustered, tmp_path):
    """Serving maps the index file read-only (IVF lists and flat codes alike) instead of copying it."""
    vectors, listing_ids, queries = clustered
    index = built_index if kind == "ivf" else VectorIndex.build(vectors[:500], listing_ids[:500], "model-a")
    index.save(tmp_path / "vector")
    mapped = VectorIndex.load(tmp_path / "vector", mmap=True)
    file = tmp_path / "vector" / storage.current_version(tmp_path / "vector") / "index.faiss"
    assert str(file) in Path("/proc/self/maps").read_text()
    expected_scores, expected_ids = index.search(queries[:20], 10)
    scores, found = mapped.search(queries[:20], 10)
    assert found == expected_ids
    np.testing.assert_array_equal(scores, expected_scores)


def test_the_search_threads_hold_in_every_thread_that_searches(built_index, clustered):
    """The service sets them once; its searches run in other threads, where FAISS's setting is not inherited."""
    _, _, queries = clustered
    seen = []

    def search():
        built_index.search(queries[:1], 5)
        seen.append(faiss.omp_get_max_threads())

    VectorIndex.set_search_threads(5)  # no machine's default: this many cores is unusual
    try:
        thread = threading.Thread(target=search)
        thread.start()
        thread.join()
    finally:
        VectorIndex.set_search_threads(None)
        faiss.omp_set_num_threads(2)  # the session's setting (conftest)
    assert seen == [5]


def test_load_refuses_other_model_and_dimension(built_index, tmp_path):
    built_index.save(tmp_path / "vector")
    with pytest.raises(IndexLoadError) as error:
        VectorIndex.load(tmp_path / "vector", expected_fingerprint="model-b")
    message = str(error.value)
    assert "'model-a'" in message and "'model-b'" in message and "marketsearch index --rebuild" in message
    with pytest.raises(IndexLoadError, match="holds 32-d vectors but the current model embeds into 64"):
        VectorIndex.load(tmp_path / "vector", expected_dimension=64)


def test_load_detects_corrupted_and_missing_files(built_index, tmp_path):
    root = tmp_path / "vector"
    built_index.save(root)
    index_file = root / storage.current_version(root) / "index.faiss"
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="index.faiss is corrupt: sha256 .*`marketsearch index --rebuild`"):
        VectorIndex.load(root)
    index_file.unlink()
    with pytest.raises(IndexLoadError, match="is missing"):
        VectorIndex.load(root)
    with pytest.raises(IndexLoadError, match="no vector index at"):
        VectorIndex.load(tmp_path / "nothing-here")


class Killed(BaseException):
    """Stands in for the process dying (not an Exception, so nothing may swallow it)."""


def test_crash_during_save_keeps_previous_index(ivf_index, clustered, tmp_path, monkeypatch):
    _, listing_ids, queries = clustered
    root = tmp_path / "vector"
    ivf_index.save(root)
    before = VectorIndex.load(root).search(queries[:5], 10)
    ivf_index.remove(listing_ids[:1000])

    def crash_half_way(index, path):  # a partial file, then the process "dies"
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise Killed("killed during write_index")

    monkeypatch.setattr(faiss, "write_index", crash_half_way)
    with pytest.raises(Killed):
        ivf_index.save(root)
    monkeypatch.undo()

    # Crash between publishing the new folder and swapping CURRENT.
    real_replace = storage.os.replace

    def crash_on_current(source, target):
        if str(target).endswith(storage.CURRENT):
            raise OSError("power cut")
        return real_replace(source, target)

    monkeypatch.setattr(storage.os, "replace", crash_on_current)
    with pytest.raises(OSError, match="power cut"):
        ivf_index.save(root)
    monkeypatch.undo()

    loaded = VectorIndex.load(root)
    assert len(loaded) == len(clustered[0])
    after = loaded.search(queries[:5], 10)
    assert after[1] == before[1]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # temporary folders cleaned up

    # The next successful save publishes the new state and prunes to current + previous.
    ivf_index.save(root)
    assert len(VectorIndex.load(root)) == len(clustered[0]) - 1000
    assert len([p for p in root.iterdir() if p.name.startswith("v-")]) == 2


def test_rebuild_keeps_faiss_ids_and_retrains(ivf_index, clustered):
    vectors, listing_ids, queries = clustered
    keep = listing_ids[5_000:]
    ids_before = {i: ivf_index.faiss_id(i) for i in keep[:100]}
    extra = clustered_vectors(10, vectors.shape[1], seed=9)
    rebuilt = ivf_index.rebuild(
        np.vstack([vectors[5_000:], extra]),
        keep + [f"extra-{i}" for i in range(10)],
        calibration_queries=queries,
    )
    assert len(rebuilt) == len(keep) + 10
    assert {i: rebuilt.faiss_id(i) for i in keep[:100]} == ids_before
    assert rebuilt.faiss_id("extra-0") == ivf_index.next_faiss_id
    assert rebuilt.nlist == ivf.choose_nlist(len(rebuilt))
    assert rebuilt.manifest["trained_count"] == len(rebuilt)
    assert not rebuilt.drift()["needs_rebuild"]


def test_drift_advises_rebuild_after_growth(clustered):
    vectors, listing_ids, _ = clustered
    vi = VectorIndex.build(vectors[:10_000], listing_ids[:10_000], "model-a")
    assert not vi.drift()["needs_rebuild"]
    vi.add(vectors[10_000:], listing_ids[10_000:])
    vi.add(clustered_vectors(1_000, vectors.shape[1], seed=4), [f"more-{i}" for i in range(1_000)])
    drift = vi.drift()
    assert drift["needs_rebuild"] and "size changed 2.10x" in drift["reasons"][0]


def test_sync_applies_catalogue_changes_incrementally(ivf_index, clustered, tmp_path):
    vectors, listing_ids, queries = clustered
    # The "catalogue" now: first 100 listings deleted, listing 500 re-embedded, 20 new listings.
    current_ids = listing_ids[100:] + [f"fresh-{i}" for i in range(20)]
    current = np.vstack([vectors[100:], clustered_vectors(20, vectors.shape[1], seed=11)])
    current[400] = vectors[7]  # row 400 is listing 500
    kept_id = ivf_index.faiss_id(listing_ids[500])
    counts = ivf_index.sync(current, current_ids)
    assert counts == {"added": 20, "removed": 100, "updated": 1, "unchanged": len(listing_ids) - 101}
    assert len(ivf_index) == len(current_ids) and set(ivf_index.listing_ids) == set(current_ids)
    assert ivf_index.faiss_id(listing_ids[500]) == kept_id
    _, found = ivf_index.search(vectors[7:8], 1)
    assert found == [[listing_ids[500]]]
    # Digests survive save/load: syncing the same catalogue again changes nothing.
    ivf_index.save(tmp_path / "synced")
    loaded = VectorIndex.load(tmp_path / "synced")
    assert loaded.sync(current, current_ids) == {
        "added": 0,
        "removed": 0,
        "updated": 0,
        "unchanged": len(current_ids),
    }


def test_allowed_faiss_ids_is_the_same_filter_as_allowed_ids(built_index, clustered):
    vectors, listing_ids, queries = clustered
    allowed = [listing_ids[i] for i in range(0, len(listing_ids), 7)] + ["not-indexed"]
    faiss_ids = built_index.faiss_ids_of(allowed)
    assert faiss_ids[-1] == -1 and (faiss_ids[:-1] >= 0).all()
    by_ids = built_index.search(queries[:20], 10, allowed_ids=allowed)
    by_faiss_ids = built_index.search(queries[:20], 10, allowed_faiss_ids=faiss_ids)
    assert by_ids[1] == by_faiss_ids[1]
    np.testing.assert_array_equal(by_ids[0], by_faiss_ids[0])
    with pytest.raises(ValueError, match="not both"):
        built_index.search(queries[:1], 10, allowed_ids=allowed, allowed_faiss_ids=faiss_ids)
