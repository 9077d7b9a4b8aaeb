"""Vector index benchmark: build time, memory, recall@10 vs exact search and queries/s at the calibrated nprobe.

Synthetic clustered 256-d L2-normalised vectors (``index.synthetic``); queries are database points moved by
fresh noise (never the points themselves), with separate query sets for calibration and evaluation.
Each size runs in its own child process so peak RSS is per size.

    .venv/bin/python -m bench.bench_index --sizes 10000 100000 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import faiss
import numpy as np

from index import ivf
from index.synthetic import clustered_vectors, perturbed_queries
from index.vector_index import VectorIndex


def _qps(run, n_queries: int, min_seconds: float = 1.0) -> float:
    """Queries per second of ``run()`` (which answers ``n_queries``), repeated for at least min_seconds."""
    done, started = 0, time.perf_counter()
    while True:
        run()
        done += n_queries
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def bench_one(n: int, dimension: int, n_queries: int, k: int, target_recall: float, codec: str, seed: int) -> dict:
    vectors = clustered_vectors(n, dimension, seed=seed)
    listing_ids = [f"L{i}" for i in range(n)]
    calibration = perturbed_queries(vectors, n_queries, seed=seed + 1)
    queries = perturbed_queries(vectors, n_queries, seed=seed + 2)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    started = time.perf_counter()
    vi = VectorIndex.build(
        vectors, listing_ids, "bench", codec=None if codec == "flat" else codec, calibration_queries=calibration,
        target_recall=target_recall,
    )
    build_total = time.perf_counter() - started
    index_bytes = len(faiss.serialize_index(vi.index))

    faiss_ids = np.arange(n, dtype=np.int64)
    exact_index = faiss.IndexIDMap(faiss.IndexFlatIP(dimension))
    exact_index.add_with_ids(vectors, faiss_ids)
    _, exact_ids = exact_index.search(queries, k)
    _, approximate_ids = ivf.search(vi.index, queries, k, vi.nprobe or None)
    recall = ivf.recall_at_k(approximate_ids, exact_ids)
    # Through the VectorIndex API too (listing-id strings), to show the id map's overhead.
    _, found = vi.search(queries, k)
    recall_api = float(np.mean([len(set(row) & {f"L{j}" for j in ref}) / k for row, ref in zip(found, exact_ids)]))

    singles = queries[:200]
    batch_ivf = _qps(lambda: ivf.search(vi.index, queries, k, vi.nprobe or None), len(queries))
    batch_exact = _qps(lambda: exact_index.search(queries, k), len(queries), min_seconds=2.0)
    # One query per call, the way the service searches: one OpenMP thread per search (FAISS's
    # 2-thread barriers cost more than a single query's work, badly so on a loaded machine).
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    single_ivf = _qps(lambda: [vi.search(q[None], k) for q in singles], len(singles))
    single_exact = _qps(lambda: [exact_index.search(q[None], k) for q in singles], len(singles), min_seconds=2.0)
    allowed = set(np.random.default_rng(seed).choice(listing_ids, max(1, n // 100), replace=False))
    filtered = _qps(lambda: [vi.search(q[None], k, allowed_ids=allowed) for q in singles[:50]], 50)
    faiss.omp_set_num_threads(threads)
    return {
        "n": n,
        "dimension": dimension,
        "index_type": vi.manifest["index_type"],
        "nlist": vi.nlist,
        "nprobe": vi.nprobe,
        "build_seconds": round(vi.info["build_seconds"], 2),
        "build_and_calibrate_seconds": round(build_total, 2),
        "calibration_recall": vi.manifest["calibration"]["recall"],
        "recall_at_10": round(recall, 4),
        "recall_at_10_api": round(recall_api, 4),
        "index_mb": round(index_bytes / 2**20, 1),
        "vectors_mb": round(vectors.nbytes / 2**20, 1),
        "rss_after_data_mb": round(rss_data),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "qps_batch_ivf": round(batch_ivf),
        "qps_batch_exact": round(batch_exact),
        "speedup_batch": round(batch_ivf / batch_exact, 1),
        "qps_single_ivf_api": round(single_ivf),
        "qps_single_exact": round(single_exact),
        "speedup_single": round(single_ivf / single_exact, 1),
        "qps_single_filtered_1pct": round(filtered),
    }


COLUMNS = [
    ("n", "vectors"), ("index_type", "index"), ("nprobe", "nprobe"), ("build_seconds", "build s"),
    ("build_and_calibrate_seconds", "build+calib s"), ("recall_at_10", "recall@10"), ("index_mb", "index MB"),
    ("peak_rss_mb", "peak RSS MB"), ("qps_batch_ivf", "QPS batch IVF"), ("qps_batch_exact", "QPS batch exact"),
    ("speedup_batch", "x"), ("qps_single_ivf_api", "QPS 1-query IVF"), ("qps_single_exact", "QPS 1-query exact"),
    ("speedup_single", "x"), ("qps_single_filtered_1pct", "QPS 1-query 1% filter"),
]  # fmt: skip


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dimension", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000, help="queries per set (calibration, evaluation)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads (build, batch search)")
    parser.add_argument("--codec", choices=("flat", "sq8", "pq"), default="flat",
                        help="what the index stores: float32 vectors, or SQ8/PQ codes re-scored exactly")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--in-process", action="store_true", help="run every size in this process")
    args = parser.parse_args(argv)

    rows = []
    for n in args.sizes:
        if args.in_process or len(args.sizes) == 1:
            faiss.omp_set_num_threads(args.threads)
            row = bench_one(n, args.dimension, args.queries, args.k, args.target_recall, args.codec, args.seed)
        else:
            command = [sys.executable, "-m", "bench.bench_index", "--sizes", str(n), "--json", "/dev/stdout"]
            command += ["--dimension", str(args.dimension), "--queries", str(args.queries), "--k", str(args.k)]
            command += ["--target-recall", str(args.target_recall), "--threads", str(args.threads)]
            command += ["--seed", str(args.seed), "--codec", args.codec]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(output.strip().splitlines()[-1])[0]
        rows.append(row)
        if args.json != "/dev/stdout":
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json == "/dev/stdout":
        print(json.dumps(rows))
        return
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
