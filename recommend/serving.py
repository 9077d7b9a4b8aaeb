"""The recommenders as the service holds them: users with events newer than the model folded in on request,
reasons in words, and erasure of a user from the served state and the saved folder."""

from __future__ import annotations

import threading
from pathlib import Path

from personal.store import user_exists
from recommend import folder as recs_folder
from recommend.data import ENGAGED_TYPES, as_utc, load_event_log
from recommend.model import Filters, Hit, Reason, Recommender


class ServedRecommender:
    """A loaded `Recommender` and the folder it came from, safe to share between request threads."""

    name = "recommendations"  # personal.erasure's derived-state protocol

    def __init__(self, model: Recommender | None, folder: str | Path):
        self.model = model
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._folded_at: dict[str, float] = {}  # user -> newest event folded in

    @property
    def model(self) -> Recommender | None:
        return self._model

    @model.setter
    def model(self, model: Recommender | None) -> None:
        if model is not None:  # its candidate search indexes now, not on the first request
            model.build_indexes()
        self._model = model

    def refresh_user(self, catalog, user_id: str) -> None:
        """Fold the user in again when they have engaged events newer than what the model knows of them; forget
        them when the database no longer holds them (erased, maybe through another process of `serve --workers
        N`, which could not reach this one's memory)."""
        model = self.model
        if user_id in model.profiles and not user_exists(catalog.engine, user_id):
            with self._lock:
                model.forget(user_id)
                self._folded_at.pop(user_id, None)
            return
        since = max(model.reference, self._folded_at.get(user_id, model.reference))
        newer = load_event_log(catalog, since=as_utc(since), users=[user_id], impressions=False)
        if not len(newer):
            return
        history = load_event_log(catalog, users=[user_id], impressions=False)
        with self._lock:
            model.fold_in(user_id, history.listings, [ENGAGED_TYPES[t] for t in history.types], history.times)
            self._folded_at[user_id] = float(history.times.max()) + 1e-6

    def recommend(self, user_id: str, k: int, filters: Filters) -> tuple[list[Hit], bool]:
        """Hits (``3 * k`` at most, for the caller to drop what was sold since) and whether it is a cold start."""
        with self._lock:
            profile = self.model.profile(user_id)
        return self.model.recommend(user_id, 3 * k, filters), profile is None

    def user_columns(self, user_id: str):
        """The user's columns for the personal search ranker (a function of candidate listing ids), or None when
        the recommenders have no profile of them."""
        from functools import partial

        from recommend.personal_search import user_columns

        with self._lock:
            profile = self.model.profile(user_id)
        return None if profile is None else partial(user_columns, self.model, profile)

    def forget(self, user_id: str) -> int:
        """Drop the user from memory and from the saved folder; how many of the two held them."""
        with self._lock:
            forgotten = self.model.forget(user_id) if self.model is not None else 0
            self._folded_at.pop(user_id, None)
            forgotten += recs_folder.forget_saved_user(self.folder, user_id)
        return forgotten


def reason_text(reason: Reason, titles: dict[str, str]) -> str:
    if reason.kind == "history" and reason.listing_id:
        return f"because you {reason.verb or 'viewed'} {titles.get(reason.listing_id, 'a listing')}"
    if reason.kind == "category":
        return f"because you like {reason.category}"
    if reason.kind == "popular_near":
        return f"popular near {reason.town}"
    if reason.kind == "new_near":
        return f"new near {reason.town}"
    if reason.kind == "new":
        return "new listing"
    return "popular now"



