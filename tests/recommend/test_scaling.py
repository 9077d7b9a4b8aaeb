"""What makes the recommenders fast at 100k listings: candidate retrieval by approximate search, histories
aggregated in whole-array operations, co-visitation pruned without a loop; each against the direct computation
it replaces."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommend.collaborative import keep_top_per_row
from recommend.data import Items, price_bands
from recommend.model import listed_rank
from recommend.profiles import Histories, Profiles, build_profile
from recommend.retrieval import EXACT_BELOW, ListingIndex


def clustered(n: int, dim: int = 32, clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_the_approximate_search_finds_most_of_the_exact_neighbours_and_only_allowed_listings():
    vectors = clustered(4 * EXACT_BELOW)
    index = ListingIndex(vectors)
    assert not index.exact and index.nprobe < index.index.nlist  # a real approximation
    rng = np.random.default_rng(1)
    allowed = rng.random(len(vectors)) < 0.7
    recalls = []
    for query in vectors[rng.choice(len(vectors), 20, replace=False)]:
        found = index.search(query, 50, allowed)
        assert len(found) == 50 and allowed[found].all()
        exact = np.argsort(-np.where(allowed, vectors @ query, -np.inf))[:50]
        recalls.append(np.isin(exact, found).mean())
    assert np.mean(recalls) >= 0.8, recalls


def test_several_queries_give_one_merged_set_and_a_small_catalogue_is_searched_exactly():
    vectors = clustered(300)
    index = ListingIndex(vectors)
    assert index.exact
    found = index.search(vectors[:3], 10)
    expected = np.unique(np.argsort(-(vectors[:3] @ vectors.T), axis=1)[:, :10])
    assert np.array_equal(found, expected)
    assert len(index.search(vectors[:1], 10, np.zeros(len(vectors), bool))) == 0


def small_items(n: int, seed: int = 0) -> Items:
    rng = np.random.default_rng(seed)
    top = np.array([f"T{i % 3}" for i in range(n)], dtype=object)
    price = rng.uniform(1, 100, n)
    return Items(ids=[f"L{i}" for i in range(n)], vectors=clustered(n, dim=8, clusters=5, seed=seed),
                 top_category=top, category=np.array([f"{t} / S{i % 2}" for i, t in enumerate(top)], dtype=object),
                 town=np.array([f"Town {i % 4}" for i in range(n)], dtype=object),
                 county=np.array(["C"] * n, dtype=object), price=price, band=price_bands(top, price),
                 created=np.full(n, np.nan), has_image=np.ones(n, bool), active=np.ones(n, bool))


def test_histories_built_in_whole_arrays_give_the_profiles_of_the_per_user_builder():
    rng = np.random.default_rng(2)
    items = small_items(60)
    events = 700
    user_rows = rng.integers(0, 25, events)
    rows = rng.integers(0, len(items), events)
    weights = rng.choice([1.0, 3.0, 6.0], events) * rng.uniform(0.5, 1.0, events)
    grades = rng.integers(1, 5, events).astype(np.int8)
    purchased = rng.random(events) < 0.1
    user_ids = np.array([f"u{i}" for i in range(25)])
    histories = Histories.from_events(user_ids, user_rows, rows, weights, grades, purchased, len(items))
    for u in range(25):
        mine = user_rows == u
        expected = build_profile(f"u{u}", items, rows[mine], weights[mine], grades[mine], rows[mine & purchased],
                                 int(mine.sum()))
        got = histories.profile(u, items)
        assert np.array_equal(got.items, expected.items)
        assert np.allclose(got.weights, expected.weights)
        assert np.array_equal(got.grades, expected.grades) and np.array_equal(got.bought, expected.bought)
        assert np.allclose(got.interests, expected.interests) and got.home == expected.home
        assert got.affinity.keys() == expected.affinity.keys() and got.n_events == expected.n_events


def test_keeping_the_strongest_entries_per_row_matches_a_row_by_row_sort():
    matrix = sp.random(200, 200, density=0.3, random_state=3, format="csr", dtype=np.float32)
    matrix.data = np.round(matrix.data * 4) / 4 + 0.25  # ties
    kept = keep_top_per_row(matrix, 7)
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        order = np.argsort(-matrix.data[start:end], kind="stable")[:7]
        assert np.array_equal(kept[row].toarray(), sp.csr_matrix(
            (matrix.data[start:end][order], (np.zeros(len(order), int), matrix.indices[start:end][order])),
            shape=(1, matrix.shape[1])).toarray())


def test_the_listed_rank_puts_the_newest_listing_near_one_and_leaves_undated_ones_unknown():
    ranks = listed_rank(np.array([30.0, 10.0, np.nan, 20.0, 30.0]))
    assert ranks[1] == 0 and ranks[3] == 0.25 and ranks[0] == ranks[4] == 0.5 and np.isnan(ranks[2])


def test_an_erased_user_leaves_nothing_in_the_packed_histories():
    items = small_items(30)
    rows = np.array([1, 2, 2, 5, 7, 7, 9])
    users = np.array([0, 0, 0, 1, 1, 2, 2])
    histories = Histories.from_events(np.array(["keep-a", "gone", "keep-b"]), users, rows,
                                      np.ones(len(rows)), np.ones(len(rows), np.int8), rows == 7, len(items))
    histories.factors = np.ones((3, 4), np.float32)
    profiles = Profiles(items, histories)
    before = profiles["keep-b"]
    del profiles["gone"]
    assert "gone" not in profiles and "gone" not in histories.user_ids.tolist()
    assert not histories.weights[histories.ptr[1]:histories.ptr[2]].any() and not len(histories.bought[
        histories.bought_ptr[1]:histories.bought_ptr[2]].nonzero()[0]) and np.isnan(histories.factors[1]).all()
    packed = profiles.packed()
    assert packed.user_ids.tolist() == ["keep-a", "keep-b"]
    assert np.array_equal(Profiles(items, packed)["keep-b"].items, before.items)


def test_train_recs_samples_as_many_label_users_as_the_library_default():
    import inspect

    from recommend.cli import train_recs
    from recommend.train import MAX_LABEL_USERS

    assert inspect.signature(train_recs).parameters["max_label_users"].default == MAX_LABEL_USERS
