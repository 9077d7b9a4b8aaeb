"""Which compressed codes rank the exact top 10 within their re-scored candidates, at the 10M benchmark's density?

At a tenth of the 10M benchmark's cost: 1M clustered vectors (``index.synthetic``) in 316 clusters, ~3,160
vectors per cluster as in the 10M run's 3,162 clusters. For each FAISS index description it prints the build
time and recall@10 after re-scoring ``factor`` x 10 candidates with the exact vectors, for every nprobe and
factor (docs/benchmarks.md, "10M listings"; index/refine.py's REFINE_FACTORS).

    .venv/bin/python -m bench.bench_codec_density
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth

from index.synthetic import clustered_vectors, perturbed_queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=316)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--indexes", nargs="+", default=["IVF512,PQ64x8", "IVF512,SQ8"],
                        help="FAISS index_factory descriptions")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10, 20, 50, 100])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    d = 256
    vectors = clustered_vectors(args.n, d, n_clusters=args.clusters, seed=0)
    queries = perturbed_queries(vectors, args.queries, seed=2)
    _, truth = knn_ground_truth(queries, iter([vectors]), 10)
    sample = vectors[np.random.default_rng(0).choice(args.n, 40_000, replace=False)]
    for description in args.indexes:
        started = time.time()
        index = faiss.index_factory(d, description, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.add(vectors)
        print(description, "build", round(time.time() - started, 1), flush=True)
        for nprobe in args.nprobe:
            index.nprobe = nprobe
            for factor in args.factors:
                _, candidates = index.search(queries, 10 * factor)
                found = []
                for query, row in zip(queries, candidates):
                    row = row[row >= 0]
                    found.append(row[np.argsort(-(vectors[row] @ query))[:10]])
                recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
                print(f"  nprobe {nprobe} refine {factor}x recall@10 {recall:.3f}", flush=True)


if __name__ == "__main__":
    main()
