"""HTTP load against `marketsearch serve`: start the server, send bounded request sets, summarise them.

    with serving(workspace, free_port()) as (url, health, pid):
        summary = summarize(run_text(url, bodies, 500))

`serving` starts `marketsearch serve` (uvicorn, ``workers`` processes) on 127.0.0.1 in a subprocess (its output
goes to ``log_path``, default ``<workspace>/bench-server.log``) and yields once /health says ok, with the server's
process id (`peak_memory_bytes(pid)`: its peak resident memory, worker processes included;
`resident_memory_bytes(pid)`: the resident memory of each process now). The load functions send a bounded number of
requests with httpx (keep-alive, one connection per client): text search at one client (`run_text`), at several
concurrent clients (`run_concurrent_text`: samples and wall time), photo search, optionally with words
(`run_image`), and any mix of requests (`Call`s, each with the status the API documents for it) at several clients
for a bounded time (`run_mixed`). Each request becomes a `Sample`; `summarize` gives errors, p50/p90/p99 latency
and the per-stage timings the service returns (``timings_ms``), `status_counts` the statuses per call, and
`dominant` names the top stages of a summary.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np

# ---------------------------------------------------------------------------------------------- serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served(NamedTuple):
    url: str  # http://127.0.0.1:PORT
    health: dict  # the /health answer that said ok
    pid: int  # the `marketsearch serve` process (uvicorn's supervisor when workers > 1)


@contextmanager
def serving(
    workspace: Path,
    port: int,
    workers: int = 1,
    startup_timeout: float = 600.0,
    log_path: Path | None = None,
    require_search: bool = True,
    wait_for_live_encoder: bool = True,
):
    """`marketsearch serve` in a subprocess; yields a `Served` (base URL, /health, pid) once /health says ok
    (``require_search=False``: once the service answers at all, for routes that need only the catalogue), and
    then, with ``wait_for_live_encoder``, once the live follower has loaded its catalogue encoder: it loads in a
    background thread after start (torch imports included) and slows the searches meanwhile, which a
    measurement of steady searches must not count."""
    executable = Path(sys.executable).parent / "marketsearch"
    log_path = Path(log_path or Path(workspace) / "bench-server.log")
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
                if response.status_code == 200 or (response.status_code == 503 and not require_search):
                    break
                if response.status_code == 503:
                    raise SystemExit(f"the server cannot search: {response.json().get('detail')}")
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not become healthy in {startup_timeout:.0f}s; see {log_path}")
            time.sleep(0.5)
        ready = time.monotonic() - started
        while wait_for_live_encoder and response.status_code == 200:
            live = response.json().get("live") or {}
            if live.get("encoder_loaded", True):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the live encoder did not load in {startup_timeout:.0f}s; see {log_path}")
            time.sleep(0.5)
            response = httpx.get(url + "/health", timeout=5)
        if time.monotonic() - started > ready + 0.1:
            print(f"/health 200 after {ready:.1f} s; the live follower's catalogue encoder loaded after "
                  f"{time.monotonic() - started:.1f} s", file=sys.stderr)
        if workers > 1:
            # Workers load in parallel and only accept connections once loaded; give the others the
            # time the first one needed (plus a margin) before measuring.
            time.sleep(0.5 * (time.monotonic() - started) + 5)
        yield Served(url, response.json(), process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def peak_memory_bytes(pid: int) -> int:
    """Peak resident memory (``VmHWM``) of process ``pid`` plus that of each of its descendants alive now
    (uvicorn's workers): the sum of per-process peaks, an upper bound on the tree's peak. Linux only."""
    return sum(_vm_hwm_bytes(p) for p in [pid, *_descendants(pid)])


def resident_memory_bytes(pid: int) -> dict[int, int]:
    """Resident memory now (``VmRSS``) of process ``pid`` and of each of its descendants alive now, by pid
    (uvicorn's supervisor first, then its workers). Linux only."""
    return {p: _status_bytes(p, "VmRSS") for p in [pid, *_descendants(pid)]}


def _vm_hwm_bytes(pid: int) -> int:
    return _status_bytes(pid, "VmHWM")


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    raise ValueError(f"/proc/{pid}/status has no {field} line")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # fields after "(comm)": state, ppid, ...
            children[parent].append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


# ---------------------------------------------------------------------------------------------- load


@dataclass
class Sample:
    ok: bool
    status: int
    client_ms: float
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    filtered: bool = False
    call: str | None = None  # the `Call` it answered (run_mixed)


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


@dataclass(frozen=True)
class Call:
    """One kind of request in a mixed load (a POST with a JSON body or a multipart form) and the status the
    API documents for it."""

    name: str
    path: str
    expected: int
    json: dict | None = None
    files: dict | None = None  # httpx's form: {"file": (filename, bytes, content_type)}
    data: dict | None = None


def run_mixed(
    url: str, calls: Sequence[Call], clients: int, seconds: float, max_requests_per_client: int = 100_000,
    timeout: float = 120.0,
) -> tuple[list[Sample], float]:
    """``clients`` concurrent clients, each going round ``calls`` (from its own offset, so the kinds of request
    interleave) until ``seconds`` have passed or it has sent ``max_requests_per_client``. Returns the samples
    (``Sample.call`` names the call) and the wall time. A request that gets no answer (connection refused or
    reset, time-out) is a sample with status 0."""
    samples: list[list[Sample]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    deadline: list[float] = []

    def worker(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            barrier.wait()
            for i in range(max_requests_per_client):
                if time.monotonic() >= deadline[0]:
                    return
                call = calls[(slot + i) % len(calls)]
                sample = _measure(lambda c=call: client.post(c.path, json=c.json, files=c.files, data=c.data))
                sample.call = call.name
                samples[slot].append(sample)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    deadline.append(time.monotonic() + seconds)
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return [s for per_client in samples for s in per_client], time.perf_counter() - start


# -------------------------------------------------------------------------------------------- summary


def status_counts(samples: list[Sample]) -> dict[str, dict[int, int]]:
    """Per call name, how many answers had each status (0: no answer)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for sample in samples:
        counts[sample.call or "?"][sample.status] += 1
    return {name: dict(sorted(counter.items())) for name, counter in sorted(counts.items())}


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
    "photo",
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
