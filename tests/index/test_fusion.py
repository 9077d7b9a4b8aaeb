"""Reciprocal rank fusion against ranx's implementation on the same runs."""

from __future__ import annotations

import numpy as np
import pytest
from ranx import Run, fuse

from index.fusion import reciprocal_rank_fusion


def _as_run(rankings_per_query: dict[str, list[str]], name: str) -> Run:
    # Strictly decreasing scores encode each ranking's order for ranx.
    return Run(
        {q: {doc: float(len(docs) - r) for r, doc in enumerate(docs)} for q, docs in rankings_per_query.items()},
        name=name,
    )


@pytest.mark.parametrize("k", [60, 10, 1])
def test_rrf_matches_ranx(k):
    rng = np.random.default_rng(k)
    docs = [f"d{i}" for i in range(200)]
    vector, lexical, third = {}, {}, {}
    for q in range(25):
        vector[f"q{q}"] = list(rng.choice(docs, 40, replace=False))
        lexical[f"q{q}"] = list(rng.choice(docs, int(rng.integers(1, 30)), replace=False))
        third[f"q{q}"] = list(rng.choice(docs, 15, replace=False))
    fused = fuse(
        [_as_run(vector, "vector"), _as_run(lexical, "bm25"), _as_run(third, "other")],
        norm=None,
        method="rrf",
        params={"k": k},
    )
    for q in vector:
        ours = reciprocal_rank_fusion([vector[q], lexical[q], third[q]], k=k)
        theirs = fused[q]
        assert {doc for doc, _ in ours} == set(theirs)
        for doc, score in ours:
            assert score == pytest.approx(theirs[doc], rel=1e-9)
        scores = [score for _, score in ours]
        assert scores == sorted(scores, reverse=True)


def test_rrf_hand_computed_and_tie_break():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]], k=60)
    assert fused[0] == ("b", pytest.approx(1 / 62 + 1 / 61))
    # a and d tie at rank 1 resp. 2 ... a reached rank 1, d only rank 2.
    assert [doc for doc, _ in fused] == ["b", "a", "d", "c"]
    assert dict(fused)["c"] == pytest.approx(1 / 63)


def test_rrf_edge_cases():
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[], []]) == []
    # An id repeated inside one ranking counts once, at its best rank.
    assert reciprocal_rank_fusion([["a", "a", "b"]], k=0) == [("a", 1.0), ("b", pytest.approx(1 / 3))]
    weighted = reciprocal_rank_fusion([["a"], ["b"]], k=0, weights=[1.0, 2.0])
    assert weighted == [("b", 2.0), ("a", 1.0)]
    with pytest.raises(ValueError, match="not strings"):
        reciprocal_rank_fusion(["abc"])
    with pytest.raises(ValueError, match="weights must be 2 non-negative numbers"):
        reciprocal_rank_fusion([["a"], ["b"]], weights=[1.0])
