"""`POST /events` throughput: batches of simulated events sent over HTTP to `marketsearch serve` on 127.0.0.1.

    .venv/bin/python -m bench.bench_events --base workspace/demo
    .venv/bin/python -m bench.bench_events --base /work/devws --events 200000 --clients 1 4

1. Copies the base workspace's catalogue database (nothing else: the service then answers events and
   listings, not search) into ``--workspace`` (default ``workspace/bench-events``), with its events emptied
   (``--keep-events``: kept, to measure writes into a table that is already large).
2. Generates ``--events`` events with the user simulator (browsing only, seeded), the mix a real client
   sends (mostly impressions), as the API takes them (no ``received_at``).
3. Starts `marketsearch serve` on that workspace (one uvicorn process) and, for each client count, sends
   the events in batches of ``--batch`` (1,000 = the API's maximum) from that many concurrent httpx clients
   (keep-alive), each batch answered only once committed. Every event is new (each run's event ids carry
   its own prefix, so the table grows from run to run), then one more pass resends the first batches of the
   last run to time an all-duplicates retry.
4. Prints events/s, batch latency p50/p99 and what the service answered (stored, duplicates, rejected),
   and writes them as JSON to ``<workspace>/bench-events.json``. Target (issue #12): >= 5,000 events/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import delete, func, select

from bench.http_load import free_port, percentile, serving
from catalog import schema
from catalog.api_keys import create_key
from catalog.store import Catalog
from core.workspace import Workspace
from personal.sim_world import SimCatalog
from personal.simulator import SimConfig, Simulator

logger = logging.getLogger("bench.bench_events")
TARGET_EVENTS_PER_SECOND = 5000


def prepare_workspace(base: Path, target: Path, keep_events: bool) -> Workspace:
    source = Workspace.at(base)
    if not source.db_path.is_file():
        raise SystemExit(f"no catalogue at {source.db_path}; build one (`make demo`) or pass --base")
    workspace = Workspace.at(target).ensure()
    shutil.copy(source.db_path, workspace.db_path)
    if not keep_events:
        clear_events(workspace)
    return workspace


def stored_events(workspace: Workspace) -> int:
    with Catalog(workspace.db_path) as catalog, catalog.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(schema.events)).scalar_one()


def with_prefix(batches: list[list[dict]], prefix: str) -> list[list[dict]]:
    return [[{**event, "event_id": f"{prefix}-{event['event_id']}"} for event in batch] for batch in batches]


def clear_events(workspace: Workspace) -> None:
    with Catalog(workspace.db_path) as catalog, catalog.engine.begin() as conn:
        conn.execute(delete(schema.events))
        conn.execute(delete(schema.users))


def simulated_events(workspace: Workspace, count: int, seed: int) -> list[dict]:
    with Catalog(workspace.db_path) as catalog:
        listings = [listing for batch in catalog.iter_listings() for listing in batch]
    # a period that ends a week ago: every event is valid now
    start = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=37)
    users = max(50, count // 400)
    simulator = Simulator(SimCatalog.from_listings(listings), SimConfig(users=users, days=30, seed=seed, start=start,
                                                                        max_events=count))  # fmt: skip
    events = []
    for session in simulator.run():
        for item in session:
            record = item.to_record()
            del record["received_at"]
            events.append(record)
    return events[:count]


def events_key(workspace: Workspace) -> dict[str, str]:
    """The headers of a new events:write key in the workspace (POST /events needs one)."""
    with Catalog(workspace.db_url) as catalog:
        _, text = create_key(catalog, "events:write", name="bench_events")
    return {"Authorization": f"Bearer {text}"}


def send(url: str, batches: list[list[dict]], clients: int, headers: dict[str, str]) -> dict:
    """Send ``batches`` from ``clients`` concurrent clients (batch i goes to client i % clients)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    answers: list[list[dict]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def worker(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
            barrier.wait()
            for batch in batches[slot::clients]:
                started = time.perf_counter()
                response = client.post("/events", json={"events": batch})
                latencies[slot].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    answers[slot].append(response.json())

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    flat = [a for per in answers for a in per]
    ms = [v for per in latencies for v in per]
    events = sum(len(b) for b in batches)
    return {
        "clients": clients,
        "batches": len(batches),
        "events": events,
        "seconds": round(wall, 3),
        "events_per_second": round(events / wall),
        "batch_p50_ms": round(percentile(ms, 50), 1),
        "batch_p99_ms": round(percentile(ms, 99), 1),
        "stored": sum(a["stored"] for a in flat),
        "duplicates": sum(a["duplicates"] for a in flat),
        "rejected": sum(len(a["rejected"]) for a in flat),
        "errors": len(errors),
        "error_examples": errors[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("workspace/demo"), help="Workspace whose catalogue to use.")
    parser.add_argument("--workspace", type=Path, default=Path("workspace/bench-events"))
    parser.add_argument("--events", type=int, default=100_000, help="Events per run (bounded: at most 2,000,000).")
    parser.add_argument("--batch", type=int, default=1000, help="Events per request (1..1000).")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4], help="Concurrent clients, one run each.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-events", action="store_true", help="Keep the base's events (a large table).")
    args = parser.parse_args()
    if not 1 <= args.events <= 2_000_000 or not 1 <= args.batch <= 1000 or not all(1 <= c <= 32 for c in args.clients):
        raise SystemExit("--events 1..2,000,000, --batch 1..1000, --clients 1..32")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    workspace = prepare_workspace(args.base, args.workspace, args.keep_events)
    before = stored_events(workspace)
    started = time.perf_counter()
    events = simulated_events(workspace, args.events, args.seed)
    logger.info("simulated %d events in %.1f s", len(events), time.perf_counter() - started)
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    runs = []
    headers = events_key(workspace)
    # the benchmark measures the store, not the per-key limit: the server it starts inherits a bucket it never empties
    os.environ["MARKETSEARCH_EVENT_BURST"] = str(len(batches) * (len(args.clients) + 1) + 10)
    with serving(workspace.root, free_port(), require_search=False) as (url, _health, _pid):
        warm_up = with_prefix([batches[0][:10]], "warm-up")[0]
        # engine, connections, tables
        httpx.post(url + "/events", json={"events": warm_up}, headers=headers, timeout=60)
        for number, clients in enumerate(args.clients):
            run_batches = with_prefix(batches, f"r{number}")
            run = send(url, run_batches, clients, headers)
            runs.append({**run, "events_in_table_before": before + number * len(events)})
            logger.info("%d client(s): %s events/s", clients, f"{runs[-1]['events_per_second']:,}")
        retry = send(url, run_batches[: min(20, len(batches))], 1, headers)  # everything already stored
    results = {"base": str(args.base), "listings": _listings(workspace), "batch": args.batch, "runs": runs,
               "retry_all_duplicates": retry, "target_events_per_second": TARGET_EVENTS_PER_SECOND}  # fmt: skip
    (workspace.root / "bench-events.json").write_text(json.dumps(results, indent=2))
    print(f"\nPOST /events, batches of {args.batch:,}, {results['listings']:,} listings ({args.base}), "
          f"{before:,} events in the table at the start\n")
    print("| clients | events | seconds | events/s | batch p50 ms | batch p99 ms | stored | duplicates | rejected "
          "| errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in [*runs, {**retry, "clients": "1 (retry)"}]:
        print(f"| {run['clients']} | {run['events']:,} | {run['seconds']} | {run['events_per_second']:,} | "
              f"{run['batch_p50_ms']} | {run['batch_p99_ms']} | {run['stored']:,} | {run['duplicates']:,} | "
              f"{run['rejected']} | {run['errors']} |")  # fmt: skip
    print(f"\nall numbers: {workspace.root / 'bench-events.json'}")


def _listings(workspace: Workspace) -> int:
    with Catalog(workspace.db_path) as catalog:
        return catalog.count()


if __name__ == "__main__":
    main()
