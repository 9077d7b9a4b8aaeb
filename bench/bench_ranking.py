"""Re-ranking latency: features plus LightGBM scoring for one query's candidates.

    .venv/bin/python -m bench.bench_ranking                        # synthetic 100k-listing table, worst-case model
    .venv/bin/python -m bench.bench_ranking --workspace workspace/dev   # real candidates + the trained re-ranker

Synthetic mode trains a re-ranker with every tree kept (no early stopping: the most expensive model
the defaults allow) on random features, and times it on candidate sets of the requested sizes drawn
from a 100k-listing table. Workspace mode takes real candidates of the known-item text and image
queries on the model's test products (the same Searcher.candidates the service runs) and the
workspace's re-ranker, and also times the per-candidate columns that only the searcher can compute
(``Searcher.match_signals``: photo similarity, query-term coverage), which the service computes while
assembling the candidates. Prints p50/p90/p99 in milliseconds per part, per candidate count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from ranking.features import FEATURE_NAMES, build_features
from ranking.reranker import Reranker
from ranking.types import Candidates, ListingTable, QueryContext

WORDS = ("red blue green black white bike chair table lamp sofa phone laptop drill dress shoes kids garden "
         "oak steel vintage new used large small electric wooden leather").split()


def synthetic_table(n: int, n_classes: int = 13, seed: int = 0) -> ListingTable:
    rng = np.random.default_rng(seed)
    top = rng.integers(0, n_classes, n)
    price = rng.lognormal(3.5, 1.0, n).astype(np.float32)
    price[rng.random(n) < 0.05] = np.nan
    created = rng.uniform(18000, 19000, n).astype(np.float32)
    created[rng.random(n) < 0.02] = np.nan
    titles = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n)]
    return ListingTable(
        ids=[f"listing-{i}" for i in range(n)],
        titles=titles,
        categories=[f"C{t} / S{rng.integers(0, 8)}" for t in top],
        top_category_index=top.astype(np.int64),
        price=price,
        category_median_price=np.full(n, 33.0, np.float32),
        towns=["Leeds"] * n,
        counties=["West Yorkshire"] * n,
        photo_count=rng.integers(0, 4, n).astype(np.int32),
        description_length=rng.integers(0, 2000, n).astype(np.int32),
        created_days=created,
    )


def synthetic_candidates(table: ListingTable, n: int, rng: np.random.Generator) -> tuple[QueryContext, Candidates]:
    rows = rng.choice(len(table), size=n, replace=False).astype(np.int64)
    vector_rank = np.where(rng.random(n) < 0.7, np.arange(1, n + 1), np.nan).astype(np.float32)
    bm25_rank = np.where(rng.random(n) < 0.6, rng.permutation(n) + 1, np.nan).astype(np.float32)
    rrf = (np.nan_to_num(1 / (60 + vector_rank)) + np.nan_to_num(1 / (60 + bm25_rank))).astype(np.float32)
    candidates = Candidates(
        listing_ids=[table.ids[r] for r in rows],
        rows=rows,
        vector_score=np.where(np.isfinite(vector_rank), rng.uniform(0.2, 0.9, n), np.nan).astype(np.float32),
        vector_rank=vector_rank,
        bm25_score=np.where(np.isfinite(bm25_rank), rng.uniform(1, 20, n), np.nan).astype(np.float32),
        bm25_rank=bm25_rank,
        rrf_score=rrf,
        text_sim=rng.uniform(0, 0.9, n).astype(np.float32),
        image_sim=rng.uniform(0, 0.9, n).astype(np.float32),
        photo_sim=rng.uniform(0.2, 1.0, n).astype(np.float32),
        term_coverage=rng.choice([0.0, 1 / 3, 2 / 3, 1.0], n).astype(np.float32),
        idf_coverage=rng.uniform(0, 1, n).astype(np.float32),
        term_bm25_score=rng.uniform(0, 20, n).astype(np.float32),
    )
    probs = rng.dirichlet(np.ones(13)).astype(np.float32)
    query = QueryContext(text=" ".join(rng.choice(WORDS, 3)), has_image=False,
                         embedding=np.zeros(256, np.float32), category_probs=probs)
    return query, candidates


def worst_case_ranker(trees: int, seed: int = 0) -> Reranker:
    rng = np.random.default_rng(seed)
    n_queries, per_query = 300, 50
    X = rng.normal(size=(n_queries * per_query, len(FEATURE_NAMES))).astype(np.float32)
    y = np.digitize(X[:, 0] + 0.5 * X[:, 1] + rng.normal(size=len(X)), [0.5, 1.5, 2.5])
    return Reranker(n_estimators=trees, log_every=0, min_child_samples=5).fit(X, y, [per_query] * n_queries)


def percentiles(values_ms: list[float]) -> dict[str, float]:
    values = np.asarray(values_ms)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean())}


def time_cases(cases, listings: ListingTable, ranker: Reranker, repeats: int,
               searcher=None) -> dict[str, dict[str, float]]:
    """Wall-clock and CPU (this thread) milliseconds; on a shared machine the CPU time is the cost itself.

    With a ``searcher``, ``signals`` times ``searcher.match_signals`` for the candidates (part of the
    candidate assembly in the service) and ``total`` includes it.
    """
    signal_ms, feature_ms, model_ms, total_ms, cpu_ms = [], [], [], [], []
    for _ in range(repeats):
        for query, candidates in cases:
            cpu_start = time.thread_time()
            start = time.perf_counter()
            if searcher is not None:
                searcher.match_signals(query, candidates.rows)
            signals_done = time.perf_counter()
            X, _ = build_features(query, candidates, listings)
            middle = time.perf_counter()
            ranker.predict(X)
            end = time.perf_counter()
            cpu_ms.append((time.thread_time() - cpu_start) * 1e3)
            signal_ms.append((signals_done - start) * 1e3)
            feature_ms.append((middle - signals_done) * 1e3)
            model_ms.append((end - middle) * 1e3)
            total_ms.append((end - start) * 1e3)
    timings = {"features": percentiles(feature_ms), "model": percentiles(model_ms), "total": percentiles(total_ms),
               "total_cpu": percentiles(cpu_ms)}
    if searcher is not None:
        timings["signals"] = percentiles(signal_ms)
    return timings


def workspace_cases(workspace_root: str, n_queries: int, depth: int):
    from core.workspace import Workspace
    from evaluation.protocol import ProtocolBuilder

    workspace = Workspace.at(workspace_root)
    ranker = Reranker.load(workspace.ranker_dir)
    builder = ProtocolBuilder(workspace, progress=False)
    try:
        protocols = {"text": builder.text_protocol(("test",), max_queries=n_queries),
                     "image": builder.image_protocol(("test",), max_queries=n_queries)}
    finally:
        builder.close()
    out = {}
    for name, protocol in protocols.items():
        searcher = protocol.searcher
        cases = []
        for query in protocol.queries.values():
            image = protocol.load_image(query) if name == "image" else None
            context = searcher.query_context(text=query.text, image=image)
            cases.append((context, searcher.candidates(context, depth=depth)))
        out[name] = (cases, searcher)
    return out, ranker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", help="Workspace with a trained model and re-ranker (default: synthetic).")
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200],
                        help="Candidate counts to time (synthetic mode).")
    parser.add_argument("--listings", type=int, default=100_000, help="Synthetic listing table size.")
    parser.add_argument("--trees", type=int, default=400, help="Trees of the synthetic worst-case model.")
    parser.add_argument("--queries", type=int, default=50, help="Distinct queries (candidate sets) to cycle through.")
    parser.add_argument("--depth", type=int, default=50,
                        help="Workspace mode: per-retriever depth (the union of vector and BM25 top-depth).")
    parser.add_argument("--repeats", type=int, default=20, help="Passes over the queries.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (workspace mode query encoding).")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results = {"load_average_before": os.getloadavg(), "cpu_count": os.cpu_count()}
    if args.workspace:
        protocols, ranker = workspace_cases(args.workspace, args.queries, args.depth)
        for name, (cases, searcher) in protocols.items():
            sizes = [len(c) for _, c in cases]
            # warm-up, then time
            time_cases(cases[:5], searcher.listings, ranker, 1, searcher)
            results[f"workspace_{name}"] = {
                "queries": len(cases), "candidates_median": statistics.median(sizes),
                "trees": ranker.best_iteration_,
                **time_cases(cases, searcher.listings, ranker, args.repeats, searcher),
            }
    else:
        listings = synthetic_table(args.listings)
        ranker = worst_case_ranker(args.trees)
        rng = np.random.default_rng(1)
        for n in args.candidates:
            cases = [synthetic_candidates(listings, n, rng) for _ in range(args.queries)]
            time_cases(cases[:5], listings, ranker, 1)
            results[f"synthetic_{n}"] = {"trees": ranker.best_iteration_, **time_cases(cases, listings, ranker,
                                                                                        args.repeats)}
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    for name, value in results.items():
        if isinstance(value, dict) and "total" in value:
            signals = f"signals p50 {value['signals']['p50']:.2f} ms, " if "signals" in value else ""
            print(f"{name}: {signals}features p50 {value['features']['p50']:.2f} ms, "
                  f"model p50 {value['model']['p50']:.2f} ms, "
                  f"total p50 {value['total']['p50']:.2f} ms / p99 {value['total']['p99']:.2f} ms, "
                  f"CPU p50 {value['total_cpu']['p50']:.2f} ms ({value['trees']} trees)")


if __name__ == "__main__":
    main()
