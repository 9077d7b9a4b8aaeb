"""Service benchmark: 100k listings served by uvicorn on this machine, driven over HTTP by httpx.

    .venv/bin/python -m bench.bench_service                     # build (once) + serve + measure
    .venv/bin/python -m bench.bench_service --base workspace/demo --listings 100000 --rebuild

What it does
1. Builds a 100k-listing workspace from a built base workspace (model + catalogue + embeddings; default
   `workspace/demo`, made by `make demo`). Listing i is base listing ``i % n_base`` (copy 0 is the base
   listing itself); copies get a perturbed title/description (extra words drawn from the base vocabulary
   plus a model code, so BM25 sees a realistic long tail), a log-normal price jitter, a random base
   location and date jitter, and reuse the base photos' files under new image ids. Their text/image
   vectors are the base listing's vectors plus isotropic Gaussian noise (``--noise``, relative to the
   unit norm) re-normalised -- consistent with the trained model without encoding 100k listings. The
   vector index (nprobe calibrated on real encoded title queries) and BM25 are built with the project's
   own `VectorIndex.build` / `BM25Index.build`; a trained re-ranker in the base is copied. The built
   workspace is reused while base model, size, seed and noise are unchanged.
2. Query-runtime check (``--no-runtime-check`` skips it): loads the pipeline in-process and runs the 400
   benchmark queries with the text tower in torch and then in ONNX Runtime (what the service uses; the
   catalogue vectors come from torch): cosine of the query vectors and agreement of the top-20 results.
   Then starts `marketsearch serve` (uvicorn, one process) on 127.0.0.1 and waits for /health.
3. Measures, with a bounded number of requests each: text search at 1 client (p50/p99), text search
   at 8 concurrent clients (throughput, latency, errors), photo search at 1 client, and reports the
   per-stage timings the service returns (timings_ms) so the dominant stage of each latency is named.
4. Prints a Markdown table (for docs/benchmarks.md "Service") and writes all numbers as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import io
import json
import logging
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image as PILImage

logger = logging.getLogger("bench.bench_service")

TARGETS = {"text_p50_ms": 30.0, "text_p99_ms": 100.0, "image_p50_ms": 150.0}
BENCH_MANIFEST = "bench-manifest.json"
BENCH_FORMAT = 2  # 2: replicas carry photo vectors (feature set 3)


# ---------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildConfig:
    base: Path
    target: Path
    listings: int = 100_000
    seed: int = 0
    noise: float = 0.35
    batch_size: int = 5000
    build_base: bool = True


def _perturbed_vectors(base: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    from encoders.embed import normalize_rows

    jitter = rng.standard_normal(base.shape).astype(np.float32) * (noise / np.sqrt(base.shape[1]))
    return normalize_rows(base + jitter)


def build_bench_workspace(config: BuildConfig):
    """Replicate the base catalogue to ``config.listings`` listings with embeddings and indexes."""
    from sqlalchemy import delete

    from catalog.models import Image, Listing
    from catalog.store import Catalog, image_row
    from encoders.bundle import MultiModalModel
    from encoders.embed import (
        combine_embeddings,
        ensure_table,
        listing_embeddings,
        listing_photo_vectors,
        load_embeddings,
    )
    from index.update import update_indexes
    from core.workspace import Workspace

    base_ws, target_ws = Workspace.at(config.base), Workspace.at(config.target)
    if not base_ws.model_dir.exists() or not base_ws.db_path.exists():
        if not config.build_base:
            raise SystemExit(
                f"base workspace {base_ws.root} has no model or catalogue; build it with `make demo` "
                f"(or `marketsearch demo --workspace {base_ws.root} --no-serve`), or pass --base"
            )
        command = [
            str(Path(sys.executable).parent / "marketsearch"),
            "demo",
            "--workspace",
            str(base_ws.root),
            "--no-serve",
            "--no-evaluate",
        ]
        logger.info("base workspace %s is not built; running %s", base_ws.root, " ".join(command))
        subprocess.run(command, check=True)
    model = MultiModalModel.load(base_ws.model_dir)
    wanted = {
        "format": BENCH_FORMAT,
        "base": str(base_ws.root.resolve()),
        "model_fingerprint": model.fingerprint,
        "listings": config.listings,
        "seed": config.seed,
        "noise": config.noise,
    }
    manifest_path = target_ws.root / BENCH_MANIFEST
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("wanted") == wanted:
        logger.info("reusing the benchmark workspace %s", target_ws.root)
        manifest = json.loads(manifest_path.read_text())
        manifest["ranker"] = _sync_ranker(base_ws, target_ws)
        manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
        return manifest

    started = time.perf_counter()
    if target_ws.root.exists():
        shutil.rmtree(target_ws.root)
    target_ws.root.mkdir(parents=True)
    shutil.copytree(base_ws.model_dir, target_ws.model_dir)
    if base_ws.labels_path.exists():
        shutil.copy(base_ws.labels_path, target_ws.labels_path)
    # Photos: the replicas point at the base files through relative paths, so link the folder.
    (target_ws.root / "images").symlink_to(base_ws.images_dir.resolve(), target_is_directory=True)

    base_catalog = Catalog(base_ws.db_url)
    table = load_embeddings(base_catalog, model.fingerprint)
    row_of = {listing_id: row for row, listing_id in enumerate(table.ids)}
    base_listings = [listing for listing in base_catalog.get_listings(table.ids)]
    base_images = {}
    for listing in base_listings:
        for image_id in listing.image_ids:
            image = base_catalog.get_image(image_id)
            if image is not None:
                base_images[image_id] = image
    base_catalog.close()
    n_base = len(base_listings)
    logger.info(
        "base: %d embedded listings, %d photos; building %d listings", n_base, len(base_images), config.listings
    )

    rng = random.Random(config.seed)
    np_rng = np.random.default_rng(config.seed)
    vocabulary = sorted({word for x in base_listings for word in x.text.lower().split() if word.isalpha()})
    places = sorted({(x.town, x.county, x.location) for x in base_listings}, key=lambda p: p[2])

    catalog = Catalog(target_ws.db_url)
    ensure_table(catalog)
    written = 0
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for start in range(0, config.listings, config.batch_size):
        positions = range(start, min(start + config.batch_size, config.listings))
        listings, images, base_rows = [], [], []
        for i in positions:
            copy, base = divmod(i, n_base)
            source = base_listings[base]
            base_rows.append(row_of[source.id])
            if copy == 0:
                listings.append(source)
                images.extend(base_images[j] for j in source.image_ids if j in base_images)
                continue
            extra = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 6)))
            letters = "ABCDEFGHJKLMNPRSTVWXZ"
            code = f"{rng.choice(letters)}{rng.choice(letters)}-{rng.randint(100, 9999)}"
            town, county, location = rng.choice(places)
            price = source.price
            if price:
                price = round(price * float(np.exp(np_rng.normal(0.0, 0.3))), 2)
            created = source.created_at
            if created is not None:
                created = created - dt.timedelta(days=rng.randint(0, 365))
            image_ids = tuple(f"{j}-r{copy}" for j in source.image_ids if j in base_images)
            for j in source.image_ids:
                if j in base_images:
                    image = base_images[j]
                    images.append(
                        Image(
                            f"{j}-r{copy}",
                            f"{source.id}-r{copy}",
                            image.path,
                            image.width,
                            image.height,
                            image.created_at,
                        )
                    )
            listings.append(
                Listing(
                    id=f"{source.id}-r{copy}",
                    title=f"{source.title} {code}",
                    description=f"{source.description} {extra}".strip(),
                    price=price,
                    category=source.category,
                    category_levels=source.category_levels,
                    top_category=source.top_category,
                    town=town,
                    county=county,
                    location=location,
                    created_at=created,
                    image_ids=image_ids,
                )
            )
        rows = np.asarray(base_rows)
        copies = np.asarray([i // n_base for i in positions])
        text = table.text[rows]
        image = table.image[rows]
        has_image = table.has_image[rows]
        perturb = copies > 0
        text[perturb] = _perturbed_vectors(text[perturb], np_rng, config.noise)
        with_photo = perturb & has_image
        image[with_photo] = _perturbed_vectors(image[with_photo], np_rng, config.noise)
        vectors = combine_embeddings(text, image, has_image)

        catalog.write_batch(listings, [image_row(x) for x in images])
        with catalog.engine.begin() as conn:
            ids = [x.id for x in listings]
            conn.execute(delete(listing_embeddings).where(listing_embeddings.c.listing_id.in_(ids)))
            conn.execute(
                listing_embeddings.insert(),
                [
                    {
                        "listing_id": x.id,
                        "model_fingerprint": model.fingerprint,
                        "content_hash": f"bench-replica-{config.seed}",
                        "dim": int(text.shape[1]),
                        "has_image": bool(has_image[k]),
                        "n_images": len(x.image_ids),
                        "text": text[k].tobytes(),
                        "image": image[k].tobytes(),
                        "listing": vectors[k].tobytes(),
                        "updated_at": now,
                    }
                    for k, x in enumerate(listings)
                ],
            )
            if table.photo is not None:
                # A replica shows the base listing's photo files, so its raw-backbone photo vector is the base's.
                conn.execute(delete(listing_photo_vectors).where(listing_photo_vectors.c.listing_id.in_(ids)))
                conn.execute(
                    listing_photo_vectors.insert(),
                    [
                        {
                            "listing_id": x.id,
                            "model_fingerprint": model.fingerprint,
                            "content_hash": f"bench-replica-{config.seed}",
                            "dim": int(table.photo.shape[1]),
                            "n_photos": len(x.image_ids) if table.has_photo[rows[k]] else 0,
                            "vector": table.photo[rows[k]].tobytes() if table.has_photo[rows[k]] else b"",
                            "updated_at": now,
                        }
                        for k, x in enumerate(listings)
                    ],
                )
        written += len(listings)
        logger.info("wrote %d / %d listings", written, config.listings)
    catalog.close()

    # Indexes and re-ranker exactly as `marketsearch build` makes them.
    index_report = update_indexes(target_ws)
    _sync_ranker(base_ws, target_ws)

    manifest = {
        "wanted": wanted,
        "base_listings": n_base,
        "base_photos": len(base_images),
        "index_report": _plain(index_report),
        "ranker": base_ws.ranker_dir.exists(),
        "build_s": round(time.perf_counter() - started, 1),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    logger.info("benchmark workspace built in %.0fs", manifest["build_s"])
    return manifest


def _sync_ranker(base_ws, target_ws) -> bool:
    """The base's trained re-ranker (query/candidate features only, so it serves the copy as well)."""
    if not base_ws.ranker_dir.exists():
        if target_ws.ranker_dir.exists():
            shutil.rmtree(target_ws.ranker_dir)
        return False
    base_meta = (base_ws.ranker_dir / "meta.json").read_bytes()
    target_meta = target_ws.ranker_dir / "meta.json"
    if not target_meta.exists() or target_meta.read_bytes() != base_meta:
        if target_ws.ranker_dir.exists():
            shutil.rmtree(target_ws.ranker_dir)
        shutil.copytree(base_ws.ranker_dir, target_ws.ranker_dir)
    return True


def _plain(value):
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


# ---------------------------------------------------------------------------------------------- serve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(workspace: Path, port: int, workers: int = 1, startup_timeout: float = 600.0):
    """`marketsearch serve` in a subprocess; yields its base URL once /health says ok."""
    executable = Path(sys.executable).parent / "marketsearch"
    log_path = Path(workspace) / "bench-server.log"
    command = [
        str(executable),
        "serve",
        "--workspace",
        str(workspace),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        deadline = started + startup_timeout
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}; see {log_path}")
            try:
                response = httpx.get(url + "/health", timeout=5)
                if response.status_code == 200:
                    break
                if response.status_code == 503:
                    raise SystemExit(f"the server cannot search: {response.json().get('detail')}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not become healthy in {startup_timeout:.0f}s; see {log_path}")
            time.sleep(0.5)
        if workers > 1:
            # Workers load in parallel and only accept connections once loaded; give the others the
            # time the first one needed (plus a margin) before measuring.
            time.sleep(0.5 * (time.monotonic() - started) + 5)
        yield url, response.json()
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------- load


@dataclass
class Sample:
    ok: bool
    status: int
    client_ms: float
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    filtered: bool = False


def text_queries(workspace: Path, n: int, seed: int) -> list[dict]:
    """Queries like buyers type: 2-3 title words, a full title, a brand or item noun; a quarter filtered."""
    from catalog.store import Catalog
    from core.workspace import Workspace

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
    from core.workspace import Workspace

    rng = random.Random(seed)
    files = sorted(Workspace.at(workspace).images_dir.glob("*.jpg"))
    uploads = []
    for path in rng.sample(files, min(n, len(files))):
        with PILImage.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").resize(size).save(buffer, format="JPEG", quality=85)
            uploads.append(buffer.getvalue())
    return uploads


def _measure(send) -> Sample:
    start = time.perf_counter()
    try:
        response = send()
    except httpx.HTTPError as exc:
        return Sample(False, 0, (time.perf_counter() - start) * 1000, error=f"{type(exc).__name__}: {exc}")
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        return Sample(False, response.status_code, elapsed, error=response.text[:200])
    return Sample(True, 200, elapsed, response.json().get("timings_ms", {}))


def run_text(url: str, bodies: list[dict], requests: int) -> list[Sample]:
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(requests):
            body = bodies[i % len(bodies)]
            sample = _measure(lambda: client.post("/search/text", json=body))
            sample.filtered = "filters" in body
            samples.append(sample)
    return samples


def run_concurrent_text(url: str, bodies: list[dict], clients: int, requests_per_client: int):
    samples: list[list[Sample]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def worker(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            barrier.wait()
            for i in range(requests_per_client):
                body = bodies[(slot * requests_per_client + i) % len(bodies)]
                samples[slot].append(_measure(lambda: client.post("/search/text", json=body)))

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return [s for per_client in samples for s in per_client], wall


def run_image(url: str, uploads: list[bytes], requests: int, text: str | None = None) -> list[Sample]:
    data = {"text": text} if text else {}
    with httpx.Client(base_url=url, timeout=30) as client:
        return [
            _measure(
                lambda u=uploads[i % len(uploads)]: client.post(
                    "/search/image", files={"file": ("photo.jpg", u, "image/jpeg")}, data=data
                )
            )
            for i in range(requests)
        ]


# ------------------------------------------------------------------------------------- query runtime


def text_runtime_agreement(workspace: Path, bodies: list[dict], threads: int = 1) -> dict:
    """Serve-path queries encoded in torch and in ONNX Runtime (what the service uses), one at a time as
    served: cosine of the two query vectors and agreement of the full pipeline's top-20 (same filters,
    re-ranker as loaded). The catalogue vectors were computed in torch, so this is the consistency check."""
    import torch

    from api.config import Settings
    from api.state import load_state

    torch.set_num_threads(threads)
    state = load_state(Settings(workspace=workspace, text_runtime="torch", torch_threads=threads))
    if state.searcher is None:
        raise SystemExit(f"cannot load the search pipeline: {state.searcher_error}")
    searcher, model = state.searcher, state.searcher.model
    try:
        from search.filters import SearchFilters

        def run() -> tuple[np.ndarray, list[list[str]], list[float]]:
            vectors, rankings, encode_ms = [], [], []
            for body in bodies:
                start = time.perf_counter()
                vectors.append(model.encode_texts([body["query"]])[0])
                encode_ms.append((time.perf_counter() - start) * 1000)
                result = searcher.search(text=body["query"], k=20, filters=SearchFilters(**body.get("filters", {})))
                rankings.append([hit.listing_id for hit in result.hits])
            return np.stack(vectors), rankings, encode_ms

        torch_vectors, torch_rankings, torch_ms = run()
        model.text_tower.use_onnxruntime(threads=threads)
        fast_vectors, fast_rankings, fast_ms = run()
    finally:
        state.close()
    cosine = np.sum(torch_vectors * fast_vectors, axis=1)
    overlap = [len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(torch_rankings, fast_rankings)]
    return {
        "queries": len(bodies),
        "reranker": searcher.ranker is not None,
        "cosine_min": float(cosine.min()),
        "cosine_p1": float(np.percentile(cosine, 1)),
        "cosine_median": float(np.median(cosine)),
        "max_abs_diff": float(np.abs(torch_vectors - fast_vectors).max()),
        "top20_identical": float(np.mean([a == b for a, b in zip(torch_rankings, fast_rankings)])),
        "top20_overlap_mean": float(np.mean(overlap)),
        "top1_identical": float(np.mean([a[:1] == b[:1] for a, b in zip(torch_rankings, fast_rankings)])),
        "encode_p50_ms": {"torch": percentile(torch_ms, 50), "onnxruntime": percentile(fast_ms, 50)},
    }


# ---------------------------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summarize(samples: list[Sample]) -> dict:
    ok = [s for s in samples if s.ok]
    latencies = [s.client_ms for s in ok]
    stages: dict[str, list[float]] = defaultdict(list)
    for s in ok:
        for name, value in s.timings.items():
            stages[name].append(value)
        if "service_total" in s.timings:
            stages["http_and_framework"].append(s.client_ms - s.timings["service_total"])
        if "total" in s.timings:  # not in a named stage: the filter mask and allowed-id list, query glue
            named = sum(s.timings.get(name, 0.0) for name in ("encode", "vector", "bm25", "fuse", "rerank"))
            stages["pipeline_other"].append(s.timings["total"] - named)
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "error_examples": sorted({s.error or str(s.status) for s in samples if not s.ok})[:5],
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "stage_p50_ms": {name: round(percentile(values, 50), 2) for name, values in stages.items()},
    }


PIPELINE_STAGES = (
    "decode",
    "encode",
    "vector",
    "bm25",
    "fuse",
    "rerank",
    "pipeline_other",
    "hydrate",
    "http_and_framework",
)


def dominant(summary: dict) -> str:
    stages = {k: v for k, v in summary["stage_p50_ms"].items() if k in PIPELINE_STAGES}
    if not stages:
        return "n/a"
    ranked = sorted(stages.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {value:.1f}" for name, value in ranked[:3])


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=Path("workspace/demo"), help="built workspace to replicate")
    parser.add_argument(
        "--workspace",
        type=Path,
        default=Path("workspace/bench-service-100k"),
        help="where the benchmark workspace is built (and reused)",
    )
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--noise", type=float, default=0.35, help="embedding jitter of the replicas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the workspace even if it matches")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--text-requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=100)
    parser.add_argument("--image-requests", type=int, default=100)
    parser.add_argument("--photo-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn worker processes")
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

    if args.rebuild and (args.workspace / BENCH_MANIFEST).exists():
        (args.workspace / BENCH_MANIFEST).unlink()
    build = build_bench_workspace(
        BuildConfig(base=args.base, target=args.workspace, listings=args.listings, seed=args.seed, noise=args.noise)
    )
    if args.build_only:
        return build

    bodies = text_queries(args.workspace, 400, args.seed)
    uploads = photo_uploads(args.workspace, 50, args.seed, tuple(args.photo_size))
    results: dict = {"load_before": _uptime(), "cpus": os.cpu_count(), "build": build}
    results["server_workers"] = args.server_workers
    if not args.no_runtime_check:
        logger.info("query runtime check: torch vs ONNX Runtime on %d queries", len(bodies))
        results["text_runtime_agreement"] = text_runtime_agreement(args.workspace, bodies)
        gc.collect()  # the check's copy of the pipeline is gone before the server loads its own
        results["load_before"] = _uptime()
    with serving(args.workspace, args.port or _free_port(), args.server_workers) as (url, health):
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
