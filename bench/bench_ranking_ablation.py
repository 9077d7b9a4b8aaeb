"""Where the re-ranker's quality comes from: NDCG@10 on the test products per training set and feature group.

    .venv/bin/python -m bench.bench_ranking_ablation --workspace workspace/dev

Builds the known-item training data of ``marketsearch train-ranker`` once per query set (the model's
val products, its default, and train+val products), and the test-product candidates of ``marketsearch
evaluate`` once, then fits one re-ranker per (query set, left-out feature group) and scores the test
queries the way ``evaluate`` does (same candidates, ``stage_scores``, ranx). The full-feature,
val-products row reproduces ``marketsearch train-ranker`` + ``evaluate`` with the same seed.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from bench.bench_ranking_gains import open_protocols, ranking_parser, test_items
from evaluation.evaluate import compare_runs, stage_scores
from evaluation.train import TrainingData, TrainRankerConfig, protocol_training_data, split_queries
from ranking.features import FEATURE_NAMES
from ranking.reranker import Reranker

# The columns new in feature set 3, by what they need.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "photo": ("photo_sim", "photo_sim_gap", "photo_sim_rank", "category_path_share_photo_top10",
              "same_path_as_photo_top1", "photo_top_margin"),
    "term coverage": ("term_coverage", "term_coverage_gap", "idf_coverage", "term_bm25_score", "term_bm25_ratio"),
    "top-1 category path": ("category_path_share_top3", "same_path_as_rrf_top1", "same_path_as_vector_top1",
                            "same_path_as_bm25_top1", "vector_top_margin", "bm25_top_margin_ratio"),
}
FEATURE_GROUPS["all new in set 3"] = tuple(name for group in FEATURE_GROUPS.values() for name in group)
REFERENCE = {"text": "bm25", "image": "frozen_mobilenet_v2"}


def fit(train: TrainingData, columns: list[int], seed: int) -> tuple[Reranker, int]:
    """Fit like ``train-ranker`` (a random fifth of the queries for early stopping) on ``columns`` only."""
    train_ids, valid_ids = split_queries(train.query_ids, 0.2, seed)
    fit_part, valid_part = train.select(train_ids), train.select(valid_ids)
    names = [train.feature_names[j] for j in columns]
    ranker = Reranker(n_jobs=1, log_every=0, random_state=seed).fit(
        fit_part.X[:, columns], fit_part.y, fit_part.group,
        valid_part.X[:, columns], valid_part.y, valid_part.group, feature_names=names)
    return ranker, fit_part.queries


def test_ndcg(ranker: Reranker, columns: list[int], tests: dict) -> dict[str, float]:
    scores = {}
    for name, (items, protocol) in tests.items():
        runs: dict = {}
        for item in items:
            rerank = ranker.predict(item.features[:, columns]) if len(item.candidates) else np.zeros(0)
            for stage, run in stage_scores(item.candidates, rerank).items():
                runs.setdefault(stage, {})[item.query_id] = run
        runs = {stage: run for stage, run in runs.items() if stage in ("reranked", "bm25") and any(run.values())}
        runs.update(protocol.baseline_runs)
        report = compare_runs(protocol.qrels, runs, metrics=["ndcg@10"])
        ndcg = report.scores["reranked"]["ndcg@10"]
        scores[name] = ndcg
        scores[f"{name}_ratio"] = ndcg / report.scores[REFERENCE[name]]["ndcg@10"]
    return scores


def main() -> None:
    parser = ranking_parser(__doc__)
    parser.add_argument("--depth", type=int, default=100, help="Candidates per retriever, as evaluate.")
    parser.add_argument("--seed", type=int, default=0, help="Query sampling, early-stopping split and LightGBM.")
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict = {"load_average_before": os.getloadavg(), "rows": []}
    builder = open_protocols(args)
    try:
        tests = test_items(builder, args.depth, names=("text", "image"))
        training = {}
        for splits in (("val",), ("train", "val")):
            config = TrainRankerConfig(train_splits=splits, depth=args.depth, seed=args.seed)
            training[splits] = protocol_training_data(builder, splits, config, "+".join(splits))
    finally:
        builder.close()
    everything = list(range(len(FEATURE_NAMES)))
    plans = [(("val",), None), (("train", "val"), None), *((("val",), group) for group in FEATURE_GROUPS)]
    for splits, left_out in plans:
        dropped = set(FEATURE_GROUPS.get(left_out, ()))
        columns = [j for j in everything if FEATURE_NAMES[j] not in dropped]
        ranker, fit_queries = fit(training[splits], columns, args.seed)
        row = {"queries_from": "+".join(splits), "left_out": left_out or "-",
               "training_queries": int(fit_queries), "trees": ranker.best_iteration_,
               **test_ndcg(ranker, columns, tests)}
        results["rows"].append(row)
        print(f"{row['queries_from']:>9} | left out {row['left_out']:<20} | text {row['text']:.4f} "
              f"({row['text_ratio']:.3f}x bm25) | image {row['image']:.4f} ({row['image_ratio']:.3f}x frozen)",
              flush=True)
    results["load_average_after"] = os.getloadavg()
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
