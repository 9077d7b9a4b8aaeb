"""IVF helpers against exact search on synthetic clustered data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from index import ivf
from index.synthetic import perturbed_queries
from tests.index.reference import brute_force


@pytest.mark.parametrize("n", [10_000, 50_000, 100_000, 1_000_000, 10_000_000])
def test_choose_nlist_follows_faiss_guidelines(n):
    nlist = ivf.choose_nlist(n)
    assert n / nlist >= ivf.MIN_POINTS_PER_LIST
    assert nlist <= 16 * math.sqrt(n)
    if n >= 100_000:  # enough data to reach the guideline's lower end
        assert nlist >= 4 * math.sqrt(n) - 1


def test_choose_nlist_uses_flat_index_for_small_catalogues():
    assert ivf.choose_nlist(0) == 0
    assert ivf.choose_nlist(9_999) == 0
    assert ivf.choose_nlist(10_000) > 0
    with pytest.raises(ValueError, match="n must be >= 0"):
        ivf.choose_nlist(-1)


def test_exact_search_matches_numpy(clustered):
    vectors, _, queries = clustered
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 7
    scores, found = ivf.exact_search(vectors, ids, queries[:50], 10)
    reference = brute_force(vectors, queries[:50], 10)
    np.testing.assert_array_equal(found, ids[reference])
    np.testing.assert_allclose(scores, np.take_along_axis(queries[:50] @ vectors.T, reference, 1), rtol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_calibrated_nprobe_reaches_target_recall_on_fresh_queries(clustered, metric):
    vectors, _, calibration = clustered
    ids = np.arange(len(vectors), dtype=np.int64)
    nlist = ivf.choose_nlist(len(vectors))
    index = ivf.build_ivf(vectors, ids, nlist, metric=metric)
    assert index.ntotal == len(vectors)
    _, exact = ivf.exact_search(vectors, ids, calibration, 10, metric)
    nprobe, recall = ivf.calibrate_nprobe(index, calibration, exact, k=10, target_recall=0.95)
    assert 1 <= nprobe < nlist  # IVF actually prunes
    _, found = ivf.search(index, calibration, 10, nprobe)
    assert ivf.recall_lower_bound(found, exact) >= 0.95 and recall >= 0.95  # with confidence, not just on average
    if nprobe > 1:  # the smallest such nprobe: one less misses the target
        _, fewer = ivf.search(index, calibration, 10, nprobe - 1)
        assert ivf.recall_lower_bound(fewer, exact) < 0.95

    # Held-out queries, checked against an independent numpy reference.
    fresh = perturbed_queries(vectors, 300, noise=0.4, seed=99)
    _, approximate = ivf.search(index, fresh, 10, nprobe)
    reference = brute_force(vectors, fresh, 10)  # unit vectors: L2 order == inner-product order
    assert ivf.recall_at_k(approximate, reference) >= 0.93


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_calibration_counts_tied_duplicates_as_found(clustered, metric):
    # every vector posted 40 times (a photo reused across listings): the exact top 10 of a query is ten of 40
    # equal vectors, and which ten an IVF search returns is arbitrary; counting ids alone, recall stayed far
    # below target at every nprobe and calibration fell back to probing all lists (the 100k photo index did)
    base = clustered[0][:500]
    vectors = np.repeat(base, 40, axis=0)
    ids = np.random.default_rng(0).permutation(len(vectors)).astype(np.int64)
    nlist = ivf.choose_nlist(len(vectors))
    index = ivf.build_ivf(vectors, ids, nlist, metric=metric)
    queries = base[:200]
    # the reference holds the vectors in another order than the index's lists, so its ties fall otherwise
    exact_scores, exact_ids = ivf.exact_search(vectors[::-1], ids[::-1], queries, 10, metric)
    _, by_id = ivf.calibrate_nprobe(index, queries, exact_ids, k=10, target_recall=0.95)
    assert by_id < 0.95  # ids alone: the tie order of two searches decides
    nprobe, recall = ivf.calibrate_nprobe(index, queries, exact_ids, k=10, target_recall=0.95,
                                          exact_scores=exact_scores, metric=metric)
    assert nprobe < nlist and recall >= 0.95
    # what counted as found really is as near as the exact neighbours: the same scores
    scores, _ = ivf.search(index, queries, 10, nprobe)
    found = np.abs(scores - exact_scores).max(axis=1) <= ivf.TIE_TOLERANCE
    assert found.mean() >= 0.9


def test_search_is_exact_with_all_lists_probed(clustered):
    vectors, _, queries = clustered
    ids = np.arange(len(vectors), dtype=np.int64)
    index = ivf.build_ivf(vectors, ids, 64)
    _, found = ivf.search(index, queries[:40], 10, nprobe=64)
    assert ivf.recall_at_k(found, brute_force(vectors, queries[:40], 10)) > 0.999


def test_pq_index_stores_codes_and_still_finds_neighbours(clustered, caplog):
    vectors, _, queries = clustered
    vectors = vectors[:10_000]  # PQ training (256 centroids per sub-quantiser) is the slow part
    ids = np.arange(len(vectors), dtype=np.int64)
    m = ivf.choose_pq_subquantizers(vectors.shape[1])
    assert m == 8 and vectors.shape[1] % m == 0
    index = ivf.build_ivf(vectors, ids, 64, codec="pq")
    assert ivf.ivf_of(index).code_size == m  # m bytes per vector instead of 4*d
    _, exact = ivf.exact_search(vectors, ids, queries, 10)
    _, approximate = ivf.search(index, queries, 10, nprobe=64)
    assert ivf.recall_at_k(approximate, exact) > 0.5
    # Lossy codes cannot reach 0.99: calibration says so and falls back to probing every list.
    nprobe, recall = ivf.calibrate_nprobe(index, queries, exact, target_recall=0.99)
    assert nprobe == 64 and recall < 0.99
    assert "reaches only" in caplog.text


def test_recall_lower_bound_is_below_the_mean_by_the_spread_over_queries():
    exact = np.arange(40).reshape(4, 10)
    found = exact.copy()
    assert ivf.recall_lower_bound(found, exact) == 1.0  # every query perfect: no doubt
    found[0, :5] = -1  # one query finds half its neighbours: mean 0.875, per-query std 0.25
    assert ivf.recall_at_k(found, exact) == pytest.approx(0.875)
    assert ivf.per_query_recall(found, exact).tolist() == [0.5, 1.0, 1.0, 1.0]
    assert ivf.recall_lower_bound(found, exact) == pytest.approx(0.875 - 1.645 * 0.25 / 2)


def test_sq8_index_stores_one_byte_per_dimension_and_ranks_almost_exactly(clustered):
    vectors, _, queries = clustered
    ids = np.arange(len(vectors), dtype=np.int64)
    index = ivf.build_ivf(vectors, ids, 64, codec="sq8")
    assert ivf.ivf_of(index).code_size == vectors.shape[1]
    assert ivf.codec_of(ivf.factory_string(64, ivf.codec_string("sq8", 32))) == "sq8"
    _, found = ivf.search(index, queries[:40], 10, nprobe=64)
    assert ivf.recall_at_k(found, brute_force(vectors, queries[:40], 10)) > 0.9


def test_build_ivf_rejects_bad_input(clustered):
    vectors, _, _ = clustered
    ids = np.arange(len(vectors), dtype=np.int64)
    with pytest.raises(ValueError, match="faiss_ids must have shape"):
        ivf.build_ivf(vectors, ids[:-1], 16)
    with pytest.raises(ValueError, match="cannot train 100 IVF lists on 50 vectors"):
        ivf.build_ivf(vectors[:50], ids[:50], 100)
    with pytest.raises(ValueError, match="unknown codec 'opq'"):
        ivf.build_ivf(vectors, ids, 16, codec="opq")
    with pytest.raises(ValueError, match="unknown metric 'cosine'"):
        ivf.build_ivf(vectors, ids, 16, metric="cosine")
    broken = vectors[:100].copy()
    broken[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ivf.build_ivf(broken, ids[:100], 0)
    index = ivf.build_ivf(vectors[:100], ids[:100], 0)
    with pytest.raises(ValueError, match="dimension 5 but the index holds 32"):
        ivf.search(index, np.zeros((1, 5), np.float32), 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        ivf.search(index, vectors[:1], 0)
