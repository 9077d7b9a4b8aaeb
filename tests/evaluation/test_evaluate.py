import json
import math

import numpy as np
import pytest

from evaluation.evaluate import (
    METRICS_VERSION,
    compare_runs,
    compare_slice,
    mark_superseded,
    rrf_run,
    scores_from_ranking,
    stage_scores,
    write_evaluation,
    write_runs,
)
from evaluation.judgments import EvalQuery, read_qrels, wanted_listing_qrels
from tests.ranking.helpers import small_candidates


def dcg(grades: list[int]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(grades))


def test_metric_wiring_matches_hand_computed_values():
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    runs = {"system": {"q1": scores_from_ranking(["b", "x", "a"]), "q2": scores_from_ranking(["y", "z", "c"])}}
    report = compare_runs(qrels, runs)
    # q1: ranked grades 1, 0, 2 against the ideal 2, 1; q2: the only relevant listing at rank 3
    ndcg_q1 = dcg([1, 0, 2]) / dcg([2, 1])
    ndcg_q2 = dcg([0, 0, 1]) / dcg([1])
    scores = report.scores["system"]
    assert scores["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert scores["mrr@10"] == pytest.approx((1 / 1 + 1 / 3) / 2)
    assert scores["recall@100"] == pytest.approx(1.0)
    assert scores["map"] == pytest.approx(((1 / 1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert report.per_query["system"]["ndcg@10"] == pytest.approx([ndcg_q1, ndcg_q2])


def test_queries_missing_from_a_run_count_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    report = compare_runs(qrels, {"partial": {"q1": scores_from_ranking(["a"])}}, metrics=["ndcg@10"])
    assert report.scores["partial"]["ndcg@10"] == pytest.approx(0.5)


def test_significance_is_reported_for_a_clearly_better_run():
    rng = np.random.default_rng(0)
    qrels, good, bad = {}, {}, {}
    for q in range(60):
        docs = [f"d{i}" for i in range(20)]
        qrels[f"q{q}"] = {docs[0]: 2}
        good[f"q{q}"] = scores_from_ranking(docs[:1] + list(rng.permutation(docs[1:])))
        bad[f"q{q}"] = scores_from_ranking(list(rng.permutation(docs[1:])) + docs[:1])
    report = compare_runs(qrels, {"bad": bad, "good": good})
    assert report.significant("good", "bad", "ndcg@10")
    assert not report.significant("bad", "good", "ndcg@10")
    assert report.p_values["good"]["bad"]["ndcg@10"] < 0.01
    assert "<sup>a</sup>" in report.to_markdown()


def test_rrf_fuses_ranks_not_scores_and_keeps_queries_one_run_leaves_empty():
    lexical = {"q1": {"a": 30.0, "b": 20.0, "c": 10.0}, "q2": {"a": 1.0}, "q3": {}}
    dense = {"q1": {"c": 0.9, "b": 0.8}, "q2": {}, "q3": {"d": 0.5, "e": 0.4}}
    fused = rrf_run([lexical, dense], k=60)
    # q1: a 1/61; b 1/62 + 1/62 = 0.032258; c 1/63 + 1/61 = 0.032266 -> c, b, a
    assert sorted(fused["q1"], key=fused["q1"].get, reverse=True) == ["c", "b", "a"]
    assert sorted(fused["q3"], key=fused["q3"].get, reverse=True) == ["d", "e"]  # BM25 found nothing
    assert list(fused["q2"]) == ["a"]
    assert list(rrf_run([lexical, dense], depth=2)["q1"]) == ["c", "b"]
    # disjoint runs interleave by rank: both firsts (ties broken by id), then both seconds
    assert list(rrf_run([{"q": {"a": 2.0, "x": 1.0}}, {"q": {"y": 2.0, "d": 1.0}}])["q"]) == ["a", "y", "d", "x"]
    assert rrf_run([{"q": {}}, {"q": {}}]) == {}


def test_stage_scores_follow_each_retriever():
    stages = stage_scores(small_candidates(), rerank_scores=np.array([0.1, 0.9, 0.5, 0.5]))
    order = {stage: sorted(run, key=run.get, reverse=True) for stage, run in stages.items()}
    assert order["bm25"] == ["lamp-1", "bike-1", "sofa-1"]  # bike-2 was not retrieved by BM25
    assert order["vector"] == ["bike-1", "bike-2"]
    assert order["hybrid"] == ["bike-1", "lamp-1", "bike-2", "sofa-1"]
    assert order["reranked"] == ["bike-2", "lamp-1", "sofa-1", "bike-1"]  # tie broken by RRF score


def test_run_files_parse_with_ranx_and_reproduce_the_scores(tmp_path):
    from ranx import Qrels, Run, evaluate

    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    runs = {
        "bm25": {"q1": scores_from_ranking(["a", "b"]), "q2": scores_from_ranking(["x", "c"])},
        "reranked": {"q1": scores_from_ranking(["b", "a"]), "q2": scores_from_ranking(["c", "x"])},
    }
    report = compare_runs(qrels, runs)
    written = write_evaluation(tmp_path, report, runs, qrels, wanted={"q1": {"a": 1}, "q2": {"c": 1}})
    assert read_qrels(written["qrels.wanted"]) == {"q1": {"a": 1}, "q2": {"c": 1}}
    for stage in runs:
        run = Run.from_file(str(written[f"run.{stage}"]), kind="trec")
        assert run.to_dict() == runs[stage]
        score = evaluate(Qrels.from_file(str(written["qrels"]), kind="trec"), run, "ndcg@10")
        assert score == pytest.approx(report.scores[stage]["ndcg@10"])
    assert read_qrels(written["qrels"]) == qrels
    saved = json.loads(written["report.json"].read_text())
    assert saved["stages"] == ["bm25", "reranked"] and saved["queries"] == 2
    assert "| reranked |" in written["report.md"].read_text()
    for name in ("metrics", "per_query_ndcg_at_10"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_runs_ranks_by_score(tmp_path):
    paths = write_runs({"x": {"q": {"a": 1.0, "b": 3.0, "c": 2.0}}}, tmp_path)
    lines = paths["x"].read_text().splitlines()
    assert [line.split()[2] for line in lines] == ["b", "c", "a"]
    assert [line.split()[3] for line in lines] == ["1", "2", "3"]


def test_compare_refuses_empty_inputs():
    with pytest.raises(ValueError, match="qrels are empty"):
        compare_runs({}, {"x": {"q": {"a": 1.0}}})
    with pytest.raises(ValueError, match="no ranked listing"):
        compare_runs({"q": {"a": 1}}, {"x": {"other": {"a": 1.0}}})


def test_known_item_metrics_count_only_the_wanted_listing():
    # graded: the wanted listing 2, same category path 1; the runs put a same-category listing first
    queries = {"q1": EvalQuery("q1", text="a", target_id="a"), "q2": EvalQuery("q2", text="b", target_id="b")}
    qrels = {"q1": {"a": 2, "s1": 1}, "q2": {"b": 2, "s2": 1}}
    wanted = wanted_listing_qrels(queries)
    assert wanted == {"q1": {"a": 1}, "q2": {"b": 1}}
    runs = {"s": {"q1": scores_from_ranking(["s1", "a", "x"]), "q2": scores_from_ranking(["x", "y", "b", "s2"])}}
    report = compare_runs(qrels, runs, wanted=wanted)
    scores = report.scores["s"]
    assert scores["mrr@10"] == pytest.approx((1 / 2 + 1 / 3) / 2)  # the same-category s1 at rank 1 does not count
    assert scores["hit_rate@1"] == 0.0
    assert scores["recall@100"] == pytest.approx(1.0)
    assert scores["ndcg@10"] == pytest.approx(
        ((1 + 2 / math.log2(3)) / dcg([2, 1]) + (2 / math.log2(4) + 1 / math.log2(5)) / dcg([2, 1])) / 2)
    assert report.metric_qrels == {"ndcg@10": "graded", "mrr@10": "wanted listing", "recall@100": "wanted listing",
                                   "hit_rate@1": "wanted listing", "map": "graded"}
    assert "only the wanted listing is relevant" in report.to_markdown()
    # the old definition (any graded listing relevant) would have given MRR 1 for q1
    graded_only = compare_runs(qrels, runs)
    assert graded_only.scores["s"]["mrr@10"] == pytest.approx((1 + 1 / 3) / 2)
    assert graded_only.metric_qrels["mrr@10"] == "graded"


def test_known_item_qrels_must_judge_the_same_queries():
    with pytest.raises(ValueError, match="judge different queries"):
        compare_runs({"q1": {"a": 2}, "q2": {"b": 2}}, {"s": {"q1": {"a": 1.0}}}, wanted={"q1": {"a": 1}})


def test_a_slice_is_scored_on_its_queries_alone():
    qrels = {"q1": {"a": 2}, "q2": {"b": 2}, "q3": {"c": 2}}
    runs = {"s": {"q1": scores_from_ranking(["a"]), "q2": scores_from_ranking(["x", "b"]),
                  "q3": scores_from_ranking(["x", "y", "z", "c"])},
            "only_q1": {"q1": scores_from_ranking(["a"])}}
    wanted = {q: {d: 1 for d in docs} for q, docs in qrels.items()}
    sliced = compare_slice(qrels, runs, ["q2", "q3", "unknown"], wanted=wanted)
    assert sliced.query_ids == ["q2", "q3"]
    assert sliced.stages == ["s"]  # only_q1 ranks nothing in the slice
    assert sliced.scores["s"]["mrr@10"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert compare_slice(qrels, runs, ["nothing"]) is None


def test_reports_written_with_older_metric_definitions_are_marked_superseded(tmp_path):
    qrels = {"q1": {"a": 2}}
    runs = {"s": {"q1": scores_from_ranking(["a"])}}
    old, new = tmp_path / "20260101T000000Z", tmp_path / "20260102T000000Z"
    write_evaluation(old, compare_runs(qrels, runs), runs, qrels, prefix="text.")
    write_evaluation(new, compare_runs(qrels, runs), runs, qrels, prefix="text.")
    (old / "summary.md").write_text("# Offline evaluation\n")
    saved = json.loads((old / "text.report.json").read_text())
    assert saved["metrics_version"] == METRICS_VERSION
    saved.pop("metrics_version")  # as written before the known-item definitions
    (old / "text.report.json").write_text(json.dumps(saved))
    (tmp_path / "cache").mkdir()  # protocol encodings live beside the reports
    assert mark_superseded(tmp_path) == [old]
    assert (old / "summary.md").read_text().startswith("> **Superseded** (metrics version 1, now 2)")
    assert (old / "text.report.md").read_text().startswith("> **Superseded**")
    assert not (new / "text.report.md").read_text().startswith("> **Superseded**")
    assert mark_superseded(tmp_path) == []  # once
