"""LightGBM LambdaRank re-ranker: an estimator that wraps ``lightgbm.LGBMRanker`` and saves itself as a folder.

The folder holds the booster's text model (``model.txt``, cut at the best iteration) and ``meta.json``
(feature names, feature-set and format versions, label definition, library versions, training
summary). ``Reranker.load`` refuses a folder whose features or format differ from what the caller
computes, so a service never scores candidates with a model trained on other columns.

Training imports ``lightgbm``; loading and scoring do not: they go through LightGBM's C library
(``ranking.booster``), whose scores are bit-identical to ``lightgbm.Booster.predict``, so a service that only
re-ranks never pays for the package's imports of scipy, scikit-learn and pandas.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.files import make_temporary_dir, replace_dir
from ranking.booster import LightGBMLibraryError, NativeBooster
from ranking.features import FEATURE_NAMES, FEATURE_SET_CHANGE, FEATURE_SET_VERSION

if TYPE_CHECKING:
    import lightgbm

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.txt"
META_FILE = "meta.json"

DEFAULT_LABEL_DEFINITION = {
    "source": "unspecified",
    "grades": {"0": "not relevant", "1": "related", "2": "the wanted listing", "3": "purchased"},
}


class NotFittedError(RuntimeError):
    """The re-ranker was used before ``fit`` (or ``load``)."""


class RerankerVersionError(ValueError):
    """A saved re-ranker does not match the features or the format this code computes."""


def _check_group(group: Sequence[int] | np.ndarray, n_rows: int, what: str) -> np.ndarray:
    group = np.asarray(group, dtype=np.int64).ravel()
    if group.size == 0 or (group <= 0).any():
        raise ValueError(
            f"{what} must be a non-empty list of positive per-query row counts, got {group.tolist()[:10]}"
        )
    if int(group.sum()) != n_rows:
        raise ValueError(
            f"{what} sums to {int(group.sum())} rows but X has {n_rows}; give one count per query, "
            "with each query's rows contiguous in X"
        )
    return group


def _check_matrix(X: np.ndarray, n_features: int | None, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"{what} must be a 2-d array (n_rows, n_features), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"{what} has {X.shape[1]} feature columns but the re-ranker uses {n_features}; "
            "build features with ranking.features.build_features"
        )
    return X


class Reranker:
    """Learning-to-rank model over candidate features (LightGBM ``lambdarank`` objective).

    The constructor only stores hyper-parameters; ``fit`` trains, ``predict`` scores rows (higher is
    better). Fitted state is read through trailing-underscore properties, which raise
    ``NotFittedError`` before ``fit``.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        subsample: float = 0.8,
        subsample_freq: int = 1,
        colsample_bytree: float = 0.9,
        reg_lambda: float = 1.0,
        eval_at: Sequence[int] = (10,),
        early_stopping_rounds: int = 50,
        gain: str = "exponential",
        label_gain: Sequence[float] | None = None,
        log_every: int = 50,
        n_jobs: int = 2,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.subsample_freq = subsample_freq
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.eval_at = tuple(eval_at)
        if gain not in ("exponential", "linear"):
            raise ValueError(f"gain must be 'exponential' (2**grade - 1) or 'linear' (grade), got {gain!r}")
        self.early_stopping_rounds = early_stopping_rounds
        self.gain = gain
        if label_gain is not None:
            label_gain = tuple(float(g) for g in label_gain)
            if not label_gain or label_gain[0] != 0 or any(b < a for a, b in zip(label_gain, label_gain[1:])):
                raise ValueError(
                    f"label_gain must give grade 0 a gain of 0 and never lower a higher grade's, got {label_gain}"
                )
        self.label_gain = label_gain
        self.log_every = log_every
        self.n_jobs = n_jobs
        self.random_state = random_state
        self._model_text: str | None = None  # the booster's text model, as saved in model.txt
        self._native: NativeBooster | None = None  # that model in LightGBM's C library, for predict
        self._booster: lightgbm.Booster | None = None  # the same model in the lightgbm package, built on demand
        self._meta: dict[str, Any] = {}

    # -- hyper-parameters -------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "subsample": self.subsample,
            "subsample_freq": self.subsample_freq,
            "colsample_bytree": self.colsample_bytree,
            "reg_lambda": self.reg_lambda,
            "eval_at": list(self.eval_at),
            "early_stopping_rounds": self.early_stopping_rounds,
            "gain": self.gain,
            "label_gain": None if self.label_gain is None else list(self.label_gain),
            "log_every": self.log_every,
            "n_jobs": self.n_jobs,
            "random_state": self.random_state,
        }

    def gains(self, max_grade: int) -> list[float]:
        """The gain of each grade 0..max(max_grade, 3): ``label_gain`` when given, else from ``gain``.

        ``label_gain`` lets one grade count far more than the next (the known-item protocol's wanted listing
        against listings of its category path); grades beyond it are refused, not guessed.
        """
        if self.label_gain is not None:
            if max_grade >= len(self.label_gain):
                raise ValueError(f"grade {max_grade} has no gain in label_gain {list(self.label_gain)}; "
                                 "give one gain per grade")
            return list(self.label_gain)
        grades = range(max(max_grade, 3) + 1)
        return [float(2**g - 1) if self.gain == "exponential" else float(g) for g in grades]

    def _lgbm_ranker(self) -> lightgbm.LGBMRanker:
        import lightgbm

        return lightgbm.LGBMRanker(
            objective="lambdarank",
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            subsample_freq=self.subsample_freq,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            verbose=-1,
        )

    # -- training ---------------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        group: Sequence[int] | np.ndarray,
        eval_X: np.ndarray | None = None,
        eval_y: np.ndarray | None = None,
        eval_group: Sequence[int] | np.ndarray | None = None,
        *,
        feature_names: Sequence[str] = FEATURE_NAMES,
        label_definition: dict[str, Any] | None = None,
        training_info: dict[str, Any] | None = None,
    ) -> Reranker:
        """Train on query-grouped rows.

        Parameters
        ----------
        X : float32 (n_rows, n_features)
            Candidate features, NaN for missing values; each query's rows contiguous.
        y : int (n_rows,)
            Graded relevance (0 = not relevant, higher is better).
        group : int (n_queries,)
            Number of rows of each query, in order; sums to n_rows.
        eval_X, eval_y, eval_group : optional
            Validation queries for early stopping (stopped on NDCG at the first ``eval_at`` cut-off).
        feature_names : the column names, stored with the model and checked at load time.
        label_definition : what the grades mean and where they came from, stored in meta.json.
        training_info : anything else worth keeping with the model (query counts, splits, ...).
        """
        import lightgbm

        feature_names = list(feature_names)
        X = _check_matrix(X, len(feature_names), "X")
        y = np.asarray(y).ravel()
        if len(y) != len(X):
            raise ValueError(f"y has {len(y)} labels but X has {len(X)} rows; give one grade per row")
        if (y < 0).any() or not np.allclose(y, np.round(y)):
            raise ValueError("y must hold non-negative integer relevance grades (0, 1, 2, ...)")
        y = y.astype(np.int32)
        group = _check_group(group, len(X), "group")

        eval_given = [v is not None for v in (eval_X, eval_y, eval_group)]
        if any(eval_given) and not all(eval_given):
            raise ValueError("give all of eval_X, eval_y and eval_group for early stopping, or none of them")

        callbacks = [lightgbm.log_evaluation(period=self.log_every)] if self.log_every > 0 else []
        fit_kwargs: dict[str, Any] = {"group": group, "feature_name": feature_names}
        if all(eval_given):
            eval_X = _check_matrix(eval_X, len(feature_names), "eval_X")
            eval_y = np.asarray(eval_y).ravel().astype(np.int32)
            if len(eval_y) != len(eval_X):
                raise ValueError(f"eval_y has {len(eval_y)} labels but eval_X has {len(eval_X)} rows")
            eval_group = _check_group(eval_group, len(eval_X), "eval_group")
            fit_kwargs.update(
                eval_X=(eval_X,),
                eval_y=(eval_y,),
                eval_group=[eval_group],
                eval_at=list(self.eval_at),
            )
            callbacks.append(lightgbm.early_stopping(self.early_stopping_rounds, verbose=False))
        else:
            logger.warning("no validation queries given: training all %d trees without early stopping",
                           self.n_estimators)

        # the gains must cover the validation grades too: LightGBM rejects a grade it has no gain for
        max_grade = max((int(labels.max()) for labels in (y, eval_y) if labels is not None and len(labels)), default=0)
        ranker = self._lgbm_ranker()
        ranker.set_params(label_gain=self.gains(max_grade))
        ranker.fit(X, y, callbacks=callbacks, **fit_kwargs)

        best_iteration = int(ranker.best_iteration_ or ranker.booster_.current_iteration())
        # keep only the trees up to the best iteration, so save/load/predict all see the same model
        self._set_model(ranker.booster_.model_to_string(num_iteration=best_iteration))
        best_score = {
            name: {metric: float(value) for metric, value in scores.items()}
            for name, scores in (ranker.best_score_ or {}).items()
        }
        self._meta = {
            "format_version": FORMAT_VERSION,
            "feature_set_version": FEATURE_SET_VERSION,
            "feature_names": feature_names,
            "label_definition": label_definition or DEFAULT_LABEL_DEFINITION,
            "params": self.get_params(),
            "best_iteration": best_iteration,
            "best_score": best_score,
            "evals_result": {
                name: {metric: [float(v) for v in values] for metric, values in curves.items()}
                for name, curves in (ranker.evals_result_ or {}).items()
            },
            "training": {
                "rows": int(len(X)),
                "queries": int(len(group)),
                "eval_queries": int(len(eval_group)) if all(eval_given) else 0,
                **(training_info or {}),
            },
            "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "lightgbm_version": lightgbm.__version__,
            "numpy_version": np.__version__,
        }
        logger.info("re-ranker trained: %d trees (best iteration), best score %s", best_iteration, best_score)
        return self

    # -- fitted state -----------------------------------------------------------------------------
    def _set_model(self, model_text: str) -> None:
        self._model_text, self._native, self._booster = model_text, NativeBooster.from_string(model_text), None

    def _fitted(self) -> NativeBooster:
        if self._native is None:
            raise NotFittedError("this Reranker is not fitted yet: call fit(X, y, group, ...) or Reranker.load(dir)")
        return self._native

    @property
    def booster_(self) -> lightgbm.Booster:
        """The model as a ``lightgbm.Booster`` (imports lightgbm on first use; scoring does not need it)."""
        self._fitted()
        if self._booster is None:
            import lightgbm

            self._booster = lightgbm.Booster(model_str=self._model_text)
        return self._booster

    @property
    def feature_names_(self) -> list[str]:
        self._fitted()
        return list(self._meta["feature_names"])

    @property
    def best_iteration_(self) -> int:
        self._fitted()
        return int(self._meta["best_iteration"])

    @property
    def best_score_(self) -> dict[str, dict[str, float]]:
        self._fitted()
        return self._meta.get("best_score", {})

    @property
    def evals_result_(self) -> dict[str, dict[str, list[float]]]:
        self._fitted()
        return self._meta.get("evals_result", {})

    @property
    def feature_importances_(self) -> np.ndarray:
        """Total gain of each feature's splits, in ``feature_names_`` order."""
        return self.booster_.feature_importance(importance_type="gain")

    @property
    def meta_(self) -> dict[str, Any]:
        self._fitted()
        return dict(self._meta)

    # -- inference --------------------------------------------------------------------------------
    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores (n_rows,) float64; higher means more relevant. Only the order within a query matters."""
        native = self._fitted()
        return native.predict(_check_matrix(X, len(self._meta["feature_names"]), "X"))

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``model.txt`` and ``meta.json`` into ``directory``, replacing it atomically."""
        self._fitted()
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = make_temporary_dir(directory)
        try:
            (staging / MODEL_FILE).write_text(self._model_text)
            (staging / META_FILE).write_text(json.dumps(self._meta, indent=2, sort_keys=True))
            replace_dir(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("re-ranker saved to %s", directory)
        return directory

    @classmethod
    def load(
        cls, directory: str | os.PathLike, expected_features: Sequence[str] | None = FEATURE_NAMES
    ) -> Reranker:
        """Load a saved re-ranker, refusing one built for other features or another format.

        Parameters
        ----------
        directory : the folder written by ``save``.
        expected_features : the feature names the caller will compute (``FEATURE_NAMES`` by
            default); ``None`` skips the check (for inspecting old models only).
        """
        directory = Path(directory)
        meta_path, model_path = directory / META_FILE, directory / MODEL_FILE
        if not meta_path.is_file() or not model_path.is_file():
            raise FileNotFoundError(
                f"no re-ranker in {directory}: expected {MODEL_FILE} and {META_FILE}; "
                "train one with `marketsearch train-ranker`"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as error:
            raise RerankerVersionError(f"{meta_path} is not valid JSON ({error}); retrain the re-ranker") from error
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise RerankerVersionError(
                f"re-ranker in {directory} has format version {version!r} but this code reads version "
                f"{FORMAT_VERSION}; retrain it with `marketsearch train-ranker`"
            )
        if expected_features is not None:
            saved = list(meta.get("feature_names", []))
            expected = list(expected_features)
            if saved != expected:
                missing = [f for f in expected if f not in saved]
                extra = [f for f in saved if f not in expected]
                detail = (
                    f"missing {missing}, unexpected {extra}" if missing or extra else "same names in another order"
                )
                raise RerankerVersionError(
                    f"re-ranker in {directory} was trained on feature set version "
                    f"{meta.get('feature_set_version')!r} with {len(saved)} features, but this code computes "
                    f"feature set version {FEATURE_SET_VERSION!r} with {len(expected)} ({detail}); "
                    "retrain it with `marketsearch train-ranker`"
                )
            same_version = meta.get("feature_set_version") == FEATURE_SET_VERSION
            if expected == list(FEATURE_NAMES) and not same_version:
                # same column names, but the code computes them differently now
                raise RerankerVersionError(
                    f"re-ranker in {directory} was trained on feature set version "
                    f"{meta.get('feature_set_version')!r}, but this code computes version {FEATURE_SET_VERSION!r} "
                    f"(same feature names, changed definitions: in {FEATURE_SET_VERSION}, {FEATURE_SET_CHANGE}); "
                    "retrain it with `marketsearch train-ranker`"
                )
        saved_lgbm, installed_lgbm = meta.get("lightgbm_version"), importlib.metadata.version("lightgbm")
        if saved_lgbm and saved_lgbm.split(".")[0] != installed_lgbm.split(".")[0]:
            raise RerankerVersionError(
                f"re-ranker in {directory} was written by LightGBM {saved_lgbm}, this environment has "
                f"{installed_lgbm} (another major version); retrain it with `marketsearch train-ranker`"
            )
        params = {k: v for k, v in meta.get("params", {}).items() if k in cls().get_params()}
        reranker = cls(**params)
        try:
            reranker._set_model(model_path.read_text())
        except LightGBMLibraryError as error:
            raise RerankerVersionError(
                f"LightGBM cannot read {model_path} ({error}); retrain the re-ranker with `marketsearch train-ranker`"
            ) from error
        if reranker._native.num_feature != len(meta["feature_names"]):
            raise RerankerVersionError(
                f"{model_path} expects {reranker._native.num_feature} features but {META_FILE} lists "
                f"{len(meta['feature_names'])}; the folder is inconsistent, retrain the re-ranker"
            )
        reranker._meta = meta
        return reranker

    def __repr__(self) -> str:
        state = f"fitted, {self._meta.get('best_iteration')} trees" if self._native is not None else "not fitted"
        return f"Reranker({state})"

