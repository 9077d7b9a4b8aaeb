"""Exact search by the photo vector alone on the known-item image protocol, against the re-ranked pipeline.

    .venv/bin/python -m bench.bench_photo_vector_search --workspace workspace/dev --splits test \
        --run workspace/dev/eval/<timestamp>/image.run.reranked.trec

The protocol of `marketsearch evaluate` (``ProtocolBuilder.image_protocol``: a listing's first photo as the query,
that listing represented by its other photos; default the test products): each query photo goes through the served
query path (``Searcher.query_context``) and its photo vector is compared with every corpus listing's
(``photo_sim`` over the whole corpus instead of the candidates). Prints the wanted listing's MRR@10 and hit rate@1
by that ranking alone; with ``--run`` (a TREC run file of `evaluate`) also how it compares with that run per query
and how often the wanted listing is missing from the run (not a candidate).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def read_run(path: str) -> dict[str, dict[str, int]]:
    ranks: dict[str, dict[str, int]] = defaultdict(dict)
    with open(path) as handle:
        for line in handle:
            query_id, _, listing_id, rank, *_ = line.split()
            ranks[query_id][listing_id] = int(rank)
    return ranks


def reciprocal_ranks(ranks: np.ndarray, depth: int = 10) -> np.ndarray:
    return np.where(ranks <= depth, 1.0 / ranks, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--splits", nargs="+", default=["test"], help="Products of the queries and the corpus.")
    parser.add_argument("--run", default=None, help="A TREC run file of the same protocol to compare with.")
    args = parser.parse_args()

    from core.workspace import Workspace
    from evaluation.protocol import ProtocolBuilder

    builder = ProtocolBuilder(Workspace.at(args.workspace), progress=False)
    try:
        protocol = builder.image_protocol(tuple(args.splits))
    finally:
        builder.close()
    searcher = protocol.searcher
    table = searcher.embeddings
    corpus = table.photo.astype(np.float32)
    query_ids = list(protocol.queries)
    ranks = np.empty(len(query_ids), np.int64)
    for i, query_id in enumerate(query_ids):
        query = protocol.queries[query_id]
        vector = searcher.query_context(image=protocol.load_image(query)).photo_vector
        scores = np.where(table.has_photo, corpus @ vector, -np.inf)
        wanted = scores[table.row_of[query.target_id]]
        ranks[i] = int((scores > wanted).sum()) + 1
    rr = reciprocal_ranks(ranks)
    print(f"{len(query_ids)} queries, corpus {len(table)} listings ({int(table.has_photo.sum())} with a photo)")
    print(f"photo vector exact search: MRR@10 {rr.mean():.4f}, hit rate@1 {np.mean(ranks == 1):.4f}")
    if args.run:
        run = read_run(args.run)
        targets = [protocol.queries[q].target_id for q in query_ids]
        run_ranks = np.array([run[q].get(t, 10**9) for q, t in zip(query_ids, targets)])
        run_rr = reciprocal_ranks(run_ranks)
        candidate = run_ranks < 10**9
        print(f"run: MRR@10 {run_rr.mean():.4f}, hit rate@1 {np.mean(run_ranks == 1):.4f}; wanted listing in the run "
              f"{candidate.mean():.3f}")
        first = ranks == 1
        better = int((run_rr > rr).sum()), int((rr > run_rr).sum())
        print(f"per query: the run better {better[0]}, the photo vector better {better[1]}; "
              f"photo vector top 10 but not in the run {int(((ranks <= 10) & ~candidate).sum())}; photo vector first: "
              f"{int(first.sum())}, of them first in the run {int((first & (run_ranks == 1)).sum())}, not in it "
              f"{int((first & ~candidate).sum())}")
        print(f"the better of the two per query: MRR@10 {np.maximum(rr, run_rr).mean():.4f}")


if __name__ == "__main__":
    main()
