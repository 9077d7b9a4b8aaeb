"""BM25Index: exact-term matches, exact filters, robustness to odd queries, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from index.bm25 import BM25Index, listing_text
from index.storage import IndexLoadError

LISTINGS = {
    "L1": ("Apple iPhone 7 32GB", "Black phone, screen has a small scratch. Charger included."),
    "L2": ("Samsung Galaxy S8", "Phone in good condition, comes with a case."),
    "L3": ("Raleigh mountain bike", "Red frame, 21 gears, recently serviced."),
    "L4": ("Kids bike", "Blue bicycle with stabilisers, fits ages 4 to 7."),
    "L5": ("Dyson V11 cordless vacuum", "Works perfectly, two spare heads."),
    "L6": ("Vacuum cleaner", "Bagless vacuum by Vax, model U85-AS-Be, a bit noisy."),
    "L7": ("Bosch drill GSB 18V-21", "Cordless combi drill with two batteries."),
    "L8": ("Oak dining table", "Seats six, a few marks on the top."),
}


@pytest.fixture(scope="module")
def bm25():
    ids = list(LISTINGS)
    return BM25Index.build(ids, [listing_text(*LISTINGS[i]) for i in ids])


def test_exact_brand_and_model_number_terms(bm25):
    assert bm25.search("dyson", 5)[1] == ["L5"]
    assert bm25.search("V11", 5)[1] == ["L5"]
    assert bm25.search("U85-AS-Be", 5)[1][0] == "L6"
    assert bm25.search("GSB 18V-21", 5)[1][0] == "L7"  # "21" also matches L3 "21 gears", lower
    assert bm25.search("iphone 7", 5)[1][0] == "L1"  # single-digit token kept
    assert bm25.search("RALEIGH", 5)[1] == ["L3"]  # case-insensitive


def test_ranking_scores_and_stemming(bm25):
    scores, ids = bm25.search("vacuum", 5)
    assert set(ids) == {"L5", "L6"} and ids[0] == "L6"  # L6 says vacuum twice
    assert scores.dtype == np.float32 and np.all(np.diff(scores) <= 0) and np.all(scores > 0)
    assert "L3" in bm25.search("bikes", 5)[1]  # stemmed plural
    assert bm25.search("phones", 1)[1] in (["L1"], ["L2"])


def test_filters_are_exact(bm25):
    _, ids = bm25.search("bike phone vacuum drill", 10, allowed_ids={"L2", "L4", "L8", "unknown"})
    assert set(ids) == {"L2", "L4"}  # L8 is allowed but matches no term
    _, ids = bm25.search("vacuum", 1, allowed_ids=["L5"])
    assert ids == ["L5"]
    _, ids = bm25.search("vacuum", 5, allowed_ids=[])
    assert ids == []
    # k results whenever k allowed listings match.
    _, ids = bm25.search("bike phone vacuum drill table", 3, allowed_ids=["L1", "L3", "L6", "L7"])
    assert len(ids) == 3 and set(ids) <= {"L1", "L3", "L6", "L7"}


@pytest.mark.parametrize("query", ["", "   ", "the and of", "zzzqqq", "!!!???", "é" * 5000])
def test_empty_stopword_and_unknown_queries_give_empty_results(bm25, query):
    scores, ids = bm25.search(query, 5)
    assert ids == [] and scores.shape == (0,)


def test_bad_arguments(bm25):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        bm25.search("bike", 0)
    with pytest.raises(ValueError, match="query must be a string"):
        bm25.search(None, 5)
    with pytest.raises(ValueError, match="got 2 listing ids but 1 texts"):
        BM25Index.build(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="0 listings"):
        BM25Index.build([], [])


def test_save_load_round_trip(bm25, tmp_path):
    bm25.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    for query in ["vacuum", "bike phone", "GSB 18V-21"]:
        expected, got = bm25.search(query, 5), loaded.search(query, 5)
        assert got[1] == expected[1]
        np.testing.assert_allclose(got[0], expected[0])
    assert loaded.manifest["count"] == len(LISTINGS)
    with pytest.raises(IndexLoadError, match="no BM25 index"):
        BM25Index.load(tmp_path / "missing")


def test_allowed_mask_is_the_same_filter_as_allowed_ids(bm25):
    allowed = ["L2", "L4", "L8", "unknown"]
    positions = bm25.positions_of(allowed)
    assert positions[-1] == -1
    mask = np.zeros(len(bm25), dtype=bool)
    mask[positions[positions >= 0]] = True
    query = "bike phone vacuum drill"
    by_ids, by_mask = bm25.search(query, 10, allowed_ids=allowed), bm25.search(query, 10, allowed_mask=mask)
    assert by_ids[1] == by_mask[1] and set(by_mask[1]) == {"L2", "L4"}
    np.testing.assert_array_equal(by_ids[0], by_mask[0])
    with pytest.raises(ValueError, match="shape"):
        bm25.search(query, 10, allowed_mask=mask[:-1])
    with pytest.raises(ValueError, match="not both"):
        bm25.search(query, 10, allowed_ids=allowed, allowed_mask=mask)
