import numpy as np
import pytest

from ranking.features import FEATURE_NAMES, build_features, tokenize
from tests.ranking.helpers import NAN, small_candidates, small_listings, small_query


def as_dict(X: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    return {name: X[:, j] for j, name in enumerate(names)}


def test_hand_made_case_gives_known_values_and_nan_for_missing():
    X, names = build_features(small_query("Red bike!"), small_candidates(), small_listings(), now_days=19100.0)
    assert names == list(FEATURE_NAMES)
    assert X.dtype == np.float32 and X.shape == (4, len(FEATURE_NAMES))
    f = as_dict(X, names)
    expected = {
        "vector_score": [0.9, 0.7, NAN, NAN],
        "vector_rank": [1, 2, NAN, NAN],
        "vector_score_gap": [0.0, 0.2, NAN, NAN],
        "bm25_score": [4.0, NAN, 8.0, 2.0],
        "bm25_rank": [2, NAN, 1, 3],
        "bm25_score_ratio": [0.5, NAN, 1.0, 0.25],
        "rrf_rank": [1, 3, 2, 4],
        "text_sim_gap": [0.0, 0.2, 0.7, 0.6],
        "image_sim": [0.5, 0.4, NAN, 0.3],
        "image_sim_gap": [0.0, 0.1, NAN, 0.2],
        "photo_sim": [0.6, 0.9, NAN, 0.2],
        "photo_sim_gap": [0.3, 0.0, NAN, 0.7],
        "photo_sim_rank": [2, 1, NAN, 3],  # the lamp has no photo: no rank, not last
        "photo_sim_lead": [-0.3, 0.3, NAN, -0.7],  # bike-2 leads the runner-up bike-1 by 0.9 - 0.6
        "photo_near_duplicate": [0, 0, NAN, 0],  # no photo_sim reaches 0.95
        "image_sim_lead": [0.1, -0.1, NAN, -0.2],
        "best_photo_sim": [0.9, 0.9, 0.9, 0.9],
        "title_overlap": [1.0, 0.5, 0.0, NAN],  # {"red", "bike"}; the sofa has no title
        "term_coverage": [1.0, 0.5, 0.5, NAN],
        "term_coverage_gap": [0.0, 0.5, 0.5, NAN],
        "idf_coverage": [1.0, 0.4, 0.6, NAN],
        "term_bm25_score": [4.0, 1.0, 8.0, NAN],
        "term_bm25_ratio": [0.5, 0.125, 1.0, NAN],
        "category_prob": [0.8, 0.8, 0.2, NAN],  # the sofa's category is unknown (-1)
        "category_prob_ratio": [1.0, 1.0, 0.25, NAN],
        "category_path_share_top10": [0.5, 0.5, 0.25, 0.25],
        "category_path_share_vector_top10": [1.0, 1.0, 0.0, 0.0],  # the vector top 10 is the two bikes
        "category_path_share_bm25_top10": [1 / 3, 1 / 3, 1 / 3, 1 / 3],  # lamp, bike-1, sofa
        "top_category_share_top10": [0.5, 0.5, 0.25, NAN],
        # RRF order: bike-1, lamp-1, bike-2, sofa-1; closest photos: bike-2, bike-1, sofa-1 (the lamp has none)
        "category_path_share_photo_top10": [2 / 3, 2 / 3, 0.0, 1 / 3],
        "category_path_share_top3": [2 / 3, 2 / 3, 1 / 3, 0.0],
        "same_path_as_rrf_top1": [1, 1, 0, 0],
        "same_path_as_vector_top1": [1, 1, 0, 0],
        "same_path_as_bm25_top1": [0, 0, 1, 0],  # BM25's best is the lamp
        "same_path_as_photo_top1": [1, 1, 0, 0],
        "vector_top_margin": [0.2, 0.2, 0.2, 0.2],
        "bm25_top_margin_ratio": [0.5, 0.5, 0.5, 0.5],  # 4 / 8
        "photo_top_margin": [0.3, 0.3, 0.3, 0.3],
        "log_price": [np.log1p(100.0), NAN, np.log1p(20.0), np.log1p(250.0)],
        "price_to_category_median": [2.0, NAN, 0.5, NAN],
        "photo_count": [3, 1, 0, 2],
        "description_length": [120, 40, 0, 300],
        "listing_age_days": [100.0, 90.0, NAN, 110.0],
        "query_has_text": [1, 1, 1, 1],
        "query_has_image": [0, 0, 0, 0],
        "query_term_count": [2, 2, 2, 2],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(f[name], np.array(values, dtype=np.float32), rtol=1e-5, atol=1e-6,
                                   equal_nan=True, err_msg=name)


def test_missing_values_are_nan_never_zero():
    X, names = build_features(small_query(), small_candidates(), small_listings(), now_days=19100.0)
    f = as_dict(X, names)
    # bike-2 was not retrieved by BM25: all its BM25 features are missing, not zero
    assert np.isnan(f["bm25_score"][1]) and np.isnan(f["bm25_rank"][1]) and np.isnan(f["bm25_score_ratio"][1])
    # the lamp has no photo date, the bike-2 no price
    assert np.isnan(f["listing_age_days"][2]) and np.isnan(f["log_price"][1])


def test_image_only_query_has_no_text_features():
    X, names = build_features(small_query(text=None, has_image=True), small_candidates(), small_listings(),
                              now_days=19100.0)
    f = as_dict(X, names)
    assert np.isnan(f["title_overlap"]).all() and np.isnan(f["query_term_count"]).all()
    assert (f["query_has_text"] == 0).all() and (f["query_has_image"] == 1).all()


def test_columns_the_first_stage_did_not_compute_are_missing_not_zero():
    candidates = small_candidates()
    candidates.photo_sim = candidates.term_coverage = candidates.idf_coverage = candidates.term_bm25_score = None
    X, names = build_features(small_query(), candidates, small_listings(), now_days=19100.0)
    f = as_dict(X, names)
    for name in ("photo_sim", "photo_sim_gap", "photo_sim_rank", "term_coverage", "term_coverage_gap",
                 "idf_coverage", "term_bm25_score", "term_bm25_ratio", "category_path_share_photo_top10",
                 "same_path_as_photo_top1", "photo_top_margin", "photo_sim_lead", "photo_near_duplicate",
                 "best_photo_sim"):
        assert np.isnan(f[name]).all(), name
    assert np.isfinite(f["vector_rank"][:2]).all()  # the other columns are unaffected


def test_near_duplicate_photo_features():
    from ranking.features import NEAR_DUPLICATE_PHOTO_SIM

    candidates = small_candidates()
    candidates.photo_sim = np.array([0.97, 0.9, NAN, NEAR_DUPLICATE_PHOTO_SIM], dtype=np.float32)
    X, names = build_features(small_query(text=None, has_image=True), candidates, small_listings(), now_days=19100.0)
    f = as_dict(X, names)
    np.testing.assert_array_equal(f["photo_near_duplicate"], np.array([1, 0, NAN, 1], np.float32))
    np.testing.assert_allclose(f["photo_sim_lead"], [0.97 - NEAR_DUPLICATE_PHOTO_SIM, -0.07, NAN,
                                                      NEAR_DUPLICATE_PHOTO_SIM - 0.97], atol=1e-6)
    np.testing.assert_allclose(f["best_photo_sim"], 0.97, atol=1e-6)
    # a tie at the top: nobody leads
    candidates.photo_sim = np.array([0.8, 0.8, NAN, 0.5], dtype=np.float32)
    X, _ = build_features(small_query(), candidates, small_listings(), now_days=19100.0)
    np.testing.assert_allclose(as_dict(X, names)["photo_sim_lead"], [0.0, 0.0, NAN, -0.3], atol=1e-6)
    # a single photo: no runner-up to lead
    candidates.photo_sim = np.array([0.8, NAN, NAN, NAN], dtype=np.float32)
    X, _ = build_features(small_query(), candidates, small_listings(), now_days=19100.0)
    assert np.isnan(as_dict(X, names)["photo_sim_lead"]).all()


def test_features_follow_candidate_order():
    candidates = small_candidates()
    X, _ = build_features(small_query(), candidates, small_listings(), now_days=19100.0)
    order = [2, 0, 3, 1]
    for name in ("listing_ids",):
        setattr(candidates, name, [getattr(candidates, name)[i] for i in order])
    for name in ("rows", "vector_score", "vector_rank", "bm25_score", "bm25_rank", "rrf_score", "text_sim",
                 "image_sim", "photo_sim", "term_coverage", "idf_coverage", "term_bm25_score"):
        setattr(candidates, name, getattr(candidates, name)[order])
    X2, _ = build_features(small_query(), candidates, small_listings(), now_days=19100.0)
    np.testing.assert_array_equal(X2, X[order])


def test_empty_candidates_give_an_empty_matrix():
    candidates = small_candidates()
    empty = type(candidates)(listing_ids=[], rows=np.zeros(0, np.int64),
                             **{k: np.zeros(0, np.float32) for k in ("vector_score", "vector_rank", "bm25_score",
                                                                      "bm25_rank", "rrf_score", "text_sim",
                                                                      "image_sim")})
    X, names = build_features(small_query(), empty, small_listings())
    assert X.shape == (0, len(names))


def test_rows_outside_the_table_are_refused():
    candidates = small_candidates()
    candidates.rows = np.array([0, 1, 2, 9], dtype=np.int64)
    with pytest.raises(ValueError, match="rows must lie in"):
        build_features(small_query(), candidates, small_listings())


def test_tokenize_lowercases_and_splits_on_non_word_characters():
    assert tokenize("iPhone-12 Pro, 128GB") == ["iphone", "12", "pro", "128gb"]
    assert tokenize(None) == [] and tokenize("") == []


def test_title_overlap_counts_each_distinct_query_term_found_as_a_whole_title_token():
    """The one-pass matcher against the definition (distinct query terms among the title's tokenize tokens), on
    titles with punctuation, prefixes of terms, repeated terms, non-ASCII case rules, newlines and no title."""
    from ranking.features import _title_overlap

    words = ["bike", "bikes", "e-bike", "BIKE", "red", "Red,", "straße", "STRASSE", "İstanbul", "naïve", "£50",
             "c++", "x_y", "new\nred", "(new)", "renew", "σοφία", "ΣΟΦΙΑΣ", "50", "-", ""]
    rng = np.random.default_rng(0)
    titles = [" ".join(rng.choice(words, size=rng.integers(0, 7))) for _ in range(300)] + ["", None]
    for query in ["red bike", "Bike bikes e", "straße istanbul naïve", "new 50 x_y", "σοφιας σοφία", "c renew"]:
        terms = set(tokenize(query))
        expected = [len(terms & set(tokenize(title))) / len(terms) if title else np.nan for title in titles]
        np.testing.assert_array_equal(_title_overlap(terms, titles), np.asarray(expected, dtype=np.float32))
    assert np.isnan(_title_overlap(set(), titles)).all()


def test_category_shares_count_the_group_members_with_the_candidate_s_key():
    from ranking.features import _path_codes, _shares_among

    rng = np.random.default_rng(1)
    paths = list(rng.choice(["A / B", "A / C", "B", ""], size=40))
    codes = _path_codes(paths)
    assert all((codes[i] == codes[j]) == (paths[i] == paths[j]) for i in range(40) for j in range(40) if paths[i])
    assert (codes[[i for i, p in enumerate(paths) if not p]] == -1).all()
    groups = [rng.permutation(40)[:10], np.arange(3), np.arange(1), np.zeros(0, dtype=np.int64)]
    shares = _shares_among(codes, groups)
    for g, members in enumerate(groups):
        for i, path in enumerate(paths):
            expected = sum(paths[m] == path for m in members) / len(members) if path and len(members) else np.nan
            assert shares[g, i] == np.float32(expected) or (np.isnan(expected) and np.isnan(shares[g, i]))
    all_missing = _shares_among(np.full(5, -1), [np.arange(3), np.arange(1)])
    assert all_missing.shape == (2, 5) and np.isnan(all_missing).all()
