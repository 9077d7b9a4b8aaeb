"""Write benchmark: sellers' creates over HTTP against `marketsearch serve`, and what they cost buyers' searches.

    .venv/bin/python -m bench.bench_writes --workspace workspace/demo      # copies it; the demo is left as it is

What it does (on a copy of the workspace, with a new ``listings:write`` key and the rate limits raised so that
they do not cap the measurement; the server inherits this process's environment):
1. What writes cost searches, ``--rounds`` times in turn (so that a change of the machine's load hits both):
   a. search alone: ``--clients`` clients (8) send buyers' text queries (`bench_service.text_queries`) for
      ``--seconds``;
   b. the same clients and queries while one seller creates a listing every ``1 / --write-rate`` s (half
      with a catalogue photo), and nothing else: no one searches for the new listings.
   The ratio of the search p50s (b over a, all rounds pooled) is the cost of the writes to searches (goal
   <= 1.2). The server's CPU seconds in each phase say how much work the writes added.
2. Freshness, its own phase: the search load and the seller of 1b, and after each 201 a probe searches for
   the new listing every 20 ms until it is found: by its unique title word (text) and, with a photo, by that
   photo (photo search), both ``k = 10``. Freshness = acknowledgement (201 received) to the first answer
   that holds the listing, p50/p99. The probes are searches too (a few in flight at a time, back to back),
   which is why the cost of the writes is measured without them, in 1.
3. Create throughput, no search load: ``--writers`` sellers create as fast as they can for ``--seconds``,
   first without photos, then each with one photo: creates/s and acknowledgement latency p50/p99.

Prints a Markdown table (docs/benchmarks.md, "Writes") and writes all numbers as JSON.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
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
    """``n`` different catalogue photos (fewer in a smaller catalogue) re-encoded at 640x480, each slightly
    cropped: new photos of the same kind of item."""
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

    def __init__(self, url: str, key: str, seed: int):
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        self.rng = random.Random(seed)
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


def server_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) the server process has used so far; None without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def found(client: httpx.Client, listing_id: str, word: str, photo: bytes | None) -> bool:
    if photo is None:
        response = client.post("/search/text", json={"query": word, "k": SEARCH_K})
    else:
        response = client.post("/search/image", files={"file": ("photo.jpg", photo, "image/jpeg")},
                               data={"k": str(SEARCH_K)})
    return response.status_code == 200 and any(hit["listing"]["id"] == listing_id for hit in response.json()["hits"])


class Probes:
    """After each acknowledged create, a thread searching for the new listing every 20 ms until it is found
    (text; photo too for a listing with one): how long after its 201 each listing is first a hit."""

    def __init__(self, url: str):
        self.url = url
        self.text_ms: list[float] = []
        self.photo_ms: list[float] = []
        self.not_found = {"text": 0, "photo": 0}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, listing_id: str, word: str, photo: bytes | None, acked: float) -> None:
        self._threads.append(threading.Thread(target=self._until_found, args=(listing_id, word, photo, acked)))
        self._threads[-1].start()

    def _until_found(self, listing_id: str, word: str, photo: bytes | None, acked: float) -> None:
        pending = {"text": None, **({"photo": photo} if photo is not None else {})}
        with httpx.Client(base_url=self.url, timeout=60) as searcher:
            while pending and time.perf_counter() - acked < FRESHNESS_TIMEOUT_S:
                for kind, query_photo in list(pending.items()):
                    if found(searcher, listing_id, word, query_photo):
                        with self._lock:
                            (self.text_ms if kind == "text" else self.photo_ms).append(
                                (time.perf_counter() - acked) * 1000)
                        del pending[kind]
                if pending:
                    time.sleep(FRESHNESS_POLL_S)
        with self._lock:
            for kind in pending:
                self.not_found[kind] += 1

    def join(self) -> None:
        for thread in self._threads:
            thread.join()


def search_phase(url: str, bodies: list[dict], clients: int, seconds: float, pid: int, *, key: str = "",
                 photos: Iterator[bytes] = iter(()), write_rate: float = 0.0, probe: bool = False,
                 seed: int = 0) -> dict:
    """``clients`` clients searching for ``seconds``; with ``write_rate``, one seller meanwhile creates that
    many listings a second (half with the next of ``photos``: a photo that no other listing has, so that a
    photo probe looks for one listing, not for one of several with the same photo), and with ``probe`` each
    new listing is searched for until found.
    Returns the search latencies (``latencies_ms``, kept for pooling), their stats, the server's CPU seconds
    and, with writes, the creates and freshness."""
    stop = threading.Event()
    cpu_before = server_cpu_s(pid)
    latencies, errors, threads = search_load(url, bodies, clients, stop)
    result: dict = {}
    start = time.monotonic()
    if write_rate <= 0:
        time.sleep(seconds)
    else:
        seller = Seller(url, key, seed)
        probes = Probes(url) if probe else None
        rng = random.Random(seed)
        deadline = start + seconds
        while time.monotonic() < deadline:  # the seller keeps its pace whatever the freshness
            started = time.monotonic()
            photo = next(photos) if rng.random() < 0.5 else None
            created = seller.create(photo)
            if created is not None and probes is not None:
                probes.start(*created, photo, time.perf_counter())
            time.sleep(max(0.0, 1 / write_rate - (time.monotonic() - started)))
        creates = len(seller.ack_ms)
        result.update(creates=creates, creates_per_s=round(creates / (time.monotonic() - start), 2),
                      create_errors=seller.errors, ack_ms=stats(seller.ack_ms))
        if probes is not None:
            probes.join()
            result.update(freshness_text_ms=stats(probes.text_ms), freshness_photo_ms=stats(probes.photo_ms),
                          not_found_in_30s=probes.not_found)
        seller.close()
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    cpu_after = server_cpu_s(pid)
    cpu = None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 1)
    return {"search": {**stats(latencies), "errors": errors[0]}, "latencies_ms": latencies,
            "seconds": round(wall, 1), "server_cpu_s": cpu, **result}


def write_cost(url: str, key: str, bodies: list[dict], photos: Iterator[bytes], args, pid: int) -> dict:
    """Searches alone, then under writes (no probes), ``args.rounds`` times in turn; p50s pooled over rounds."""
    alone, under = [], []
    for n in range(args.rounds):
        alone.append(search_phase(url, bodies, args.clients, args.seconds, pid))
        under.append(search_phase(url, bodies, args.clients, args.seconds, pid, key=key, photos=photos,
                                  write_rate=args.write_rate, seed=args.seed + n))

    def pooled(phases: list[dict]) -> dict:
        latencies = [ms for phase in phases for ms in phase["latencies_ms"]]
        cpu = [phase["server_cpu_s"] for phase in phases]
        return {**stats(latencies), "errors": sum(phase["search"]["errors"] for phase in phases),
                "seconds": round(sum(phase["seconds"] for phase in phases), 1),
                "server_cpu_s": None if None in cpu else round(sum(cpu), 1)}

    rounds = [{"alone": {k: v for k, v in a.items() if k != "latencies_ms"},
               "under_writes": {k: v for k, v in u.items() if k != "latencies_ms"},
               "p50_ratio": round(u["search"]["p50"] / a["search"]["p50"], 2)} for a, u in zip(alone, under)]
    result = {"alone": pooled(alone), "under_writes": pooled(under), "rounds": rounds,
              "creates": sum(u["creates"] for u in under), "create_errors": sum(u["create_errors"] for u in under)}
    result["creates_per_s"] = round(result["creates"] / result["under_writes"]["seconds"], 2)
    result["p50_ratio"] = round(result["under_writes"]["p50"] / result["alone"]["p50"], 2)
    result["p99_ratio"] = round(result["under_writes"]["p99"] / result["alone"]["p99"], 2)
    return result


def freshness(url: str, key: str, bodies: list[dict], photos: Iterator[bytes], args, pid: int) -> dict:
    phase = search_phase(url, bodies, args.clients, args.seconds, pid, key=key, photos=photos,
                         write_rate=args.write_rate, probe=True, seed=args.seed + args.rounds)
    del phase["latencies_ms"]
    return phase


def create_throughput(url: str, key: str, photos: list[bytes], writers: int, seconds: float, with_photo: bool,
                      seed: int) -> dict:
    sellers = [Seller(url, key, seed + n) for n in range(writers)]
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
    cost, fresh = results["write_cost"], results["freshness"]
    alone, under = cost["alone"], cost["under_writes"]

    def cpu(part: dict) -> str:
        return "" if part["server_cpu_s"] is None else f"server CPU {part['server_cpu_s']} s in {part['seconds']} s, "

    rows = [
        "| measurement | n | p50 ms | p99 ms | notes |",
        "|---|---|---|---|---|",
        f"| text search, {results['clients']} clients, no writes ({results['rounds']} x {results['seconds']:g} s) | "
        f"{alone['n']} | {alone['p50']} | {alone['p99']} | {cpu(alone)}{alone['errors']} errors |",
        f"| same, while {cost['creates_per_s']} creates/s (half with a photo), no probes | {under['n']} | "
        f"{under['p50']} | {under['p99']} | p50 ratio {cost['p50_ratio']} (goal <= 1.2; per round "
        f"{', '.join(str(r['p50_ratio']) for r in cost['rounds'])}), {cpu(under)}{under['errors']} errors |",
        f"| freshness, text (201 to first hit) | {fresh['freshness_text_ms']['n']} | "
        f"{fresh['freshness_text_ms']['p50']} | {fresh['freshness_text_ms']['p99']} | goal p99 <= 2000; "
        f"{fresh['not_found_in_30s']['text']} not found in 30 s; {fresh['creates_per_s']} creates/s |",
        f"| freshness, photo (201 to first hit) | {fresh['freshness_photo_ms']['n']} | "
        f"{fresh['freshness_photo_ms']['p50']} | {fresh['freshness_photo_ms']['p99']} | goal p99 <= 2000; "
        f"{fresh['not_found_in_30s']['photo']} not found in 30 s |",
        f"| text search during the freshness phase (writes and probes) | {fresh['search']['n']} | "
        f"{fresh['search']['p50']} | {fresh['search']['p99']} | {cpu(fresh)}the probes search too |",
    ]
    for label, part in (("no photo", results.get("creates_no_photo")), ("one photo", results.get("creates_photo"))):
        if part is None:
            continue
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
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of search alone / under writes")
    parser.add_argument("--write-rate", type=float, default=2.0, help="creates per second during searches")
    parser.add_argument("--writers", type=int, default=4, help="concurrent sellers in the throughput phases")
    parser.add_argument("--no-throughput", action="store_true", help="skip the create-throughput phases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path, default=None, help="default: print only")
    args = parser.parse_args(argv)

    os.environ.update(UNLIMITED)
    with tempfile.TemporaryDirectory(prefix="bench-writes-") as tmp:
        workspace = Path(shutil.copytree(args.workspace, Path(tmp) / "ws"))
        with Catalog(Workspace.at(workspace).db_url, root=workspace) as catalog:
            _, key = create_key(catalog, "listings:write", name="bench_writes")
        bodies = text_queries(workspace, 400, args.seed)
        # a new photo for every create of the write-cost and freshness phases (a listing's photo that another
        # listing has too may rank it out of a photo probe's top k); the throughput phases reuse the first 40
        per_phase = math.ceil(args.write_rate * args.seconds) + 1
        photos = seller_photos(workspace, max(40, per_phase * (args.rounds + 1)), args.seed)
        unique_photos = itertools.cycle(photos)
        results: dict = {"load_before": _uptime(), "cpus": os.cpu_count(), "clients": args.clients,
                         "seconds": args.seconds, "rounds": args.rounds, "write_rate": args.write_rate}
        with serving(workspace, free_port(), log_path=Path(tmp) / "server.log") as (url, health, pid):
            results["listings"] = health.get("listings")
            search_phase(url, bodies, args.clients, 3, pid)  # warm-up
            results["write_cost"] = write_cost(url, key, bodies, unique_photos, args, pid)
            results["freshness"] = freshness(url, key, bodies, unique_photos, args, pid)
            if not args.no_throughput:
                for name, with_photo in (("creates_no_photo", False), ("creates_photo", True)):
                    results[name] = create_throughput(url, key, photos[:40], args.writers, args.seconds, with_photo,
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
