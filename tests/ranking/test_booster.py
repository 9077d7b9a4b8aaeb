"""Scoring through LightGBM's C library (ranking.booster) against the lightgbm package, and the serving imports."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lightgbm
import numpy as np
import pytest

from ranking.booster import LightGBMLibraryError, NativeBooster
from ranking.features import FEATURE_NAMES
from ranking.reranker import Reranker
from tests.ranking.test_reranker import synthetic_queries

REPO = Path(__file__).resolve().parents[2]
N_FEATURES = len(FEATURE_NAMES)


def split_thresholds(booster: lightgbm.Booster) -> list[tuple[int, float]]:
    """(feature, threshold) of every split of every tree."""
    found, stack = [], [tree["tree_structure"] for tree in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_index" in node:
            found.append((node["split_feature"], float(node["threshold"])))
            stack += [node["left_child"], node["right_child"]]
    return found


def hard_rows(booster: lightgbm.Booster, n_random: int, seed: int) -> np.ndarray:
    """Random rows with NaN and zeros, plus rows holding each split's threshold and its float32 neighbours (the
    values where a float32 comparison and LightGBM's double one could disagree)."""
    rng = np.random.default_rng(seed)
    n_features = booster.num_feature()
    X = rng.normal(size=(n_random, n_features)).astype(np.float32)
    X[rng.random(X.shape) < 0.15] = np.nan
    X[rng.random(X.shape) < 0.1] = 0.0
    X[rng.random(X.shape) < 0.02] = -0.0
    at_split = []
    for feature, threshold in split_thresholds(booster):
        at = np.float32(np.clip(threshold, -3e38, 3e38))
        for value in (at, np.nextafter(at, np.float32(-np.inf)), np.nextafter(at, np.float32(np.inf))):
            row = X[rng.integers(n_random)].copy()
            row[feature] = value
            at_split.append(row)
    return np.vstack([X, np.asarray(at_split, dtype=np.float32)])


@pytest.fixture(scope="module")
def fitted() -> Reranker:
    X, y, group = synthetic_queries(120)
    X[:, 5] = np.nan_to_num(X[:, 5])  # a column that never misses in training (LightGBM's missing_type None)
    X[:, 6] = np.round(np.nan_to_num(X[:, 6]))  # many exact zeros and ties
    return Reranker(n_estimators=60, log_every=0, n_jobs=1).fit(X, y, group)


@pytest.fixture(scope="module")
def ranker_dir(fitted, tmp_path_factory) -> Path:
    return fitted.save(tmp_path_factory.mktemp("ranker") / "ranker")


def test_scores_are_bit_identical_to_lightgbm_including_nan_zeros_and_split_thresholds(fitted, ranker_dir):
    reference = lightgbm.Booster(model_file=str(ranker_dir / "model.txt"))
    X = hard_rows(reference, 2000, seed=4)
    expected = reference.predict(X, num_threads=1)
    assert np.unique(expected).size > 100  # the rows reach many leaves, not one constant
    np.testing.assert_array_equal(NativeBooster.from_file(ranker_dir / "model.txt").predict(X), expected)
    np.testing.assert_array_equal(fitted.predict(X), expected)
    np.testing.assert_array_equal(Reranker.load(ranker_dir).predict(X), expected)
    # a Fortran-ordered or float64 matrix is scored like its float32 rows
    np.testing.assert_array_equal(fitted.predict(np.asfortranarray(X.astype(np.float64))), expected)


def test_the_lightgbm_booster_is_still_there_for_inspection(ranker_dir):
    loaded = Reranker.load(ranker_dir)
    assert isinstance(loaded.booster_, lightgbm.Booster)
    assert loaded.feature_importances_.shape == (N_FEATURES,)
    assert loaded.feature_importances_.sum() > 0
    assert (ranker_dir / "model.txt").read_text() == loaded.booster_.model_to_string()


def test_a_broken_model_file_is_refused_with_lightgbm_s_message(ranker_dir, tmp_path):
    broken = tmp_path / "model.txt"
    broken.write_text("tree\nversion=v4\nnot a model\n")
    with pytest.raises(LightGBMLibraryError, match=r"\w"):
        NativeBooster.from_file(broken)
    with pytest.raises(LightGBMLibraryError):
        NativeBooster.from_file(tmp_path / "missing.txt")
    native = NativeBooster.from_file(ranker_dir / "model.txt")
    with pytest.raises(ValueError, match=f"shape \\(n_rows, {N_FEATURES}\\)"):
        native.predict(np.zeros((3, 2), np.float32))
    assert native.predict(np.zeros((0, N_FEATURES), np.float32)).shape == (0,)


def test_loading_and_scoring_import_neither_lightgbm_nor_scipy_sklearn_pandas(ranker_dir):
    """A service that only re-ranks must not pay for ``import lightgbm`` (scipy, and scikit-learn and pandas when
    installed: seconds of every start)."""
    heavy = ["lightgbm", "sklearn", "pandas", "scipy"]
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import ranking.feature_log, ranking.features, ranking.types
        from ranking.reranker import Reranker
        ranker = Reranker.load({str(ranker_dir)!r})
        scores = ranker.predict(np.zeros((4, {N_FEATURES}), np.float32))
        print(json.dumps({{"scores": scores.tolist(), "imported": [m for m in {heavy!r} if m in sys.modules]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["imported"] == []
    expected = lightgbm.Booster(model_file=str(ranker_dir / "model.txt")).predict(np.zeros((4, N_FEATURES)))
    assert result["scores"] == expected.tolist()


def test_a_saved_folder_with_a_broken_model_is_refused_with_the_command_to_run(fitted, tmp_path):
    from ranking.reranker import RerankerVersionError

    folder = fitted.save(tmp_path / "ranker")
    (folder / "model.txt").write_text("tree\nversion=v4\nnot a model\n")
    with pytest.raises(RerankerVersionError, match=r"cannot read .*model\.txt.*marketsearch train-ranker"):
        Reranker.load(folder)
