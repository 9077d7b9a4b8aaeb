"""Which corpora the re-ranker's training queries should search, chosen by cross-validation on the training
queries alone (the test products are never read).

    .venv/bin/python -m bench.bench_ranking_views --workspace workspace/dev --folds 5 --repeats 2
    .venv/bin/python -m bench.bench_ranking_views --workspace workspace/dev --corpora "train,val + val" \
        --params '[{}, {"num_leaves": 15}, {"min_child_samples": 100}]'

``train-ranker``'s queries come from the model's val products. They can search the train + val products (as a
served query searches a catalogue whose listings the towers partly trained on) or the val products alone (as
the test protocol's queries search products the towers never saw), or both: each query then gives two groups of
candidates. Each variant is fitted on K-1 folds of the queries (early stopping on a random fifth of them, as
``train-ranker`` does) and scored on the held-out fold searching each corpus: graded NDCG@10 and MRR@10 of the
wanted listing alone, per query type, as ``train-ranker``'s gate reads them. ``--params`` fits each corpus variant
once per LightGBM parameter set (on top of ``train-ranker``'s). Prints the mean over folds and repeats, and the
paired difference of each variant against the first.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from scipy.stats import ttest_rel

from bench.bench_ranking_gains import open_protocols, ranking_parser
from evaluation.judgments import KNOWN_ITEM_GRADES
from evaluation.train import (
    KNOWN_ITEM_RERANKER,
    TrainingData,
    TrainRankerConfig,
    corpus_views,
    join_views,
    split_queries,
    validation_gate,
)
from ranking.reranker import Reranker

# variant -> the corpora (views of ``corpus_views`` under train-ranker's default config) it trains on
VARIANTS = {"train,val": ("train+val",), "val": ("val",), "train,val + val": ("train+val", "val")}


def fold_scores(ranker: Reranker, held_out: TrainingData) -> dict[str, float]:
    gate = validation_gate(ranker, held_out, wanted_grade=KNOWN_ITEM_GRADES["target"])
    scores = {}
    for kind, t in gate["types"].items():
        scores[f"{kind} NDCG@10"] = t["reranked_score"]
        if "wanted" in t:
            scores[f"{kind} MRR@10"] = t["wanted"]["reranked_score"]
    return scores


def main() -> None:
    parser = ranking_parser(__doc__)
    parser.add_argument("--folds", type=int, default=5, help="Cross-validation folds over the training queries.")
    parser.add_argument("--repeats", type=int, default=2, help="Fold assignments (seeds 0, 1, ...).")
    parser.add_argument("--corpora", default=";".join(VARIANTS),
                        help=f"Semicolon-separated corpus variants to fit, of: {'; '.join(VARIANTS)} (default: all).")
    parser.add_argument("--params", default="[{}]",
                        help="JSON list of LightGBM parameter sets (Reranker keyword arguments); each corpus variant "
                             "is fitted once per set.")
    args = parser.parse_args()
    started = time.perf_counter()
    config = TrainRankerConfig()
    param_sets = json.loads(args.params)
    variants = {}
    for name in (part.strip() for part in args.corpora.split(";")):
        if name not in VARIANTS:
            parser.error(f"unknown corpus variant {name!r}; choose from {'; '.join(VARIANTS)}")
        for params in param_sets:
            variants[f"{name} {json.dumps(params)}" if params else name] = (VARIANTS[name], params)
    builder = open_protocols(args)
    try:
        views = corpus_views(builder, config.train_splits, config, "train")
    finally:
        builder.close()
    corpora = list(views)
    prepared = time.perf_counter() - started
    query_ids = sorted(set().union(*(view.query_ids for view in views.values())))
    print(f"{len(query_ids)} training queries, views: "
          + ", ".join(f"{c} {v.queries} queries / {len(v.X)} rows" for c, v in views.items()), flush=True)

    # scores[variant][held-out corpus][metric] -> one value per (repeat, fold)
    scores: dict = {v: {c: {} for c in corpora} for v in variants}
    trees: dict = {v: [] for v in variants}
    for repeat in range(args.repeats):
        order = np.random.default_rng(repeat).permutation(query_ids)
        for fold in range(args.folds):
            held_out = set(order[fold::args.folds].tolist())
            fit_ids, stop_ids = split_queries(sorted(set(query_ids) - held_out), config.valid_fraction, repeat)
            for variant, (trained_on, params) in variants.items():
                fit = join_views({c: views[c] for c in trained_on}, fit_ids)
                stop = join_views({c: views[c] for c in trained_on}, stop_ids)
                ranker = Reranker(**{**KNOWN_ITEM_RERANKER, "n_jobs": 1, "log_every": 0, **params},
                                  random_state=repeat).fit(
                    fit.X, fit.y, fit.group, stop.X, stop.y, stop.group, feature_names=fit.feature_names)
                for corpus in corpora:
                    for metric, value in fold_scores(ranker, views[corpus].select(held_out)).items():
                        scores[variant][corpus].setdefault(metric, []).append(value)
                trees[variant].append(ranker.best_iteration_)
                print(f"repeat {repeat} fold {fold} {variant}: {ranker.best_iteration_} trees", flush=True)

    base = next(iter(variants))
    print(f"\nheld-out queries, mean over {args.repeats} x {args.folds} folds (paired t-test against {base}):")
    print("  trees kept: " + " | ".join(f"{v} {np.mean(t):.0f} ({min(t)}-{max(t)})" for v, t in trees.items()))
    for corpus in corpora:
        print(f"  searching {corpus}:")
        for metric in scores[base][corpus]:
            cells = []
            for variant in variants:
                values = np.asarray(scores[variant][corpus][metric])
                cell = f"{variant} {values.mean():.4f}"
                if variant != base:
                    reference = np.asarray(scores[base][corpus][metric])
                    cell += f" ({values.mean() - reference.mean():+.4f}, p = {ttest_rel(values, reference).pvalue:.2g})"
                cells.append(cell)
            print(f"    {metric}: " + " | ".join(cells))
    print(json.dumps({"prepared_seconds": round(prepared, 1), "seconds": round(time.perf_counter() - started, 1),
                      "load_average_after": os.getloadavg(), "folds": args.folds, "repeats": args.repeats,
                      "trees": trees, "scores": scores}))


if __name__ == "__main__":
    main()
