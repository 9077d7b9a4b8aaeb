"""The re-ranking stage of a search, alone: feature building and predict on real candidates of a built workspace.

    .venv/bin/python -m bench.bench_rerank                       # workspace/demo (`make demo`)
    .venv/bin/python -m bench.bench_rerank --workspace WS --queries 200 --repeats 5 --json /tmp/rerank.json

Text queries like buyers type (`bench.bench_service.text_queries`) are encoded and retrieved once; then, query by
query and repeat by repeat, `ranking.features.build_features` and the re-ranker's predict are timed on those
candidates (what `Searcher.search` times as its `rerank` stage), and the personal search ranker's predict on the
same features beside user columns of NaN when the workspace has one. Prints the p50 and p90 of each part in ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.bench_service import text_queries
from core.workspace import Workspace
from ranking.features import build_features
from ranking.reranker import Reranker
from search.pipeline import Searcher


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=Path("workspace/demo"))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    workspace = Workspace.at(args.workspace)
    searcher = Searcher.from_workspace(workspace)
    if searcher.ranker is None:
        sys.exit(f"no re-ranker in {workspace.ranker_dir}; run `marketsearch train-ranker --workspace WS`")
    personal = None
    if workspace.personal_ranker_dir.exists():
        personal = Reranker.load(workspace.personal_ranker_dir, expected_features=None)

    snap = searcher.snapshot
    queries = []
    for body in text_queries(args.workspace, args.queries, args.seed):
        query = searcher.query_context(body["query"])
        candidates = searcher.candidates(query, snapshot=snap)
        if len(candidates):
            queries.append((query, candidates))

    times: dict[str, list[float]] = {"features": [], "predict": [], "rerank": []}
    if personal is not None:
        times["personal_predict"] = []
    for _ in range(args.repeats):
        for query, candidates in queries:
            start = time.perf_counter()
            features, _ = build_features(query, candidates, snap.listings)
            times["features"].append(_ms(start))
            start = time.perf_counter()
            searcher.ranker.predict(features)
            times["predict"].append(_ms(start))
            times["rerank"].append(times["features"][-1] + times["predict"][-1])
            if personal is not None:
                user = np.full((len(features), len(personal.feature_names_) - features.shape[1]), np.nan,
                               dtype=np.float32)
                start = time.perf_counter()
                personal.predict(np.hstack([features, user]))
                times["personal_predict"].append(_ms(start))

    results = {
        "workspace": str(args.workspace),
        "queries": len(queries),
        "repeats": args.repeats,
        "candidates_p50": float(np.median([len(c) for _, c in queries])),
        "trees": searcher.ranker.best_iteration_,
        **{f"{part}_ms": {"p50": round(float(np.percentile(values, 50)), 3),
                          "p90": round(float(np.percentile(values, 90)), 3)}
           for part, values in times.items()},
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
