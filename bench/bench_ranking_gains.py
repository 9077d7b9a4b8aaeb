"""How much the wanted listing should outweigh a same-category one in the re-ranker's labels.

    .venv/bin/python -m bench.bench_ranking_gains --workspace workspace/dev --gains 3,10,30,100
    .venv/bin/python -m bench.bench_ranking_gains --workspace workspace/dev --gains 1 --category-gain 0
    .venv/bin/python -m bench.bench_ranking_gains --workspace workspace/dev --gains 3 --queries-from train,val
    .venv/bin/python -m bench.bench_ranking_gains --workspace workspace/dev --gains 3 --text-queries-from train,val
    .venv/bin/python -m bench.bench_ranking_gains --workspace workspace/dev --gains 3 --seeds 0,1,2
    .venv/bin/python -m bench.bench_ranking_gains --workspace workspace/dev --gains 3 --protocols image,self-photo
    .venv/bin/python -m bench.bench_ranking_gains --workspace workspace/dev --gains 3 --params '[{"num_leaves": 63}]'
    .venv/bin/python -m bench.bench_ranking_gains --workspace ws --gains 3 --seeds 0,1 --split-per-seed --bag
    .venv/bin/python -m bench.bench_ranking_gains --workspace ws --gains 3 --seeds 0,1 --split-per-seed --refit
    .venv/bin/python -m bench.bench_ranking_gains --workspace ws --gains 3 --seeds 0,1 --corpus-from val
    .venv/bin/python -m bench.bench_ranking_gains --workspace ws --gains 3 --seeds 0,1 --corpus-from train,val
    .venv/bin/python -m bench.bench_ranking_gains --workspace ws --gains 3 --seeds 0,1 --valid-corpus-from val

Builds the training data of ``marketsearch train-ranker`` once (known-item text, image and self-photo
queries on the model's val products) and the test-product candidates of ``marketsearch evaluate`` once,
then fits one re-ranker per gain of the wanted listing (and per LightGBM seed, ``--seeds``: the spread of one
retraining) (grade 2; grade 1, the same category path, keeps
gain 1) and scores the test queries as ``evaluate`` does: graded NDCG@10, and MRR@10 and hit rate@1 of the
wanted listing alone, against each protocol's first stage and reference. Gain 3 is LightGBM's default
exponential gain (2**2 - 1). Each row also says whether ``train-ranker``'s gate (NDCG@10 and wanted-listing
MRR@10 per query type, on the validation queries) would install the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

from evaluation.evaluate import compare_runs, iter_query_candidates, stage_scores
from evaluation.judgments import KNOWN_ITEM_GRADES, wanted_listing_qrels
from evaluation.train import (
    TrainRankerConfig,
    corpus_views,
    join_views,
    protocol_training_data,
    split_queries,
    validation_gate,
)
from ranking.reranker import Reranker

METRICS = ["ndcg@10", "mrr@10", "hit_rate@1"]
# stages shown beside the re-ranked one: the first stage of each protocol and the anchors
SHOWN = {"text": ("bm25", "hybrid"), "image": ("vector", "photo", "frozen_mobilenet_v2"),
         "self-photo": ("vector", "photo")}


def test_items(builder, depth: int, names: tuple[str, ...] = tuple(SHOWN)) -> dict:
    """The candidates of the test queries of each protocol in ``names`` (text, image, self_photo), with the
    protocol: name -> (items, protocol)."""
    out = {}
    for name in names:
        if name == "text":
            protocol = builder.text_protocol(("test",))
        elif name == "image":
            protocol = builder.image_protocol(("test",), frozen_baseline=True)
        else:
            protocol = builder.self_photo_protocol(("test",))
        items = list(iter_query_candidates(protocol.searcher, protocol.queries, depth=depth,
                                           load_image=protocol.load_image, description=f"test {name} queries",
                                           progress=builder.progress))
        out[name] = (items, protocol)
    return out


def test_scores(ranker: Reranker, tests: dict) -> dict[str, dict[str, dict[str, float]]]:
    scores = {}
    for name, (items, protocol) in tests.items():
        runs: dict = {}
        for item in items:
            rerank = ranker.predict(item.features) if len(item.candidates) else np.zeros(0)
            for stage, run in stage_scores(item.candidates, rerank).items():
                runs.setdefault(stage, {})[item.query_id] = run
        runs = {stage: run for stage, run in runs.items() if stage in (*SHOWN[name], "reranked")}
        runs.update(protocol.baseline_runs)
        report = compare_runs(protocol.qrels, runs, wanted=wanted_listing_qrels(protocol.queries), metrics=METRICS)
        scores[name] = report.scores
    return scores


def ranking_parser(description: str) -> argparse.ArgumentParser:
    """The ranking benches' command line: ``--workspace`` and ``--threads``, which ``open_protocols`` reads."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, help="Workspace with a model bundle and stored embeddings.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (query encoding).")
    return parser


def open_protocols(args: argparse.Namespace):
    """``evaluation.protocol.ProtocolBuilder`` over ``args.workspace``, queries encoded on ``args.threads`` torch
    threads (the caller closes it)."""
    import torch

    from core.workspace import Workspace
    from evaluation.protocol import ProtocolBuilder

    torch.set_num_threads(args.threads)
    return ProtocolBuilder(Workspace.at(args.workspace), progress=False)


class MeanOfRankers:
    """Scores candidates by the mean of several re-rankers' scores, each standardised over the query's candidates."""

    def __init__(self, rankers: list[Reranker]):
        self.rankers = rankers

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = np.array([ranker.predict(X) for ranker in self.rankers], dtype=np.float64)
        spread = scores.std(axis=1, keepdims=True)
        return ((scores - scores.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)).mean(axis=0)


def main() -> None:
    parser = ranking_parser(__doc__)
    parser.add_argument("--gains", default="3,10,30,100", help="Comma-separated gains of the wanted listing.")
    parser.add_argument("--category-gain", type=float, default=1.0,
                        help="Gain of a listing of the wanted listing's category path (0: the wanted listing only).")
    parser.add_argument("--queries-from", default="val",
                        help="Products the training queries come from: val (train-ranker's default) or train,val.")
    parser.add_argument("--corpus-from", default="train,val+val",
                        help="Products the training queries search, several corpora joined by + (train-ranker's "
                             "default: train,val+val, each query searching both; val alone is shaped like the test "
                             "protocol, whose corpus the towers never trained on).")
    parser.add_argument("--valid-corpus-from", default=None,
                        help="Products the early-stopping queries search (default: those of --corpus-from).")
    parser.add_argument("--text-queries-from", default=None,
                        help="Products the text queries come from, when not those of --queries-from (the photo "
                             "queries keep --queries-from).")
    parser.add_argument("--params", default="[{}]",
                        help="JSON list of LightGBM parameter sets (Reranker keyword arguments), one re-ranker each.")
    parser.add_argument("--protocols", default=None,
                        help="Comma-separated query types to train on (default: all, as train-ranker).")
    parser.add_argument("--depth", type=int, default=100, help="Candidates per retriever, as evaluate.")
    parser.add_argument("--seed", type=int, default=0, help="Query sampling and the early-stopping split.")
    parser.add_argument("--seeds", default=None,
                        help="Comma-separated LightGBM seeds, one re-ranker each (default: --seed).")
    parser.add_argument("--split-per-seed", action="store_true",
                        help="Each LightGBM seed also draws its own early-stopping split (default: --seed's).")
    parser.add_argument("--bag", action="store_true",
                        help="Also score the mean of every fitted re-ranker's standardised scores (a bagged model).")
    parser.add_argument("--refit", action="store_true",
                        help="Refit each early-stopped re-ranker on all its training queries (the early-stopping "
                             "ones too) with the tree count early stopping chose, and score that one.")
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict = {"load_average_before": os.getloadavg(), "rows": []}
    builder = open_protocols(args)
    try:
        tests = test_items(builder, args.depth)
        corpora = tuple(tuple(corpus.split(",")) for corpus in args.corpus_from.split("+"))
        config = TrainRankerConfig(train_splits=tuple(args.queries_from.split(",")), depth=args.depth, seed=args.seed,
                                   corpora=corpora,
                                   **({"protocols": tuple(args.protocols.split(","))} if args.protocols else {}))
        text_splits = tuple(args.text_queries_from.split(",")) if args.text_queries_from else config.train_splits
        if text_splits != config.train_splits and "text" in config.protocols:
            if len(corpora) > 1:
                parser.error("--text-queries-from takes one corpus in --corpus-from")
            text_config = dataclasses.replace(config, train_splits=text_splits, protocols=("text",))
            photo_config = dataclasses.replace(config, protocols=tuple(p for p in config.protocols if p != "text"))
            training = protocol_training_data(builder, text_splits, text_config, "train")
            if photo_config.protocols:
                training = training + protocol_training_data(builder, config.train_splits, photo_config, "train")
            views = {"+".join(corpora[0]): training}
        else:
            views = corpus_views(builder, config.train_splits, config, "train")
        valid_views = views
        if args.valid_corpus_from:
            valid_views = {args.valid_corpus_from: protocol_training_data(
                builder, config.train_splits, config, "valid", tuple(args.valid_corpus_from.split(",")))}
    finally:
        builder.close()
    results["prepared_seconds"] = round(time.perf_counter() - started, 1)
    # as train-ranker: every group of a query (one per corpus) on the same side of the split
    query_ids = sorted({q for view in views.values() for q in view.query_ids})
    training = join_views(views, set(query_ids))

    def split(seed: int):
        train_ids, valid_ids = split_queries(query_ids, config.valid_fraction, seed)
        return join_views(views, train_ids), join_views(valid_views, valid_ids)

    fit_part, valid_part = split(args.seed)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    grid = [(float(g), params, seed) for g in args.gains.split(",") for params in json.loads(args.params)
            for seed in seeds]
    fitted = []
    for gain, params, seed in grid:
        if args.split_per_seed:
            fit_part, valid_part = split(seed)
        ranker = Reranker(**{"n_jobs": 1, "log_every": 0, **params}, label_gain=(0.0, args.category_gain, gain),
                          random_state=seed).fit(
            fit_part.X, fit_part.y, fit_part.group, valid_part.X, valid_part.y, valid_part.group,
            feature_names=training.feature_names)
        gate = validation_gate(ranker, valid_part, wanted_grade=KNOWN_ITEM_GRADES["target"])
        if args.refit:
            ranker = Reranker(**{"n_jobs": 1, "log_every": 0, **params, "n_estimators": ranker.best_iteration_},
                              label_gain=(0.0, args.category_gain, gain), random_state=seed).fit(
                training.X, training.y, training.group, feature_names=training.feature_names)
        row = {"wanted_gain": gain, "category_gain": args.category_gain, "queries_from": args.queries_from,
               "text_queries_from": args.text_queries_from or args.queries_from, "refit": args.refit,
               "corpus_from": args.corpus_from, "valid_corpus_from": args.valid_corpus_from,
               "seed": seed, "params": params,
               "trees": ranker.best_iteration_, "gate_passed": gate["passed"],
               "gate": gate["types"], "test": test_scores(ranker, tests)}
        results["rows"].append(row)
        fitted.append(ranker)
        cells = []
        for name, scores in row["test"].items():
            cells.append(f"{name}: " + ", ".join(
                f"{stage} " + "/".join(f"{scores[stage][m]:.4f}" for m in METRICS)
                for stage in ("reranked", *SHOWN[name])))
        verdict = "ok" if gate["passed"] else "REFUSED"
        validation = ", ".join(f"{kind} {t['wanted']['reranked_score']:.4f}" for kind, t in gate["types"].items()
                               if "wanted" in t)
        print(f"gains 0/{args.category_gain:g}/{gain:g}, params {json.dumps(params)}, seed {seed}, queries from "
              f"{args.queries_from} ({row['trees']} trees, gate {verdict}; validation MRR@10 {validation}) | "
              + " | ".join(cells), flush=True)
    if args.bag and len(fitted) > 1:
        bagged = test_scores(MeanOfRankers(fitted), tests)
        results["bag"] = {"rankers": len(fitted), "test": bagged}
        print(f"bag of {len(fitted)} re-rankers | " + " | ".join(
            f"{name}: reranked " + "/".join(f"{scores['reranked'][m]:.4f}" for m in METRICS)
            for name, scores in bagged.items()), flush=True)
    results["load_average_after"] = os.getloadavg()
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
