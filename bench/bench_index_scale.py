"""The index at 10M listings: IVF-SQ8 (or IVF-PQ) with exact re-scoring, built in one process and in Ray shards.

Synthetic clustered 256-d L2-normalised vectors (``index.synthetic``) are written to a memory-mapped ``.npy``
(10M x 256 float32 = 10 GB on disk, never all in RAM). Then:

1. the coarse quantiser (and the SQ8 ranges or PQ codebooks) are trained once on a sample;
2. the vectors are added to that trained index in one process (chunks read from the file), and again in
   ``--ray-workers`` Ray tasks each filling a shard from its slice of the file, merged with FAISS's
   ``merge_from`` (index/shards.py); both builds are timed in this run and their searches compared;
3. exact top-10 of ``--queries`` perturbed queries by brute force over the file (FAISS's
   ``knn_ground_truth``, chunked), nprobe calibrated for recall@10 >= 0.95 after the exact re-scoring
   (index/refine.py, exact vectors memory-mapped from the file), recall with and without re-scoring;
4. single-query latency on one thread, p50/p99.

    .venv/bin/python -m bench.bench_index_scale --n 10000000 --data /tmp/vectors-10m.npy [--codec sq8|pq]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth

from index import ivf
from index.refine import REFINE_FACTORS, ExactVectors, refined_search
from index.shards import deserialize, fill_shard_from_file, merge_shards, serialize, shard_slices
from index.synthetic import clustered_vectors, perturbed_queries


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_vectors(path: Path, n: int, dimension: int, seed: int) -> np.ndarray:
    if path.exists():
        vectors = np.load(path, mmap_mode="r")
        if vectors.shape == (n, dimension):
            return vectors
    started = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dimension))
    clustered_vectors(n, dimension, seed=seed, out=out)
    out.flush()
    print(f"wrote {n:,} x {dimension} vectors to {path} in {time.perf_counter() - started:.0f}s", flush=True)
    return np.load(path, mmap_mode="r")


def add_in_process(trained: faiss.Index, vectors: np.ndarray, chunk: int = 500_000) -> faiss.Index:
    index = deserialize(serialize(trained))
    for start in range(0, len(vectors), chunk):
        stop = min(len(vectors), start + chunk)
        index.add_with_ids(np.ascontiguousarray(vectors[start:stop]), np.arange(start, stop, dtype=np.int64))
    ivf.set_direct_map(index)
    return index


def add_on_ray(trained: faiss.Index, path: Path, n: int, workers: int) -> faiss.Index:
    import ray

    from core.cluster import connect_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    connect_ray("auto")
    fill = ray.remote(num_cpus=1)(fill_shard_from_file)
    trained_ref = ray.put(serialize(trained))
    refs = [fill.remote(trained_ref, str(path), s.start, s.stop) for s in shard_slices(n, workers)]
    return merge_shards(serialize(trained), ray.get(refs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dimension", type=int, default=256)
    parser.add_argument("--data", type=Path, default=Path("/tmp/marketsearch-vectors.npy"),
                        help="the memory-mapped vectors file (written once, reused)")
    parser.add_argument("--nlist", type=int, default=None, help="default: ivf.choose_nlist(n)")
    parser.add_argument("--codec", choices=ivf.CODECS, default="sq8",
                        help="sq8: d bytes per vector (the default from 2M listings); pq: d/4 bytes")
    parser.add_argument("--refine-factor", type=int, default=None,
                        help="candidates re-scored per result (default index.refine.REFINE_FACTORS[codec])")
    parser.add_argument("--train", type=int, default=None, help="training sample (default 39 x nlist)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ray-workers", type=int, default=2, help="0 skips the Ray build")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    n, d = args.n, args.dimension
    vectors = write_vectors(args.data, n, d, args.seed)
    nlist = args.nlist or ivf.choose_nlist(n)
    codes = ivf.codec_string(args.codec, d)
    refine_factor = args.refine_factor or REFINE_FACTORS[args.codec]
    rng = np.random.default_rng(args.seed)
    train_size = min(n, args.train or ivf.MIN_POINTS_PER_LIST * nlist)
    sample = np.ascontiguousarray(vectors[np.sort(rng.choice(n, train_size, replace=False))])
    result: dict = {"n": n, "dimension": d, "nlist": nlist, "codes": codes, "train_sample": train_size,
                    "threads": args.threads, "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}

    started = time.perf_counter()
    trained = ivf.train_index(sample, nlist, codec=args.codec, seed=args.seed)
    result["train_s"] = round(time.perf_counter() - started, 1)
    del sample
    print(f"trained IVF{nlist},{codes} on {train_size:,} vectors in {result['train_s']}s", flush=True)

    started = time.perf_counter()
    index = add_in_process(trained, vectors)
    result["add_single_process_s"] = round(time.perf_counter() - started, 1)
    print(f"added {n:,} vectors in one process in {result['add_single_process_s']}s", flush=True)
    result["index_bytes"] = len(serialize(index))
    result["exact_vectors_bytes_on_disk"] = int(args.data.stat().st_size)

    calibration = perturbed_queries(vectors, args.queries, seed=args.seed + 1)
    queries = perturbed_queries(vectors, args.queries, seed=args.seed + 2)
    started = time.perf_counter()

    def chunks():
        for start in range(0, n, 1_000_000):
            yield np.ascontiguousarray(vectors[start : start + 1_000_000])

    # brute force over 10M vectors takes ~15 min on 2 cores: kept beside the vectors file for the next run
    truth_file = args.data.with_name(f"{args.data.stem}.truth-q{args.queries}-s{args.seed}.npz")
    if truth_file.exists():
        truth = dict(np.load(truth_file))
    else:
        truth = {}
        for name, q in (("calibration", calibration), ("evaluation", queries)):
            _, truth[name] = knn_ground_truth(q, chunks(), 10)
        np.savez(truth_file, **truth)
    result["ground_truth_s"] = round(time.perf_counter() - started, 1)

    exact = ExactVectors(np.arange(n, dtype=np.int64), vectors)

    def refined(q, k, nprobe):
        return refined_search(lambda qq, wide: ivf.search(index, qq, wide, nprobe), q, k, exact,
                              factor=refine_factor, available=n)

    nprobe, calibration_recall = ivf.calibrate_nprobe(index, calibration, truth["calibration"], k=10,
                                                      target_recall=0.95, search_fn=refined)
    result.update(nprobe=nprobe, calibration_recall=round(calibration_recall, 4), refine_factor=refine_factor)
    _, found = refined(queries, 10, nprobe)
    result["recall_at_10_refined"] = round(ivf.recall_at_k(found, truth["evaluation"]), 4)
    _, codes_only = ivf.search(index, queries, 10, nprobe)
    result["recall_at_10_codes_only"] = round(ivf.recall_at_k(codes_only, truth["evaluation"]), 4)

    faiss.omp_set_num_threads(1)
    times = []
    for query in queries[: min(len(queries), 500)]:
        started = time.perf_counter()
        refined(query[None, :], 10, nprobe)
        times.append((time.perf_counter() - started) * 1000)
    result["single_query_ms_p50"] = round(float(np.percentile(times, 50)), 2)
    result["single_query_ms_p99"] = round(float(np.percentile(times, 99)), 2)
    faiss.omp_set_num_threads(args.threads)
    result["peak_rss_mb_single"] = round(_rss_mb())
    print(json.dumps(result), flush=True)

    if args.ray_workers:
        started = time.perf_counter()
        sharded = add_on_ray(trained, args.data, n, args.ray_workers)
        result["add_ray_s"] = round(time.perf_counter() - started, 1)
        result["ray_workers"] = args.ray_workers
        result["ray_over_single_time"] = round(result["add_ray_s"] / result["add_single_process_s"], 2)
        _, sharded_found = ivf.search(sharded, queries, 10, nprobe)
        result["ray_build_searches_identically"] = bool(np.array_equal(sharded_found, codes_only))
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
