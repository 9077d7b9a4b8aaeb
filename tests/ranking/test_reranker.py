import json

import lightgbm
import numpy as np
import pytest

from evaluation.evaluate import compare_runs, scores_from_ranking
from ranking.features import FEATURE_NAMES
from ranking.reranker import NotFittedError, Reranker, RerankerVersionError

N_FEATURES = len(FEATURE_NAMES)


def synthetic_queries(n_queries: int, per_query: int = 30, seed: int = 0):
    """Relevance depends on two features through an interaction a linear first stage cannot express."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_queries * per_query, N_FEATURES)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    signal = np.nan_to_num(X[:, 0]) + 1.5 * (np.nan_to_num(X[:, 3]) > 0.5)
    y = np.digitize(signal + 0.3 * rng.normal(size=len(X)), [1.0, 2.0, 2.8])
    return X, y, np.full(n_queries, per_query)


def mean_ndcg_at_10(scores: np.ndarray, y: np.ndarray, group: np.ndarray) -> float:
    qrels, run, start = {}, {}, 0
    for q, count in enumerate(group):
        ids = [f"d{i}" for i in range(count)]
        labels, s = y[start:start + count], scores[start:start + count]
        qrels[f"q{q}"] = {d: int(g) for d, g in zip(ids, labels) if g > 0}
        run[f"q{q}"] = scores_from_ranking([ids[i] for i in np.argsort(-s, kind="stable")])
        start += count
    qrels = {q: d for q, d in qrels.items() if d}
    run = {q: d for q, d in run.items() if q in qrels}
    return compare_runs(qrels, {"model": run}, metrics=["ndcg@10"]).scores["model"]["ndcg@10"]


@pytest.fixture(scope="module")
def fitted():
    X, y, group = synthetic_queries(150)
    eX, ey, egroup = synthetic_queries(40, seed=1)
    return Reranker(n_estimators=200, log_every=0, n_jobs=1).fit(X, y, group, eX, ey, egroup)


def test_fit_learns_a_ranking_better_than_the_first_feature_alone(fitted):
    X, y, group = synthetic_queries(60, seed=2)
    learned = mean_ndcg_at_10(fitted.predict(X), y, group)
    first_feature = mean_ndcg_at_10(np.nan_to_num(X[:, 0], nan=-9), y, group)
    assert learned > first_feature + 0.05
    assert 1 <= fitted.best_iteration_ <= 200
    assert "ndcg@10" in fitted.best_score_["valid_0"]
    assert fitted.feature_importances_.shape == (N_FEATURES,)
    assert fitted.feature_names_ == list(FEATURE_NAMES)


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    X, _, _ = synthetic_queries(5, seed=3)
    fitted.save(tmp_path / "ranker")
    assert sorted(p.name for p in (tmp_path / "ranker").iterdir()) == ["meta.json", "model.txt"]
    meta = json.loads((tmp_path / "ranker" / "meta.json").read_text())
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["lightgbm_version"] == lightgbm.__version__
    loaded = Reranker.load(tmp_path / "ranker")
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert loaded.best_iteration_ == fitted.best_iteration_
    # saving again over an existing folder replaces it and leaves no staging folders behind
    fitted.save(tmp_path / "ranker")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranker"]


def test_load_refuses_other_features(fitted, tmp_path):
    fitted.save(tmp_path / "ranker")
    with pytest.raises(RerankerVersionError, match=r"missing \['brand_match'\].*train-ranker"):
        Reranker.load(tmp_path / "ranker", expected_features=[*FEATURE_NAMES, "brand_match"])
    reordered = list(reversed(FEATURE_NAMES))
    with pytest.raises(RerankerVersionError, match="another order"):
        Reranker.load(tmp_path / "ranker", expected_features=reordered)


def test_load_refuses_a_ranker_of_an_older_feature_set(fitted, tmp_path):
    from ranking.features import FEATURE_SET_VERSION

    assert FEATURE_SET_VERSION == "6"
    fitted.save(tmp_path / "ranker")
    meta_path = tmp_path / "ranker" / "meta.json"
    meta = json.loads(meta_path.read_text())
    # a feature-set-3 ranker (the demo's before near-duplicate features): no lead / near-duplicate columns
    meta["feature_set_version"] = "3"
    new_in_4 = ["photo_sim_lead", "photo_near_duplicate", "image_sim_lead", "best_photo_sim"]
    meta["feature_names"] = [n for n in FEATURE_NAMES if n not in new_in_4]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RerankerVersionError,
                       match=r"feature set version '3'.*missing \['photo_sim_lead'.*train-ranker"):
        Reranker.load(tmp_path / "ranker")
    # same names but written for another definition of them
    meta["feature_names"] = list(FEATURE_NAMES)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RerankerVersionError, match="changed definitions.*train-ranker"):
        Reranker.load(tmp_path / "ranker")
    # a feature-set-5 ranker: the same columns, but trained on image candidates without the photo retriever's
    meta["feature_set_version"] = "5"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RerankerVersionError, match=r"version '5'.*changed definitions: in 6, .*photo retriever"):
        Reranker.load(tmp_path / "ranker")


def test_load_refuses_another_format_version(fitted, tmp_path):
    fitted.save(tmp_path / "ranker")
    meta_path = tmp_path / "ranker" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 999
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RerankerVersionError, match="format version 999"):
        Reranker.load(tmp_path / "ranker")


def test_load_of_a_missing_folder_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="marketsearch train-ranker"):
        Reranker.load(tmp_path / "nothing")


def test_unfitted_reranker_says_to_fit_first():
    ranker = Reranker()
    with pytest.raises(NotFittedError, match="call fit"):
        ranker.predict(np.zeros((1, N_FEATURES), np.float32))
    with pytest.raises(NotFittedError):
        _ = ranker.best_iteration_


def test_fit_checks_groups_and_shapes():
    X, y, group = synthetic_queries(4)
    with pytest.raises(ValueError, match="sums to"):
        Reranker().fit(X, y, group[:-1])
    with pytest.raises(ValueError, match="eval_X, eval_y and eval_group"):
        Reranker().fit(X, y, group, eval_X=X)
    with pytest.raises(ValueError, match="feature columns"):
        Reranker().fit(X[:, :3], y, group)


def test_predict_checks_the_column_count(fitted):
    with pytest.raises(ValueError, match="feature columns"):
        fitted.predict(np.zeros((2, 3), np.float32))
    assert fitted.predict(np.zeros((0, N_FEATURES), np.float32)).shape == (0,)


def test_a_validation_grade_above_every_training_grade_is_accepted():
    """Gains cover the validation set's grades too (LightGBM refused a grade it had no gain for)."""
    X, y, group = synthetic_queries(40)
    y = np.minimum(y, 3)
    eval_X, eval_y, eval_group = synthetic_queries(10, seed=1)
    eval_y = eval_y.copy()
    eval_y[0] = 5
    ranker = Reranker(n_estimators=5, log_every=0).fit(X, y, group, eval_X, eval_y, eval_group)
    assert ranker.predict(eval_X).shape == (len(eval_X),)


def test_explicit_label_gains_reach_lightgbm_and_survive_save_and_load(tmp_path):
    X, y, group = synthetic_queries(40)
    y = np.minimum(y, 2)
    ranker = Reranker(n_estimators=5, log_every=0, label_gain=(0, 1, 30)).fit(X, y, group)
    assert "[label_gain: 0,1,30]" in ranker.booster_.model_to_string()
    default = Reranker(n_estimators=5, log_every=0).fit(X, y, group)
    assert "[label_gain: 0,1,3,7]" in default.booster_.model_to_string()
    ranker.save(tmp_path / "ranker")
    assert Reranker.load(tmp_path / "ranker").label_gain == (0.0, 1.0, 30.0)


def test_label_gains_must_cover_every_grade_and_rise_with_it():
    X, y, group = synthetic_queries(10)
    with pytest.raises(ValueError, match="grade 3 has no gain"):
        Reranker(n_estimators=2, log_every=0, label_gain=(0, 1, 30)).fit(X, y, group)
    with pytest.raises(ValueError, match="never lower"):
        Reranker(label_gain=(0, 5, 1))
    with pytest.raises(ValueError, match="grade 0 a gain of 0"):
        Reranker(label_gain=(1, 2, 3))
