"""Shared harness of the known-item text lever benchmarks: does a set of extra columns help the re-ranker find the
wanted listing?

``text_candidates`` builds, once, the known-item text candidates and features of ``train-ranker`` (queries: titles
of the val products, each searching every corpus of ``TrainRankerConfig.corpora``) and of ``evaluate`` (test
products, with the frozen MiniLM anchor). ``compare_columns`` adds the columns a function computes for each query's
candidates, fits one text-only re-ranker per LightGBM seed with and without them (the same early-stopping split of
the queries per seed, both corpora of a query on one side) and prints test NDCG@10, wanted-listing MRR@10 and hit
rate@1 of each, and their paired differences. ``report_retrievers`` scores a lever's own rankings of the test
products beside BM25 and the issue's anchor; ``add_arguments`` and ``relative_columns`` are the benches' shared
command line and column derivation.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

METRICS = ["ndcg@10", "mrr@10", "hit_rate@1"]

# (query text, candidate listing ids) -> float32 (n_candidates, n_columns), NaN where a column is undefined
ColumnFunction = Callable[[str, Sequence[str]], np.ndarray]


def add_arguments(parser, seeds: str = "0,1,2,3") -> None:
    """The options every text lever bench takes: --workspace, --seeds, --depth."""
    parser.add_argument("--workspace", required=True, help="Workspace with a model bundle and stored embeddings.")
    parser.add_argument("--seeds", default=seeds, type=seed_list,
                        help="Comma-separated LightGBM seeds (and early-stopping splits).")
    parser.add_argument("--depth", type=int, default=100, help="Candidates per retriever, as evaluate.")


def seed_list(seeds: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]; anything else is a command-line error."""
    try:
        return [int(seed) for seed in seeds.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 0,1,2, got {seeds!r}")


def relative_columns(values: np.ndarray) -> np.ndarray:
    """float32 (n, 4): each candidate's value, its gap to the best one, its rank and its lead over the runner-up,
    derived with ``ranking.features``' own helpers."""
    from ranking.features import _gap_to_best, _lead_over_others, _rank_descending

    values = np.asarray(values, np.float32)
    return np.column_stack([values, _gap_to_best(values), _rank_descending(values), _lead_over_others(values)])


@dataclass
class TextCandidates:
    # corpus name (evaluation.train.corpus_name) -> (evaluation.evaluate.QueryCandidates of the training queries,
    # their qrels)
    train_views: dict[str, tuple[list, dict]]
    test_protocol: object  # evaluation.protocol.ProtocolSet of the test products
    test_items: list


def text_candidates(builder, depth: int = 100) -> TextCandidates:
    from evaluation.evaluate import iter_query_candidates
    from evaluation.train import TrainRankerConfig, corpus_name

    train_views = {}
    for corpus in TrainRankerConfig().corpora:
        name = corpus_name(("val",), corpus)
        if name not in train_views:
            protocol = builder.text_protocol(("val",), corpus_splits=corpus)
            items = list(iter_query_candidates(protocol.searcher, protocol.queries, depth=depth,
                                               description=f"train text queries ({name} corpus)",
                                               progress=builder.progress))
            train_views[name] = (items, protocol.qrels)
    test_protocol = builder.text_protocol(("test",), frozen_baseline=True)
    test_items = list(iter_query_candidates(test_protocol.searcher, test_protocol.queries, depth=depth,
                                            description="test text queries", progress=builder.progress))
    return TextCandidates(train_views, test_protocol, test_items)


def bm25_test_run(data: TextCandidates) -> dict:
    """The BM25 ranking of each test query (the first stage's, as ``evaluate`` reports it)."""
    from evaluation.evaluate import stage_scores

    return {item.query_id: stage_scores(item.candidates)["bm25"] for item in data.test_items}


def report_retrievers(data: TextCandidates, bm25: dict, runs: dict) -> None:
    """Print NDCG@10, wanted-listing MRR@10 and Recall@100 of ``runs`` (name -> TREC-style run over the test
    products) beside BM25, the frozen MiniLM and the issue's anchor (their reciprocal rank fusion), each with its
    MRR@10 over the anchor's."""
    from evaluation.evaluate import compare_runs, rrf_run
    from evaluation.judgments import wanted_listing_qrels
    from evaluation.protocol import FROZEN_TEXT_BASELINE, RRF_TEXT_BASELINE

    protocol = data.test_protocol
    runs = {"bm25": bm25, **protocol.baseline_runs,
            RRF_TEXT_BASELINE: rrf_run([bm25, protocol.baseline_runs[FROZEN_TEXT_BASELINE]]), **runs}
    report = compare_runs(protocol.qrels, runs, wanted=wanted_listing_qrels(protocol.queries),
                          metrics=["ndcg@10", "mrr@10", "recall@100"])
    anchor = report.scores[RRF_TEXT_BASELINE]["mrr@10"]
    for stage, scores in report.scores.items():
        print(f"{stage}: " + ", ".join(f"{m} {v:.4f}" for m, v in scores.items())
              + f" ({scores['mrr@10'] / anchor:.3f}x the anchor's MRR@10)", flush=True)


def compare_columns(data: TextCandidates, columns: ColumnFunction, column_names: Sequence[str],
                    seeds: Sequence[int], label: str = "columns") -> dict[tuple[bool, int], dict[str, float]]:
    """Test scores of the re-rankers without and with the columns, keyed by (with the columns, seed)."""
    from evaluation.evaluate import compare_runs, stage_scores
    from evaluation.judgments import wanted_listing_qrels
    from evaluation.train import KNOWN_ITEM_RERANKER, TrainingData, join_views, split_queries
    from ranking.reranker import Reranker

    extra = {name: [columns(item.query.text, item.candidates.listing_ids) for item in items]
             for name, (items, _) in data.train_views.items()}
    test_extra = [columns(item.query.text, item.candidates.listing_ids) for item in data.test_items]

    def training(items: list, qrels: dict, item_extra: list, with_columns: bool) -> TrainingData:
        X, y, group, ids = [], [], [], []
        for item, more in zip(items, item_extra):
            judged = qrels.get(item.query_id, {})
            grades = np.array([judged.get(i, 0) for i in item.candidates.listing_ids], np.int32)
            if not (grades > 0).any():
                continue
            X.append(np.hstack([item.features, more]) if with_columns else item.features)
            y.append(grades), group.append(len(grades)), ids.append(item.query_id)
        names = list(items[0].feature_names) + (list(column_names) if with_columns else [])
        return TrainingData(np.concatenate(X), np.concatenate(y), np.array(group), ids, names, ["text"] * len(ids))

    protocol = data.test_protocol
    scores: dict[tuple[bool, int], dict[str, float]] = {}
    for with_columns in (False, True):
        views = {name: training(items, qrels, extra[name], with_columns)
                 for name, (items, qrels) in data.train_views.items()}
        query_ids = sorted({q for view in views.values() for q in view.query_ids})
        for seed in seeds:
            # as train-ranker: split the queries, every group of a query (one per corpus) on the same side
            fit_ids, valid_ids = split_queries(query_ids, 0.2, seed)
            fit, valid = join_views(views, fit_ids), join_views(views, valid_ids)
            ranker = Reranker(**{**KNOWN_ITEM_RERANKER, "n_jobs": 1, "log_every": 0}, random_state=seed).fit(
                fit.X, fit.y, fit.group, valid.X, valid.y, valid.group, feature_names=fit.feature_names)
            runs: dict = {}
            for item, more in zip(data.test_items, test_extra):
                X = np.hstack([item.features, more]) if with_columns else item.features
                runs.setdefault("reranked", {})[item.query_id] = stage_scores(item.candidates,
                                                                              ranker.predict(X))["reranked"]
            report = compare_runs(protocol.qrels, {**runs, **protocol.baseline_runs},
                                  wanted=wanted_listing_qrels(protocol.queries), metrics=METRICS)
            scores[with_columns, seed] = report.scores["reranked"]
            anchors = {stage: round(report.scores[stage]["mrr@10"], 4) for stage in protocol.baseline_runs}
            print(f"{label} {'on ' if with_columns else 'off'} seed {seed}: {ranker.best_iteration_} trees, "
                  + ", ".join(f"{m} {scores[with_columns, seed][m]:.4f}" for m in METRICS)
                  + f" (anchors' MRR@10 {anchors})", flush=True)
    for metric in METRICS:
        off = [scores[False, s][metric] for s in seeds]
        on = [scores[True, s][metric] for s in seeds]
        diff = [b - a for a, b in zip(off, on)]
        spread = f", sd {statistics.stdev(diff):.4f}" if len(diff) > 1 else ""
        print(f"{metric}: off {statistics.mean(off):.4f} [{min(off):.4f}-{max(off):.4f}], on {statistics.mean(on):.4f} "
              f"[{min(on):.4f}-{max(on):.4f}], paired difference {statistics.mean(diff):+.4f}{spread}, "
              f"higher with the {label} for {sum(d > 0 for d in diff)} of {len(diff)} seeds", flush=True)
    return scores
