"""Personalised search: what the recommenders know of a user, as columns beside the search re-ranker's features,
and the personal search ranker learned from logged searches.

A served search logs its candidates' features under its query id (`ranking.feature_log`); the impressions and
clicks it caused carry that query id. One user's search is a (query id, user) pair (users who typed the same
words share the logged rows: `personal.simulator.PipelineSearch` runs each distinct query once); its time is
its first impression. Its labels are the user's strongest engaged event on each candidate from that time to
the end of the period (`recommend.data.GRADES`): what they went on to want, whether they clicked it there or
found it later. The personal ranker is a LightGBM lambdarank model (`ranking.reranker.Reranker`) over the
search features followed by `USER_FEATURES`; it is used only for users the recommenders have a profile of,
so a search without a user, or by a user without history, is ranked exactly as before.
"""

from __future__ import annotations

import datetime as dt
import logging
import zlib
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from catalog import schema
from recommend.data import _as_datetime, _naive, epoch_seconds, load_event_log
from recommend.model import RECENT_ITEMS, Recommender
from recommend.profiles import UserProfile

logger = logging.getLogger(__name__)

USER_FEATURES = (
    "user_content_max", "user_content_mix", "user_als", "user_covisit", "user_aff_top", "user_aff_cat",
    "user_aff_band", "user_aff_town", "user_seen", "user_seen_grade",
)
VALID_FRACTION = 0.2


def user_columns(model: Recommender, profile: UserProfile, listing_ids) -> np.ndarray:
    """`USER_FEATURES` of these listings for this user: float32 (len(listing_ids), len(USER_FEATURES)), NaN
    for a listing the recommenders do not hold (listed since they were trained) or a signal the user lacks."""
    rows = model.items.rows(list(listing_ids))
    known = rows >= 0
    out = np.full((len(rows), len(USER_FEATURES)), np.nan, np.float32)
    if not known.any():
        return out
    r = rows[known]
    items = model.items
    columns: dict[str, np.ndarray] = {}
    if len(profile.interests):
        sims = items.vectors[r] @ profile.interests.T
        columns["user_content_max"] = sims.max(axis=1)
        columns["user_content_mix"] = sims @ profile.interest_weights
    if profile.factors is not None and model.item_factors is not None:
        columns["user_als"] = model.item_factors[r] @ profile.factors
    recent = profile.items[:RECENT_ITEMS]
    if len(recent):
        weights = profile.weights[:RECENT_ITEMS]
        # rows of the user's listings times their weights: one pass over those rows' entries (a column slice of
        # the n x n matrix would walk every row)
        covisit = np.asarray(model.covisit[recent].T @ (weights / weights.sum())).ravel()
        columns["user_covisit"] = covisit[r]
    affinity = profile.affinity
    for name, prefix, keys in (("user_aff_top", "t:", items.top_category), ("user_aff_cat", "c:", items.category),
                               ("user_aff_band", "b:", items.band), ("user_aff_town", "w:", items.town)):
        columns[name] = np.array([affinity.get(prefix + str(k), 0.0) for k in keys[r]], np.float32)
    where = {int(row): i for i, row in enumerate(profile.items)}
    held = [where.get(int(row), -1) for row in r]
    columns["user_seen"] = np.array([profile.weights[i] if i >= 0 else 0.0 for i in held], np.float32)
    columns["user_seen_grade"] = np.array([profile.grades[i] if i >= 0 else 0 for i in held], np.float32)
    for j, name in enumerate(USER_FEATURES):
        if name in columns:
            out[known, j] = columns[name]
    return out


@dataclass
class LoggedSearch:
    """One user's search: the logged candidates (in logged order) and their search features."""

    query_id: str
    user_id: str
    time: float  # seconds since 1970: its first impression
    listing_ids: list[str]
    X: np.ndarray  # float32 (n, len(search feature names))


def logged_searches(catalog, logged, since: dt.datetime, until: dt.datetime) -> list[LoggedSearch]:
    """The searches whose first impression falls in [since, until) and whose candidates were logged
    (``logged``: `ranking.feature_log.LoggedCandidates`), in time order."""
    ev = schema.events
    query = (select(ev.c.query_id, ev.c.user_id, func.min(ev.c.occurred_at))
             .where(ev.c.type == "impression", ev.c.query_id.is_not(None))
             .group_by(ev.c.query_id, ev.c.user_id)
             .having(func.min(ev.c.occurred_at) >= _naive(since), func.min(ev.c.occurred_at) < _naive(until)))
    with catalog.engine.connect() as conn:
        found = conn.execute(query).all()
    order, counts = logged.groups()
    starts = np.concatenate([[0], np.cumsum(counts)])
    span = {q: (int(starts[i]), int(starts[i + 1])) for i, q in enumerate(order)}
    searches = []
    for query_id, user_id, first in found:
        if query_id in span:
            a, b = span[query_id]
            searches.append(LoggedSearch(query_id, str(user_id), epoch_seconds(_as_datetime(first)),
                                         logged.listing_ids[a:b], logged.X[a:b]))
    unlogged = len(found) - len(searches)
    if unlogged:
        logger.info("%d searches in the period have no feature-log rows (logged elsewhere, or not logged)", unlogged)
    return sorted(searches, key=lambda s: (s.time, s.query_id, s.user_id))


def search_labels(catalog, searches: list[LoggedSearch], until: dt.datetime) -> list[dict[str, int]]:
    """Per search: the user's strongest engaged event on each candidate from the search to ``until``."""
    if not searches:
        return []
    since = dt.datetime.fromtimestamp(min(s.time for s in searches), dt.timezone.utc)
    log = load_event_log(catalog, since=since, until=until, users=sorted({s.user_id for s in searches}),
                         impressions=False)
    grades = log.grades()
    by_user: dict[str, list[int]] = {}
    for i, user in enumerate(log.users):
        by_user.setdefault(str(user), []).append(i)
    labels = []
    for search in searches:
        wanted = set(search.listing_ids)
        mine: dict[str, int] = {}
        for i in by_user.get(search.user_id, ()):
            listing = log.listings[i]
            if log.times[i] >= search.time and listing in wanted:
                mine[listing] = max(mine.get(listing, 0), int(grades[i]))
        labels.append(mine)
    return labels


def personal_rows(model: Recommender, search: LoggedSearch) -> np.ndarray | None:
    """The personal ranker's input for this search (search features, then user features), or None when the
    recommenders have no profile of the user."""
    profile = model.profile(search.user_id)
    if profile is None:
        return None
    return np.hstack([search.X, user_columns(model, profile, search.listing_ids)])


def train_personal_ranker(stage: Recommender, searches: list[LoggedSearch], labels: list[dict[str, int]],
                          search_features, *, seed: int = 0, **ranker_params):
    """The personal ranker, on the searches of users the ``stage`` recommenders know (fitted before the
    searches), labelled by ``labels``; a fifth of the users held out for early stopping. None when too few
    searches teach anything."""
    from ranking.reranker import Reranker

    X, y, group, users = [], [], [], []
    for search, mine in zip(searches, labels):
        grade = np.array([mine.get(i, 0) for i in search.listing_ids], np.int32)
        if not grade.any() or grade.all():
            continue
        rows = personal_rows(stage, search)
        if rows is None:
            continue
        X.append(rows)
        y.append(grade)
        group.append(len(grade))
        users.append(search.user_id)
    if len(users) < 20:
        logger.warning("only %d logged searches of known users with engagement: no personal search ranker",
                       len(users))
        return None
    X, y, group = np.concatenate(X), np.concatenate(y), np.array(group)
    held = np.array([zlib.crc32(f"{seed}:{u}".encode()) % 100 < VALID_FRACTION * 100 for u in users])
    row_held = np.repeat(held, group)
    params = {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 20,
              "log_every": 0, **ranker_params}
    ranker = Reranker(**params)
    ranker.fit(
        X[~row_held], y[~row_held], group[~held], X[row_held], y[row_held], group[held],
        feature_names=tuple(search_features) + USER_FEATURES,
        label_definition={"grades": "the user's strongest engaged event on the candidate from the search to the "
                                    "end of the label window: view/click 1, save 2, contact_seller 3, purchase 4",
                          "unit": "one user's search (query id, user)"},
        training_info={"searches": len(users), "held_out_searches": int(held.sum()), "rows": int(len(y)),
                       "users": len(set(users))},
    )
    return ranker



def load_search_log(workspace):
    """The workspace's feature log of served searches (`ranking.feature_log.LoggedCandidates`), or None when
    nothing was logged."""
    from ranking.feature_log import log_files, read_feature_logs

    paths = log_files(workspace.logs_dir / "features")
    return read_feature_logs(paths) if paths else None
