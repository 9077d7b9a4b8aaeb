import json

import numpy as np
import pytest

from ranking.feature_log import FeatureLogger, log_files, read_feature_logs, training_data_from_logs
from ranking.features import FEATURE_NAMES, build_features
from tests.ranking.helpers import small_candidates, small_listings, small_query


def test_logged_features_read_back_identically_with_nan(tmp_path):
    logger = FeatureLogger(tmp_path / "features")
    query, candidates = small_query(), small_candidates()
    X, names = build_features(query, candidates, small_listings(), now_days=19100.0)
    path = logger.log("query-1", query, candidates, X, names)
    logger.log("query-2", query, candidates, X[:, :], names)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 8 and records[0]["query_id"] == "query-1" and records[0]["listing_id"] == "bike-1"
    assert records[1]["features"]["bm25_score"] is None  # NaN is written as null
    logged = read_feature_logs(log_files(tmp_path / "features"))
    assert logged.query_ids == ["query-1"] * 4 + ["query-2"] * 4
    np.testing.assert_array_equal(logged.X[:4], X)  # NaN positions compare equal with assert_array_equal


def test_training_data_joins_interactions_and_drops_queries_without_positives(tmp_path):
    logger = FeatureLogger(tmp_path)
    query, candidates = small_query(), small_candidates()
    X, names = build_features(query, candidates, small_listings(), now_days=19100.0)
    for query_id in ("q1", "q2", "q3"):
        logger.log(query_id, query, candidates, X, names)
    logged = read_feature_logs(log_files(tmp_path))
    X_train, y, group, query_ids = training_data_from_logs(logged, {"q1": {"bike-2": 3}, "q3": {"lamp-1": 1}})
    assert query_ids == ["q1", "q3"] and group.tolist() == [4, 4]
    assert y.tolist() == [0, 3, 0, 0, 0, 0, 1, 0]
    assert X_train.shape == (8, len(FEATURE_NAMES))
    with pytest.raises(ValueError, match="no logged query has a positive interaction"):
        training_data_from_logs(logged, {"other": {"bike-1": 1}})


def test_log_refuses_a_matrix_that_does_not_match_the_candidates(tmp_path):
    query, candidates = small_query(), small_candidates()
    with pytest.raises(ValueError, match="features have shape"):
        FeatureLogger(tmp_path).log("q", query, candidates, np.zeros((2, 3)), ["a", "b", "c"])
