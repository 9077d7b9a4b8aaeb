"""Reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009), same scores as ``ranx.fuse(method="rrf")``."""

from __future__ import annotations

from collections.abc import Sequence


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Fuse ranked lists of ids: ``score(id) = sum_r weight_r / (k + rank_r(id))`` with 1-based ranks.

    Parameters
    ----------
    rankings : list of lists of str
        Each list is one ranking, best first (e.g. vector hits, BM25 hits). An id repeated within a
        ranking counts once, at its best rank. Empty rankings are allowed.
    k : int
        The RRF constant (60 in the paper); larger values flatten the rank differences.
    weights : list of float, optional
        One non-negative weight per ranking (default 1 each).

    Returns
    -------
    list of (id, score), best first; ties are broken by the best rank the id reached in any
    ranking, then by id, so the order is deterministic.
    """
    if isinstance(rankings, str) or any(isinstance(ranking, str) for ranking in rankings):
        raise ValueError("rankings must be a list of lists of ids, not strings")
    if isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be a non-negative number; got {k!r}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings) or any(weight < 0 for weight in weights):
        raise ValueError(f"weights must be {len(rankings)} non-negative numbers, one per ranking; got {weights!r}")
    scores: dict[str, float] = {}
    best_rank: dict[str, int] = {}
    for ranking, weight in zip(rankings, weights):
        seen: set[str] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            best_rank[item] = min(best_rank.get(item, rank), rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], best_rank[pair[0]], pair[0]))
