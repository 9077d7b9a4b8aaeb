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


def test_a_new_days_file_deletes_the_files_older_than_keep_days(tmp_path):
    import datetime as dt

    directory = tmp_path / "features"
    directory.mkdir()
    today = dt.datetime.now(dt.timezone.utc).date()
    logger = FeatureLogger(directory, keep_days=30)
    old, kept, undated = logger.path_for(today - dt.timedelta(days=30)), logger.path_for(
        today - dt.timedelta(days=29)), directory / "features-notes.jsonl"
    for path in (old, kept, undated):
        path.write_text("{}\n")
    query, candidates = small_query(), small_candidates()
    X, names = build_features(query, candidates, small_listings(), now_days=19100.0)
    written = logger.log("q1", query, candidates, X, names)
    assert written == logger.path_for(today)
    assert not old.exists() and kept.exists() and undated.exists()  # 30 days kept, today's file included

    late = logger.path_for(today - dt.timedelta(days=100))  # appears during the day: left until the next day
    late.write_text("{}\n")
    logger.log("q2", query, candidates, X, names)
    assert late.exists()
    assert logger.prune(today + dt.timedelta(days=1)) == [late, kept]  # the next day, 29 days back is too old
    assert not kept.exists() and undated.exists()


def test_without_keep_days_every_file_stays_and_keep_days_below_one_is_refused(tmp_path):
    import datetime as dt

    logger = FeatureLogger(tmp_path)
    ancient = logger.path_for(dt.date(2020, 1, 1))
    ancient.write_text("{}\n")
    query, candidates = small_query(), small_candidates()
    X, names = build_features(query, candidates, small_listings(), now_days=19100.0)
    logger.log("q", query, candidates, X, names)
    assert ancient.exists() and logger.prune(dt.date(2030, 1, 1)) == []
    with pytest.raises(ValueError, match="keep_days must be at least 1"):
        FeatureLogger(tmp_path, keep_days=0)


def test_the_service_setting_reaches_the_logger(tmp_path):
    from api.config import Settings
    from api.state import _feature_logger
    from core.workspace import Workspace

    workspace = Workspace.at(tmp_path)
    assert _feature_logger(Settings(workspace=tmp_path), workspace) is None  # logging is off by default
    logger = _feature_logger(Settings(workspace=tmp_path, feature_logging=True, feature_log_keep_days=7), workspace)
    assert logger.keep_days == 7 and logger.directory == workspace.logs_dir / "features"
    assert Settings(workspace=tmp_path).feature_log_keep_days == 30
