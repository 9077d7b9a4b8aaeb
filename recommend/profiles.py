"""Users' content profiles: interest vectors in the shared text-image space, and category, price-band and
location affinities, all from the listings they engaged with (event- and recency-weighted).

A user whose history spans unrelated things (a sofa and a drill) gets one interest vector per group of related
listings instead of one muddy average: listings are taken strongest first and join the nearest interest when
it is close enough (cosine >= ``INTEREST_JOIN``), else start a new one (at most ``MAX_INTERESTS``).
"""

from __future__ import annotations

from collections import defaultdict
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
    unique, summed, best = unique[order], summed[order].astype(np.float32), best[order]
    vectors, shares = interests(items.vectors[unique], summed)
    affinity, home = affinities(items, unique, summed)
    return UserProfile(user_id, unique.astype(np.int64), summed, best, np.unique(bought).astype(np.int64),
                       vectors, shares, affinity, home, n_events)
