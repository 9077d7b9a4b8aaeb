"""Service benchmark: 100k listings served by uvicorn on this machine, driven over HTTP by httpx.

    .venv/bin/python -m bench.bench_service                     # build (once) + serve + measure
    .venv/bin/python -m bench.bench_service --base workspace/demo --listings 100000 --rebuild

What it does
1. Builds a 100k-listing workspace from a built base workspace (default `workspace/demo`, made by `make
   demo`) with `bench.synthetic_catalog`: replicas of the base listings with perturbed texts and
   embeddings, indexed with the project's own index builds; reused while base model, size, seed and
   noise are unchanged.
2. Query-runtime check (``--no-runtime-check`` skips it, `bench.query_runtime`): loads the pipeline
   in-process and runs the 400 benchmark queries with the text tower in torch and then in ONNX Runtime
   (what the service uses; the catalogue vectors come from torch): cosine of the query vectors and
   agreement of the top-20 results. Then starts `marketsearch serve` (uvicorn, one process) on 127.0.0.1
   and waits for /health (`bench.http_load.serving`).
3. Measures with `bench.http_load`, with a bounded number of requests each: text search at 1 client
   (p50/p99), text search at 8 concurrent clients (throughput, latency, errors), photo search at 1
   client, and reports the per-stage timings the service returns (timings_ms) so the dominant stage of
   each latency is named. The query sets (`text_queries`, `photo_uploads`) are made here.
4. Prints a Markdown table (for docs/benchmarks.md "Service") and writes all numbers as JSON.

``--compare-workers 1 2`` measures instead only the concurrent text load (and the resident memory of each
server process after it), for each number of server processes in turn, ``--rounds`` times alternating
(1, 2, 1, 2, ...), so that each configuration sees the same moments of a shared machine's load.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import random
import subprocess
from pathlib import Path

from PIL import Image as PILImage

from bench.http_load import (
    dominant,
    free_port,
    resident_memory_bytes,
    run_concurrent_text,
    run_image,
    run_text,
    serving,
    summarize,
)
from bench.query_runtime import text_runtime_agreement
from bench.synthetic_catalog import add_build_arguments, build_from_args
from catalog.store import Catalog
from core.workspace import Workspace

logger = logging.getLogger("bench.bench_service")

TARGETS = {"text_p50_ms": 30.0, "text_p99_ms": 100.0, "image_p50_ms": 150.0}


# ------------------------------------------------------------------------------------------- queries


def text_queries(workspace: Path, n: int, seed: int) -> list[dict]:
    """Queries like buyers type: 2-3 title words, a full title, a brand or item noun; a quarter filtered."""
    catalog = Catalog(Workspace.at(workspace).db_url)
    rng = random.Random(seed)
    ids = catalog.listing_ids()
    listings = catalog.get_listings(rng.sample(ids, min(n, len(ids))))
    categories = catalog.categories()
    catalog.close()
    bodies = []
    for listing in listings:
        words = listing.title.split()
        kind = rng.random()
        if kind < 0.5:
            query = " ".join(words[: rng.randint(2, 3)])
        elif kind < 0.75:
            query = " ".join(words[:-1]) if len(words) > 2 else listing.title  # without the replica's code
        else:
            query = rng.choice(words)
        body: dict = {"query": query or listing.title}
        if rng.random() < 0.25:
            if rng.random() < 0.5:
                body["filters"] = {"category": rng.choice(categories)}
            else:
                body["filters"] = {"max_price": float(rng.choice([20, 50, 100, 500]))}
        bodies.append(body)
    return bodies


def photo_uploads(workspace: Path, n: int, seed: int, size: tuple[int, int]) -> list[bytes]:
    """Catalogue photos re-encoded at ``size`` (a phone photo after the browser shrank it)."""
    rng = random.Random(seed)
    files = sorted(Workspace.at(workspace).images_dir.glob("*.jpg"))
    uploads = []
    for path in rng.sample(files, min(n, len(files))):
        with PILImage.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").resize(size).save(buffer, format="JPEG", quality=85)
            uploads.append(buffer.getvalue())
    return uploads


# ---------------------------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    text, conc, image, mixed = results["text_1"], results["text_8"], results["image_1"], results.get("image_text_1")
    plain, filtered = results.get("text_1_unfiltered"), results.get("text_1_filtered")
    rows = [
        "| measurement | requests | errors | p50 ms | p99 ms | throughput | target | top stages (p50 ms) |",
        "|---|---|---|---|---|---|---|---|",
        f"| text, 1 client | {text['requests']} | {text['errors']} | {text['p50_ms']:.1f} | {text['p99_ms']:.1f} | "
        f"{1000 / text['mean_ms']:.0f} req/s | p50 <= 30, p99 <= 100 | {dominant(text)} |",
    ]
    for label, part in (("unfiltered", plain), ("with a filter", filtered)):
        if part and part["requests"]:
            rows.append(
                f"| text, 1 client, {label} | {part['requests']} | {part['errors']} | {part['p50_ms']:.1f} | "
                f"{part['p99_ms']:.1f} | - | - | {dominant(part)} |"
            )
    rows += [
        f"| text, 8 clients | {conc['requests']} | {conc['errors']} | {conc['p50_ms']:.1f} | {conc['p99_ms']:.1f} | "
        f"{conc['throughput_rps']:.0f} req/s | zero errors | {dominant(conc)} |",
        f"| photo, 1 client | {image['requests']} | {image['errors']} | {image['p50_ms']:.1f} | "
        f"{image['p99_ms']:.1f} | {1000 / image['mean_ms']:.0f} req/s | p50 <= 150 | {dominant(image)} |",
    ]
    if mixed:
        rows.append(
            f"| photo + words, 1 client | {mixed['requests']} | {mixed['errors']} | {mixed['p50_ms']:.1f} | "
            f"{mixed['p99_ms']:.1f} | {1000 / mixed['mean_ms']:.0f} req/s | - | {dominant(mixed)} |"
        )
    return "\n".join(rows)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def compare_workers(args: argparse.Namespace, bodies: list[dict], build: dict) -> dict:
    """Concurrent text throughput with each number of server processes, alternating, ``args.rounds`` times."""
    results: dict = {"cpus": os.cpu_count(), "build": build, "clients": args.clients,
                     "requests_per_client": args.requests_per_client, "runs": []}
    for round_ in range(args.rounds):
        for workers in args.compare_workers:
            load_before = _uptime()
            with serving(args.workspace, args.port or free_port(), workers) as (url, health, pid):
                logger.info("round %d, %d server process(es): warming up", round_ + 1, workers)
                for _ in range(workers):  # each worker takes a share of the connections
                    run_concurrent_text(url, bodies, args.clients, 5)
                samples, wall = run_concurrent_text(url, bodies, args.clients, args.requests_per_client)
                memory = resident_memory_bytes(pid)
                live = health.get("live") or {}
            run = {"round": round_ + 1, "server_workers": workers, **summarize(samples),
                   "throughput_rps": len(samples) / wall, "wall_s": wall,
                   "rss_mb": {str(p): round(b / 2**20) for p, b in memory.items()},
                   "live_lag": live.get("lag"), "load_before": load_before, "load_after": _uptime()}
            results["runs"].append(run)
            logger.info("%d server process(es): %.1f req/s, p50 %.1f ms, RSS %s MB", workers,
                        run["throughput_rps"], run["p50_ms"], run["rss_mb"])
    rows = ["| round | server processes | requests | errors | throughput | p50 ms | p99 ms | RSS per process MB |",
            "|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        rows.append(f"| {run['round']} | {run['server_workers']} | {run['requests']} | {run['errors']} | "
                    f"{run['throughput_rps']:.0f} req/s | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | "
                    f"{' + '.join(str(mb) for mb in run['rss_mb'].values())} |")
    results["table"] = "\n".join(rows)
    out = args.json_out or (args.workspace / "bench-workers.json")
    out.write_text(json.dumps(results, indent=2, default=str))
    print(results["table"])
    for run in results["runs"]:
        print(f"round {run['round']}, {run['server_workers']} process(es): before {run['load_before']}; "
              f"after {run['load_after']}")
    print(f"all numbers: {out}")
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_build_arguments(parser)
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--text-requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=100)
    parser.add_argument("--image-requests", type=int, default=100)
    parser.add_argument("--photo-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--compare-workers", type=int, nargs="+", default=None, metavar="N",
        help="only the concurrent text load, with each of these numbers of server processes, alternating",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --compare-workers")
    parser.add_argument("--json-out", type=Path, default=None, help="default: <workspace>/bench-results.json")
    parser.add_argument(
        "--no-runtime-check",
        action="store_true",
        help="skip comparing torch and ONNX Runtime query vectors and top-20 results before serving",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    build = build_from_args(args)
    if args.build_only:
        return build

    bodies = text_queries(args.workspace, 400, args.seed)
    if args.compare_workers:
        return compare_workers(args, bodies, build)
    uploads = photo_uploads(args.workspace, 50, args.seed, tuple(args.photo_size))
    results: dict = {"load_before": _uptime(), "cpus": os.cpu_count(), "build": build}
    results["server_workers"] = args.server_workers
    if not args.no_runtime_check:
        logger.info("query runtime check: torch vs ONNX Runtime on %d queries", len(bodies))
        results["text_runtime_agreement"] = text_runtime_agreement(args.workspace, bodies)
        gc.collect()  # the check's copy of the pipeline is gone before the server loads its own
        results["load_before"] = _uptime()
    with serving(args.workspace, args.port or free_port(), args.server_workers) as (url, health, _pid):
        results["health"] = {
            "listings": health.get("listings"),
            "index": health.get("index"),
            "ranker": health.get("ranker", {}).get("loaded"),
            "ranker_error": health.get("ranker", {}).get("error"),
            "text_runtime": health.get("model", {}).get("text_runtime"),
            "text_runtime_error": health.get("model", {}).get("text_runtime_error"),
        }
        logger.info("warming up")
        run_text(url, bodies, 30)
        run_image(url, uploads, 5)

        logger.info("text, 1 client: %d requests", args.text_requests)
        samples = run_text(url, bodies, args.text_requests)
        results["text_1"] = summarize(samples)
        results["text_1_unfiltered"] = summarize([s for s in samples if not s.filtered])
        results["text_1_filtered"] = summarize([s for s in samples if s.filtered])
        logger.info("text, %d clients: %d requests each", args.clients, args.requests_per_client)
        samples, wall = run_concurrent_text(url, bodies, args.clients, args.requests_per_client)
        results["text_8"] = {
            **summarize(samples),
            "throughput_rps": len(samples) / wall,
            "wall_s": wall,
            "clients": args.clients,
        }
        logger.info("photo, 1 client: %d requests", args.image_requests)
        results["image_1"] = summarize(run_image(url, uploads, args.image_requests))
        results["image_text_1"] = summarize(run_image(url, uploads, max(args.image_requests // 2, 1), "in red"))
    results["load_after"] = _uptime()
    results["targets"] = TARGETS
    results["table"] = markdown(results)

    out = args.json_out or (args.workspace / "bench-results.json")
    out.write_text(json.dumps(results, indent=2, default=str))
    print(results["table"])
    print(f"\nload before: {results['load_before']}\nload after:  {results['load_after']}")
    print(
        f"index: {json.dumps({k: results['health']['index'].get(k) for k in ('count', 'nlist', 'nprobe')})}, "
        f"re-ranker: {results['health']['ranker']}"
    )
    print(f"query encoding: {results['health']['text_runtime']}")
    if "text_runtime_agreement" in results:
        print(f"torch vs ONNX Runtime queries: {json.dumps(results['text_runtime_agreement'])}")
    print(f"all numbers: {out}")
    return results


if __name__ == "__main__":
    main()
