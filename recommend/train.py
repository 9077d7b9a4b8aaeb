"""Fitting the recommenders: the signals (ALS, co-visitation, profiles, popularity) from an event log, and the
learned blend on a time split of that log.

The blend is a LightGBM lambdarank model (`ranking.reranker.Reranker`, the search re-ranker's trainer) over
`recommend.model.FEATURES`. Its training data comes from the log alone, never from later events: the signals
are fitted on the events before ``until - label_days``, each user active in the last ``label_days`` gets the
candidates and features those signals give, and their engaged events in that window are the labels (graded
by `recommend.data.GRADES`). The signals are then fitted again on every event before ``until`` and served
with the blend.
"""

from __future__ import annotations

import logging
import time
import zlib

import numpy as np
from tqdm.auto import tqdm

from recommend.collaborative import covisitation, fit_als, sessions, user_item_matrix
from recommend.data import (
    DAY,
    ENGAGED_TYPES,
    EVENT_WEIGHTS,
    EventLog,
    Items,
    as_utc,
    decay,
    load_event_log,
    load_impressions,
)
from recommend.model import FEATURES, POP_HALF_LIFE_DAYS, Recommender
from recommend.profiles import Histories, Profiles

logger = logging.getLogger(__name__)

LABEL_DAYS = 7.0
MAX_LABEL_USERS = 1000  # the dev log's label window has 908; at 100k users more only cost time
MAX_NEGATIVES = 200  # unengaged candidates per user in the blend's training data
VALID_FRACTION = 0.2
DEFAULT_ALS = {"factors": 64, "regularization": 0.05, "iterations": 15, "alpha": 2.0}


def fit_signals(log: EventLog, items: Items, reference: float, *, als_params: dict | None = None,
                progress: bool = False) -> Recommender:
    """Every signal of `Recommender` from the engaged events of ``log`` (all before ``reference``)."""
    als_params = {**DEFAULT_ALS, **(als_params or {})}
    rows = items.rows(log.listings)
    known = rows >= 0
    if (~known).any():
        logger.info("%d events on listings that are not in the catalogue (deleted, or not embedded) left out",
                    int((~known).sum()))
    log, rows = log.select(known), rows[known]
    n = len(items)
    weights = log.weights(reference)
    grades = log.grades()
    user_ids, user_rows = np.unique(log.users.astype(str), return_inverse=True)

    item_factors = None
    user_factors = None
    if len(user_ids) >= 2 and len(log):
        matrix = user_item_matrix(user_rows, rows, weights, len(user_ids), n)
        als = fit_als(matrix, progress=progress, **als_params)
        item_factors = np.asarray(als.item_factors, np.float32)
        user_factors = np.asarray(als.user_factors, np.float32)

    kinds = np.array([EVENT_WEIGHTS[t] for t in ENGAGED_TYPES])[log.types]
    fresh = kinds * decay((reference - log.times) / DAY, POP_HALF_LIFE_DAYS)
    purchase = ENGAGED_TYPES.index("purchase")
    click = ENGAGED_TYPES.index("click")
    impressions = np.zeros(n, np.int32)
    first_shown = np.full(n, np.nan)
    for listing_id, count in log.impressions.items():
        row = items.row_of.get(listing_id)
        if row is not None:
            impressions[row] = count
            first_shown[row] = log.first_shown[listing_id]

    histories = Histories.from_events(user_ids, user_rows, rows, weights, grades, log.types == purchase, n)
    histories.factors = user_factors

    return Recommender(
        items=items,
        reference=reference,
        item_factors=item_factors,
        covisit=covisitation(sessions(log.users.astype(str), log.times), rows, n),
        pop=np.log1p(np.bincount(rows, weights=fresh, minlength=n)).astype(np.float32),
        engaged=np.bincount(rows, minlength=n).astype(np.int32),
        clicks=np.bincount(rows[log.types == click], minlength=n).astype(np.int32),
        impressions=impressions,
        first_shown=first_shown,
        sold=np.bincount(rows[log.types == purchase], minlength=n) > 0,
        profiles=Profiles(items, histories),
        als_params=als_params,
        info={"events": int(len(log)), "users": int(len(user_ids))},
    )


def label_groups(stage: Recommender, window: EventLog, *, max_users: int = MAX_LABEL_USERS,
                 max_negatives: int = MAX_NEGATIVES, seed: int = 0, progress: bool = False):
    """Per user active in ``window`` (``max_users`` of them at most, drawn at random): the stage's candidates,
    their features and graded labels (the user's strongest event on each in the window), with
    ``max_negatives`` of the unengaged candidates at most (drawn at random). Users none of whose candidates
    they engaged with are left out (they teach the ranking nothing). Returns (X, y, group, user_ids)."""
    rows = stage.items.rows(window.listings)
    grades = window.grades()
    labels: dict[str, dict[int, int]] = {}
    for user, row, grade in zip(window.users, rows, grades):
        if row >= 0:
            mine = labels.setdefault(str(user), {})
            mine[int(row)] = max(mine.get(int(row), 0), int(grade))
    users = sorted(labels)
    if len(users) > max_users:
        users = sorted(np.random.default_rng(seed).choice(users, max_users, replace=False).tolist())
    rng = np.random.default_rng(seed)
    X, y, group, kept = [], [], [], []
    for user in tqdm(users, desc="blend training data", unit="user", disable=not progress):
        profile = stage.profile(user)
        candidates, _, scores, home = stage.score_user(profile)
        grade = np.array([labels[user].get(int(r), 0) for r in candidates], np.int32)
        if not grade.any() or grade.all():
            continue
        negatives = np.flatnonzero(grade == 0)
        if len(negatives) > max_negatives:  # lambdarank's cost grows with the pairs in a group
            sample = np.sort(np.concatenate([np.flatnonzero(grade > 0),
                                             rng.choice(negatives, max_negatives, replace=False)]))
            candidates, grade = candidates[sample], grade[sample]
            scores = {name: values[sample] for name, values in scores.items()}
        X.append(stage.features(profile, candidates, scores, home))
        y.append(grade)
        group.append(len(candidates))
        kept.append(user)
    if not X:
        return np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64), []
    return np.concatenate(X), np.concatenate(y), np.array(group), kept


def train_blend(stage: Recommender, window: EventLog, *, max_users: int = MAX_LABEL_USERS, seed: int = 0,
                progress: bool = False, **ranker_params):
    """The LightGBM lambdarank blend, trained on the stage's candidates labelled by the window's events
    (a fifth of the users held out for early stopping). None when the window gives too few users."""
    from ranking.reranker import Reranker

    X, y, group, users = label_groups(stage, window, max_users=max_users, seed=seed, progress=progress)
    if len(users) < 10:
        logger.warning("only %d users with engaged candidates in the label window: no learned blend", len(users))
        return None
    held_out = np.array([zlib.crc32(u.encode()) % 100 < VALID_FRACTION * 100 for u in users])
    starts = np.concatenate([[0], np.cumsum(group)])
    row_held = np.repeat(held_out, group)
    # one thread: on the shared 2 cores, LightGBM's two OpenMP threads waiting for each other made each boosting
    # round 8x slower than one thread (150k rows, load average 11)
    params = {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
              "log_every": 0, "n_jobs": 1, **ranker_params}
    ranker = Reranker(**params)
    ranker.fit(
        X[~row_held], y[~row_held], group[~held_out], X[row_held], y[row_held], group[held_out],
        feature_names=FEATURES,
        label_definition={"grades": "strongest engaged event in the label window: view/click 1, save 2, "
                                    "contact_seller 3, purchase 4; 0 otherwise"},
        training_info={"users": len(users), "held_out_users": int(held_out.sum()), "rows": int(starts[-1])},
    )
    return ranker


def _stage(name: str, began: float, detail: str = "") -> float:
    """Log how long a stage of train-recs took (the end-to-end benchmark reads these lines); returns now."""
    now = time.perf_counter()
    logger.info("train-recs: %s in %.1fs%s", name, now - began, f" ({detail})" if detail else "")
    return now


def train_recommender(catalog, items: Items, until: float, *, label_days: float = LABEL_DAYS,
                      max_label_users: int = MAX_LABEL_USERS, als_params: dict | None = None, seed: int = 0,
                      search_log=None, progress: bool = False) -> Recommender:
    """Fit the signals and the learned blend on the events of the catalogue's log before ``until`` (seconds
    since 1970). Nothing at or after ``until`` is read, impressions included. With ``search_log`` (the
    feature log of served searches, `ranking.feature_log.LoggedCandidates`), the personal search ranker is
    trained on the searches of the label window too (``model.search_ranker``; None when too few)."""
    began = time.perf_counter()
    log = load_event_log(catalog, until=as_utc(until))
    split = until - label_days * DAY
    before = log.select(log.times < split, load_impressions(catalog, as_utc(split)))
    window = log.select(log.times >= split)
    began = _stage("events read", began, f"{len(log)} engaged")
    ranker = search_ranker = None
    if len(before) and len(window):
        stage = fit_signals(before, items, split, als_params=als_params, progress=progress)
        began = _stage("stage signals", began, f"{len(before)} events before the label window")
        ranker = train_blend(stage, window, max_users=max_label_users, seed=seed, progress=progress)
        began = _stage("blend", began)
        if search_log is not None:
            from recommend.personal_search import logged_searches, search_labels, train_personal_ranker

            searches = logged_searches(catalog, search_log, as_utc(split), as_utc(until))
            search_ranker = train_personal_ranker(stage, searches, search_labels(catalog, searches, as_utc(until)),
                                                  search_log.feature_names, seed=seed)
    model = fit_signals(log, items, until, als_params=als_params, progress=progress)
    _stage("signals", began, f"{len(log)} events")
    model.ranker = ranker
    model.search_ranker = search_ranker
    model.info.update({"label_days": label_days, "blend": ranker is not None,
                       "blend_training": (ranker.meta_.get("training", {}) if ranker is not None else {})})
    if search_ranker is not None:
        model.info["search_ranker_training"] = search_ranker.meta_.get("training", {})
    return model
