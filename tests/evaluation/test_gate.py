"""The train-ranker gate on hand-made validation queries: NDCG@10 re-ranked vs first stage, per query type."""

import math

import numpy as np
import pytest

from evaluation.train import TrainingData, gate_lines, query_types_of, validation_gate
from ranking.features import FEATURE_NAMES

COLUMN = {name: j for j, name in enumerate(FEATURE_NAMES)}


def dcg(grades) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(grades))


def query_rows(rrf, vector_rank, has_text: bool, has_image: bool) -> np.ndarray:
    X = np.full((len(rrf), len(FEATURE_NAMES)), np.nan, dtype=np.float32)
    X[:, COLUMN["rrf_score"]] = rrf
    X[:, COLUMN["vector_rank"]] = vector_rank
    X[:, COLUMN["query_has_text"]] = float(has_text)
    X[:, COLUMN["query_has_image"]] = float(has_image)
    return X


def validation_set() -> TrainingData:
    # text query: RRF order a, b, c with grades 0, 2, 1; image query: RRF order d, e with grades 0, 2 (its vector
    # rank says e first: the gate compares with RRF, which fuses the photo retriever's ranking in)
    text = query_rows([0.3, 0.2, 0.1], [1, 2, 3], True, False)
    image = query_rows([0.2, 0.1], [2, 1], False, True)
    return TrainingData(np.concatenate([text, image]), np.array([0, 2, 1, 0, 2]), np.array([3, 2]),
                        ["t1", "i1"], list(FEATURE_NAMES))


class ScoresFromLabels:
    """A perfect re-ranker on the validation set: scores are the grades."""

    def __init__(self, labels):
        self.labels = np.asarray(labels, dtype=np.float64)
        self.position = 0

    def predict(self, X):
        scores = self.labels[self.position : self.position + len(X)]
        self.position += len(X)
        return scores


class Constant:
    def predict(self, X):
        return np.zeros(len(X))


def test_query_types_come_from_the_query_columns():
    data = validation_set()
    assert data.query_types == ["text", "image"]
    assert query_types_of(data.X[:1], np.array([1]), ["rrf_score"]) == ["unknown"]


def test_a_perfect_ranker_passes_with_hand_computed_scores():
    data = validation_set()
    gate = validation_gate(ScoresFromLabels(data.y), data)
    assert gate["passed"]
    text, image = gate["types"]["text"], gate["types"]["image"]
    assert text["first_stage"] == "hybrid" and image["first_stage"] == "hybrid"
    assert text["first_stage_score"] == pytest.approx(dcg([0, 2, 1]) / dcg([2, 1]))
    assert image["first_stage_score"] == pytest.approx(dcg([0, 2]) / dcg([2]))
    assert text["reranked_score"] == pytest.approx(1.0) and image["reranked_score"] == pytest.approx(1.0)


def test_a_ranker_worse_than_the_first_stage_fails_and_the_lines_say_where():
    data = validation_set()
    # scores = minus the grades: the wanted listing last
    gate = validation_gate(ScoresFromLabels(-data.y), data)
    assert not gate["passed"]
    text = gate["types"]["text"]
    assert text["reranked_score"] == pytest.approx(dcg([0, 1, 2]) / dcg([2, 1]))
    assert not text["passed"] and text["reranked_score"] < text["first_stage_score"]
    lines = gate_lines(gate)
    assert any(line.startswith("text: NDCG@10 re-ranked") and "WORSE" in line and
               f"{text['first_stage_score']:.4f}" in line for line in lines), lines


def test_ties_keep_the_first_stage_order_so_a_constant_ranker_is_level():
    # a re-ranker that cannot tell candidates apart is broken by the RRF score, as served: both queries keep
    # their first-stage order (level, passes), the image query's too (d first, as RRF says, not the vector rank)
    gate = validation_gate(Constant(), validation_set())
    text, image = gate["types"]["text"], gate["types"]["image"]
    assert text["reranked_score"] == pytest.approx(text["first_stage_score"]) and text["passed"]
    assert image["reranked_score"] == pytest.approx(dcg([0, 2]) / dcg([2])) == pytest.approx(image["first_stage_score"])
    assert image["passed"]


def test_a_ranker_that_trades_the_wanted_listing_for_its_category_fails_on_mrr():
    # first stage: the wanted listing first, nine unrelated listings, then nine of its category path;
    # the re-ranker puts the nine same-path listings first and the wanted listing tenth: NDCG@10 rises
    # (nine grade-1 hits outweigh one grade-2 hit at rank 1), the buyer's listing falls from 1st to 10th
    grades = np.array([2] + [0] * 9 + [1] * 9)
    rrf = np.linspace(1.0, 0.1, len(grades))
    X = query_rows(rrf, np.arange(1, len(grades) + 1), True, False)
    data = TrainingData(X, grades, np.array([len(grades)]), ["t1"], list(FEATURE_NAMES))
    reranked_order = np.array([1.5] + [0.0] * 9 + [10.0 - k for k in range(9)])  # same-path 10..2, wanted 1.5

    ndcg_only = validation_gate(ScoresFromLabels(reranked_order), data)
    assert ndcg_only["passed"] and "wanted" not in ndcg_only["types"]["text"]
    assert ndcg_only["types"]["text"]["reranked_score"] > ndcg_only["types"]["text"]["first_stage_score"]

    gate = validation_gate(ScoresFromLabels(reranked_order), data, wanted_grade=2)
    wanted = gate["types"]["text"]["wanted"]
    assert wanted["first_stage_score"] == pytest.approx(1.0) and wanted["reranked_score"] == pytest.approx(0.1)
    assert not gate["passed"] and not wanted["passed"] and gate["types"]["text"]["passed"]  # NDCG@10 alone is ok
    lines = gate_lines(gate)
    assert any(line.startswith("text: MRR@10 (wanted listing) re-ranked 0.1000 vs hybrid 1.0000") and "WORSE" in line
               for line in lines), lines
    assert any(line.startswith("text: NDCG@10") and line.endswith("ok") for line in lines), lines


def text_queries(first_orders, reranked_orders) -> tuple[TrainingData, np.ndarray]:
    """Text queries of three candidates graded (2, 1, 0) in that row order; each first-stage (RRF) and re-ranked
    order is given as the rank (1 = top) of each row."""
    blocks, scores = [], []
    for first, reranked in zip(first_orders, reranked_orders):
        blocks.append(query_rows(-np.asarray(first, np.float32), first, True, False))
        scores.append(-np.asarray(reranked, np.float64))
    n = len(blocks)
    data = TrainingData(np.concatenate(blocks), np.tile([2, 1, 0], n), np.full(n, 3),
                        [f"t{i}" for i in range(n)], list(FEATURE_NAMES))
    return data, np.concatenate(scores)


def test_a_lower_mean_on_a_few_queries_is_not_a_loss_unless_the_paired_test_says_so():
    # six queries: the re-ranker swaps the top two on two of them and fixes one: a lower mean, p ~ 0.3
    best, swapped = [1, 2, 3], [2, 1, 3]
    data, scores = text_queries([best, best, best, swapped, best, best], [swapped, swapped, best, best, best, best])
    gate = validation_gate(ScoresFromLabels(scores), data)
    text = gate["types"]["text"]
    assert text["reranked_score"] < text["first_stage_score"]
    assert 0.05 < text["p_value"] < 1.0 and text["passed"] and gate["passed"] and gate["max_p"] == 0.05
    assert any("lower, not significantly (p = " in line and line.endswith(": ok") for line in gate_lines(gate))


def test_a_loss_on_most_queries_fails_with_its_p_value():
    best, swapped, worst = [1, 2, 3], [2, 1, 3], [3, 2, 1]
    data, scores = text_queries([best] * 6, [swapped, worst, swapped, worst, swapped, best])
    gate = validation_gate(ScoresFromLabels(scores), data)
    text = gate["types"]["text"]
    assert text["p_value"] < 0.05 and not text["passed"] and not gate["passed"]
    line = next(line for line in gate_lines(gate) if line.startswith("text: NDCG@10"))
    assert f"WORSE than the first stage (p = {text['p_value']:.2g})" in line
    # the same loss judged at a laxer level passes
    assert validation_gate(ScoresFromLabels(scores), data, max_p=text["p_value"] / 2)["passed"]
