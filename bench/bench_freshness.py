"""Freshness of the live catalogue against a real `marketsearch serve` (issue 14's benchmark).

One run, one server (on a private copy of the workspace, so the benchmark's listings never reach it):

1. search p50/p99 of ``--clients`` clients with no writes (the baseline);
2. the same clients searching while a writer creates listings one after another, half with a photo: per
   create the acknowledgement latency and the time from acknowledgement to the first search hit (text: its
   unique word; photo: its photo as the query), and the clients' search p50/p99 under that write load;
3. creates per second without and with photos, the writer alone.

Writes go ``--via catalog`` (the `Catalog` calls the write routes make: `write_batch` with the photo cleaned by
`catalog.images.clean_image`) or ``--via http`` (POST /listings, multipart, with ``--api-key``): one flag.

    .venv/bin/python -m bench.bench_freshness --workspace workspace/demo --via catalog
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image as PILImage

from bench.http_load import _measure, free_port, percentile, serving, summarize
from catalog.images import clean_image, load_config
from catalog.models import Image, Listing
from catalog.store import Catalog, image_row
from core.workspace import Workspace

QUERIES = ["chair", "red bike", "phone case", "garden table", "sofa", "lamp", "desk", "kettle"]
FOUND_GUARD_S = 60.0


def _photo(seed: int) -> bytes:
    """A PNG no catalogue listing has (seeded coloured squares)."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((300, 400, 3), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 250), rng.integers(0, 350)
        pixels[y : y + 50, x : x + 50] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _listing(number: int, word: str, image_ids: tuple[str, ...]) -> Listing:
    return Listing(
        id=f"fresh-{number:05d}", title=f"{word} garden chair", description="A sturdy chair, hardly used.",
        price=20.0 + number % 50, category="Home & Garden / Garden / Furniture",
        category_levels=("Home & Garden", "Garden", "Furniture"), top_category="Home & Garden", town="Leeds",
        county="West Yorkshire", location="Leeds, West Yorkshire", created_at=datetime.date(2024, 5, 1),
        image_ids=image_ids, seller_id="bench",
    )


def _word(number: int) -> str:
    letters = "bcdfghjklmnpqrstvwxz"
    digits = np.base_repr(number, 20).rjust(4, "0")
    return "zq" + "".join(letters[int(d, 20)] for d in digits) + "ix"  # no catalogue word looks like it


class CatalogWriter:
    """Creates listings through `Catalog` (what the write routes run)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.catalog = Catalog(workspace.db_url, root=workspace.root)
        self.photo_config = load_config(workspace.photo_config_path)
        self.uploads = Path(tempfile.mkdtemp(prefix="bench-freshness-"))

    def create(self, number: int, word: str, photo: bytes | None) -> str:
        images, rows = (), []
        if photo is not None:
            source = self.uploads / f"{number}.png"
            source.write_bytes(photo)
            image_id = f"fresh-photo-{number:05d}"
            cleaned = clean_image(source, self.workspace.images_dir / f"{image_id}.jpg", self.photo_config)
            images = (image_id,)
            rows = [image_row(Image(image_id, f"fresh-{number:05d}", f"images/{image_id}.jpg", cleaned.width,
                                    cleaned.height, datetime.date(2024, 5, 1)))]
        listing = _listing(number, word, images)
        self.catalog.write_batch([listing], rows)
        return listing.id

    def close(self) -> None:
        self.catalog.close()
        shutil.rmtree(self.uploads, ignore_errors=True)


class HttpWriter:
    """Creates listings through POST /listings (multipart, ``Authorization: Bearer KEY``)."""

    def __init__(self, url: str, api_key: str):
        self.client = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {api_key}"})

    def create(self, number: int, word: str, photo: bytes | None) -> str:
        listing = _listing(number, word, ())
        fields = {"title": listing.title, "description": listing.description, "price": str(listing.price),
                  "category": listing.category, "location": listing.location}
        files = [("photos", (f"{number}.png", photo, "image/png"))] if photo is not None else None
        response = self.client.post("/listings", data=fields, files=files)
        if response.status_code == 404:
            raise SystemExit("POST /listings is not on this server (the write routes): use --via catalog")
        response.raise_for_status()
        return response.json()["id"]

    def close(self) -> None:
        self.client.close()


def _found(client: httpx.Client, listing_id: str, word: str, photo: bytes | None) -> bool:
    if photo is None:
        response = client.post("/search/text", json={"query": word, "k": 10})
    else:
        response = client.post("/search/image", files={"file": ("q.png", photo, "image/png")}, data={"k": "10"})
    return response.status_code == 200 and listing_id in [h["listing"]["id"] for h in response.json()["hits"]]


def _search_load(url: str, clients: int, stop: threading.Event) -> list:
    """``clients`` threads searching until ``stop``; their samples."""
    samples: list = []
    lock = threading.Lock()

    def client_loop(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = slot
            while not stop.is_set():
                body = {"query": QUERIES[i % len(QUERIES)], "k": 10}
                sample = _measure(lambda: client.post("/search/text", json=body))
                with lock:
                    samples.append(sample)
                i += clients

    threads = [threading.Thread(target=client_loop, args=(slot,), daemon=True) for slot in range(clients)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(120)
    return samples


def _loaded(url: str, clients: int, seconds: float, during=None):
    """Search samples of ``clients`` clients for ``seconds`` (or while ``during()`` runs); its result."""
    stop, out = threading.Event(), {}
    runner = threading.Thread(target=lambda: out.setdefault("samples", _search_load(url, clients, stop)))
    runner.start()
    result = None
    try:
        if during is None:
            time.sleep(seconds)
        else:
            result = during()
    finally:
        stop.set()
        runner.join(300)
    return out.get("samples", []), result


def _freshness(url: str, writer, creates: int, first: int) -> dict:
    ack_ms, found_s = {"text": [], "photo": []}, {"text": [], "photo": []}
    with httpx.Client(base_url=url, timeout=60) as probe:
        for n in range(first, first + creates):
            kind = "photo" if n % 2 else "text"
            word, photo = _word(n), (_photo(n) if kind == "photo" else None)
            started = time.perf_counter()
            listing_id = writer.create(n, word, photo)
            acked = time.perf_counter()
            ack_ms[kind].append((acked - started) * 1000)
            while not _found(probe, listing_id, word, photo):
                if time.perf_counter() - acked > FOUND_GUARD_S:
                    raise SystemExit(f"{listing_id} not found {FOUND_GUARD_S:.0f}s after its acknowledgement")
                time.sleep(0.02)
            found_s[kind].append(time.perf_counter() - acked)
    return {kind: {"creates": len(found_s[kind]),
                   "ack_p50_ms": round(percentile(ack_ms[kind], 50), 1),
                   "ack_p99_ms": round(percentile(ack_ms[kind], 99), 1),
                   "ack_to_hit_p50_s": round(percentile(found_s[kind], 50), 3),
                   "ack_to_hit_p99_s": round(percentile(found_s[kind], 99), 3),
                   "ack_to_hit_s": [round(x, 3) for x in found_s[kind]]} for kind in found_s}


def _creates_per_second(writer, creates: int, first: int, with_photo: bool) -> float:
    started = time.perf_counter()
    for n in range(first, first + creates):
        writer.create(n, _word(n), _photo(n) if with_photo else None)
    return creates / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("workspace/demo"))
    parser.add_argument("--via", choices=["catalog", "http"], default="catalog", help="how listings are written")
    parser.add_argument("--api-key", default=os.environ.get("MARKETSEARCH_API_KEY"), help="for --via http")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--baseline-seconds", type=float, default=30.0)
    parser.add_argument("--creates", type=int, default=40, help="creates measured for freshness (half with photo)")
    parser.add_argument("--throughput-creates", type=int, default=50, help="creates per throughput phase")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    options = parser.parse_args(argv)
    if options.via == "http" and not options.api_key:
        parser.error("--via http needs --api-key (or $MARKETSEARCH_API_KEY)")

    with tempfile.TemporaryDirectory(prefix="bench-freshness-ws-") as scratch:
        root = Path(shutil.copytree(options.workspace, Path(scratch) / "ws", ignore=shutil.ignore_patterns("*.log")))
        workspace = Workspace.at(root)
        load_before = os.getloadavg()
        with serving(root, free_port(), log_path=Path(scratch) / "server.log") as served:
            writer = (CatalogWriter(workspace) if options.via == "catalog" else HttpWriter(served.url, options.api_key))
            try:
                idle, _ = _loaded(served.url, options.clients, options.baseline_seconds)
                writing, freshness = _loaded(served.url, options.clients, 0,
                                             during=lambda: _freshness(served.url, writer, options.creates, 0))
                first = options.creates
                text_rate = _creates_per_second(writer, options.throughput_creates, first, False)
                photo_rate = _creates_per_second(writer, options.throughput_creates,
                                                 first + options.throughput_creates, True)
            finally:
                writer.close()
        idle_summary, writing_summary = summarize(idle), summarize(writing)
        figures = {
            "via": options.via,
            "clients": options.clients,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
            # a set published behind the log makes the first creates wait for its replay: lag should be 0
            "live_at_start": {k: (served.health.get("live") or {}).get(k) for k in ("applied_seq", "head_seq", "lag")},
            "search_without_writes": {k: idle_summary[k] for k in ("requests", "errors", "p50_ms", "p99_ms")},
            "search_with_writes": {k: writing_summary[k] for k in ("requests", "errors", "p50_ms", "p99_ms")},
            "p50_ratio_with_writes": round(writing_summary["p50_ms"] / idle_summary["p50_ms"], 3),
            "p99_ratio_with_writes": round(writing_summary["p99_ms"] / idle_summary["p99_ms"], 3),
            "freshness": freshness,
            "creates_per_s_without_photo": round(text_rate, 1),
            "creates_per_s_with_photo": round(photo_rate, 1),
        }
    text = json.dumps(figures, indent=2)
    print(text)
    if options.out:
        options.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
