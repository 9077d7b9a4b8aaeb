"""Write benchmark: sellers' creates over HTTP against `marketsearch serve`, and what they cost buyers' searches.

    .venv/bin/python -m bench.bench_writes --workspace workspace/demo      # copies it; the demo is left as it is

What it does (on a copy of the workspace, with a new ``listings:write`` key and the rate limits raised so that
they do not cap the measurement; the server inherits this process's environment):
1. Search alone: ``--clients`` clients (8) send buyers' text queries (`bench_service.text_queries`) for
   ``--seconds``: p50/p99.
2. Search under writes, same clients, same queries, same duration: one seller creates a listing every
   ``1 / --write-rate`` s (half with a catalogue photo) and, after each 201, searches for it until it is
   found: by its unique title word (text) and, with a photo, by that photo (photo search), both ``k = 10``.
   Freshness = acknowledgement (201 received) to the first answer that holds the listing, p50/p99. The
   ratio of the two search p50s (2. over 1.) is the cost of the writes to searches (goal <= 1.2).
3. Create throughput, no search load: ``--writers`` sellers create as fast as they can for ``--seconds``,
   first without photos, then each with one photo: creates/s and acknowledgement latency p50/p99.

Prints a Markdown table (docs/benchmarks.md, "Writes") and writes all numbers as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from PIL import Image as PILImage

from bench.bench_service import _uptime, text_queries
from bench.http_load import free_port, percentile, serving
from catalog.api_keys import create_key
from catalog.store import Catalog
from core.workspace import Workspace

# Rate limits far above what the machine can write: the benchmark measures the service, not the limiter.
UNLIMITED = {
    "MARKETSEARCH_WRITE_RATE_PER_MINUTE": "1000000",
    "MARKETSEARCH_WRITE_BURST": "1000000",
    "MARKETSEARCH_PHOTO_RATE_PER_MINUTE": "1000000",
    "MARKETSEARCH_PHOTO_BURST": "1000000",
}
CATEGORY = "Home & Garden / Furniture / Tables"
LETTERS = "bcdfghjkmnpqrtvwz"  # unique title words: consonants only, so the BM25 analyser's stemmer keeps them
FRESHNESS_TIMEOUT_S = 30.0
FRESHNESS_POLL_S = 0.02
SEARCH_K = 10


def unique_word(rng: random.Random) -> str:
    return "zx" + "".join(rng.choice(LETTERS) for _ in range(8))


def seller_photos(workspace: Path, n: int, seed: int) -> list[bytes]:
    """Catalogue photos re-encoded at 640x480, each slightly cropped: new photos of the same kind of item."""
    rng = random.Random(seed)
    files = sorted(Workspace.at(workspace).images_dir.glob("*.jpg"))
    photos = []
    for path in rng.sample(files, min(n, len(files))):
        with PILImage.open(path) as image:
            image = image.convert("RGB")
            width, height = image.size
            left, top = rng.randint(0, width // 10), rng.randint(0, height // 10)
            buffer = io.BytesIO()
            image.crop((left, top, width - left, height - top)).resize((640, 480)).save(buffer, "JPEG", quality=85)
            photos.append(buffer.getvalue())
    return photos


def stats(values: list[float]) -> dict:
    return {"n": len(values), "p50": round(percentile(values, 50), 1), "p99": round(percentile(values, 99), 1)}


class Seller:
    """Creates listings with one key over one connection; every create's latency is kept."""

    def __init__(self, url: str, key: str, photos: list[bytes], seed: int):
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        self.photos, self.rng = photos, random.Random(seed)
        self.ack_ms: list[float] = []
        self.errors = 0

    def create(self, photo: bytes | None) -> tuple[str, str] | None:
        """(listing id, unique word) once acknowledged, or None for an error."""
        word = unique_word(self.rng)
        data = {"title": f"Second-hand lamp {word}", "price": str(self.rng.randint(5, 500)), "category": CATEGORY,
                "description": "Written by bench_writes", "location": "Leeds, West Yorkshire"}
        files = [("photos", ("photo.jpg", photo, "image/jpeg"))] if photo is not None else None
        start = time.perf_counter()
        response = self.client.post("/listings", data=data, files=files,
                                    headers={"Idempotency-Key": uuid.uuid4().hex})
        if response.status_code != 201:
            self.errors += 1
            return None
        self.ack_ms.append((time.perf_counter() - start) * 1000)
        return response.json()["id"], word

    def close(self) -> None:
        self.client.close()


def search_load(
    url: str, bodies: list[dict], clients: int, stop: threading.Event
) -> tuple[list[float], list[int], list[threading.Thread]]:
    """Start ``clients`` threads searching until ``stop``; their latencies (ms), error count (one item) and
    the threads, filled as they go."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = slot
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    ok = http.post("/search/text", json=bodies[i % len(bodies)]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1
                i += clients

    threads = [threading.Thread(target=client, args=(slot,), daemon=True) for slot in range(clients)]
    for thread in threads:
        thread.start()
    return latencies, errors, threads


def searches_alone(url: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    stop = threading.Event()
    latencies, errors, threads = search_load(url, bodies, clients, stop)
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return {**stats(latencies), "errors": errors[0]}


def found(client: httpx.Client, listing_id: str, word: str, photo: bytes | None) -> bool:
    if photo is None:
        response = client.post("/search/text", json={"query": word, "k": SEARCH_K})
    else:
        response = client.post("/search/image", files={"file": ("photo.jpg", photo, "image/jpeg")},
                               data={"k": str(SEARCH_K)})
    return response.status_code == 200 and any(hit["listing"]["id"] == listing_id for hit in response.json()["hits"])


def searches_under_writes(url: str, key: str, bodies: list[dict], photos: list[bytes], clients: int,
                          seconds: float, write_rate: float, seed: int) -> dict:
    """The search load of `searches_alone` while one seller creates ``write_rate`` listings a second and
    measures how long each takes to be found after its 201 (text; and photo for those with one)."""
    stop = threading.Event()
    latencies, errors, threads = search_load(url, bodies, clients, stop)
    seller = Seller(url, key, photos, seed)
    fresh_text: list[float] = []
    fresh_photo: list[float] = []
    not_found = [0]
    rng = random.Random(seed)

    def until_found(listing_id: str, word: str, photo: bytes | None, acked: float) -> None:
        pending = {"text": None, **({"photo": photo} if photo is not None else {})}
        with httpx.Client(base_url=url, timeout=60) as searcher:
            while pending and time.perf_counter() - acked < FRESHNESS_TIMEOUT_S:
                for kind, query_photo in list(pending.items()):
                    if found(searcher, listing_id, word, query_photo):
                        (fresh_text if kind == "text" else fresh_photo).append((time.perf_counter() - acked) * 1000)
                        del pending[kind]
                if pending:
                    time.sleep(FRESHNESS_POLL_S)
        not_found[0] += len(pending)

    pollers = []  # one per create, so the seller keeps its pace whatever the freshness
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        photo = rng.choice(photos) if rng.random() < 0.5 else None
        created = seller.create(photo)
        if created is not None:
            pollers.append(threading.Thread(target=until_found, args=(*created, photo, time.perf_counter())))
            pollers[-1].start()
        time.sleep(max(0.0, 1 / write_rate - (time.monotonic() - started)))
    wall = time.monotonic() - start
    for poller in pollers:
        poller.join()
    stop.set()
    for thread in threads:
        thread.join()
    seller.close()
    return {"search": {**stats(latencies), "errors": errors[0]}, "creates": len(seller.ack_ms),
            "creates_per_s": round(len(seller.ack_ms) / wall, 2), "create_errors": seller.errors,
            "ack_ms": stats(seller.ack_ms), "freshness_text_ms": stats(fresh_text),
            "freshness_photo_ms": stats(fresh_photo), "not_found_in_30s": not_found[0]}


def create_throughput(url: str, key: str, photos: list[bytes], writers: int, seconds: float, with_photo: bool,
                      seed: int) -> dict:
    sellers = [Seller(url, key, photos, seed + n) for n in range(writers)]
    deadline = time.monotonic() + seconds

    def write(seller: Seller) -> None:
        while time.monotonic() < deadline:
            seller.create(seller.rng.choice(photos) if with_photo else None)

    threads = [threading.Thread(target=write, args=(seller,)) for seller in sellers]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    acks = [ms for seller in sellers for ms in seller.ack_ms]
    for seller in sellers:
        seller.close()
    return {"writers": writers, "creates": len(acks), "creates_per_s": round(len(acks) / wall, 1),
            "errors": sum(seller.errors for seller in sellers), "ack_ms": stats(acks)}


def markdown(results: dict) -> str:
    alone, under = results["search_alone"], results["under_writes"]
    rows = [
        "| measurement | n | p50 ms | p99 ms | notes |",
        "|---|---|---|---|---|",
        f"| text search, {results['clients']} clients, no writes | {alone['n']} | {alone['p50']} | {alone['p99']} | "
        f"{alone['errors']} errors |",
        f"| same, while {under['creates_per_s']} creates/s (half with a photo) | {under['search']['n']} | "
        f"{under['search']['p50']} | {under['search']['p99']} | p50 ratio {results['search_p50_ratio']} (goal <= 1.2), "
        f"{under['search']['errors']} errors |",
        f"| freshness, text (201 to first hit) | {under['freshness_text_ms']['n']} | "
        f"{under['freshness_text_ms']['p50']} | {under['freshness_text_ms']['p99']} | goal p99 <= 2000; "
        f"{under['not_found_in_30s']} not found in 30 s |",
        f"| freshness, photo (201 to first hit) | {under['freshness_photo_ms']['n']} | "
        f"{under['freshness_photo_ms']['p50']} | {under['freshness_photo_ms']['p99']} | goal p99 <= 2000 |",
    ]
    for label, part in (("no photo", results["creates_no_photo"]), ("one photo", results["creates_photo"])):
        rows.append(
            f"| create, {label}, {part['writers']} writers (ack latency) | {part['creates']} | "
            f"{part['ack_ms']['p50']} | {part['ack_ms']['p99']} | {part['creates_per_s']} creates/s, "
            f"{part['errors']} errors |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace/demo"), help="built workspace (copied)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent searching clients")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each phase")
    parser.add_argument("--write-rate", type=float, default=2.0, help="creates per second during searches")
    parser.add_argument("--writers", type=int, default=4, help="concurrent sellers in the throughput phases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path, default=None, help="default: print only")
    args = parser.parse_args(argv)

    os.environ.update(UNLIMITED)
    with tempfile.TemporaryDirectory(prefix="bench-writes-") as tmp:
        workspace = Path(shutil.copytree(args.workspace, Path(tmp) / "ws"))
        with Catalog(Workspace.at(workspace).db_url, root=workspace) as catalog:
            _, key = create_key(catalog, "listings:write", name="bench_writes")
        bodies = text_queries(workspace, 400, args.seed)
        photos = seller_photos(workspace, 40, args.seed)
        results: dict = {"load_before": _uptime(), "cpus": os.cpu_count(), "clients": args.clients,
                         "seconds": args.seconds, "write_rate": args.write_rate}
        with serving(workspace, free_port(), log_path=Path(tmp) / "server.log") as (url, health, _pid):
            results["listings"] = health.get("listings")
            searches_alone(url, bodies, args.clients, 3)  # warm-up
            results["search_alone"] = searches_alone(url, bodies, args.clients, args.seconds)
            results["under_writes"] = searches_under_writes(url, key, bodies, photos, args.clients, args.seconds,
                                                            args.write_rate, args.seed)
            results["search_p50_ratio"] = round(
                results["under_writes"]["search"]["p50"] / results["search_alone"]["p50"], 2)
            results["creates_no_photo"] = create_throughput(url, key, photos, args.writers, args.seconds, False,
                                                            args.seed)
            results["creates_photo"] = create_throughput(url, key, photos, args.writers, args.seconds, True,
                                                         args.seed)
            results["live_after"] = httpx.get(url + "/health", timeout=30).json().get("live")
        results["load_after"] = _uptime()
    results["table"] = markdown(results)
    print(results["table"])
    print(json.dumps({k: v for k, v in results.items() if k != "table"}, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
