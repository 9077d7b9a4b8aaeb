"""Users' content profiles: interest vectors in the shared text-image space, and category, price-band and
location affinities, all from the listings they engaged with (event- and recency-weighted).

A user whose history spans unrelated things (a sofa and a drill) gets one interest vector per group of related
listings instead of one muddy average: listings are taken strongest first and join the nearest interest when
it is close enough (cosine >= ``INTEREST_JOIN``), else start a new one (at most ``MAX_INTERESTS``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field

import numpy as np

from recommend.data import Items

INTEREST_JOIN = 0.5
MAX_INTERESTS = 4


@dataclass
class UserProfile:
    """What the recommenders know of one user. Item rows index the model's `Items`."""

    user_id: str
    items: np.ndarray  # int64 (h,): listings engaged with, strongest first
    weights: np.ndarray  # float32 (h,): summed decayed event weights
    grades: np.ndarray  # int8 (h,): the strongest event on each (recommend.data.GRADES)
    bought: np.ndarray  # int64: listings bought (never recommended back)
    interests: np.ndarray  # float32 (m, d): L2-normalised interest vectors
    interest_weights: np.ndarray  # float32 (m,): share of the history behind each, sums to 1
    affinity: dict[str, float] = field(default_factory=dict)  # "t:<top>", "c:<category>", "b:<band>", "w:<town>"
    home: str = ""  # the town of most of the listings engaged with ("" unknown)
    n_events: int = 0  # engaged events
    factors: np.ndarray | None = None  # float32 (f,): ALS factors (None: not in the collaborative model)


def interests(vectors: np.ndarray, weights: np.ndarray, join: float = INTEREST_JOIN,
              limit: int = MAX_INTERESTS) -> tuple[np.ndarray, np.ndarray]:
    """Group the listings (rows of ``vectors``, strongest ``weights`` first) into interest vectors."""
    if not len(vectors):
        return np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float32), np.zeros(0, np.float32)
    sums, totals = [], []
    for vector, weight in zip(vectors, weights):
        if sums:
            centroids = np.stack(sums)
            centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
            sims = centroids @ vector
            best = int(np.argmax(sims))
            if sims[best] >= join or len(sums) >= limit:
                sums[best] = sums[best] + weight * vector
                totals[best] += weight
                continue
        sums.append(weight * vector.astype(np.float64))
        totals.append(float(weight))
    centroids = np.stack(sums).astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    shares = np.array(totals, np.float32)
    return centroids, shares / shares.sum()


def affinities(items: Items, rows: np.ndarray, weights: np.ndarray) -> tuple[dict[str, float], str]:
    """Shares of the user's weight by top category, category, price band and town; and the home town."""
    total = float(weights.sum())
    if total <= 0:
        return {}, ""
    shares: dict[str, float] = defaultdict(float)
    for row, weight in zip(rows, weights / total):
        shares["t:" + items.top_category[row]] += weight
        shares["c:" + items.category[row]] += weight
        if items.band[row] >= 0:
            shares[f"b:{items.band[row]}"] += weight
        if items.town[row]:
            shares["w:" + items.town[row]] += weight
    towns = {key[2:]: value for key, value in shares.items() if key.startswith("w:")}
    home = max(sorted(towns), key=towns.get) if towns else ""
    return {key: float(value) for key, value in shares.items()}, home


def build_profile(user_id: str, items: Items, rows: np.ndarray, weights: np.ndarray, grades: np.ndarray,
                  bought: np.ndarray, n_events: int) -> UserProfile:
    """A profile from the user's engaged events (``rows`` may repeat: weights add, grades take the max)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    summed = np.zeros(len(unique), np.float64)
    np.add.at(summed, inverse, weights)
    best = np.zeros(len(unique), np.int8)
    np.maximum.at(best, inverse, grades)
    order = np.argsort(-summed, kind="stable")
    return profile_from_history(user_id, items, unique[order], summed[order].astype(np.float32), best[order],
                                np.unique(bought), n_events)


def profile_from_history(user_id: str, items: Items, rows: np.ndarray, weights: np.ndarray, grades: np.ndarray,
                         bought: np.ndarray, n_events: int, factors: np.ndarray | None = None) -> UserProfile:
    """A profile from the user's distinct listings, strongest first, with their summed weights and best grades."""
    vectors, shares = interests(items.vectors[rows], weights)
    affinity, home = affinities(items, rows, weights)
    return UserProfile(user_id, rows.astype(np.int64), weights.astype(np.float32), grades.astype(np.int8),
                       bought.astype(np.int64), vectors, shares, affinity, home, n_events, factors)


@dataclass
class Histories:
    """Every user's distinct engaged listings, packed: user ``i``'s are ``items[ptr[i]:ptr[i + 1]]``, strongest
    first, with summed decayed weights and best grades; purchases likewise under ``bought_ptr``."""

    user_ids: np.ndarray  # str (u,)
    ptr: np.ndarray  # int64 (u + 1,)
    items: np.ndarray  # int64
    weights: np.ndarray  # float32
    grades: np.ndarray  # int8
    bought_ptr: np.ndarray  # int64 (u + 1,)
    bought: np.ndarray  # int64
    n_events: np.ndarray  # int64 (u,)
    factors: np.ndarray | None = None  # float32 (u, f): ALS user factors

    @classmethod
    def from_events(cls, user_ids: np.ndarray, user_rows: np.ndarray, rows: np.ndarray, weights: np.ndarray,
                    grades: np.ndarray, purchased: np.ndarray, n_items: int) -> Histories:
        """From per-event arrays (``user_rows`` index ``user_ids``; ``purchased``: bool per event), in whole-array
        operations (no loop over users)."""
        n_users = len(user_ids)
        pairs, inverse = np.unique(user_rows.astype(np.int64) * n_items + rows, return_inverse=True)
        summed = np.bincount(inverse, weights=weights, minlength=len(pairs))
        best = np.zeros(len(pairs), np.int8)
        np.maximum.at(best, inverse, grades)
        owner, item = pairs // n_items, pairs % n_items
        order = np.lexsort((-summed, owner))  # per user, strongest first (ties: lower row first)
        bought_pairs = np.unique(user_rows[purchased].astype(np.int64) * n_items + rows[purchased])
        return cls(
            user_ids=np.asarray(user_ids, dtype=str),
            ptr=_pointers(owner, n_users),
            items=item[order],
            weights=summed[order].astype(np.float32),
            grades=best[order],
            bought_ptr=_pointers(bought_pairs // n_items, n_users),
            bought=bought_pairs % n_items,
            n_events=np.bincount(user_rows, minlength=n_users).astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.user_ids)

    def profile(self, i: int, items: Items) -> UserProfile:
        mine, theirs = slice(self.ptr[i], self.ptr[i + 1]), slice(self.bought_ptr[i], self.bought_ptr[i + 1])
        return profile_from_history(str(self.user_ids[i]), items, self.items[mine], self.weights[mine],
                                    self.grades[mine], self.bought[theirs], int(self.n_events[i]),
                                    self.user_factors(i))

    def erase(self, i: int) -> None:
        """Blank user ``i``'s id, listings, purchases and factors in place (an erased user leaves nothing)."""
        self.user_ids[i] = ""
        mine, theirs = slice(self.ptr[i], self.ptr[i + 1]), slice(self.bought_ptr[i], self.bought_ptr[i + 1])
        self.items[mine], self.weights[mine], self.grades[mine], self.bought[theirs] = 0, 0.0, 0, 0
        self.n_events[i] = 0
        if self.factors is not None:
            self.factors[i] = np.nan

    def user_factors(self, i: int) -> np.ndarray | None:
        if self.factors is None or not np.isfinite(self.factors[i]).all():  # NaN: the user was not in ALS
            return None
        return self.factors[i]


def _pointers(owner: np.ndarray, n_users: int) -> np.ndarray:
    """Row pointers of entries sorted by ``owner``."""
    return np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n_users))]).astype(np.int64)


class Profiles(MutableMapping):
    """User id -> `UserProfile`, built from `Histories` on first access (a request, the blend's training data)
    rather than all at once: interests and affinities cost a Python loop per user, and most users of a large
    log are never asked for before the next training. Profiles set here (a fold-in) replace the packed one."""

    def __init__(self, items: Items, histories: Histories):
        self.items = items
        self.histories = histories
        self._position = {str(u): i for i, u in enumerate(histories.user_ids)}
        self._built: dict[str, UserProfile] = {}

    def __getitem__(self, user_id: str) -> UserProfile:
        profile = self._built.get(user_id)
        if profile is None:
            profile = self.histories.profile(self._position[user_id], self.items)
            self._built[user_id] = profile
        return profile

    def __setitem__(self, user_id: str, profile: UserProfile) -> None:
        self._built[user_id] = profile

    def __delitem__(self, user_id: str) -> None:
        held = self._built.pop(user_id, None) is not None
        position = self._position.pop(user_id, None)
        if position is not None:
            self.histories.erase(position)
        if not held and position is None:
            raise KeyError(user_id)

    def __iter__(self) -> Iterator[str]:
        yield from self._position
        yield from (u for u in list(self._built) if u not in self._position)

    def __len__(self) -> int:
        return len(self._position) + sum(u not in self._position for u in self._built)

    def __contains__(self, user_id) -> bool:
        return user_id in self._position or user_id in self._built

    def packed(self) -> Histories:
        """The histories of every user held now (fold-ins and erasures applied)."""
        h = self.histories
        if not self._built and len(self._position) == len(h):
            return h
        parts = []
        for user_id in self:
            if user_id in self._built:
                p = self._built[user_id]
                parts.append((user_id, p.items, p.weights, p.grades, p.bought, p.n_events, p.factors))
            else:
                i = self._position[user_id]
                mine, theirs = slice(h.ptr[i], h.ptr[i + 1]), slice(h.bought_ptr[i], h.bought_ptr[i + 1])
                parts.append((user_id, h.items[mine], h.weights[mine], h.grades[mine], h.bought[theirs],
                              h.n_events[i], h.user_factors(i)))
        return pack_histories(parts, None if h.factors is None else h.factors.shape[1])


def pack_histories(parts, width: int | None) -> Histories:
    """Histories from (user id, items, weights, grades, bought, n events, factors or None) per user."""

    def cat(index: int, dtype) -> np.ndarray:
        return np.concatenate([p[index] for p in parts]).astype(dtype) if parts else np.zeros(0, dtype)

    def ptr(index: int) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(p[index]) for p in parts], dtype=np.int64)]).astype(np.int64)

    factors = None
    if width is not None:
        factors = np.stack([p[6] if p[6] is not None else np.full(width, np.nan, np.float32) for p in parts]) \
            if parts else np.zeros((0, width), np.float32)
    return Histories(np.array([p[0] for p in parts], dtype=str), ptr(1), cat(1, np.int64), cat(2, np.float32),
                     cat(3, np.int8), ptr(4), cat(4, np.int64), np.array([p[5] for p in parts], np.int64),
                     None if factors is None else factors.astype(np.float32))
